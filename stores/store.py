"""The Zarr v3 store: one per dataset; the only thing the stages share.

Layout (docs/store.md is the reference):

    <store>/                      attrs.medmix = {format, dataset, n_samples, chunk_rows, created, ...}
      samples/id     (N,)  str    stable row index = position
      samples/split  (N,)  int8   attrs.codes = {"train": 0, "val": 1, "test": 2}
      labels/<task>  (N, C) float32, NaN = unknown; attrs: type, labels
      embeddings/<modality>/<expert>/          attrs.latest = <hash12>
        <hash12>/                              attrs.provenance = {...}, attrs.config_hash = <sha256>
          vectors (N, D) float32|float16       fill NaN
          valid   (N,)   uint8                 0 missing, 1 ok, 2 failed, 255 never written
          reason  (N,)   str                   why a row is missing or failed
          source  (N,)   str                   fingerprint of each row's input (a changed input is retried)
          checksum (U,)  str                   sha256 of each unit's vectors/valid/reason, written just before
          done    (U,)   uint8                 one marker per unit of work, chunk size 1, written LAST
          <extra> (N, ...)                     optional per-row arrays (e.g. retrieval audit)

Groups and the store's fixed part are built in a staging folder beside the store and renamed into place, so a
concurrent run sees a group complete (attributes and arrays) or not at all. ``medmix.split_hash`` versions the
split: a store never silently takes another split (``Store.split_hash()``; ``replace_split`` rewrites it).

Units of work are row ranges aligned to ``chunk_rows``, so every chunk of every array has exactly one writer
(Zarr 3 has no synchronizer). A unit writes its data chunks first and its marker last: a marker means done.
No pickle anywhere: strings, numbers, JSON attributes.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import zarr

FORMAT_VERSION = 1
INTEGRITY = 2            # whole-store integrity: ids, split, labels, group attributes and bound unit checksums
GROUP_ARRAYS = ("vectors", "valid", "reason", "source", "checksum", "done")
SEALED_META = ("format", "dataset", "n_samples", "chunk_rows", "created", "split_hash", "split_history")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
MISSING, OK, FAILED, UNWRITTEN = 0, 1, 2, 255


class StoreError(RuntimeError):
    pass


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _open(url: str | os.PathLike, mode: str) -> zarr.Group:
    return zarr.open_group(str(url), mode=mode, zarr_format=3)


def _is_local(url: str) -> bool:
    return "://" not in str(url) or str(url).startswith("file://")


def _local_path(url: str) -> Path:
    return Path(str(url).removeprefix("file://"))


def _staging(store_path: Path) -> Path:
    """A fresh folder on the store's filesystem but outside its hierarchy (so a rename into place is atomic)."""
    base = store_path.parent / f".{store_path.name}.staging"
    _remove_dead_stages(base)
    for _ in range(20):                 # another process may remove the (empty) base between mkdir and mkdtemp
        base.mkdir(parents=True, exist_ok=True)
        try:
            return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=base))
        except FileNotFoundError:
            continue
    raise StoreError(f"{base}: cannot create a staging folder")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True                     # alive, another user's
    return True


def _remove_dead_stages(base: Path) -> None:
    """Staging folders of processes that no longer run (killed mid-build) are removed (same host: pid prefix)."""
    try:
        stages = list(base.iterdir())
    except OSError:
        return
    for stage in stages:
        pid = stage.name.split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(stage, ignore_errors=True)


@contextmanager
def _cleaned(stage: Path, url) -> Iterator[None]:
    """Build in ``stage``; on failure remove it (nothing leaks) and say a write error in one line (disk full...)."""
    try:
        yield
    except BaseException as exc:
        shutil.rmtree(stage, ignore_errors=True)
        try:
            stage.parent.rmdir()
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise StoreError(f"{url}: cannot write the store ({exc.strerror or exc})") from exc
        raise


