"""`python -m extract import`: precomputed features into a store, safely (no pickle), with reasons."""
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

from stores.store import FAILED, MISSING, OK, Store
from stores.verify import verify

ROOT = Path(__file__).resolve().parent.parent


def test_import_from_a_folder_and_a_tar(tmp_path):
    ids = [f"case{i}" for i in range(6)]
    store = tmp_path / "s.zarr"
    Store.create(store, "toy", ids, ["train"] * 4 + ["val", "test"], {}, chunk_rows=4)
    feats = tmp_path / "feats"
    feats.mkdir()
    rng = np.random.default_rng(0)
    for i in (0, 1, 4):
        np.savez(feats / f"case{i}.npz", arr_0=rng.normal(size=(1, 8)).astype(np.float32))
    np.savez(feats / "case2.npz", arr_0=np.zeros(5, np.float32))                          # wrong size
    with open(feats / "case3.npz", "wb") as f:                                              # pickled objects
        np.savez(f, arr_0=np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    out = subprocess.run([sys.executable, "-m", "extract", "import", "--dataset", "mmist", "--store", str(store),
                          "--modality", "wsi", "--expert", "owners", "--from", str(feats)], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    g = Store(store).expert_group("wsi", "owners")
    valid = g.group["valid"][:]
    assert valid.tolist() == [OK, OK, FAILED, FAILED, OK, MISSING]
    reasons = [str(r) for r in g.group["reason"][:]]
    assert "5 values" in reasons[2] and "case3.npz" in reasons[3] and reasons[5] == "no file"
    np.testing.assert_allclose(g.group["vectors"][0], np.load(feats / "case0.npz")["arr_0"].reshape(-1))
    assert verify(Store(store)) == []
    tar = tmp_path / "feats.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.add(feats, arcname="Features")
    from extract.importer import import_features
    counts = import_features(str(store), "wsi", "owners_tar", tar)
    assert counts == {"ok": 3, "missing": 1, "failed": 2}
