"""RadFM's CT teacher: the vision tower's names and shapes are RadFM's (checked at full size on the meta device),
a tiny random RadFMVision saved the way RadFM's checkpoint is (whole model, ``embedding_layer.`` prefix, LM tensors
beside it) loads strictly through the registry, and the pieces compute what RadFM's code computes."""
import numpy as np
import pytest
import torch

from plugins.encoders.radfm import RadFMVision, SelfAttention, ViT3d, load_state, radfm_preprocess, target_depth
from plugins.readers.ct import read_volume_ras
from plugins.registry import EncoderOptions, build_encoder

TINY_VIT = {"image_size": 64, "frames": 32, "patch": 16, "frame_patch": 4, "dim": 24, "depth": 2, "heads": 2,
            "dim_head": 8, "mlp_dim": 32}
TINY_PERCEIVER = {"depth": 2, "heads": 2, "dim_head": 8, "num_latents": 4}
TINY = {"vit": TINY_VIT, "perceiver": TINY_PERCEIVER, "size": 64, "max_depth": 16}


def test_full_size_tower_has_radfms_names_and_shapes():
    with torch.device("meta"):
        sd = RadFMVision().state_dict()
    want = {  # from RadFM's my_embedding_layer.py / vit_3d.py / helpers.py at the released configuration
        "vision_encoder.to_patch_embedding.1.weight": (12288,),          # LayerNorm(3 * 32 * 32 * 4)
        "vision_encoder.to_patch_embedding.2.weight": (768, 12288),
        "vision_encoder.to_patch_embedding.3.bias": (768,),
        "vision_encoder.pos_embedding.row_embed.weight": (16, 256),
        "vision_encoder.pos_embedding.col_embed.weight": (16, 256),
        "vision_encoder.pos_embedding.dep_embed.weight": (128, 256),     # 512 frames / 4
        "vision_encoder.transformer.layers.11.0.norm.weight": (768,),
        "vision_encoder.transformer.layers.11.0.fn.to_qkv.weight": (1536, 768),
        "vision_encoder.transformer.layers.11.0.fn.to_out.0.weight": (768, 512),
        "vision_encoder.transformer.layers.11.1.fn.net.0.weight": (2048, 768),
        "vision_encoder.transformer.layers.11.1.fn.net.3.weight": (768, 2048),
        "perceiver.latents": (32, 768),
        "perceiver.layers.5.0.norm_media.weight": (768,),
        "perceiver.layers.5.0.to_q.weight": (512, 768),
        "perceiver.layers.5.0.to_kv.weight": (1024, 768),
        "perceiver.layers.5.0.to_out.weight": (768, 512),
        "perceiver.layers.5.1.1.weight": (3072, 768),
        "perceiver.layers.5.1.3.weight": (768, 3072),
        "perceiver.norm.weight": (768,),
    }
    for k, shape in want.items():
        assert tuple(sd[k].shape) == shape, k
    assert "vision_encoder.transformer.layers.12.0.norm.weight" not in sd
    assert "perceiver.layers.6.0.to_q.weight" not in sd
    no_bias = ["0.to_q", "0.to_kv", "0.to_out", "1.1", "1.3"]              # the perceiver's linears have none
    assert not any(f"perceiver.layers.{i}.{m}.bias" in sd for i in range(6) for m in no_bias)
    assert "vision_encoder.transformer.layers.0.0.fn.to_qkv.bias" not in sd


def test_patches_follow_radfms_rearrange_order():
    vit = ViT3d(**TINY_VIT)
    x = torch.randn(1, 3, 64, 64, 8)
    tokens = vit.patchify(x)                      # 'b c (h p1) (w p2) (f pf) -> b (h w f) (p1 p2 pf c)'
    assert tokens.shape == (1, 4 * 4 * 2, 16 * 16 * 4 * 3)
    h, w, f = 2, 3, 1
    block = x[0, :, h * 16:(h + 1) * 16, w * 16:(w + 1) * 16, f * 4:(f + 1) * 4]      # [c, p1, p2, pf]
    torch.testing.assert_close(tokens[0, (h * 4 + w) * 2 + f], block.permute(1, 2, 3, 0).reshape(-1))