def _publish(stage: Path, target: Path) -> bool:
    """Rename a built folder into place; False (and the stage removed) when another process got there first."""
    try:
        os.rename(stage, target)
        return True
    except OSError:
        shutil.rmtree(stage, ignore_errors=True)
        return False
    finally:
        try:
            stage.parent.rmdir()            # the staging base, once empty
        except OSError:
            pass


def array_digest(name: str, values) -> str:
    """sha256 of one unit's slice of an array as stored (numbers: storage dtype, C order; strings: NUL-joined)."""
    a = np.asarray(values)
    if a.dtype.kind in "UOT":
        data = "\x00".join(str(x) for x in a.reshape(-1)).encode("utf-8", "surrogatepass")
    else:
        data = np.ascontiguousarray(a).tobytes()
    return hashlib.sha256(data).hexdigest()


def unit_checksum(vectors: np.ndarray, valid: np.ndarray, reasons) -> str:
    """'vectors=<sha256>,valid=<sha256>,reason=<sha256>' of a unit as stored: verify names the array that changed."""
    return ",".join(f"{n}={array_digest(n, v)}" for n, v in
                    (("vectors", vectors), ("valid", np.asarray(valid, np.uint8)), ("reason", np.asarray(reasons, str))))


def parse_checksum(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in str(text).split(",") if "=" in part)


def file_digest(path) -> str:
    """sha256 of a file's bytes, read in blocks (index files, projection fits, weight files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def json_digest(obj) -> str:
    """sha256 of canonical JSON (sorted keys): attributes are sealed with it."""
    import json
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def ids_digest(ids) -> str:
    return array_digest("ids", np.asarray(list(ids), dtype=str))


def label_digest(values: np.ndarray, attrs: dict) -> str:
    """A task's labels as stored (float32, shape) and their meaning (type, class names): a flipped label changes it."""
    a = np.ascontiguousarray(values, dtype=np.float32)
    return hashlib.sha256(json_digest([list(a.shape), {k: attrs.get(k) for k in ("type", "labels")}]).encode()
                          + a.tobytes()).hexdigest()


def seal(attrs: dict) -> str:
    """The digest of a group's attributes without the seal itself (an edited config_hash or provenance breaks it)."""
    return json_digest({k: v for k, v in attrs.items() if k != "seal"})


def latest_seal(parent_path: str, key: str, config_hash: str) -> str:
    return json_digest([parent_path, key, config_hash])


def bound_prefix(unit: "Unit", ids) -> str:
    """What a v2 unit checksum is bound to: its index, its row range and the ids it covers (a swapped unit fails)."""
    return f"unit={unit.index},rows={unit.start}-{unit.stop},ids={ids_digest(ids)}"


def split_codes_hash(codes: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(codes, dtype=np.int8).tobytes()).hexdigest()


@dataclass(frozen=True)
class Unit:
    index: int
    start: int
    stop: int

    @property
    def rows(self) -> slice:
        return slice(self.start, self.stop)


