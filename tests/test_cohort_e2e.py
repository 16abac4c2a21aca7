"""The issue's done-when, through the CLIs only: a cohort of 80 patients given as one CSV of real files (inline
OpenI reports, per-patient PhysioNet event files, one X-ray, two CT volumes, two slides and a truncated one, a split
column, a binary label): `extract init` -> `python -m extract --config` -> `stores verify` -> `python -m train`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from manifest_cohort import build_cohort
from test_ct3d import TINY, _tiny_weights

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MEDMIX_CONFIG", None)
    p = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"{args}: exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.mark.slow
def test_own_cohort_from_a_spreadsheet_end_to_end(tmp_path, data_root, tiny_bert_dir, tiny_dir):
    from tiny_models import tiny_bert
    from stores.store import FAILED, MISSING, OK, Store
    from stores.tiles import open_slide_tiles
    folder = tmp_path / "hospital"
    cohort = build_cohort(data_root, folder)
    out = _cli("extract", "init", "--manifest", "cohort.csv", "--dataset", "mycohort", "--labels", "death",
               "--out", "my.yaml", cwd=folder).stdout
    assert "label death: binary" in out and "split column: split" in out and "column wsi: wsi" in out
    assert "column ct: ct" in out and "column cxr: cxr" in out and "column ehr: ehr" in out
    assert "column note: note (free text inline" in out

    # what a user adds for a 2-core test machine: tiny models of the real classes, small tiles and slices
    astra, _ = _tiny_weights(tmp_path)
    mpnet = tiny_bert(tiny_dir / "mpnet", "mpnet")
    raw = yaml.safe_load((folder / "my.yaml").read_text())
    raw["defaults"] = {"store_root": str(tmp_path / "stores")}
    raw["profiles"] = {"offline": {
        "models": {"astra_ct": {"source": str(astra)}, "minilm": {"source": str(tiny_bert_dir)},
                   "mpnet": {"source": str(mpnet)}},
        "kinds": {"ct": {"experts": {"astra": {"params": TINY}}}}}}
    mods = raw["datasets"]["mycohort"]["modalities"]
    mods["ct"]["preprocess"]["slices"] = 8
    mods["wsi"]["preprocess"].update(max_tiles=12, tile_batch=8, threads=2)
    (folder / "my.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    # the command as it is, RAG experts included (the MedlinePlus index is built on first use)
    out = _cli("extract", "--config", "my.yaml", "--dataset", "mycohort", "--quiet", cwd=folder).stdout
    store = Store(tmp_path / "stores" / "mycohort.zarr")
    assert store.ids() == cohort["ids"]
    assert {m for m in ("note", "ehr") if "rag" in store.root[f"embeddings/{m}"].group_keys()} == {"note", "ehr"}
    for modality, given in cohort["given"].items():
        for expert in store.root[f"embeddings/{modality}"].group_keys():
            valid = store.expert_group(modality, expert).group["valid"][:]
            want = np.full(len(valid), MISSING)
            want[sorted(given)] = OK
            if modality == "wsi":
                want[cohort["truncated_row"]] = FAILED
            assert valid.tolist() == want.tolist(), f"{modality}/{expert}"
    g = store.expert_group("wsi", "effnet")
    reason = str(g.group["reason"][cohort["truncated_row"]])
    assert "slides/truncated.svs" in reason and "unreadable slide" in reason, reason
    for row in sorted(cohort["given"]["wsi"] - {cohort["truncated_row"]}):            # per-tile embeddings
        t = open_slide_tiles(store.root, "wsi", "effnet", g.attrs["config_hash"], row)
        assert t.n_tiles == 12 and t.done().all() and t.group["coords"].shape == (12, 2)
        np.testing.assert_allclose(g.group["vectors"][row], t.group["embeddings"][:].mean(0), rtol=1e-5)
    assert "failed in wsi/effnet" in out
    assert "consistent" in _cli("stores", "verify", "--config", "my.yaml", "--dataset", "mycohort", cwd=folder).stdout

    _cli("train", "--config", "my.yaml", "--dataset", "mycohort", "--methods", "medmix,meanavg", "--seeds", "1",
         "--tune", "none", "--out", str(tmp_path / "run"), "--no-probes", cwd=folder)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {"medmix", "meanavg"} <= set(json.dumps(results).split('"')) and (tmp_path / "run" / "results.md").exists()
