"""The paper's models pinned to their documented behaviour, with tiny random models built from their REAL
configurations (every field of the public config.json except the sizes), loaded through the encoders' real paths and
checked against the library's own reference computation: pooling (CLS / mean / last token), masked positions
excluded, special tokens and casing, dims equal to the real hidden sizes (full-size configs built on the meta
device), revisions reaching timm and open_clip, and the report generators' failure modes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from plugins.registry import EncoderOptions, build_encoder, get

from paper_configs import (BIOMEDCLIP, CHRONOS_T5_LARGE, CHRONOS_T5_SMALL, GATORTRON_BASE, MEDCPT, QWEN2_0_5B,
                           QWEN2_7B)

SIZES = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "d_model": 32, "d_ff": 64, "d_kv": 8, "num_layers": 1, "num_decoder_layers": 1,
         "num_heads": 4, "max_window_layers": 2}
SHA_A, SHA_B = "a" * 40, "b" * 40
CASED = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Heart", "heart", "Lung", "lung", "Clear", "clear", "normal",
         "the", "is", "and", "Pneumonia", "pneumonia", "title", "of", "."]


def tiny(cfg: dict, vocab: int | None = None) -> dict:
    """The real config with only its sizes shrunk (layers, widths, heads, vocabulary)."""
    out = {k: (SIZES[k] if k in SIZES else v) for k, v in cfg.items()}
    if vocab:
        out["vocab_size"] = vocab
    return out


def save_hf(folder: Path, cfg: dict, vocab: list[str] | None = None, tokenizer_config: dict | None = None) -> Path:
    """A model saved from a config dict, as its hub repo holds it (config.json, weights, vocab.txt [+ tokenizer])."""
    from transformers import AutoConfig, AutoModel
    torch.manual_seed(0)
    config = AutoConfig.for_model(**{k: v for k, v in cfg.items() if k != "architectures"})
    AutoModel.from_config(config).save_pretrained(folder)
    if vocab:
        (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    if tokenizer_config:
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return folder


def meta_dim(cfg: dict) -> int:
    """The output size of the model the full-size config builds (on the meta device: nothing allocated)."""
    from transformers import AutoConfig, AutoModel
    config = AutoConfig.for_model(**{k: v for k, v in cfg.items() if k not in ("architectures", "chronos_config")})
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    return int(model.get_input_embeddings().weight.shape[1])


@pytest.mark.parametrize("key,cfg", [("qwen2_0_5b", QWEN2_0_5B), ("qwen2_7b", QWEN2_7B),
                                     ("gatortron_base", GATORTRON_BASE), ("medcpt_query", MEDCPT),
                                     ("medcpt_article", MEDCPT), ("chronos_small", CHRONOS_T5_SMALL),
                                     ("chronos_large", CHRONOS_T5_LARGE)])
def test_card_dims_are_the_real_hidden_sizes(key, cfg):
    assert get(key).card.dim == meta_dim(cfg)


@pytest.mark.parametrize("key,arch", [("dinov2_b", "vit_base_patch14_dinov2"),
                                      ("dinov3_vitl", "vit_large_patch16_dinov3")])
def test_card_dims_of_the_timm_vits(key, arch):
    import timm
    with torch.device("meta"):
        model = timm.create_model(arch, num_classes=0)
    assert get(key).card.dim == model.num_features
    assert get(key).card.params_m == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6, abs=0.1)


def test_qwen2_mean_and_last_token_pooling_match_the_unpadded_reference(tmp_path):
    from tiny_models import tiny_qwen2
    from transformers import AutoModel, AutoTokenizer
    src = tiny_qwen2(tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(src)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")            # Qwen2's bos = eos = <|endoftext|>, in this vocabulary
    d = save_hf(tmp_path / "qwen", {**tiny(QWEN2_0_5B, vocab=len(tok) + 4), "bos_token_id": eos, "eos_token_id": eos})
    for f in src.glob("tokenizer*"):
        shutil.copy(f, d)
    texts = ["the heart is normal", "lungs clear and no acute pneumonia effusion or edema with fever"]
    ref_model = AutoModel.from_pretrained(d, dtype=torch.float32).eval()
    with torch.no_grad():
        alone = [ref_model(**tok(t, return_tensors="pt")).last_hidden_state[0] for t in texts]   # no padding at all
    for pooling, ref in (("mean", [h.mean(0) for h in alone]), ("last", [h[-1] for h in alone])):
        enc = build_encoder("qwen2_0_5b", EncoderOptions(source=str(d), pooling=pooling)).load()
        got = enc.encode(texts)                          # one right-padded batch
        np.testing.assert_allclose(got, torch.stack(ref).numpy(), rtol=1e-4, atol=1e-5)
    assert enc.model.dtype == torch.float32              # fp32 on CPU


def test_text_weights_load_in_the_precision_they_run_in(tmp_path, tiny_qwen_dir):
    enc = build_encoder("qwen2_0_5b", EncoderOptions(source=str(tiny_qwen_dir)))
    enc.gpu_precision = lambda: torch.bfloat16           # what cuda would choose
    enc.load()
    assert enc.model.dtype == torch.bfloat16 and enc.encode(["the heart"]).dtype == np.float32


def test_gatortron_keeps_its_cased_vocabulary_and_pools_cls(tmp_path):
    from transformers import BertTokenizer, MegatronBertModel
    d = save_hf(tmp_path / "gatortron", tiny(GATORTRON_BASE, vocab=len(CASED)), vocab=CASED)   # no tokenizer config
    enc = build_encoder("gatortron_base", EncoderOptions(source=str(d))).load()
    assert enc.preprocess.tokenize("Heart Pneumonia") == ["Heart", "Pneumonia"]
    text = "Heart is normal and Lung is clear"
    tok = BertTokenizer(str(d / "vocab.txt"), do_lower_case=False)
    with torch.no_grad():
        ref_model = MegatronBertModel.from_pretrained(d, dtype=torch.float32).eval()
        ref = ref_model(**tok(text, return_tensors="pt")).last_hidden_state[0, 0]
    np.testing.assert_allclose(enc.encode([text])[0], ref.numpy(), rtol=1e-4, atol=1e-5)
    assert enc.identity()["encoder_version"] == "3"


def test_medcpt_encodes_as_its_card_does(tmp_path):
    """The card's code: articles = [[title, abstract]], tokenizer(articles, truncation, padding, max_length=512),
    [CLS]; queries with max_length=64."""
    from transformers import AutoModel, AutoTokenizer
    vocab = [v.lower() for v in CASED[5:]]
    d = save_hf(tmp_path / "medcpt", tiny(MEDCPT, vocab=len(CASED) + 8), vocab=CASED[:5] + sorted(set(vocab)),
                tokenizer_config={"do_lower_case": True, "model_max_length": 512, "tokenizer_class": "BertTokenizer"})
    tok, model = AutoTokenizer.from_pretrained(d), AutoModel.from_pretrained(d, dtype=torch.float32).eval()
    articles = [["Pneumonia", "the lung is clear and the heart is normal ."], ["Heart", "normal heart ."]]
    with torch.no_grad():
        ref = model(**tok(articles, truncation=True, padding=True, return_tensors="pt", max_length=512))
    art = build_encoder("medcpt_article", EncoderOptions(source=str(d))).load()
    got = art.encode([art.article_input(t, a) for t, a in articles])
    np.testing.assert_allclose(got, ref.last_hidden_state[:, 0].numpy(), rtol=1e-4, atol=1e-5)
    joined = art.encode(["Pneumonia. the lung is clear and the heart is normal ."])
    assert not np.allclose(got[0], joined[0], atol=1e-4)           # a pair is not "title. text"
    q = build_encoder("medcpt_query", EncoderOptions(source=str(d))).load()
    assert q.article_input("a", "b") == "a. b" and q.window() == 64 - 2
    with torch.no_grad():
        qref = model(**tok(["pneumonia of the lung"], truncation=True, padding=True, return_tensors="pt",
                           max_length=64)).last_hidden_state[:, 0]
    np.testing.assert_allclose(q.encode(["pneumonia of the lung"]), qref.numpy(), rtol=1e-4, atol=1e-5)


def test_chronos_mean_excludes_pad_nan_and_eos_against_chronos_embed(tmp_path):
    from chronos import BaseChronosPipeline
    from transformers import T5Config, T5ForConditionalGeneration
    cfg = tiny(CHRONOS_T5_SMALL, vocab=64)
    cfg["chronos_config"] = {**cfg["chronos_config"], "n_tokens": 64}
    torch.manual_seed(0)
    config = T5Config(**{k: v for k, v in cfg.items() if k not in ("architectures", "chronos_config")})
    config.chronos_config, config.architectures = cfg["chronos_config"], cfg["architectures"]
    T5ForConditionalGeneration(config).save_pretrained(tmp_path / "chronos")
    enc = build_encoder("chronos_small", EncoderOptions(source=str(tmp_path / "chronos"))).load()
    rng = np.random.default_rng(0)
    dense = rng.normal(size=48).astype(np.float32)
    sparse = np.full(48, np.nan, np.float32)
    sparse[[3, 10, 30, 40]] = rng.normal(size=4)                   # 4 observed hours, 44 NaN
    ref_pipe = BaseChronosPipeline.from_pretrained(str(tmp_path / "chronos"), device_map="cpu", dtype=torch.float32)
    emb, _ = ref_pipe.embed([torch.tensor(dense), torch.tensor(sparse[20:])])  # the library: left pad + EOS
    observed = torch.stack([torch.ones(48, dtype=torch.bool),
                            torch.cat([torch.zeros(20, dtype=torch.bool), torch.isfinite(torch.tensor(sparse[20:]))])])
    ref = torch.stack([emb[i, :-1][observed[i]].mean(0) for i in range(2)])   # observed positions, EOS excluded
    got = enc._series_batch([dense, sparse[20:]])
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(got[1], emb[1].mean(0).numpy(), atol=1e-3)       # what a mean over every position gives
    alone = enc._series_batch([sparse[20:]])                      # padding never changes a series' embedding
    np.testing.assert_allclose(alone[0], got[1], rtol=1e-4, atol=1e-5)
    eos = build_encoder("chronos_small", EncoderOptions(source=str(tmp_path / "chronos"), pooling="eos")).load()
    np.testing.assert_allclose(eos._series_batch([dense]), emb[:1, -1].numpy(), rtol=1e-4, atol=1e-5)


def _timm_hub_repo(hub: Path, repo: str, arch: str, kw: dict, sha: str, seed: int) -> None:
    """A timm hub repo (config.json + model.safetensors) for one commit."""
    import timm
    from safetensors.torch import save_file
    torch.manual_seed(seed)
    model = timm.create_model(arch, **kw)
    snap = hub / ("models--" + repo.replace("/", "--")) / "snapshots" / sha
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snap / "model.safetensors"))
    cfg = {"architecture": arch, "num_classes": 0, "num_features": kw["embed_dim"],
           "pretrained_cfg": {**model.pretrained_cfg, "hf_hub_id": repo}}
    (snap / "config.json").write_text(json.dumps(cfg, default=str))
    (snap.parent.parent / "refs").mkdir(exist_ok=True)
    (snap.parent.parent / "refs" / "main").write_text(sha)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """A Hugging Face cache in tmp_path, offline (huggingface_hub reads these at call time)."""
    from huggingface_hub import constants
    hub = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub


def test_dinov3_pools_the_normed_cls_token_at_the_configured_revision(offline_hub):
    """DINOv3's own embedding is x_norm_clstoken; timm's Eva would default to the patch-token mean. The revision
    picks the commit: two commits of one repo, different weights."""
    from timm.data import IMAGENET_DEFAULT_MEAN
    kw = dict(embed_dim=32, depth=2, num_heads=2, img_size=224)
    for sha, seed in ((SHA_A, 0), (SHA_B, 1)):
        _timm_hub_repo(offline_hub, "tinyorg/dinov3", "vit_large_patch16_dinov3", kw, sha, seed)
    imgs = np.random.default_rng(0).random((2, 3, 224, 224)).astype(np.float32)
    got = {}
    for sha in (SHA_A, SHA_B):
        enc = build_encoder("dinov3_vitl", EncoderOptions(source="tinyorg/dinov3", revision=sha,
                                                          params={"arch_kwargs": {k: v for k, v in kw.items()
                                                                                  if k != "img_size"}})).load()
        with torch.no_grad():
            tokens = enc.model.forward_features(enc._prepare(torch.from_numpy(imgs)))
        assert enc.model.num_prefix_tokens == 5                      # [CLS] + 4 registers, as DINOv3
        got[sha] = enc.encode(list(imgs[:, None]))
        np.testing.assert_allclose(got[sha], tokens[:, 0].numpy(), rtol=1e-4, atol=1e-5)
        assert not np.allclose(got[sha], tokens[:, 5:].mean(1).numpy(), atol=1e-3)
        assert tuple(enc.mean) == tuple(IMAGENET_DEFAULT_MEAN) and enc.input_size == 224
    assert not np.allclose(got[SHA_A], got[SHA_B])
    assert build_encoder("dinov3_vitl").identity()["encoder_version"] == "3"


def test_dinov2_pools_cls_like_timms_default(tmp_path):
    from tiny_models import tiny_timm_vit
    path, params = tiny_timm_vit(tmp_path / "dinov2")
    enc = build_encoder("dinov2_b", EncoderOptions(source=str(path), params=params)).load()
    x = np.random.default_rng(1).random((1, 3, 56, 56)).astype(np.float32)
    with torch.no_grad():
        tokens = enc.model.forward_features(enc._prepare(torch.from_numpy(x)))
    np.testing.assert_allclose(enc.encode([x]), tokens[:, 0].numpy(), rtol=1e-4, atol=1e-5)


def test_biomedclip_at_the_configured_revision_with_its_preprocessing(offline_hub, tmp_path):
    """open_clip's hf-hub: takes no revision: the encoder opens the cached snapshot of that commit."""
    import open_clip
    from tiny_models import tiny_bert
    text = tiny_bert(tmp_path / "text", "bert")
    cfg = json.loads(json.dumps(BIOMEDCLIP))
    cfg["model_cfg"]["vision_cfg"]["timm_model_name"] = "vit_tiny_patch16_224"     # sizes only
    cfg["model_cfg"]["text_cfg"].update(hf_model_name=str(text), hf_tokenizer_name=str(text))
    for sha, seed in ((SHA_A, 0), (SHA_B, 1)):
        snap = offline_hub / "models--tinyorg--biomedclip" / "snapshots" / sha
        snap.mkdir(parents=True)
        (snap / "open_clip_config.json").write_text(json.dumps(cfg))
        torch.manual_seed(seed)
        model = open_clip.create_model(f"local-dir:{snap}", load_weights=False)
        torch.save(model.state_dict(), snap / "open_clip_pytorch_model.bin")
    img = np.random.default_rng(0).random((1, 3, 224, 224)).astype(np.float32)
    out = {}
    for sha in (SHA_A, SHA_B):
        enc = build_encoder("biomedclip", EncoderOptions(source="tinyorg/biomedclip", revision=sha)).load()
        assert enc.mean == tuple(BIOMEDCLIP["preprocess_cfg"]["mean"]) and enc.input_size == 224
        with torch.no_grad():
            ref = enc.model.encode_image(enc._prepare(torch.from_numpy(img)))
        out[sha] = enc.encode([img])
        np.testing.assert_allclose(out[sha], ref.numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(out[SHA_A], out[SHA_B])
    assert enc.companions(offline_hub / "models--tinyorg--biomedclip" / "snapshots" / SHA_A) == []  # local text dir


def test_radfm_official_repo_is_a_clear_error_not_a_failing_download(offline_hub):
    enc = build_encoder("radfm")
    with pytest.raises(FileNotFoundError, match=r"split zip \(RadFM.z01-RadFM.z04 \+ RadFM.zip\).*zip -s 0"):
        enc.load()
    assert enc.hub_download() == ["RadFM.z*"] and enc.hub_files() == ["unpacked/pytorch_model.bin"]


def test_maira2_is_unsupported_in_process_with_its_supported_path():
    from rag.generators import GeneratorLoadError, build_generator
    with pytest.raises(GeneratorLoadError, match=r"transformers >= 4.52.*model: reports"):
        build_generator("maira2")


def test_imported_reports_are_found_beside_the_images(tmp_path):
    from rag.embed import generated_texts
    from rag.generators import build_generator
    from plugins.datasets.base import Failed
    (tmp_path / "ds" / "img").mkdir(parents=True)
    lines = [{"file": "a.png", "report": "No acute disease."}, {"file": "b.png", "report": "Small effusion."}]
    (tmp_path / "ds" / "maira2_reports.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    g = build_generator("reports", source="maira2_reports.jsonl")
    files = [{"file": str(tmp_path / "ds" / "img" / n)} for n in ("a.png", "b.png", "c.png")]
    out = generated_texts(files, g)
    assert out[:2] == ["No acute disease.", "Small effusion."]
    assert isinstance(out[2], Failed) and "no report for c.png" in out[2].reason


def test_a_generator_that_cannot_load_fails_the_run_once(tmp_path, monkeypatch):
    from rag.embed import generated_texts
    from rag.generators import GeneratorLoadError, ReportGenerator, build_generator
    calls = []

    def broken(self):
        calls.append(1)
        raise OSError("no such model folder")
    monkeypatch.setattr(ReportGenerator, "_load", broken)
    g = build_generator("llava", source=str(tmp_path))
    images = [{"image": np.zeros((1, 3, 8, 8), np.float32)} for _ in range(3)]
    with pytest.raises(GeneratorLoadError, match="could not load: OSError: no such model folder"):
        generated_texts(images, g)
    with pytest.raises(GeneratorLoadError):
        g.generate(images[:1])
    assert len(calls) == 1


def test_paper_profile_generators_as_their_authors_load_them():
    from stores.spec import load_spec
    gens = load_spec().profile("paper").rag.generators
    assert gens["ct"].model == "merlin" and gens["ct"].trust_remote_code is True     # RadLLaMA's tokenizer
    assert gens["cxr"].model == "reports"                                              # MAIRA-2 via its own env


def test_an_open_clip_folder_without_weights_is_an_error_not_a_random_model(tmp_path):
    (tmp_path / "open_clip_config.json").write_text(json.dumps(BIOMEDCLIP))
    with pytest.raises(FileNotFoundError, match="open_clip_\\*model\\*"):
        build_encoder("biomedclip", EncoderOptions(source=str(tmp_path))).load()