class ExpertGroup:
    """One cached (modality, expert, config) result: vectors + validity + reasons + unit markers."""

    def __init__(self, group: zarr.Group, chunk_rows: int, store: "Store | None" = None):
        self.group = group
        self.chunk_rows = chunk_rows
        self.store = store

    @property
    def integrity(self) -> int:
        """2 for groups written with bound checksums and sealed attributes; 1 for groups written before."""
        return int(self.group.attrs.get("integrity", 1))

    def unit_ids(self, unit: "Unit") -> list[str]:
        root = self.store.root if self.store is not None else zarr.open_group(self.group.store, mode="r")
        return [str(x) for x in root["samples/id"][unit.rows]]

    def per_row_arrays(self) -> list[str]:
        """Arrays hashed per unit besides vectors/valid/reason: source and extras (retrieval audit, reports)."""
        return sorted(n for n in self.group.array_keys() if n not in ("vectors", "valid", "reason", "checksum", "done"))

    def bound_checksum(self, unit: "Unit", vectors: np.ndarray, valid: np.ndarray, reasons) -> str:
        """The v2 checksum of a unit: bound prefix + digests of every per-row array's slice as stored."""
        parts = [bound_prefix(unit, self.unit_ids(unit)), unit_checksum(vectors, valid, reasons)]
        parts += [f"{n}={array_digest(n, self.group[n][unit.rows])}" for n in self.per_row_arrays()]
        return ",".join(parts)

    @property
    def path(self) -> str:
        return self.group.path

    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs)

    @property
    def n_units(self) -> int:
        return self.group["done"].shape[0]

    def units(self) -> list[Unit]:
        n = self.group["valid"].shape[0]
        return [Unit(u, u * self.chunk_rows, min(n, (u + 1) * self.chunk_rows)) for u in range(self.n_units)]

    def done_units(self) -> np.ndarray:
        return self.group["done"][:].astype(bool)

    def pending_units(self) -> list[Unit]:
        done = self.done_units()
        return [u for u in self.units() if not done[u.index]]

    def write_unit(self, unit: Unit, vectors: np.ndarray, valid: np.ndarray, reasons: list[str],
                   extras: dict[str, np.ndarray] | None = None, sources: list[str] | None = None) -> None:
        """Write one unit's rows (chunk-aligned, idempotent), its checksum, then its marker.

        ``sources``: one fingerprint per row of what the row was computed from (size/mtime or content hash), so a
        later run retries failed or missing rows whose input changed. Groups written before these arrays existed
        are written without them."""
        n = unit.stop - unit.start
        vec = self.group["vectors"]
        if vectors.shape != (n, vec.shape[1]):
            raise StoreError(f"{self.path}: unit {unit.index}: vectors shape {vectors.shape} != {(n, vec.shape[1])}")
        valid = np.asarray(valid, dtype=np.uint8)
        vectors = np.where((valid == OK)[:, None], vectors, 0).astype(vec.dtype)
        if not np.isfinite(vectors[valid == OK]).all():
            raise StoreError(f"{self.path}: unit {unit.index}: non-finite values in rows marked ok")
        vec[unit.rows] = vectors
        for name, arr in (extras or {}).items():
            self.group[name][unit.rows] = arr
        reasons = [r or "" for r in reasons]
        self.group["reason"][unit.rows] = np.asarray(reasons, dtype=object).astype(str)
        self.group["valid"][unit.rows] = valid
        members = set(self.group.array_keys())
        if sources is not None and "source" in members:
            self.group["source"][unit.rows] = np.asarray([s or "" for s in sources], dtype=object).astype(str)
        if "checksum" in members:
            self.group["checksum"][unit.index] = (self.bound_checksum(unit, vectors, valid, reasons)
                                                  if self.integrity >= INTEGRITY else
                                                  unit_checksum(vectors, valid, reasons))
        self.group["done"][unit.index] = 1          # the marker, last

    def failed_rows(self, exclude_units=()) -> int:
        """Failed rows of the committed units (``--strict`` counts those a run reused, not only those it wrote)."""
        valid, done = self.group["valid"][:], self.done_units()
        keep = np.zeros(len(valid), bool)
        for u in self.units():
            keep[u.rows] = done[u.index] and u.index not in exclude_units
        return int((keep & (valid == FAILED)).sum())

    def has(self, name: str) -> bool:
        return name in set(self.group.array_keys())

    def sources(self) -> np.ndarray | None:
        """Per-row input fingerprints, or None for a group written before they were recorded."""
        return self.group["source"][:] if self.has("source") else None