def test_position_index_and_attention_match_radfms_formulas():
    vit = ViT3d(**TINY_VIT)                      # trained grid 4 x 4 x 8
    pos = vit.pos_embedding(2, 4, 4, "cpu")      # a coarser grid takes entries (i + 1) * (grid // n) - 1
    rows, deps = vit.pos_embedding.row_embed.weight, vit.pos_embedding.dep_embed.weight
    torch.testing.assert_close(pos[0, :8], rows[1])                    # h=0 -> row 1
    torch.testing.assert_close(pos[2 * 4 * 4 - 1, 16:], deps[7])       # last token, depth 3 -> 7
    attn = SelfAttention(24, 2, 8)
    x = torch.randn(2, 5, 24)
    q, k, v = attn.to_qkv(x).chunk(3, dim=-1)
    split = lambda t: t.view(2, 5, 2, 8).transpose(1, 2)               # noqa: E731  'b n (h d) -> b h n d'
    w = (split(q) @ split(k).transpose(-1, -2) * 8 ** -0.5).softmax(-1)
    want = attn.to_out((w @ split(v)).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(attn(x), want)


def test_preprocess_is_minmax_nearest_with_radfms_depths():
    assert [target_depth(n) for n in (1, 4, 6, 7, 30, 64, 300)] == [4, 4, 4, 8, 28, 64, 64]
    vol = np.linspace(-1000, 3000, 10 * 12 * 30, dtype=np.float32).reshape(10, 12, 30)
    vol[0, 0, 0] = 5000.0                                               # the max, kept by nearest resizing
    x = radfm_preprocess(vol, size=32, max_depth=64)
    assert x.shape == (3, 32, 32, 28) and x.min() == 0 and x[0, 0, 0, 0] == 1
    scaled = (vol - vol.min()) / (vol.max() - vol.min())                # float32, as the encoder computes
    assert np.isin(x[0].numpy(), scaled).all()                          # nearest: no new values
    assert torch.equal(x[0], x[2])
    with pytest.raises(ValueError, match="3-D volume"):
        radfm_preprocess(np.zeros((4, 4), np.float32))


def _radfm_checkpoint(tmp_path):
    torch.manual_seed(0)
    ref = RadFMVision(TINY_VIT, TINY_PERCEIVER).eval()
    ckpt = {f"embedding_layer.{k}": v for k, v in ref.state_dict().items()}
    ckpt |= {"embedding_layer.weight": torch.randn(10, 6), "embedding_layer.fc.weight": torch.randn(6, 24),
             "embedding_layer.bert_model.embeddings.word_embeddings.weight": torch.randn(5, 4),
             "lang_model.model.layers.0.mlp.up_proj.weight": torch.randn(6, 6)}
    path = tmp_path / "pytorch_model.bin"
    torch.save(ckpt, path)
    return path, ref


def test_radfm_loads_strictly_through_the_registry(tmp_path, data_root):
    path, ref = _radfm_checkpoint(tmp_path)
    assert set(load_state(path)) == set(ref.state_dict())            # the LM's tensors are left behind
    enc = build_encoder("radfm", EncoderOptions(source=str(path), params=TINY)).load()
    assert enc.card.role == "teacher" and enc.input_view() == "volume"
    vol = read_volume_ras(data_root / "ct" / "example_ct_sm.nii.gz")
    v = enc.encode([vol, {**vol, "hu": vol["hu"][::-1].copy()}])
    assert v.shape == (2, 24) and np.isfinite(v).all() and not np.allclose(v[0], v[1]) and enc.dim == 24
    with torch.no_grad():
        want = ref(radfm_preprocess(vol["hu"], 64, 16)[None])
    np.testing.assert_allclose(v[0], want[0].numpy(), rtol=1e-5, atol=1e-5)
    tokens = build_encoder("radfm", EncoderOptions(source=str(path), pooling="tokens", params=TINY)).encode([vol])
    assert tokens.shape == (1, 24) and not np.allclose(tokens[0], v[0])
    with pytest.raises(ValueError, match="item 0"):
        enc.encode([np.zeros((4, 4, 4))])


def test_radfm_refuses_a_checkpoint_without_its_tower_or_of_another_size(tmp_path):
    torch.save({"lang_model.x": torch.zeros(2)}, tmp_path / "other.bin")
    with pytest.raises(KeyError, match="no RadFM vision tower"):
        build_encoder("radfm", EncoderOptions(source=str(tmp_path / "other.bin"), params=TINY)).load()
    path, _ = _radfm_checkpoint(tmp_path)
    wider = {**TINY, "vit": {**TINY_VIT, "dim": 30}}
    with pytest.raises(RuntimeError, match="size mismatch"):
        build_encoder("radfm", EncoderOptions(source=str(path), params=wider)).load()
