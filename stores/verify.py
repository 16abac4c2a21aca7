"""Consistency and integrity checks and a coverage summary of a store (`python -m stores verify|info`).

Integrity (v2, stores/integrity.py): the ids, split and labels against their recorded hashes, every group's sealed
attributes and recorded array list, ``latest`` against its seal, and every committed unit's checksum, bound to its
index, rows and ids: flipped bytes that still decode to finite numbers, a chunk or a whole unit swapped for
another's, an edited label, config hash or provenance, an extra or deleted array, an emptied group folder are FAIL
lines naming what changed. Unreadable chunks and metadata are reported the same way, never as a traceback. Stores
and groups written before v2 verify for consistency, with the note "written before integrity v2".
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import integrity
from .errors import reason
from .store import FAILED, MISSING, OK, SPLIT_CODES, UNWRITTEN, ExpertGroup, Store


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)     # FAIL lines: the store is not consistent
    notes: list[str] = field(default_factory=list)        # worth knowing (pending units, no checksums)


def _err(exc: Exception) -> str:
    return reason(exc, limit=300)


def verify(store: Store) -> list[str]:
    """Every inconsistency found, as a sentence naming the array (empty list = consistent)."""
    return check(store).problems


def check(store: Store) -> Report:
    rep = Report()
    n = store.n
    try:
        ids = store.ids()
        if len(ids) != n:
            rep.problems.append(f"samples/id has {len(ids)} rows, attrs say {n}")
    except Exception as exc:  # noqa: BLE001
        ids = [str(i) for i in range(n)]
        rep.problems.append(f"samples/id: unreadable ({_err(exc)})")
    try:
        split = store.split()
        if not np.isin(split, list(SPLIT_CODES.values())).all():
            rep.problems.append(f"samples/split: {(~np.isin(split, list(SPLIT_CODES.values()))).sum()} rows "
                                "without a split")
        recorded = store.meta.get("split_hash")
        if recorded and recorded != store.split_hash(split):
            rep.problems.append(f"samples/split: content does not match the recorded split_hash {recorded[:12]}")
    except Exception as exc:  # noqa: BLE001
        rep.problems.append(f"samples/split: unreadable ({_err(exc)})")
    try:
        for task, (values, _meta) in store.labels().items():
            if values.shape[0] != n:
                rep.problems.append(f"labels/{task}: {values.shape[0]} rows != {n}")
        rep.problems += integrity.label_value_problems(store)
        rep.problems += integrity.root_problems(store)
    except Exception as exc:  # noqa: BLE001
        rep.problems.append(f"labels: unreadable ({_err(exc)})")
    if integrity.is_legacy(store):
        rep.notes.append(f"store {integrity.LEGACY}: ids, split and labels carry no recorded hash (an extract run "
                         "on the store records them)")
    rep.problems += integrity.stray_folders(store)
    for where, g in _groups(store, rep):
        _check_group(store, where, g, ids, rep)
    _verify_tiles(store, rep)
    return rep


def _check_latest(store: Store, parent: str, rep: Report) -> None:
    mod, exp = parent.split("/")[1:3]
    try:
        store.check_latest(mod, exp)
    except Exception as exc:  # noqa: BLE001
        rep.problems.append(str(exc).removeprefix(f"{store.url}: "))


def _groups(store: Store, rep: Report):
    """(path, ExpertGroup) for every expert group; an unreadable level is a problem, the walk goes on."""
    def children(path):
        try:
            return sorted(k for k, _ in store.root[path].groups())
        except Exception as exc:  # noqa: BLE001
            rep.problems.append(f"{path}: unreadable group metadata ({_err(exc)})")
            return []
    for m in children("embeddings"):
        for e in children(f"embeddings/{m}"):
            _check_latest(store, f"embeddings/{m}/{e}", rep)
            for h in children(f"embeddings/{m}/{e}"):
                where = f"embeddings/{m}/{e}/{h}"
                try:
                    yield where, ExpertGroup(store.root[where], store.chunk_rows, store)
                except Exception as exc:  # noqa: BLE001
                    rep.problems.append(f"{where}: unreadable group metadata ({_err(exc)})")


def _open_arrays(where: str, g: ExpertGroup, rep: Report) -> dict | None:
    arrays = {}
    for name in ("vectors", "valid", "reason", "done", "checksum"):
        try:
            arrays[name] = g.group[name]
        except KeyError:
            if name != "checksum" or g.integrity >= integrity.INTEGRITY:
                rep.problems.append(f"{where}/{name}: array missing")
            if name != "checksum":
                return None
        except Exception as exc:  # noqa: BLE001  (truncated / corrupt zarr.json)
            rep.problems.append(f"{where}/{name}: unreadable array metadata ({_err(exc)})")
            return None
    return arrays


def _read(arrays: dict, name: str, sel, where: str, unit, rep: Report):
    try:
        return arrays[name][sel]
    except Exception as exc:  # noqa: BLE001  (a corrupt or truncated chunk)
        what = f"unit {unit.index} (rows {unit.start}-{unit.stop - 1})" if name != "done" else f"unit {unit.index}"
        rep.problems.append(f"{where}/{name}: {what}: unreadable chunk ({_err(exc)})")
        return None


def _check_group(store: Store, where: str, g: ExpertGroup, ids: list[str], rep: Report) -> None:
    try:
        rep.problems += integrity.group_problems(where, g)
    except Exception as exc:  # noqa: BLE001
        rep.problems.append(f"{where}: unreadable attributes ({_err(exc)})")
    arrays = _open_arrays(where, g, rep)
    if arrays is None:
        return
    n = store.n
    vec = arrays["vectors"]
    if vec.shape[0] != n or arrays["valid"].shape[0] != n:
        rep.problems.append(f"{where}: row count {vec.shape[0]}/{arrays['valid'].shape[0]} != {n}")
        return
    pending, unchecked, nonfinite, no_reason = [], 0, [], 0
    for u in g.units():
        done = _read(arrays, "done", u.index, where, u, rep)
        v = _read(arrays, "valid", u.rows, where, u, rep)
        x = _read(arrays, "vectors", u.rows, where, u, rep)
        r = _read(arrays, "reason", u.rows, where, u, rep)
        if done is None or v is None or x is None or r is None:
            continue
        bad_codes = ~np.isin(v, [MISSING, OK, FAILED, UNWRITTEN])
        if bad_codes.any():
            rep.problems.append(f"{where}/valid: unit {u.index}: {bad_codes.sum()} rows with an unknown code")
        if not done:
            pending.append(u.index)
        elif (v == UNWRITTEN).any():
            rep.problems.append(f"{where}: unit {u.index} (rows {u.start}-{u.stop - 1}) has a marker but "
                                f"{int((v == UNWRITTEN).sum())} rows were never written")
        ok = v == OK
        bad = ok & ~np.isfinite(x.astype(np.float32)).all(axis=1)
        nonfinite += [ids[u.start + i] for i in np.flatnonzero(bad)]
        no_reason += sum(1 for code, why in zip(v, r) if code == FAILED and str(why) == "")
        if done and "checksum" in arrays:
            unchecked += _check_digest(arrays, where, g, u, {"vectors": x, "valid": v, "reason": r}, rep)
    if nonfinite:
        rep.problems.append(f"{where}/vectors: {len(nonfinite)} valid rows hold NaN/inf (e.g. {nonfinite[:3]})")
    if no_reason:
        rep.problems.append(f"{where}: {no_reason} failed rows without a reason")
    if pending:
        rep.notes.append(f"{where}: {len(pending)} of {g.n_units} units pending (no marker): "
                         f"{pending[:10]}{' ...' if len(pending) > 10 else ''}")
    if g.integrity < integrity.INTEGRITY:
        rep.notes.append(f"{where}: group {integrity.LEGACY}" + (
            f"; no content hash recorded for {unchecked} committed unit(s): its data is checked for consistency only"
            if unchecked or "checksum" not in arrays else
            ": unit checksums are not bound to unit index and ids, attributes not sealed"))


def _check_digest(arrays: dict, where: str, g: ExpertGroup, u, data: dict, rep: Report) -> int:
    """Compare a committed unit's slices with their recorded checksum; 1 when a legacy unit has none."""
    text = _read(arrays, "checksum", u.index, where, u, rep)
    if text is None:
        return 0
    if not str(text) and g.integrity < integrity.INTEGRITY:
        return 1
    try:
        rep.problems += integrity.unit_problems(where, g, u, text, data)
    except Exception as exc:  # noqa: BLE001  (an unreadable per-row array)
        rep.problems.append(f"{where}: unit {u.index}: unreadable ({_err(exc)})")
    return 0


