"""The demo pipeline end to end on a small slice of the REAL data (40 samples per dataset, 1 seed, 3 epochs):
extract (real offline weights) -> rag (real MedlinePlus index) -> train -> report. Proves the wiring, not quality."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stores.store import Store
from stores.verify import verify

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_wiring_on_real_data(tmp_path, data_root):
    env = {**os.environ, "MEDMIX_STORE_ROOT": str(tmp_path / "stores"), "MEDMIX_DATA_ROOT": str(data_root)}
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "train", "demo", "--limit", "40", "--seeds", "1", "--max-epochs", "3",
                           "--out", str(out), "--quiet", "--no-raw-imaging"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "report.md").read_text()
    for ds in ("mmist", "physionet2012", "openi"):
        assert f"## {ds}" in report
        res = json.loads((out / ds / "results.json").read_text())
        # a store with one modality would run no drop protocol (tests/test_train_*); these have several
        curves = sorted(p.name for p in (out / ds).glob("test_multi_auroc*.png"))     # one per task
        assert len(curves) == (len(res["tasks"]) if len(res["layout"]) > 1 else 0), curves
        assert (res["protocols"] == ["none"]) == (len(res["layout"]) == 1)
        store = Store(tmp_path / "stores" / f"{ds}-limit40.zarr")
        assert verify(store) == []
        assert "rag" in store.experts("note" if ds != "physionet2012" else "ehr")
    assert "Wiring run" in report and "Models used" in report and "MedlinePlus" in report
    assert "| medmix |" in report
    for ds in ("mmist", "physionet2012"):       # PhysioNet: ehr + demographics, so it has curves too
        section = report.split(f"## {ds}")[1].split("\n## ")[0]
        assert "test_multi@0.3" in section and "test_drop_one@0.5" in section and "loss to test_multi@0.7" in section
        for t in json.loads((out / ds / "results.json").read_text())["tasks"]:       # never averaged: per task
            assert f"Missing-modality protocols, task {t['name']} (AUROC" in section


@pytest.mark.slow
def test_demo_raw_imaging_section_on_the_real_ct_and_slide(tmp_path, data_root):
    """The demo's raw section alone: real CT volumes (2.5D + Astra 3-D) and the real slide through `python -m
    extract` via a manifest; the slide saved without microns-per-pixel fails with how to give it; tiles drawn."""
    # a store root set for the cohorts (as `train demo --limit` runs in CI do) must not move the raw section's store
    env = {**os.environ, "MEDMIX_DATA_ROOT": str(data_root), "MEDMIX_STORE_ROOT": str(tmp_path / "elsewhere")}
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "train", "demo", "--datasets", "none", "--out", str(out), "--quiet"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert "## Raw imaging" in report and "verify: consistent" in report
    assert "| ct | astra | astra_ct | 2048 | 2 | 2 | 0 |" in report and "| ct | effnet | efficientnet_lite0 | 1280 | 2 | 2 | 0 |" in report
    assert "| wsi | effnet | efficientnet_lite0 | 1280 | 1 | 2 | 1 |" in report
    assert "sample slide_no_mpp: wsi slides/no_mpp.tiff: slide has no MPP metadata" in report
    assert "preprocess.fallback_mpp" in report and "![tissue tiles of the slide](raw_imaging_tiles.png)" in report
    run = json.loads((out / "run.json").read_text())                         # the demo's run record and log
    assert run["command"].startswith("python -m train demo --datasets none") and (out / "run.log").stat().st_size
    cold = report.split("Wall time ")[1].split(" s")[0]
    proc = subprocess.run([sys.executable, "-m", "train", "demo", "--datasets", "none", "--out", str(out), "--quiet"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)     # warm: all reused
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = (out / "report.md").read_text()
    assert again.split("Wall time ")[1].split(" s")[0] == cold and "this rerun, reusing it" in again
    st = Store(out / "raw_imaging" / "stores" / "raw_imaging.zarr")
    row = st.ids().index("slide_he")
    tiles = st.root["tiles/wsi/effnet"]
    assert (out / "raw_imaging_tiles.png").stat().st_size > 10_000 and str(row) in list(
        next(iter(tiles.group_values())).group_keys())


def test_a_rerun_keeps_the_cold_wall_times(tmp_path):
    from train.runinfo import kept_timings
    f = tmp_path / "timings.json"
    assert kept_timings(f, None, "h1", {"extract_s": 100.0, "train_s": 50.0}) == {"extract_s": 100.0, "train_s": 50.0}
    assert kept_timings(f, "h1", "h1", {"extract_s": 2.0, "train_s": 1.5}) == {
        "extract_s": 100.0, "train_s": 50.0, "rerun_s": 3.5}                  # reused: the cold times stay
    assert kept_timings(f, "h2", "h2", {"extract_s": 3.0, "train_s": 4.0}) == {"extract_s": 3.0, "train_s": 4.0}
    assert json.loads(f.read_text())["config_hash"] == "h2"                    # another config: cold again
