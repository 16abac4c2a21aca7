"""The demo pipeline end to end on a small slice of the REAL data (40 samples per dataset, 1 seed, 3 epochs):
extract (real offline weights) -> rag (real MedlinePlus index) -> train -> report. Proves the wiring, not quality."""
import os
import subprocess
import sys
from pathlib import Path

from stores.store import Store
from stores.verify import verify

ROOT = Path(__file__).resolve().parent.parent


def test_demo_wiring_on_real_data(tmp_path, data_root):
    env = {**os.environ, "MEDMIX_STORE_ROOT": str(tmp_path / "stores"), "MEDMIX_DATA_ROOT": str(data_root)}
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "train", "demo", "--limit", "40", "--seeds", "1", "--max-epochs", "3",
                           "--out", str(out), "--quiet"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "report.md").read_text()
    for ds in ("mmist", "physionet2012", "openi"):
        assert f"## {ds}" in report
        assert (out / ds / "results.json").exists() and (out / ds / "test_multi_auroc.png").exists()
        store = Store(tmp_path / "stores" / f"{ds}-first40.zarr")
        assert verify(store) == []
        assert "rag" in store.experts("note" if ds != "physionet2012" else "ehr")
    assert "Wiring run" in report and "Models used" in report and "MedlinePlus" in report
    assert "| medmix |" in report
