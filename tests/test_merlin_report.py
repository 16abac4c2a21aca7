"""Merlin's CT report generator at tiny size, loaded through the real path: Merlin's checkpoint names, LoRA merged
into the base weights, image tokens from the I3ResNet grid through the adapter, organ-by-organ greedy decoding."""
import numpy as np
import pytest
import torch

from plugins.readers.ct import read_volume_ras
from rag.generators import build_generator
from rag.merlin_report import MerlinReportGenerator, merge_lora, split_checkpoint

PARAMS = {"blocks": [1, 1, 1, 1], "width": 4, "roi": [32, 32, 16], "organ_systems": ["liver", "kidneys"]}


@pytest.fixture(scope="module")
def merlin_tiny(tmp_path_factory):
    from tiny_models import tiny_merlin_report
    return tiny_merlin_report(tmp_path_factory.mktemp("merlin"))


def test_lora_is_merged_as_w_plus_alpha_over_r_ba():
    w, a, b = torch.randn(6, 5), torch.randn(2, 5), torch.randn(6, 2)
    out = merge_lora({"l.q_proj.base_layer.weight": w, "l.q_proj.lora_A.default.weight": a,
                      "l.q_proj.lora_B.default.weight": b, "l.k_proj.weight": w}, alpha=16)
    assert set(out) == {"l.q_proj.weight", "l.k_proj.weight"}
    torch.testing.assert_close(out["l.q_proj.weight"], w + 8 * b @ a)
    torch.testing.assert_close(out["l.k_proj.weight"], w)


def test_checkpoint_split_and_refusal(merlin_tiny):
    path, _, ref = merlin_tiny
    tower, adapter, lm = split_checkpoint(torch.load(path, weights_only=True))
    assert set(tower) == set(ref["tower"].state_dict()) and set(adapter) == {"weight", "bias"}
    assert any(".lora_A." in k for k in lm)
    with pytest.raises(KeyError, match="not a Merlin report-generation checkpoint"):
        split_checkpoint({"encode_image.i3_resnet.conv1.weight": torch.zeros(1)})


def test_merlin_reports_through_the_real_loading_path(merlin_tiny, data_root):
    path, lm_dir, ref = merlin_tiny
    gen = build_generator("merlin", source=str(path.parent), max_new_tokens=5, params={**PARAMS, "lm": str(lm_dir)})
    assert isinstance(gen, MerlinReportGenerator) and gen.view == "volume" and not gen.trust_remote_code
    gen.load()
    for k, (w, a, b) in ref["lora"].items():                             # LoRA merged with alpha 16 / r 8
        torch.testing.assert_close(gen.model.state_dict()[k], w + 2.0 * b @ a)
    vol = read_volume_ras(data_root / "ct" / "example_ct_sm.nii.gz")
    tokens = gen.image_tokens(vol)
    with torch.no_grad():                                                 # the layer4 grid, flattened, adapted
        from plugins.encoders.i3resnet import merlin_preprocess
        fmap = ref["tower"].eval().feature_map(merlin_preprocess(vol["hu"], vol["spacing"], roi=(32, 32, 16))[None])
        want = ref["adapter"](fmap.flatten(2).transpose(1, 2))
    assert tokens.shape == want.shape and tokens.shape[-1] == 32
    torch.testing.assert_close(tokens, want, rtol=1e-4, atol=1e-5)
    a, b = gen.generate([vol]), gen.generate([vol])
    assert a == b and isinstance(a[0], str) and a[0]                      # greedy: reproducible, non-empty
    assert "###" not in a[0]
    assert gen.identity()["organ_systems"] == ["liver", "kidneys"]
    with pytest.raises(ValueError, match="CT volume view"):
        gen.generate([np.zeros((3, 8, 8))])


def test_merlin_generator_feeds_generated_texts_from_lazy_raw_volumes(merlin_tiny, data_root):
    from plugins.datasets.base import Failed, Missing
    from plugins.readers.lazy import LazyView
    from rag.embed import generated_texts
    path, lm_dir, _ = merlin_tiny
    gen = build_generator("merlin", source=str(path), max_new_tokens=4, params={**PARAMS, "lm": str(lm_dir)})
    lazy = LazyView("ct_volume", data_root / "ct" / "example_ct_sm.nii.gz", {})
    out = generated_texts([{"volume": lazy, "image": "unused"}, Missing("no ct"), {"image": np.zeros(3)},
                           {"volume": {"hu": np.zeros((4, 4))}}], gen)
    assert isinstance(out[0], str) and out[0] and out[1].reason == "no ct"
    assert isinstance(out[2], Missing) and "no volume" in out[2].reason
    assert isinstance(out[3], Failed) and "report generation" in out[3].reason
