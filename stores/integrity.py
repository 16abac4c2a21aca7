"""Whole-store integrity (v2): what `stores verify` and the training loader both check.

The store's fixed part records the sha256 of its ids, split and every task's labels, sealed with its attributes
(``medmix.integrity``); every expert group seals its attributes (config hash, provenance, ...) and lists its arrays;
``latest`` carries a seal naming the group it points at; every committed unit's checksum is bound to its unit index,
row range and the ids it covers, and hashes every per-row array. Stores and groups written before v2 carry none of
this: they are reported as "written before integrity v2" (a note in verify, a warning in training), and an extract
run re-seals a store's fixed part from the dataset on open (docs/store.md).
"""
from __future__ import annotations

import numpy as np

from .store import (INTEGRITY, ExpertGroup, Store, Unit, _is_local, _local_path, array_digest, bound_prefix, ids_digest,
                    label_digest, parse_checksum, seal)

LEGACY = "written before integrity v2"


def root_problems(store: Store) -> list[str]:
    """The fixed part (ids, split, labels, attributes) against its recorded hashes; [] for a legacy store."""
    rec = store.meta.get("integrity")
    if not isinstance(rec, dict):
        return []
    out = []
    if rec.get("seal") != store.root_seal(store.meta, rec):
        out.append("attrs.medmix: attributes do not match their seal (edited after they were written)")
    if rec.get("ids") != ids_digest(store.ids()):
        out.append("samples/id: content does not match its recorded hash (ids edited or reordered)")
    split = store.split_hash()
    if rec.get("split") != split or store.meta.get("split_hash") != split:
        out.append("samples/split: content does not match its recorded hash (split edited)")
    extra = sorted(set(store.root["samples"].array_keys()) - {"id", "split"})
    out += [f"samples/{name}: extra array not part of the store's layout" for name in extra]
    have = {t: label_digest(v, m) for t, (v, m) in store.labels().items()}
    want = rec.get("labels") or {}
    for task in sorted(set(have) | set(want)):
        if task not in want:
            out.append(f"labels/{task}: array not recorded in the store's integrity record (added after)")
        elif task not in have:
            out.append(f"labels/{task}: array missing (recorded in the integrity record)")
        elif have[task] != want[task]:
            out.append(f"labels/{task}: content does not match its recorded hash (labels edited)")
    return out


def label_value_problems(store: Store) -> list[str]:
    """Label values outside the task's classes (binary / multi-label: 0 or 1; multi-class: 0..C-1; NaN = unknown)."""
    out = []
    for task, (values, attrs) in store.labels().items():
        v = np.asarray(values, dtype=np.float64)
        known = v[~np.isnan(v)]
        n_cls = len(attrs.get("labels") or []) if attrs.get("type") == "multiclass" else 2
        bad = known[(known != np.round(known)) | (known < 0) | (known >= n_cls)]
        if bad.size:
            out.append(f"labels/{task}: {bad.size} values outside the task's classes 0..{n_cls - 1} "
                       f"(e.g. {sorted(set(bad.tolist()))[:3]})")
    return out


def group_problems(where: str, g: ExpertGroup) -> list[str]:
    """A v2 group's attributes against their seal, its arrays against the recorded list, its key against its hash."""
    attrs = g.attrs
    out = []
    if str(attrs.get("config_hash", ""))[:12] != where.rsplit("/", 1)[-1]:
        out.append(f"{where}: config_hash {str(attrs.get('config_hash'))[:12]} does not match the group's name")
    if g.integrity < INTEGRITY:
        return out
    if attrs.get("seal") != seal(attrs):
        out.append(f"{where}: attributes (config_hash, provenance, ...) do not match their seal (edited)")
    have, want = set(g.group.array_keys()), set(attrs.get("arrays") or [])
    for name in sorted(want - have):
        out.append(f"{where}/{name}: array missing")
    for name in sorted(have - want):
        out.append(f"{where}/{name}: extra array not recorded in the group's attributes")
    return out


def unit_problems(where: str, g: ExpertGroup, u: Unit, text, data: dict[str, np.ndarray]) -> list[str]:
    """A committed unit's slices (``data``: name -> slice as stored) against its checksum. v2: bound to the unit's
    index, rows and ids, and covering every per-row array; a committed v2 unit without a checksum is a problem."""
    rows = f"unit {u.index} (rows {u.start}-{u.stop - 1})"
    digests = parse_checksum(text) if text is not None else {}
    if g.integrity >= INTEGRITY:
        if not digests:
            return [f"{where}/checksum: {rows}: committed without a checksum"]
        bound = parse_checksum(bound_prefix(u, g.unit_ids(u)))
        wrong = [k for k, v in bound.items() if digests.get(k) != v]
        if wrong:
            return [f"{where}: {rows}: checksum bound to another {'/'.join(wrong)} (units swapped or ids edited)"]
        for name in g.per_row_arrays():
            data.setdefault(name, g.group[name][u.rows])
    return [f"{where}/{name}: {rows}: content hash mismatch (the chunk changed after it was committed)"
            for name, values in data.items() if digests.get(name) and array_digest(name, values) != digests[name]]


def stray_folders(store: Store) -> list[str]:
    """Folders under embeddings/ (local stores) without group metadata: an emptied or half-deleted group."""
    if not _is_local(store.url):
        return []
    base = _local_path(store.url) / "embeddings"
    out = []
    for depth, what in ((1, "modality"), (2, "expert"), (3, "group")):
        for d in sorted(base.glob("/".join(["*"] * depth))):
            if d.is_dir() and not (d / "zarr.json").exists():
                out.append(f"embeddings/{d.relative_to(base).as_posix()}: {what} folder without metadata "
                           "(emptied or partly deleted)")
    return out


def read_problems(store: Store, g: ExpertGroup, vectors: np.ndarray, valid: np.ndarray) -> list[str]:
    """What training reads, against the recorded hashes: the group's seal and every committed unit's checksum."""
    where = g.path
    out = group_problems(where, g)
    if out or "checksum" not in set(g.group.array_keys()):
        return out or ([f"{where}/checksum: array missing"] if g.integrity >= INTEGRITY else [])
    done, sums, reasons = g.done_units(), g.group["checksum"][:], g.group["reason"][:]
    for u in g.units():
        if done[u.index]:
            data = {"vectors": vectors[u.rows], "valid": valid[u.rows], "reason": reasons[u.rows]}
            out += unit_problems(where, g, u, sums[u.index], data)
    return out


def tile_problems(path: str, group) -> list[str]:
    """A v2 slide's tile group: sealed attributes (sample id, coordinates' hash) and each done batch's checksum."""
    from .tiles import SlideTiles
    t = SlideTiles(group)
    attrs = dict(group.attrs)
    if int(attrs.get("integrity", 1)) < INTEGRITY:
        return []
    out = []
    if attrs.get("seal") != seal(attrs):
        out.append(f"{path}: attributes do not match their seal (edited)")
    if attrs.get("coords_sha256") != array_digest("coords", group["coords"][:]):
        out.append(f"{path}/coords: content does not match its recorded hash")
    if "checksum" not in set(group.array_keys()):
        return out + [f"{path}/checksum: array missing"]
    emb, sums = group["embeddings"][:], group["checksum"][:]
    for b in np.flatnonzero(t.done()):
        if sums[b] != t.batch_checksum(int(b), emb[t.batch_rows(int(b))]):
            out.append(f"{path}: tile batch {b}: content hash mismatch (or bound to another batch / slide)")
    return out


def is_legacy(store: Store) -> bool:
    return not isinstance(store.meta.get("integrity"), dict)

