"""The store contract: plain-zarr readability, chunk-aligned concurrent writes, config versioning, verify."""
import multiprocessing as mp
import subprocess
import sys

import numpy as np
import pytest
import torch
import zarr

from stores.loader import read_experts, read_labels
from stores.store import FAILED, MISSING, OK, Store, StoreError
from stores.verify import verify


def make_store(path, n=10, chunk=4):
    ids = [f"s{i}" for i in range(n)]
    split = ["train"] * (n - 4) + ["val"] * 2 + ["test"] * 2
    y = np.arange(n, dtype=np.float32).reshape(n, 1) % 2
    return Store.create(path, "toy", ids, split, {"task": (y, {"type": "binary", "labels": ["task"]})}, chunk_rows=chunk)


def fill(group, rng, n_dim=3):
    for u in group.units():
        n = u.stop - u.start
        valid = np.full(n, OK, np.uint8)
        valid[0] = MISSING
        group.write_unit(u, rng.normal(size=(n, n_dim)).astype(np.float32), valid, ["absent"] + [""] * (n - 1))


def test_round_trip_through_plain_zarr(tmp_path):
    st = make_store(tmp_path / "s.zarr")
    g = st.require_expert_group("note", "minilm", "a" * 64, 3, {"model": "minilm", "role": "general"})
    fill(g, np.random.default_rng(0))
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert [str(x) for x in root["samples/id"][:]] == [f"s{i}" for i in range(10)]
    assert root["samples/split"].attrs["codes"]["test"] == 2
    grp = root["embeddings/note/minilm"]
    key = grp.attrs["latest"]
    vec, valid = grp[key]["vectors"][:], grp[key]["valid"][:]
    assert vec.shape == (10, 3) and set(np.unique(valid)) == {MISSING, OK}
    assert grp[key].attrs["provenance"]["model"] == "minilm"
    assert (vec[valid == MISSING] == 0).all() and np.isfinite(vec[valid == OK]).all()
    assert list(grp[key]["reason"][:][valid == MISSING]) == ["absent"] * int((valid == MISSING).sum())


def test_plain_xarray_opens_an_expert_group(tmp_path):
    xr = pytest.importorskip("xarray")
    st = make_store(tmp_path / "s.zarr")
    g = st.require_expert_group("ehr", "fracast", "b" * 64, 3, {"model": "fracast0"})
    fill(g, np.random.default_rng(1))
    ds = xr.open_zarr(str(tmp_path / "s.zarr") + "/" + g.path, consolidated=False, zarr_format=3)
    assert ds["vectors"].shape == (10, 3)


def _writer(path, unit_indices, seed):
    st = Store(path, mode="a")
    g = st.expert_group("note", "minilm")
    for u in g.units():
        if u.index in unit_indices:
            n = u.stop - u.start
            g.write_unit(u, np.full((n, 3), float(u.index + 1), np.float32), np.full(n, OK, np.uint8), [""] * n)


def test_two_processes_writing_disjoint_units_lose_nothing(tmp_path):
    path = str(tmp_path / "s.zarr")
    st = make_store(path, n=64, chunk=4)
    st.require_expert_group("note", "minilm", "c" * 64, 3, {"model": "minilm"})
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, set(range(k, 16, 2)), k)) for k in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    g = Store(path).expert_group("note", "minilm")
    vec = g.group["vectors"][:]
    for u in g.units():
        assert (vec[u.rows] == u.index + 1).all()
    assert g.done_units().all() and verify(Store(path)) == []


def test_changed_config_writes_a_new_group_and_keeps_the_old(tmp_path):
    st = make_store(tmp_path / "s.zarr")
    g1 = st.require_expert_group("note", "minilm", "1" * 64, 3, {"pooling": "mean"})
    fill(g1, np.random.default_rng(0))
    before = g1.group["vectors"][:]
    g2 = st.require_expert_group("note", "minilm", "2" * 64, 3, {"pooling": "cls"})
    assert st.versions("note", "minilm") == ["1" * 12, "2" * 12]
    assert st.expert_group("note", "minilm").path == g2.path                 # latest
    np.testing.assert_array_equal(st.expert_group("note", "minilm", "1" * 64).group["vectors"][:], before)
    assert not g2.done_units().any()


def test_same_config_reuses_the_group_and_a_dim_change_is_refused(tmp_path):
    st = make_store(tmp_path / "s.zarr")
    g = st.require_expert_group("note", "x", "3" * 64, 3, {})
    fill(g, np.random.default_rng(0))
    again = st.require_expert_group("note", "x", "3" * 64, 3, {})
    assert again.done_units().all()
    with pytest.raises(StoreError, match="dim"):
        st.require_expert_group("note", "x", "3" * 64, 5, {})


def test_store_refuses_other_samples(tmp_path):
    make_store(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="differ"):
        Store.create(tmp_path / "s.zarr", "toy", ["a", "b"], ["train", "test"], {}, chunk_rows=4)


def test_verify_catches_nan_in_a_valid_row(tmp_path):
    st = make_store(tmp_path / "s.zarr")
    g = st.require_expert_group("note", "m", "4" * 64, 3, {})
    fill(g, np.random.default_rng(0))
    assert verify(st) == []
    g.group["vectors"][5, 1] = np.nan
    problems = verify(Store(tmp_path / "s.zarr"))
    assert any("NaN" in p and "s5" in p for p in problems)
    out = subprocess.run([sys.executable, "-m", "stores", "verify", str(tmp_path / "s.zarr")], capture_output=True, text=True)
    assert out.returncode == 1 and "NaN" in out.stdout


