"""Whole-store integrity v2 (issue 24, finding 2): every corruption is a FAIL of `stores verify` and a one-line refusal
of the training loader; a checkpoint refuses a replaced split."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from stores.__main__ import main as stores_main
from stores.loader import check_split, read_experts, read_labels
from stores.store import Store, StoreError, ids_digest
from stores.tiles import require_slide_tiles
from stores.verify import check

G = "embeddings/note/e/aaaaaaaaaaaa"


def _store(path, n=24, chunk=8, dim=4):
    y = np.array([[i % 2] for i in range(n)], np.float32)
    st = Store.create(path, "t", [f"s{i}" for i in range(n)], ["train"] * (n - 8) + ["val"] * 4 + ["test"] * 4,
                      {"mortality": (y, {"type": "binary", "labels": ["mortality"]})}, chunk_rows=chunk)
    g = st.require_expert_group("note", "e", "a" * 64, dim, {"model": "x", "source": "pypi:x==1"})
    rng = np.random.default_rng(0)
    for u in g.units():
        k = u.stop - u.start
        g.write_unit(u, rng.normal(size=(k, dim)).astype(np.float32), np.ones(k, np.uint8), [""] * k,
                     sources=[f"src{i}" for i in range(u.start, u.stop)])
    return st, g


def _verify(path, capsys) -> tuple[int, str]:
    code = stores_main(["verify", str(path)])
    return code, capsys.readouterr().out


def _edit_json(path: Path, fn) -> None:
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


def _swap_units(path: Path) -> None:
    """Swap every array's chunk of units 0 and 1 (vectors, valid, reason, source, checksum, done)."""
    for arr in ("vectors", "valid", "reason", "source", "checksum", "done"):
        c = path / G / arr / "c"
        a, b = (c / "0" / "0", c / "1" / "0") if arr == "vectors" else (c / "0", c / "1")
        if a.exists() and b.exists():                                   # an all-empty chunk is not written
            tmp = a.read_bytes()
            a.write_bytes(b.read_bytes())
            b.write_bytes(tmp)


def _set_labels(path, fn):
    arr = Store(path, mode="a").root["labels/mortality"]
    v = arr[:]
    arr[:] = fn(v)


def _set_ids(path):
    arr = Store(path, mode="a").root["samples/id"]
    ids = arr[:]
    ids[[0, 1]] = ids[[1, 0]]
    arr[:] = ids


def _split_and_hash(path):
    st = Store(path, mode="a")
    codes = st.split()
    codes[0], codes[-1] = codes[-1], codes[0]
    st.root["samples/split"][:] = codes
    meta = dict(st.root.attrs["medmix"])
    meta["split_hash"] = st.split_hash(codes)
    st.root.attrs["medmix"] = meta


def _group_attr(path, key, value):
    _edit_json(path / G / "zarr.json", lambda m: m["attributes"].__setitem__(key, value))


def _latest(path):
    st = Store(path, mode="a")
    st.require_expert_group("note", "e", "b" * 64, 4, {"model": "y"})
    st.root["embeddings/note/e"].attrs["latest"] = "aaaaaaaaaaaa"       # edited back without its seal


def _extra_array(path):
    Store(path, mode="a").root[G].create_array("planted", shape=(24,), dtype="float32")


def _emptied(path):
    shutil.rmtree(path / G)
    (path / G).mkdir()


def _source(path):
    arr = Store(path, mode="a").root[f"{G}/source"]
    arr[3] = "edited"


