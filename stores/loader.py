"""Store -> plain arrays for training, in one call (numpy only: the shared layer stays free of torch).

The train stage never touches Zarr rows one by one: each chosen expert is read once, whole, into a float32 array
with a boolean mask (valid == ok). Rows that are missing or failed are zeroed, so their values cannot leak.
``train/data.py`` turns these arrays into the tensors a method trains on.
"""
from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

from . import integrity
from .spec import canonical_hash
from .store import OK, Store, StoreError

log = logging.getLogger("medmix.store")


class Experts(NamedTuple):
    """What ``read_experts`` read: plain arrays and where each came from (no behaviour of its own)."""
    vectors: dict[str, dict[str, np.ndarray]]   # modality -> expert -> (N, D) float32, invalid rows zeroed
    masks: dict[str, dict[str, np.ndarray]]     # modality -> expert -> (N,) bool (valid == ok)
    teachers: dict[str, np.ndarray]             # modality -> (N, D_T) float32
    teacher_masks: dict[str, np.ndarray]        # modality -> (N,) bool
    provenance: dict[str, dict]                 # "modality/expert" -> {config_hash, feature_hash, model, role, ...}


TEACHER = "teacher"


def _refuse(store, problems: list[str]) -> None:
    url = getattr(store, "url", "store")
    raise StoreError(f"{url}: fails its integrity check ({problems[0]}"
                     f"{f'; and {len(problems) - 1} more' if len(problems) > 1 else ''}): refused; "
                     f"`python -m stores verify {url}` lists every problem")


