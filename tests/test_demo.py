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
                           "--out", str(out), "--quiet"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "report.md").read_text()
    for ds in ("mmist", "physionet2012", "openi"):
        assert f"## {ds}" in report
        res = json.loads((out / ds / "results.json").read_text())
        # a store with one modality would run no drop protocol (tests/test_train_*); these have several
        assert (out / ds / "test_multi_auroc.png").exists() == (len(res["layout"]) > 1)
        assert (res["protocols"] == ["none"]) == (len(res["layout"]) == 1)
        store = Store(tmp_path / "stores" / f"{ds}-first40.zarr")
        assert verify(store) == []
        assert "rag" in store.experts("note" if ds != "physionet2012" else "ehr")
    assert "Wiring run" in report and "Models used" in report and "MedlinePlus" in report
    assert "| medmix |" in report
    for ds in ("mmist", "physionet2012"):       # PhysioNet: ehr + demographics, so it has curves too
        section = report.split(f"## {ds}")[1].split("\n## ")[0]
        assert "test_multi@0.3" in section and "test_drop_one@0.5" in section and "loss to test_multi@0.7" in section