CORRUPTIONS = {
    "flipped labels": (lambda p: _set_labels(p, lambda v: 1 - v), "labels/mortality: content does not match"),
    "label value 2": (lambda p: _set_labels(p, lambda v: np.where(np.arange(len(v))[:, None] == 0, 2, v)),
                      "values outside the task's classes"),
    "swapped ids": (_set_ids, "samples/id: content does not match"),
    "split + split_hash": (_split_and_hash, "samples/split: content does not match its recorded hash"),
    "store attribute edited": (lambda p: _edit_json(p / "zarr.json", lambda m: m["attributes"]["medmix"].update(
        dataset="other")), "attrs.medmix: attributes do not match their seal"),
    "config_hash edited": (lambda p: _group_attr(p, "config_hash", "a" * 12 + "f" * 52), "do not match their seal"),
    "provenance edited": (lambda p: _group_attr(p, "provenance", {"model": "other"}), "do not match their seal"),
    "latest edited": (_latest, "does not match its seal"),
    "source edited": (_source, "source: unit 0 (rows 0-7): content hash mismatch"),
    "extra array": (_extra_array, "planted: extra array"),
    "extra sample array": (lambda p: Store(p, mode="a").root["samples"].create_array("age", shape=(24,), dtype="f4"),
                           "samples/age: extra array"),
    "emptied group": (_emptied, "group folder without metadata"),
    "checksum deleted": (lambda p: shutil.rmtree(p / G / "checksum"), "checksum: array missing"),
    "units swapped": (_swap_units, "unit 0 (rows 0-7): checksum bound to another unit/rows/ids"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_verify_fails_every_corruption_and_training_refuses(tmp_path, capsys, name):
    path = tmp_path / "s.zarr"
    _store(path)
    assert _verify(path, capsys)[0] == 0
    plant, expected = CORRUPTIONS[name]
    plant(path)
    code, out = _verify(path, capsys)
    assert code == 1 and expected in out and "Traceback" not in out, out
    with pytest.raises(StoreError,
                       match="fails its integrity check|names no group|does not match its seal|no group for config"):
        st = Store(path)
        read_experts(st, {"note": ["e"]})
        read_labels(st)


def test_tile_batches_are_bound_and_verified(tmp_path, capsys):
    path = tmp_path / "s.zarr"
    st, _ = _store(path)
    for row in (0, 1):
        t = require_slide_tiles(st.root, "wsi", "e", "c" * 64, row, f"s{row}", np.arange(20).reshape(10, 2), 3, 4, {})
        for b in range(3):
            t.write_batch(b, np.full((t.batch_rows(b).stop - t.batch_rows(b).start, 3), row + b, np.float32))
    assert _verify(path, capsys)[0] == 0
    c0, c1 = path / "tiles/wsi/e/cccccccccccc/0/embeddings/c", path / "tiles/wsi/e/cccccccccccc/1/embeddings/c"
    shutil.copyfile(c1 / "0" / "0", c0 / "0" / "0")                      # slide 0's batch 0 now holds slide 1's
    code, out = _verify(path, capsys)
    assert code == 1 and "tiles/wsi/e/cccccccccccc/0: tile batch 0: content hash mismatch" in out


def test_a_legacy_store_is_sealed_on_open_and_verifies_with_a_note(tmp_path, capsys):
    path = tmp_path / "s.zarr"
    st, _ = _store(path)
    meta = dict(st.root.attrs["medmix"])
    meta.pop("integrity")
    st.root.attrs["medmix"] = meta                                       # as written before integrity v2
    rep = check(Store(path))
    assert rep.problems == [] and any("store written before integrity v2" in n for n in rep.notes)
    y = np.array([[i % 2] for i in range(24)], np.float32)
    Store.create(path, "t", [f"s{i}" for i in range(24)], ["train"] * 16 + ["val"] * 4 + ["test"] * 4,
                 {"mortality": (y, {"type": "binary", "labels": ["mortality"]})}, chunk_rows=8)
    assert "integrity" in Store(path).meta and check(Store(path)).notes == []


def test_a_cached_store_is_not_rewritten_on_reopen(tmp_path):
    path = tmp_path / "s.zarr"
    st, _ = _store(path)
    before = {p: p.stat().st_mtime_ns for p in path.rglob("zarr.json")}
    y = np.array([[i % 2] for i in range(24)], np.float32)
    st2 = Store.create(path, "t", [f"s{i}" for i in range(24)], ["train"] * 16 + ["val"] * 4 + ["test"] * 4,
                       {"mortality": (y, {"type": "binary", "labels": ["mortality"]})}, chunk_rows=8)
    st2.require_expert_group("note", "e", "a" * 64, 4, {"model": "x", "source": "pypi:x==1"})
    assert {p: p.stat().st_mtime_ns for p in path.rglob("zarr.json")} == before


def test_a_checkpoint_refuses_a_replaced_split(tmp_path):
    path = tmp_path / "s.zarr"
    st, _ = _store(path)
    meta = {"split_hash": st.split_hash(), "ids_hash": ids_digest(st.ids())}
    check_split(st, meta, "test")
    y = np.array([[i % 2] for i in range(24)], np.float32)
    st2 = Store.create(path, "t", [f"s{i}" for i in range(24)], ["test"] * 4 + ["train"] * 16 + ["val"] * 4,
                       {"mortality": (y, {"type": "binary", "labels": ["mortality"]})}, chunk_rows=8,
                       replace_split=True)
    with pytest.raises(StoreError, match="differs from the one the checkpoint was trained with"):
        check_split(st2, meta, "test")
    check_split(st2, meta, "all")                                        # every row, as an external cohort
    check_split(st2, {**meta, "ids_hash": "other cohort"}, "test")
