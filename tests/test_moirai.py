"""MOIRAI through its real loading path (uni2ts ``MoiraiModule.from_pretrained`` on a saved tiny random module).

uni2ts pins old numpy/pandas, so it is the optional extra ``moirai`` and usually absent from the test environment:
the check then skips with that reason (nothing is installed during a test run). Where the extra is installed it
runs in a subprocess, so the side environment's modules never mix with the suite's.
"""
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HAS_UNI2TS = importlib.util.find_spec("uni2ts") is not None
# or a side folder holding uni2ts and its libraries (`make test` installs one: pip --target, never the environment)
SIDE = os.environ.get("MEDMIX_MOIRAI_SITE") or str(REPO / "cache" / "test-side" / "uni2ts-1.1.1")
HAS_SIDE = (Path(SIDE) / "uni2ts").is_dir()


SCRIPT = textwrap.dedent("""
    import sys, numpy as np, torch
    from uni2ts.distribution import MixtureOutput, StudentTOutput, NormalFixedScaleOutput, LogNormalOutput
    from uni2ts.model.moirai import MoiraiModule
    from plugins.registry import EncoderOptions, build_encoder
    torch.manual_seed(0)
    MoiraiModule(distr_output=MixtureOutput([StudentTOutput(), NormalFixedScaleOutput(), LogNormalOutput()]),
                 d_model=64, num_layers=2, patch_sizes=(8, 16), max_seq_len=512, attn_dropout_p=0.0,
                 dropout_p=0.0).save_pretrained(sys.argv[1])
    enc = build_encoder("moirai_small", EncoderOptions(source=sys.argv[1], batch_size=2)).load()
    assert enc.dim == 64 and enc.provenance()["model"] == "moirai_small"
    rng = np.random.default_rng(0)
    stays = [rng.normal(size=(48, 5)).astype(np.float32) for _ in range(3)]
    stays[1][rng.random((48, 5)) < 0.7] = np.nan            # sparse, like real EHR
    v = enc.encode(stays)
    assert v.shape == (3, 64) and np.isfinite(v).all()
    # batching is exact: padding tokens never reach a sample's tokens
    np.testing.assert_allclose(enc.encode(stays[1:2]), v[1:2], atol=1e-5)
    # an empty extra variable changes nothing; a different series does
    wider = np.concatenate([stays[0], np.full((48, 1), np.nan, np.float32)], 1)
    np.testing.assert_allclose(enc.encode([wider]), v[:1], atol=1e-5)
    assert not np.allclose(v[0], v[2], atol=1e-3)
    # 30 h is left-padded to a whole number of patches, as MoiraiForecast does
    assert np.isfinite(enc.encode([stays[0][:30]])).all()
    try:
        enc.encode([np.full((48, 5), np.nan, np.float32)])
        raise SystemExit("an all-empty stay must be an error")
    except ValueError as e:
        assert "every variable is empty" in str(e)
    try:
        build_encoder("moirai_small", EncoderOptions(source=sys.argv[1], params={"patch_size": 32})).load()
        raise SystemExit("a patch size the model lacks must be an error")
    except ValueError as e:
        assert "patch_size 32" in str(e)
    # the real sizes (the public config.json of Salesforce/moirai-1.0-R-small/-base: d_model, num_layers, patch
    # sizes, a four-component mixture head): the registry's dims and parameter counts are theirs
    from uni2ts.distribution import NegativeBinomialOutput
    from plugins.registry import get
    mixture = MixtureOutput([StudentTOutput(), NormalFixedScaleOutput(), NegativeBinomialOutput(), LogNormalOutput()])
    for key, d, layers in (("moirai_small", 384, 6), ("moirai_base", 768, 12)):
        real = MoiraiModule(distr_output=mixture, d_model=d, num_layers=layers, patch_sizes=(8, 16, 32, 64, 128),
                            max_seq_len=512, attn_dropout_p=0.0, dropout_p=0.0)
        card = get(key).card
        assert card.dim == d and abs(sum(p.numel() for p in real.parameters()) / 1e6 - card.params_m) < 0.1, key
    real.save_pretrained(sys.argv[1] + "-base")
    base = build_encoder("moirai_base", EncoderOptions(source=sys.argv[1] + "-base", batch_size=2)).load()
    assert base.encode(stays[:2]).shape == (2, 768)
    print("MOIRAI-OK")
""")


@pytest.mark.slow
@pytest.mark.skipif(not (HAS_UNI2TS or HAS_SIDE),
                    reason="uni2ts is not installed (the optional extra: pip install 'medmix[moirai]'; `make test` "
                           "puts it in a side folder, MEDMIX_MOIRAI_SITE)")
def test_moirai_loads_through_uni2ts_and_embeds_any_variate_stays(tmp_path):
    side = [] if HAS_UNI2TS else [SIDE]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *side, os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "moirai")], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=600)
    assert r.returncode == 0 and "MOIRAI-OK" in r.stdout, r.stderr[-3000:]


def test_moirai_without_uni2ts_says_how_to_install(tmp_path):
    if HAS_UNI2TS:
        pytest.skip("uni2ts is installed in this environment")
    from plugins.registry import EncoderOptions, build_encoder
    tmp_path.joinpath("config.json").write_text("{}")
    with pytest.raises(ImportError, match=r"medmix\[moirai\]"):
        build_encoder("moirai_small", EncoderOptions(source=str(tmp_path))).load()