def _verify_tiles(store: Store, rep: Report) -> None:
    """Per-slide tile groups: a tile batch with a marker must hold finite embeddings for all its tiles."""
    from .tiles import SlideTiles
    try:
        if "tiles" not in store.root:
            return
        paths = [f"tiles/{mod}/{exp}/{key}/{row}"
                 for mod in store.root["tiles"].group_keys()
                 for exp in store.root[f"tiles/{mod}"].group_keys()
                 for key in store.root[f"tiles/{mod}/{exp}"].group_keys()
                 for row in store.root[f"tiles/{mod}/{exp}/{key}"].group_keys()]
    except Exception as exc:  # noqa: BLE001
        rep.problems.append(f"tiles: unreadable group metadata ({_err(exc)})")
        return
    for path in paths:
        try:
            t = SlideTiles(store.root[path])
            emb = t.group["embeddings"][:]
            for b in np.flatnonzero(t.done()):
                if not np.isfinite(emb[t.batch_rows(int(b))]).all():
                    rep.problems.append(f"{path}: tile batch {b} has a marker but NaN/inf embeddings")
            rep.problems += integrity.tile_problems(path, t.group)
        except Exception as exc:  # noqa: BLE001
            rep.problems.append(f"{path}/embeddings: unreadable ({_err(exc)})")


def coverage(store: Store) -> list[dict]:
    """One row per expert group: counts of ok / missing / failed / pending rows and units done."""
    rows = []
    for mod, exp, key, g in store.iter_groups():
        valid = g.group["valid"][:]
        prov = g.attrs.get("provenance", {})
        rows.append({"modality": mod, "expert": exp, "config": key, "model": prov.get("model", "?"),
                     "role": prov.get("role", "?"), "dim": g.group["vectors"].shape[1],
                     "ok": int((valid == OK).sum()), "missing": int((valid == MISSING).sum()),
                     "failed": int((valid == FAILED).sum()), "pending": int((valid == UNWRITTEN).sum()),
                     "units": f"{int(g.done_units().sum())}/{g.n_units}",
                     "latest": store.root[f"embeddings/{mod}/{exp}"].attrs.get("latest") == key})
    return rows


def failure_reasons(store: Store, limit: int = 5) -> dict[str, dict[str, int]]:
    """Most common failure reasons per expert group."""
    out = {}
    for mod, exp, key, g in store.iter_groups():
        valid, reasons = g.group["valid"][:], g.group["reason"][:]
        r = reasons[valid == FAILED]
        if r.size:
            vals, counts = np.unique(r, return_counts=True)
            order = np.argsort(-counts)[:limit]
            out[f"{mod}/{exp}/{key}"] = {str(vals[i]): int(counts[i]) for i in order}
    return out