class Store:
    """A dataset's store. Create once (samples, splits, labels), then experts add groups."""

    def __init__(self, url: str | os.PathLike, mode: str = "r"):
        self.url = str(url)
        if mode == "r" and not Path(self.url).exists() and "://" not in self.url:
            raise StoreError(f"{self.url}: no store here")
        self.root = _open(self.url, mode)
        meta = self.root.attrs.get("medmix")
        if meta is None:
            raise StoreError(f"{self.url}: not a MedMIX store (no 'medmix' attribute)")
        self.meta = dict(meta)
        self.chunk_rows = int(self.meta["chunk_rows"])
        self.n = int(self.meta["n_samples"])

    # ---- creation -------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, url: str | os.PathLike, dataset: str, ids: list[str], split: list[str],
               labels: dict[str, tuple[np.ndarray, dict]], chunk_rows: int = 256, attrs: dict | None = None,
               replace_split: bool = False) -> "Store":
        """Create the store's fixed part, or check that an existing one holds the same samples and split.

        A local store is built in a staging folder and renamed into place: two runs started on one fresh store
        both succeed (the loser opens the winner's). An existing store whose split differs from ``split`` is
        refused unless ``replace_split`` (results computed on the old split must not be reused silently)."""
        if len(set(ids)) != len(ids):
            raise StoreError(f"{url}: sample ids are not unique")
        bad = sorted(set(split) - set(SPLIT_CODES))
        if bad:
            raise StoreError(f"{url}: unknown split names {bad}")
        path = _local_path(str(url))
        if _is_local(str(url)):
            if not (path / "zarr.json").exists():
                stage = _staging(path)
                with _cleaned(stage, url):
                    cls._build(stage, dataset, ids, split, labels, chunk_rows, attrs)
                _publish(stage, path)
            return cls(url, mode="a")._reuse(ids, split, labels, replace_split)
        if _open(url, "a").attrs.get("medmix") is not None:      # remote: no atomic rename; first writer wins
            return cls(url, mode="a")._reuse(ids, split, labels, replace_split)
        cls._build(url, dataset, ids, split, labels, chunk_rows, attrs)
        return cls(url, mode="a")

    @staticmethod
    def _build(url, dataset: str, ids: list[str], split: list[str], labels: dict, chunk_rows: int,
               attrs: dict | None) -> None:
        root = _open(url, "w")
        n = len(ids)
        codes = np.asarray([SPLIT_CODES[s] for s in split], dtype="int8")
        root.attrs["medmix"] = {"format": FORMAT_VERSION, "dataset": dataset, "n_samples": n,
                                "chunk_rows": int(chunk_rows), "created": _now(), "split_hash": split_codes_hash(codes),
                                **(attrs or {})}
        s = root.require_group("samples")
        s.create_array("id", shape=(n,), chunks=(max(1, min(n, chunk_rows)),), dtype=str, dimension_names=["sample"])
        s["id"][:] = np.asarray(ids, dtype=str)
        s.create_array("split", shape=(n,), chunks=(max(1, min(n, chunk_rows)),), dtype="int8", fill_value=-1,
                        dimension_names=["sample"])
        s["split"].attrs["codes"] = SPLIT_CODES
        s["split"][:] = codes
        root.require_group("labels")
        root.require_group("embeddings")
        store = Store.__new__(Store)
        store.url, store.root, store.meta = str(url), root, dict(root.attrs["medmix"])
        store.chunk_rows, store.n = int(chunk_rows), n
        store._write_labels(labels)
        store.seal_root()

    def _reuse(self, ids: list[str], split: list[str], labels: dict, replace_split: bool) -> "Store":
        have = self.ids()
        if have != list(ids):
            raise StoreError(f"{self.url}: holds {len(have)} samples that differ from the dataset's {len(ids)}; "
                             "use another --store (a store never changes its rows)")
        codes = np.asarray([SPLIT_CODES[s] for s in split], dtype="int8")
        old = self.split()
        if not np.array_equal(codes, old):
            changed = int((codes != old).sum())
            new_hash = split_codes_hash(codes)
            if not replace_split:
                raise StoreError(
                    f"{self.url}: the dataset's split differs from the stored one in {changed} of {self.n} rows "
                    f"(split hash {self.split_hash()[:12]} -> {new_hash[:12]}; e.g. a new split seed). Results "
                    "computed on the stored split would be mixed with the new one: use another --store, or "
                    "--replace-split to rewrite the split (its hash changes, so results keyed on it are recomputed)")
            self.root["samples/split"][:] = codes
            meta = dict(self.root.attrs["medmix"])
            meta["split_history"] = [*meta.get("split_history", []),
                                     {"replaced": _now(), "old": self.split_hash(old), "rows_changed": changed}]
            meta["split_hash"] = new_hash
            self.root.attrs["medmix"] = meta
            self.meta = meta
        elif self.meta.get("split_hash") not in (None, self.split_hash(old)):
            raise StoreError(f"{self.url}: samples/split does not match its recorded split_hash: the store was "
                             "edited (`python -m stores verify` says more)")
        self._write_labels(labels)   # labels may be refreshed (same rows); unchanged ones are not rewritten
        self.seal_root()             # a store written before integrity v2 is sealed here (ids and labels re-read)
        return self

    def root_record(self) -> dict:
        """The integrity record of the store's fixed part, computed from its content now."""
        labels = {t: label_digest(v, m) for t, (v, m) in self.labels().items()}
        return {"version": INTEGRITY, "ids": ids_digest(self.ids()), "split": self.split_hash(), "labels": labels}

    @staticmethod
    def root_seal(meta: dict, record: dict) -> str:
        """The seal of what defines the store's rows (the keys of ``SEALED_META``) and its integrity record; other
        store attributes are informational and may be added later without breaking it."""
        return json_digest({**{k: meta.get(k) for k in SEALED_META},
                            "integrity": {k: v for k, v in record.items() if k != "seal"}})

    def seal_root(self) -> None:
        """Record the hashes of ids, split and labels, and seal the store's attributes (written only on change, so
        a read-only store whose content is unchanged is never written)."""
        meta = dict(self.root.attrs["medmix"])
        record = self.root_record()
        record["seal"] = self.root_seal(meta, record)
        if meta.get("integrity") != record:
            meta["integrity"] = record
            self.root.attrs["medmix"] = meta
        self.meta = meta

    def check_rows(self, dataset: str, ids: list[str], options: dict | None = None) -> None:
        """Before a stage writes rows it computed from an adapter into this store: the same dataset, the same ids in
        the same row order, the same dataset options (e.g. PhysioNet's set) as the store was created with. One
        cohort's vectors never land on another's patients."""
        if self.meta.get("dataset") not in (None, dataset):
            raise StoreError(f"{self.url}: holds dataset '{self.meta['dataset']}', not '{dataset}'")
        recorded = {k: v for k, v in ((self.meta.get("adapter") or {}).get("options") or {}).items()
                    if k != "rag_bridge"}
        given = {k: v for k, v in (options or {}).items() if k != "rag_bridge"}
        differ = sorted(k for k in set(recorded) | set(given) if recorded.get(k) != given.get(k))
        if recorded and differ:
            raise StoreError(f"{self.url}: created with dataset options {recorded}, given {given} (differ in "
                             f"{', '.join(differ)}): pass the store's options, or the store of these options")
        have = self.ids()
        if list(ids[:self.n]) != have:
            bad = next((i for i, (a, b) in enumerate(zip(ids, have)) if a != b), min(len(ids), self.n))
            raise StoreError(f"{self.url}: the dataset's ids differ from the store's (row {bad}: "
                             f"{ids[bad] if bad < len(ids) else 'none'!r} vs {have[bad]!r}; {len(ids)} vs {self.n} "
                             "rows): another cohort or set; refused, nothing written")

    def split_hash(self, codes: np.ndarray | None = None) -> str:
        """sha256 of the split codes (int8, row order): include it in any results hash computed on this store."""
        return split_codes_hash(self.split() if codes is None else codes)

    def _write_labels(self, labels: dict[str, tuple[np.ndarray, dict]]) -> None:
        lg = self.root["labels"]
        for task, (values, meta) in labels.items():
            values = np.asarray(values, dtype="float32").reshape(self.n, -1)
            if task not in lg:
                lg.create_array(task, shape=values.shape, chunks=(min(self.n, self.chunk_rows), values.shape[1]),
                                dtype="float32", fill_value=float("nan"), dimension_names=["sample", f"{task}_label"])
            elif lg[task].shape == values.shape and np.array_equal(lg[task][:], values, equal_nan=True) \
                    and all(lg[task].attrs.get(k) == v for k, v in meta.items()):
                continue
            lg[task][:] = values
            lg[task].attrs.update(meta)

    # ---- reading --------------------------------------------------------------------------------------------
    def ids(self) -> list[str]:
        return [str(x) for x in self.root["samples/id"][:]]

    def split(self) -> np.ndarray:
        return self.root["samples/split"][:]

    def labels(self) -> dict[str, tuple[np.ndarray, dict]]:
        """Every task's labels, by task name: zarr lists a group's members in no fixed order (its metadata reads
        run concurrently), and the task order fixes the model's output layout, hence its results."""
        return {k: (a[:], dict(a.attrs)) for k, a in sorted(self.root["labels"].arrays(), key=lambda kv: kv[0])}

    def modalities(self) -> list[str]:
        return sorted(k for k, _ in self.root["embeddings"].groups())

    def experts(self, modality: str) -> list[str]:
        return sorted(k for k, _ in self.root[f"embeddings/{modality}"].groups())

    def versions(self, modality: str, expert: str) -> list[str]:
        return sorted(k for k, _ in self.root[f"embeddings/{modality}/{expert}"].groups())

    def expert_group(self, modality: str, expert: str, config_hash: str | None = None) -> ExpertGroup:
        """A cached group: by config hash, else the latest written."""
        base = f"embeddings/{modality}/{expert}"
        if base not in self.root:
            raise StoreError(f"{self.url}: no expert '{expert}' for modality '{modality}'")
        key = config_hash[:12] if config_hash else self.root[base].attrs.get("latest")
        if key is None or key not in self.root[base]:
            raise StoreError(f"{self.url}: {base}: no group for config {key}")
        if config_hash is None:
            self.check_latest(modality, expert)
        return ExpertGroup(self.root[f"{base}/{key}"], self.chunk_rows, self)

    def check_latest(self, modality: str, expert: str) -> None:
        """``latest`` must name a group of this expert and carry its seal (an edited pointer is refused)."""
        parent = self.root[f"embeddings/{modality}/{expert}"]
        key, recorded = parent.attrs.get("latest"), parent.attrs.get("latest_seal")
        if key is None or key not in parent:
            raise StoreError(f"{self.url}: {parent.path}: latest {key!r} names no group")
        want = latest_seal(parent.path, key, parent[key].attrs.get("config_hash", ""))
        if recorded is not None and recorded != want:
            raise StoreError(f"{self.url}: {parent.path}: latest {key!r} does not match its seal (edited)")

    def set_latest(self, modality: str, expert: str, key: str) -> None:
        """Point ``latest`` at a group, sealed; nothing is written when it already points there."""
        parent = self.root[f"embeddings/{modality}/{expert}"]
        want = {"latest": key, "latest_seal": latest_seal(parent.path, key, parent[key].attrs.get("config_hash", ""))}
        if {k: parent.attrs.get(k) for k in want} != want:
            parent.attrs.update(want)

    def iter_groups(self) -> Iterable[tuple[str, str, str, ExpertGroup]]:
        for m in self.modalities():
            for e in self.experts(m):
                for h in self.versions(m, e):
                    yield m, e, h, ExpertGroup(self.root[f"embeddings/{m}/{e}/{h}"], self.chunk_rows, self)

    # ---- writing expert groups ------------------------------------------------------------------------------
    def require_expert_group(self, modality: str, expert: str, config_hash: str, dim: int, provenance: dict,
                             dtype: str = "float32", extras: dict[str, tuple[tuple, str, Any]] | None = None) -> ExpertGroup:
        """The group for this exact config; created if new. A different config never touches an existing group."""
        key = config_hash[:12]
        parent = self.root.require_group(f"embeddings/{modality}/{expert}")
        if key in parent:
            g = parent[key]
            if g.attrs.get("config_hash") != config_hash:
                raise StoreError(f"{self.url}: {g.path}: hash prefix collision with a different config")
            if g["vectors"].shape[1] != dim:
                raise StoreError(f"{self.url}: {g.path}: stored dim {g['vectors'].shape[1]} != encoder dim {dim}")
            _same_weights(self.url, g, provenance)
        else:
            attrs = {"config_hash": config_hash, "modality": modality, "expert": expert, "integrity": INTEGRITY,
                     "arrays": sorted([*GROUP_ARRAYS, *(extras or {})]),
                     "dim": dim, "dtype": dtype, "created": _now(), "provenance": provenance}
            if _is_local(self.url):
                stage = _staging(_local_path(self.url))
                with _cleaned(stage, self.url):
                    self._build_group(_open(stage, "w"), attrs, dim, dtype, extras)
                target = _local_path(self.url) / parent.path / key
                _publish(stage, target)     # False: another run published it first; theirs is used (checked below)
            else:
                self._build_group(parent.create_group(key, attributes=attrs), attrs, dim, dtype, extras)
            g = parent[key]
            if g.attrs.get("config_hash") != config_hash:
                raise StoreError(f"{self.url}: {g.path}: hash prefix collision with a different config")
        self.set_latest(modality, expert, key)
        return ExpertGroup(g, self.chunk_rows, self)


    def _build_group(self, g: zarr.Group, attrs: dict, dim: int, dtype: str, extras: dict | None) -> None:
        c = min(self.n, self.chunk_rows)
        g.create_array("vectors", shape=(self.n, dim), chunks=(c, dim), dtype=dtype, fill_value=float("nan"),
                       dimension_names=["sample", "dim"])
        g.create_array("valid", shape=(self.n,), chunks=(c,), dtype="uint8", fill_value=UNWRITTEN,
                       dimension_names=["sample"])
        g.create_array("reason", shape=(self.n,), chunks=(c,), dtype=str, dimension_names=["sample"])
        g.create_array("source", shape=(self.n,), chunks=(c,), dtype=str, dimension_names=["sample"])
        n_units = -(-self.n // self.chunk_rows)
        g.create_array("checksum", shape=(n_units,), chunks=(1,), dtype=str, dimension_names=["unit"])
        g.create_array("done", shape=(n_units,), chunks=(1,), dtype="uint8", fill_value=0, dimension_names=["unit"])
        for name, (tail, dt, fill) in (extras or {}).items():
            g.create_array(name, shape=(self.n, *tail), chunks=(c, *tail), dtype=dt, fill_value=fill,
                           dimension_names=["sample", *[f"{name}_{i}" for i in range(len(tail))]])
        g.attrs.update(json_safe(attrs))
        g.attrs["seal"] = seal(dict(g.attrs))      # of the attributes as read back (JSON round trip exact)


def json_safe(attrs: dict) -> dict:
    """Attributes as JSON stores them (tuples become lists, numpy scalars numbers)."""
    import json
    return json.loads(json.dumps(attrs, default=str))


def _same_weights(url: str, g: zarr.Group, provenance: dict) -> None:
    """A group is resumed only with the weights it was started with (their sha256 in the provenance): otherwise one
    group would hold rows of two models. Refused; a changed model belongs in a new group (a new revision/source)."""
    old = (g.attrs.get("provenance") or {}).get("weights_sha256") or {}
    new = (provenance or {}).get("weights_sha256") or {}
    if old and new and old != new:
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        was, now = str(old.get(changed[0]))[:12], str(new.get(changed[0]))[:12]
        raise StoreError(f"{url}: {g.path}: the weights changed since this group was started "
                         f"({', '.join(changed[:3])}: sha256 {was} -> {now}); refusing to mix two models' rows in one "
                         "group: restore the weights, or pin another revision/source")


def open_store(url: str | os.PathLike, mode: str = "r") -> Store:
    return Store(url, mode=mode)
