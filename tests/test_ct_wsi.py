"""CT (2.5D) and whole-slide images (tiling) on the real files in ../shared/data, plus synthetic edge cases."""
import numpy as np
import pytest

from plugins.readers.ct import crop_to_mask, ct_slices_25d, read_volume, slice_indices, to_dhw
from plugins.readers.wsi import open_slide, plan_grid, read_tiles, slide_tiles
from plugins.registry import build_encoder


def test_slice_index_formula():
    assert slice_indices(30, 48).tolist() == [int(np.floor(29 / 47 * j)) for j in range(48)]
    idx = slice_indices(300, 48)
    assert idx[0] == 0 and idx[-1] == 299 and len(idx) == 48
    assert (np.diff(slice_indices(30, 48)) >= 0).all() and len(set(slice_indices(30, 48))) == 30   # repeats when D < 48


def test_hu_clipping_rescale_and_resize():
    vol = np.full((5, 10, 12), -3000.0, np.float32)
    vol[:, :5] = 3000.0
    vol[:, 5:, :6] = 0.0
    s = ct_slices_25d(vol, slices=4, size=32)
    assert s.shape == (4, 3, 32, 32) and s.dtype == np.float32
    assert s.min() == 0.0 and s.max() == 1.0
    assert np.isclose(s[0, 0, 28, 4], 0.5, atol=0.02)                       # 0 HU -> 0.5
    assert (s[:, 0] == s[:, 1]).all() and (s[:, 1] == s[:, 2]).all()


def test_real_ct_axial_axis_from_the_affine(data_root):
    vol = read_volume(data_root / "ct" / "example_ct_sm.nii.gz")
    assert vol.shape == (30, 122, 101)                                        # 122x101x30 RAS -> D first
    assert -1100 <= vol.min() < -900 and vol.max() > 500                      # Hounsfield units


def test_dhw_and_hwd_inputs_give_the_same_embedding(data_root, tmp_path):
    vol = read_volume(data_root / "ct" / "example_ct_sm.nii.gz")[:, :100, :100]
    np.save(tmp_path / "dhw.npy", vol)
    np.savez(tmp_path / "hwd.npz", np.moveaxis(vol, 0, -1))
    a = read_volume(tmp_path / "dhw.npy", layout="DHW")
    b = read_volume(tmp_path / "hwd.npz", layout="HWD")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(to_dhw(np.moveaxis(vol, 0, -1), "auto"), vol)   # 100x100x30 -> auto HWD
    enc = build_encoder("efficientnet_lite0").load()
    ea, eb = enc.encode([ct_slices_25d(a)]), enc.encode([ct_slices_25d(b)])
    np.testing.assert_allclose(ea, eb, rtol=1e-6)


@pytest.mark.slow
def test_real_ct_to_a_2_5d_embedding_with_the_offline_model(data_root):
    enc = build_encoder("efficientnet_lite0").load()
    vol = read_volume(data_root / "ct" / "example_ct_sm.nii.gz")
    seg = read_volume(data_root / "ct" / "example_seg.nii.gz")
    whole = enc.encode([ct_slices_25d(vol)])
    kidneys = enc.encode([ct_slices_25d(crop_to_mask(vol, seg, [2, 3]))])
    assert whole.shape == (1, 1280) and np.isfinite(whole).all()
    assert not np.allclose(whole, kidneys)
    with pytest.raises(ValueError, match="none of the labels"):
        crop_to_mask(vol, seg, [100_000])


@pytest.mark.slow
def test_real_slide_to_tissue_tiles_to_an_embedding(data_root):
    path = data_root / "wsi" / "CMU-1-Small-Region.svs"
    slide = open_slide(path)
    grid = plan_grid(slide, mpp=0.5, tile=224)
    assert grid.mpp_source == "metadata" and abs(grid.mpp0 - 0.499) < 1e-3 and grid.level == 0
    assert 10 < len(grid.coords) < 150                                        # tissue only, not the whole 10x13 grid
    tiles = slide_tiles(path)
    assert tiles.shape[1:] == (3, 224, 224) and tiles.dtype == np.uint8 and tiles.max() > 100
    v8 = build_encoder("efficientnet_lite0").load().encode([tiles[:4]])
    np.testing.assert_allclose(v8, build_encoder("efficientnet_lite0").load().encode([tiles[:4] / 255.0]), rtol=1e-5,
                               atol=1e-6)                            # uint8 tiles == the same tiles in [0, 1]
    enc = build_encoder("efficientnet_lite0").load()
    v = enc.encode([tiles])
    assert v.shape == (1, 1280) and np.isfinite(v).all()


