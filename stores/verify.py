"""Consistency checks and a coverage summary of a store (`python -m stores verify|info`)."""
from __future__ import annotations

import numpy as np

from .store import FAILED, MISSING, OK, SPLIT_CODES, UNWRITTEN, Store


def verify(store: Store) -> list[str]:
    """Every inconsistency found, as a sentence naming the array (empty list = consistent)."""
    problems: list[str] = []
    n = store.n
    if len(store.ids()) != n:
        problems.append(f"samples/id has {len(store.ids())} rows, attrs say {n}")
    split = store.split()
    if not np.isin(split, list(SPLIT_CODES.values())).all():
        problems.append(f"samples/split: {(~np.isin(split, list(SPLIT_CODES.values()))).sum()} rows without a split")
    for task, (values, _meta) in store.labels().items():
        if values.shape[0] != n:
            problems.append(f"labels/{task}: {values.shape[0]} rows != {n}")
    for mod, exp, key, g in store.iter_groups():
        where = f"embeddings/{mod}/{exp}/{key}"
        vec, valid, done = g.group["vectors"], g.group["valid"][:], g.done_units()
        if vec.shape[0] != n or valid.shape[0] != n:
            problems.append(f"{where}: row count {vec.shape[0]}/{valid.shape[0]} != {n}")
            continue
        bad_codes = ~np.isin(valid, [MISSING, OK, FAILED, UNWRITTEN])
        if bad_codes.any():
            problems.append(f"{where}/valid: {bad_codes.sum()} rows with an unknown code")
        for u in g.units():
            v = valid[u.rows]
            if done[u.index] and (v == UNWRITTEN).any():
                problems.append(f"{where}: unit {u.index} (rows {u.start}-{u.stop - 1}) has a marker but "
                                f"{int((v == UNWRITTEN).sum())} rows were never written")
        ok_rows = np.flatnonzero(valid == OK)
        if ok_rows.size:
            x = vec[:].astype(np.float32)[ok_rows]
            nonfinite = ~np.isfinite(x).all(axis=1)
            if nonfinite.any():
                ids = store.ids()
                first = [ids[i] for i in ok_rows[nonfinite][:3]]
                problems.append(f"{where}/vectors: {nonfinite.sum()} valid rows hold NaN/inf (e.g. {first})")
        reasons = g.group["reason"][:]
        failed_without_reason = np.flatnonzero((valid == FAILED) & (reasons == ""))
        if failed_without_reason.size:
            problems.append(f"{where}: {failed_without_reason.size} failed rows without a reason")
    problems += _verify_tiles(store)
    return problems


def _verify_tiles(store: Store) -> list[str]:
    """Per-slide tile groups: a tile batch with a marker must hold finite embeddings for all its tiles."""
    from .tiles import SlideTiles
    if "tiles" not in store.root:
        return []
    problems = []
    for mod in store.root["tiles"].group_keys():
        for exp in store.root[f"tiles/{mod}"].group_keys():
            for key in store.root[f"tiles/{mod}/{exp}"].group_keys():
                for row in store.root[f"tiles/{mod}/{exp}/{key}"].group_keys():
                    t = SlideTiles(store.root[f"tiles/{mod}/{exp}/{key}/{row}"])
                    emb = t.group["embeddings"][:]
                    for b in np.flatnonzero(t.done()):
                        if not np.isfinite(emb[t.batch_rows(int(b))]).all():
                            problems.append(f"tiles/{mod}/{exp}/{key}/{row}: tile batch {b} has a marker but "
                                            "NaN/inf embeddings")
    return problems


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