def test_verify_catches_a_marker_without_data(tmp_path):
    st = make_store(tmp_path / "s.zarr")
    g = st.require_expert_group("note", "m", "5" * 64, 3, {})
    g.group["done"][1] = 1                                   # planted: marker, no rows written
    problems = verify(st)
    assert any("unit 1" in p and "never written" in p for p in problems)


def test_verify_catches_a_failed_row_without_reason(tmp_path):
    st = make_store(tmp_path / "s.zarr")
    g = st.require_expert_group("note", "m", "6" * 64, 3, {})
    u = g.units()[0]
    g.write_unit(u, np.zeros((4, 3), np.float32), np.array([OK, FAILED, OK, OK], np.uint8), ["", "", "", ""])
    assert any("without a reason" in p for p in verify(st))


def test_write_unit_refuses_non_finite_ok_rows(tmp_path):
    st = make_store(tmp_path / "s.zarr")
    g = st.require_expert_group("note", "m", "7" * 64, 3, {})
    bad = np.zeros((4, 3), np.float32)
    bad[2, 0] = np.inf
    with pytest.raises(StoreError, match="non-finite"):
        g.write_unit(g.units()[0], bad, np.full(4, OK, np.uint8), [""] * 4)
    assert not g.done_units()[0]


def _loader_store(tmp_path):
    st = make_store(tmp_path / "s.zarr")
    for name, dim in (("a", 3), ("b", 5)):
        g = st.require_expert_group("note", name, name * 64, dim, {"model": name, "role": "general"})
        fill(g, np.random.default_rng(2), dim)
    t = st.require_expert_group("note", "teacher", "t" * 64, 2, {"model": "t", "role": "teacher"})
    fill(t, np.random.default_rng(3), 2)
    return st


def test_loader_gives_float32_arrays_masks_and_zeroes_missing_rows(tmp_path):
    st = _loader_store(tmp_path)
    ex = read_experts(st)
    assert set(ex.vectors["note"]) == {"a", "b"} and ex.teachers["note"].shape == (10, 2)
    assert isinstance(ex.vectors["note"]["b"], np.ndarray)
    assert ex.vectors["note"]["b"].dtype == np.float32 and ex.vectors["note"]["b"].shape == (10, 5)
    m = ex.masks["note"]["a"]
    assert m.dtype == bool and not m[0] and m[1]
    assert (ex.vectors["note"]["a"][~m] == 0).all() and (ex.vectors["note"]["a"][m] != 0).any()
    assert not ex.teacher_masks["note"][0] and (ex.teachers["note"][0] == 0).all()
    assert ex.provenance["note/a"]["config_hash"] == "a" * 64 and ex.provenance["note/a"]["chosen"] == "latest"
    assert ex.provenance["note/teacher"]["role"] == "teacher"
    labels = read_labels(st)
    assert labels["task"][0].dtype == np.float32 and labels["task"][1]["type"] == "binary"
    with pytest.raises(StoreError, match="no experts selected"):
        read_experts(st, {"note": []})


def test_data_from_store_gives_float32_tensors_in_the_loaders_layout(tmp_path):
    from train.data import Data
    st = _loader_store(tmp_path)
    data, prov = Data.from_store(st)
    ex = read_experts(st)
    assert data.layout == {"note": ["a", "b"]} and prov == ex.provenance
    assert all(x.dtype == torch.float32 for x in data.xs["note"]) and data.teachers["note"].dtype == torch.float32
    np.testing.assert_array_equal(data.xs["note"][1].numpy(), ex.vectors["note"]["b"])
    assert data.masks["note"].dtype == torch.bool and data.masks["note"].shape == (10, 2)
    assert data.masks["note"][:, 0].numpy().tolist() == ex.masks["note"]["a"].tolist()
    assert data.y.dtype == torch.float32 and data.y[:, 0].tolist() == read_labels(st)["task"][0][:, 0].tolist()
    assert data.rows("test").tolist() == [8, 9]
    assert Data.from_store(st, teachers=False)[0].teachers == {}


def test_stores_cli_info(tmp_path):
    st = make_store(tmp_path / "s.zarr")
    fill(st.require_expert_group("note", "m", "8" * 64, 3, {"model": "m", "role": "general"}), np.random.default_rng(0))
    out = subprocess.run([sys.executable, "-m", "stores", "info", str(tmp_path / "s.zarr")], capture_output=True, text=True)
    assert out.returncode == 0 and "note" in out.stdout and "3/3" in out.stdout


def test_labels_come_in_one_order_whatever_order_zarr_lists_them(tmp_path, monkeypatch):
    """zarr lists a group's members in no fixed order; the task order fixes a model's output layout, so two runs
    on one store once trained different models (PhysioNet: mortality/los7 swapped between processes)."""
    import zarr
    y = np.zeros((2, 1), np.float32)
    Store.create(tmp_path / "s.zarr", "toy", ["a", "b"], ["train", "test"],
                 {"mortality": (y, {"type": "binary", "labels": ["mortality"]}),
                  "los7": (y, {"type": "binary", "labels": ["los7"]})}, chunk_rows=4)
    real = zarr.Group.arrays
    monkeypatch.setattr(zarr.Group, "arrays", lambda self: reversed(list(real(self))))
    swapped = list(Store(tmp_path / "s.zarr").labels())
    monkeypatch.setattr(zarr.Group, "arrays", real)
    assert swapped == list(Store(tmp_path / "s.zarr").labels()) == ["los7", "mortality"]