def _pyramid_tiff(path, mpp=0.25):
    tifffile = pytest.importorskip("tifffile")
    rng = np.random.default_rng(0)
    base = np.full((2048, 2048, 3), 245, np.uint8)                           # white background
    base[512:1536, 256:1280] = rng.integers(60, 200, (1024, 1024, 3), dtype=np.uint8) * np.array([1, 0.4, 1]).astype(np.uint8)
    res = 1e4 / mpp                                                           # pixels per cm
    with tifffile.TiffWriter(path) as tw:
        tw.write(base, tile=(256, 256), photometric="rgb", resolution=(res, res), resolutionunit="CENTIMETER")
        for f in (2, 4):                                                      # reduced-resolution pages
            tw.write(base[::f, ::f], tile=(256, 256), photometric="rgb", subfiletype=1, resolution=(res / f, res / f),
                     resolutionunit="CENTIMETER")
    return base


def test_level_choice_and_tile_coordinates_on_a_pyramidal_tiff(tmp_path):
    path = tmp_path / "pyr.tiff"
    _pyramid_tiff(path, mpp=0.25)
    slide = open_slide(path)
    assert slide.level_count == 3
    grid = plan_grid(slide, mpp=1.0, tile=128, tissue_threshold=0.5)         # 4x coarser than level 0
    assert abs(grid.mpp0 - 0.25) < 1e-6                                      # from the TIFF resolution tags
    assert grid.level == 2 and grid.level_tile == 128 and grid.step0 == 512
    # tissue spans x 256-1280, y 512-1536; 512-px cells at least half tissue: x in {0, 512, 1024}, y in {512, 1024}
    assert sorted(map(tuple, grid.coords.tolist())) == [(x, y) for x in (0, 512, 1024) for y in (512, 1024)]
    grid_fine = plan_grid(slide, mpp=0.5, tile=128)                          # 2x -> level 1
    assert grid_fine.level == 1 and grid_fine.level_tile == 128
    tiles = read_tiles(slide, grid, size=128, threads=2)
    assert tiles.shape == (len(grid.coords), 3, 128, 128)