def read_group(group, check: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One expert group, whole: (N, D) float32 vectors with every row that is not ok zeroed, and the (N,) bool mask.

    ``check``: what was read is compared with the group's recorded hashes (seal, every committed unit's bound
    checksum) before it is used; a mismatch is refused (StoreError naming the store and the first problem)."""
    valid = group.group["valid"][:]
    raw = group.group["vectors"][:]
    if check:
        problems = integrity.read_problems(group.store, group, raw, valid)
        if problems:
            _refuse(group.store, [f"{group.path}: {p.removeprefix(group.path).lstrip('/: ')}" for p in problems])
        if group.integrity < integrity.INTEGRITY:
            log.warning("%s: group %s: read without content hashes", group.path, integrity.LEGACY)
    mask = valid == OK
    vec = raw.astype(np.float32)
    vec[~mask] = 0.0
    return vec, mask


def check_store(store: Store) -> None:
    """The store's fixed part (ids, split, labels) against its recorded hashes, and label values in the tasks'
    classes: fast (hashes of small arrays), run before any training, evaluation or prediction reads labels."""
    problems = integrity.root_problems(store) + integrity.label_value_problems(store)
    if problems:
        _refuse(store, problems)
    if integrity.is_legacy(store):
        log.warning("%s: store %s: ids, split and labels are read without recorded hashes", store.url,
                    integrity.LEGACY)


def group_profile(attrs: dict) -> str | None:
    """The extraction profile a group records (None when the store predates that record)."""
    return attrs.get("profile") or (attrs.get("provenance") or {}).get("profile")


def feature_hash(attrs: dict) -> str | None:
    """What makes a group's numbers: its config without the cohort's dataset options (which name files, such as
    PhysioNet's set). Two cohorts' groups with equal feature hashes hold the same features (external validation)."""
    cfg = attrs.get("provenance", {}).get("config")
    if not isinstance(cfg, dict):
        return None
    ds = {k: v for k, v in (cfg.get("dataset") or {}).items() if k not in ("options", "adapter")}
    return canonical_hash({**cfg, "dataset": ds})


def choose_group(store: Store, mod: str, name: str, versions: dict[str, str], profile: str | None):
    """The group of one expert, chosen explicitly: a pinned config hash, else the newest group of ``profile``, else
    the newest group written (the store's "latest" pointer). Returns (group, how it was chosen)."""
    key = f"{mod}/{name}"
    if versions.get(key):
        return store.expert_group(mod, name, versions[key]), "pinned"
    if profile:
        groups = [store.expert_group(mod, name, h) for h in store.versions(mod, name)]
        match = sorted((g for g in groups if group_profile(g.attrs) == profile), key=lambda g: g.attrs.get("created", ""))
        if not match:
            recorded = sorted({str(group_profile(g.attrs)) for g in groups})
            raise StoreError(f"{store.url}: {key}: no group extracted with profile '{profile}' "
                             f"(groups record profiles: {', '.join(recorded)})")
        return match[-1], f"profile {profile}"
    return store.expert_group(mod, name), "latest"


def read_experts(store: Store | str, select: dict[str, list[str]] | None = None, teachers: bool = True,
                 versions: dict[str, str] | None = None, profile: str | None = None) -> Experts:
    """Read the chosen experts (modality -> expert names; None = all) and their teachers.

    ``versions`` pins "modality/expert" to a config hash; else ``profile`` picks that profile's newest group; else
    the newest group of each expert. ``provenance`` records, per expert, the hash, model and how it was chosen.
    """
    store = store if isinstance(store, Store) else Store(store)
    check_store(store)
    versions = versions or {}
    select = select or {m: [e for e in store.experts(m) if e != TEACHER] for m in store.modalities()}
    experts, masks, prov = {}, {}, {}
    t_vec, t_mask = {}, {}

    def record(mod, name, g, how, role):
        p = g.attrs.get("provenance", {})
        prov[f"{mod}/{name}"] = {"config_hash": g.attrs["config_hash"], "feature_hash": feature_hash(g.attrs),
                                 "model": p.get("model"),
                                 "role": role or p.get("role"), "chosen": how, "profile": group_profile(g.attrs),
                                 "versions_in_store": len(store.versions(mod, name)),
                                 "units": g.n_units, "pending_units": len(g.pending_units())}

    for mod, names in select.items():
        if not names:
            continue
        experts[mod], masks[mod] = {}, {}
        for name in names:
            g, how = choose_group(store, mod, name, versions, profile)
            experts[mod][name], masks[mod][name] = read_group(g)
            record(mod, name, g, how, None)
        if teachers and mod in store.modalities() and TEACHER in store.experts(mod):
            g, how = choose_group(store, mod, TEACHER, versions, profile)
            t_vec[mod], t_mask[mod] = read_group(g)
            record(mod, TEACHER, g, how, "teacher")
    if not experts:
        raise StoreError(f"{store.url}: no experts selected or present")
    return Experts(experts, masks, t_vec, t_mask, prov)


def check_split(store: Store, recorded: dict, part: str) -> None:
    """A checkpoint scored on one split of the cohort it was trained on must see the split it was trained with:
    ``recorded`` holds the checkpoint's ``split_hash`` and ``ids_hash``. Another cohort (other ids) or ``all`` rows
    pass; a replaced split is refused (its test rows may have been training rows)."""
    from .store import ids_digest
    want, ids = recorded.get("split_hash"), recorded.get("ids_hash")
    if part == "all" or not want or ids != ids_digest(store.ids()) or want == store.split_hash():
        return
    raise StoreError(f"{store.url}: split hash {store.split_hash()[:12]} differs from the one the checkpoint was "
                     f"trained with ({want[:12]}; e.g. --replace-split): scoring split '{part}' would mix training "
                     "rows in; evaluate with --split all or retrain")


def read_labels(store: Store | str) -> dict[str, tuple[np.ndarray, dict]]:
    """Every task's labels as float32 (N, C) arrays (NaN = unknown) with the task's attributes (type, labels)."""
    store = store if isinstance(store, Store) else Store(store)
    check_store(store)
    return {task: (values.astype(np.float32), attrs) for task, (values, attrs) in store.labels().items()}


def present_versions(store: Store | str, wanted: dict[str, dict]) -> tuple[dict[str, str], list[str]]:
    """Of the "modality/expert" -> {config_hash, feature_hash, ...} a checkpoint records: (those the store holds ->
    its config hash, missing). A group matches by config hash, or — another cohort, same features — by feature hash."""
    store = store if isinstance(store, Store) else Store(store)
    found, missing = {}, []
    for key, rec in wanted.items():
        mod, name = key.split("/", 1)
        h = rec["config_hash"] if isinstance(rec, dict) else rec
        fh = rec.get("feature_hash") if isinstance(rec, dict) else None
        held = store.versions(mod, name) if mod in store.modalities() and name in store.experts(mod) else []
        if h[:12] in held:
            found[key] = h
            continue
        same = [g for g in (store.expert_group(mod, name, v) for v in held) if fh and feature_hash(g.attrs) == fh]
        if same:
            found[key] = same[-1].attrs["config_hash"]
        else:
            missing.append(key)
    return found, missing
