"""The extract runner: in-process == Dask LocalCluster; a SIGKILLed run resumes to the same bytes; duplicated
units are harmless; bad samples are recorded failed with their reason and the run goes on."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from extract.pipeline import extract_dataset
from plugins.registry import EncoderOptions, build_encoder
from extract.run.context import Context, clear_caches, encode_isolated
from extract.run.plan import plan_jobs
from plugins.request import ExtractRequest
from extract.run.units import run_unit
from stores.spec import load_spec
from stores.store import FAILED, OK, Store
from stores.verify import verify

ROOT = Path(__file__).resolve().parent.parent




def _contents(path):
    st = Store(path)
    out = {}
    for m, e, h, g in st.iter_groups():
        out[f"{m}/{e}/{h}"] = (g.group["vectors"][:], g.group["valid"][:], list(g.group["reason"][:]), g.done_units())
    return out


def _same(a, b):
    assert a.keys() == b.keys() and a
    for k in a:
        np.testing.assert_allclose(a[k][0], b[k][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(a[k][1], b[k][1])
        assert a[k][2] == b[k][2]
        np.testing.assert_array_equal(a[k][3], b[k][3])


@pytest.mark.slow
def test_in_process_equals_local_cluster(ehr_spec, data_root, tmp_path):
    kw = dict(dataset="physionet2012", config=str(ehr_spec), data_root=str(data_root), limit=40, rag=False,
              progress=False)
    s1 = extract_dataset(store=str(tmp_path / "a.zarr"), **kw)
    s2 = extract_dataset(store=str(tmp_path / "b.zarr"), workers=2, **kw)
    assert s1.done == s2.done == {"ehr/fracast": 40, "ehr/bert": 40, "demographics/tabular": 40}
    _same(_contents(tmp_path / "a.zarr"), _contents(tmp_path / "b.zarr"))
    assert verify(Store(tmp_path / "b.zarr")) == []
    again = extract_dataset(store=str(tmp_path / "a.zarr"), **kw)               # rerun: everything cached
    assert again.done == {} and again.skipped_units == {"ehr/fracast": 5, "ehr/bert": 5, "demographics/tabular": 5}


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_equals_uninterrupted(ehr_spec, data_root, tmp_path):
    args = [sys.executable, "-m", "extract", "--dataset", "physionet2012", "--config", str(ehr_spec),
            "--data-root", str(data_root), "--limit", "96", "--no-rag", "--quiet"]
    killed = tmp_path / "killed.zarr"
    proc = subprocess.Popen(args + ["--store", str(killed)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        done = list(killed.glob("embeddings/ehr/fracast/*/done/c/*"))
        if len(done) >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    st = Store(killed)
    partial = st.expert_group("ehr", "fracast").done_units()
    assert 0 < partial.sum() < len(partial), "the kill must land mid-run"
    assert verify(st) == []                                       # what was committed is consistent
    subprocess.run(args + ["--store", str(killed)], cwd=ROOT, check=True, capture_output=True)
    full = tmp_path / "full.zarr"
    subprocess.run(args + ["--store", str(full)], cwd=ROOT, check=True, capture_output=True)
    _same(_contents(killed), _contents(full))


def test_duplicated_unit_rewrites_identical_bytes(ehr_spec, data_root, tmp_path):
    path = tmp_path / "d.zarr"
    extract_dataset("physionet2012", config=str(ehr_spec), data_root=str(data_root), store=str(path), limit=16,
                    rag=False, progress=False)
    spec = load_spec(ehr_spec)
    from plugins.datasets.base import get_adapter
    plans = plan_jobs(spec, "physionet2012", "offline", get_adapter(spec.dataset("physionet2012"), data_root,
                                                                   {"limit": 16}))
    before = _contents(path)
    g = Store(path, mode="a").expert_group("ehr", "fracast")
    unit = g.units()[1]
    g.group["done"][1] = 0                                        # as if a retried task ran the unit again
    clear_caches()
    ctx = Context(ExtractRequest("physionet2012", config=str(ehr_spec), data_root=str(data_root), store=str(path),
                                 options={"limit": 16}))                                   # the same sample
    run_unit(ctx, "ehr", unit, plans["ehr"])
    run_unit(ctx, "ehr", unit, plans["ehr"])                      # and a duplicate of it
    _same(before, _contents(path))


def test_bad_items_are_isolated_with_reasons(tiny_bert_dir):
    enc = build_encoder("medcpt_query", EncoderOptions(source=str(tiny_bert_dir))).load()
    vecs, reasons = encode_isolated(enc, ["heart normal", "", "lungs clear"])
    assert reasons[0] is None and reasons[2] is None and "empty text" in reasons[1]
    np.testing.assert_allclose(vecs[[0, 2]], enc.encode(["heart normal", "lungs clear"]), rtol=1e-5, atol=1e-6)


def test_failed_inputs_are_recorded_and_the_run_goes_on(ehr_spec, data_root, tmp_path, monkeypatch):
    from plugins.datasets import physionet2012
    real = physionet2012.PhysioNet2012.load

    def load(self, modality, rows):
        out = real(self, modality, rows)
        if 3 in rows:
            out[rows.index(3)] = physionet2012.Failed("record 3: unreadable (planted)")
        return out

    monkeypatch.setattr(physionet2012.PhysioNet2012, "load", load)
    clear_caches()
    s = extract_dataset("physionet2012", config=str(ehr_spec), data_root=str(data_root), store=str(tmp_path / "f.zarr"),
                        limit=16, rag=False, progress=False)
    assert s.failed == {"ehr/fracast": 1, "ehr/bert": 1, "demographics/tabular": 1} and s.done["ehr/fracast"] == 15
    g = Store(tmp_path / "f.zarr").expert_group("ehr", "fracast")
    assert g.group["valid"][3] == FAILED and "planted" in str(g.group["reason"][3])
    assert (g.group["valid"][:16][np.arange(16) != 3] == OK).all()
    clear_caches()