def test_slide_without_tissue_is_an_error_with_the_file_name(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / "blank.tiff"
    tifffile.imwrite(path, np.full((1024, 1024, 3), 250, np.uint8), tile=(256, 256), photometric="rgb",
                     resolution=(4e4, 4e4), resolutionunit="CENTIMETER")
    with pytest.raises(ValueError, match="blank.tiff: no tissue"):
        slide_tiles(path)
    with pytest.raises(ValueError, match="unreadable slide"):
        (tmp_path / "bad.svs").write_bytes(b"not a slide")
        slide_tiles(tmp_path / "bad.svs")


def _mmist_wsi_spec(spec_writer, data_root, tmp_path, **pre):
    import pandas as pd
    cases = pd.read_csv(data_root / "mmist_ccrcc" / "clinical+genomic_split.csv")["case_id"].tolist()[:2]
    wsi_dir = tmp_path / "wsi"
    wsi_dir.mkdir(exist_ok=True)
    for c in cases:
        if not (wsi_dir / f"{c}.svs").exists():
            (wsi_dir / f"{c}.svs").symlink_to(data_root / "wsi" / "CMU-1-Small-Region.svs")

    def edit(raw):
        raw["defaults"]["chunk_rows"] = 8
        raw["profiles"]["offline"]["kinds"]["wsi"] = {"experts": {
            "effnet": {"model": "efficientnet_lite0", "role": "general"},
            "effnet_b": {"model": "efficientnet_lite0", "role": "biomedical", "params": {"arch_kwargs": {"drop_rate": 0.1}}}}}
        raw["datasets"]["mmist"]["options"]["wsi_dir"] = str(wsi_dir)
        raw["datasets"]["mmist"]["modalities"]["wsi"]["preprocess"].update(
            {"max_tiles": 20, "tile_batch": 8, "threads": 2, **pre})
    return spec_writer(edit), cases


@pytest.mark.slow
def test_slides_are_read_once_per_tile_batch_for_all_experts_and_resume_inside_a_slide(
        spec_writer, data_root, tmp_path, monkeypatch):
    from extract.pipeline import extract_dataset
    from plugins.readers.wsi import TiledSlide
    from extract.run.context import clear_caches
    from stores.store import OK, Store
    from stores.tiles import open_slide_tiles
    from stores.verify import verify
    spec, cases = _mmist_wsi_spec(spec_writer, data_root, tmp_path)
    reads = []
    real_read = TiledSlide.read
    monkeypatch.setattr(TiledSlide, "read", lambda self, b: reads.append(b) or real_read(self, b))
    kw = dict(config=str(spec), data_root=str(data_root), store=str(tmp_path / "m.zarr"), modalities=["wsi"],
              experts=["effnet", "effnet_b"], limit=8, rag=False, progress=False)
    s = extract_dataset("mmist", **kw)
    st = Store(tmp_path / "m.zarr")
    rows = [st.ids().index(c) for c in cases]
    assert s.done == {"wsi/effnet": 2, "wsi/effnet_b": 2}
    assert sorted(reads) == [0, 0, 1, 1, 2, 2]             # 20 tiles / 8 = 3 batches, per slide, shared by 2 experts
    g = st.expert_group("wsi", "effnet")
    t = open_slide_tiles(st.root, "wsi", "effnet", g.attrs["config_hash"], rows[0])
    assert t.n_tiles == 20 and t.done().all() and t.group["coords"].shape == (20, 2)
    assert t.group.attrs["grid"]["mpp_source"] == "metadata" and t.group.attrs["sample_id"] == cases[0]
    np.testing.assert_allclose(g.group["vectors"][rows[0]], t.group["embeddings"][:].mean(0), rtol=1e-5)
    direct = build_encoder("efficientnet_lite0").load().encode(
        [slide_tiles(data_root / "wsi" / "CMU-1-Small-Region.svs", max_tiles=20)])[0]
    np.testing.assert_allclose(g.group["vectors"][rows[0]], direct, rtol=1e-4, atol=1e-5)
    assert (g.group["valid"][:][rows] == OK).all() and verify(st) == []
    bad = Store(tmp_path / "m.zarr", mode="a")                   # verify catches a tile batch marked done but empty
    tb = open_slide_tiles(bad.root, "wsi", "effnet_b", st.expert_group("wsi", "effnet_b").attrs["config_hash"], rows[1])
    saved = tb.group["embeddings"][0:8]
    tb.group["embeddings"][0:8] = np.nan
    assert any("tile batch 0 has a marker" in p for p in verify(bad))
    tb.group["embeddings"][0:8] = saved

    # a run killed inside a slide: its row is not committed and one tile batch lacks its marker
    unit = rows[0] // 8
    st = Store(tmp_path / "m.zarr", mode="a")
    g = st.expert_group("wsi", "effnet")
    t = open_slide_tiles(st.root, "wsi", "effnet", g.attrs["config_hash"], rows[0])
    g.group["done"][unit] = 0
    t.group["done"][1] = 0
    st.expert_group("wsi", "effnet_b").group["done"][unit] = 0
    reads.clear()
    clear_caches()
    s2 = extract_dataset("mmist", **kw)
    assert s2.done == {"wsi/effnet": 2, "wsi/effnet_b": 2} and sorted(reads) == [1]   # only the missing batch
    np.testing.assert_allclose(Store(tmp_path / "m.zarr").expert_group("wsi", "effnet").group["vectors"][rows[0]],
                               direct, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_tile_embeddings_can_be_dropped_after_the_slide_row_is_committed(spec_writer, data_root, tmp_path):
    from extract.pipeline import extract_dataset
    from stores.store import Store
    spec, _ = _mmist_wsi_spec(spec_writer, data_root, tmp_path, store_tiles=False, max_tiles=6)
    extract_dataset("mmist", config=str(spec), data_root=str(data_root), store=str(tmp_path / "m.zarr"),
                    modalities=["wsi"], experts=["effnet"], limit=8, rag=False, progress=False)
    st = Store(tmp_path / "m.zarr")
    assert st.expert_group("wsi", "effnet").group["valid"][:].tolist().count(1) == 2
    g = st.expert_group("wsi", "effnet")
    assert list(st.root[f"tiles/wsi/effnet/{g.attrs['config_hash'][:12]}"].keys()) == []   # per-slide groups gone
