"""Checkpoints, written and read in one place: ``<method>.pt`` (a state dict, loadable with ``weights_only=True``) and
``<method>.json`` (layout, dims, tasks, validation thresholds, recipe, seed, the store's config hashes, the
normalisation). ``data_for`` rebuilds a checkpoint's inputs from any store by the config hashes it records, which
is what `train evaluate` and `train predict` score."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from stores.errors import InputError

from .data import Data
from .trainer import Recipe, build_model, recipe_dict


def json_default(o):
    """numpy scalars/arrays and slices in results and checkpoint files."""
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, slice):
        return [o.start, o.stop]
    raise TypeError(type(o))


def save_checkpoint(path: Path, model, method, data: Data, recipe: Recipe, seed, large_mod, thresholds, results,
                    normalisation: dict | None):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    meta = {"method": method, "layout": data.layout, "dims": {m: [x.shape[1] for x in xs] for m, xs in data.xs.items()},
            "teacher_dims": {m: t.shape[1] for m, t in data.teachers.items()},
            "tasks": [{**t, "cols": [t["cols"].start, t["cols"].stop], "out": [t["out"].start, t["out"].stop]}
                      for t in data.tasks],
            "recipe": recipe_dict(recipe), "seed": seed, "large_modality": large_mod,
            "thresholds": {k: v.tolist() for k, v in thresholds.items()},
            "store": results["store"], "store_config_hashes": results["store_config_hashes"],
            "split_hash": results["split_hash"], "ids_hash": results["ids_hash"],
            "normalisation": normalisation, "recipe_name": results.get("recipe_name")}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, default=json_default))


def load_checkpoint(path: str) -> tuple[dict, dict, Recipe]:
    """(meta, state dict, recipe); a wrong file (the .json given as the checkpoint, a file that is not a state dict,
    a missing or unreadable sidecar) is refused in one line naming it."""
    p = Path(path)
    if p.suffix == ".json":
        raise InputError(f"--checkpoint {path}: that is the checkpoint's metadata; pass the weights file "
                         f"{p.with_suffix('.pt')}")
    side = p.with_suffix(".json")
    if not p.exists() or not side.exists():
        what = "no such file" if not p.exists() else f"its metadata {side} is missing"
        raise InputError(f"--checkpoint {path}: {what}")
    try:
        meta = json.loads(side.read_text())
        recipe = Recipe(**meta["recipe"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"--checkpoint {path}: {side} is not a MedMIX checkpoint description ({exc})") from None
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (pickle, zip and format errors: all mean "not a state dict")
        raise InputError(f"--checkpoint {path}: unreadable checkpoint, not a weights-only state dict "
                         f"({type(exc).__name__})") from None
    if not isinstance(state, dict):
        raise InputError(f"--checkpoint {path}: holds a {type(state).__name__}, not a state dict")
    return meta, state, recipe


def checkpoint_groups(meta) -> list[str]:
    return ([f"{m}/{n}" for m, names in meta["layout"].items() for n in names]
            + [f"{m}/teacher" for m in meta.get("teacher_dims", {})])


def _read_checkpoint_groups(st, meta, wanted, found, allow_other, notes):
    """Per wanted group: the store's vectors and mask (or zeros and False where it lacks the group)."""
    from stores.loader import TEACHER, choose_group, read_group
    recorded = meta.get("store_config_hashes", {})
    vecs, masks = {}, {}
    for key in wanted:
        mod, name = key.split("/", 1)
        m_i = meta["layout"].get(mod, [])
        dim = meta["teacher_dims"][mod] if name == TEACHER else meta["dims"][mod][m_i.index(name)]
        have_expert = mod in st.modalities() and name in st.experts(mod)
        if key in found or (allow_other and have_expert):
            g, _ = choose_group(st, mod, name, {key: found[key]} if key in found else {}, None)
            if key not in found:
                notes.append(f"{key}: OTHER features (store config {g.attrs['config_hash'][:12]}, checkpoint "
                             f"{recorded.get(key, {}).get('config_hash', '?')[:12]}) used (--allow-other-features)")
            vecs[key], masks[key] = read_group(g)
            if vecs[key].shape[1] != dim:
                raise InputError(f"{st.url}: {key} has dim {vecs[key].shape[1]}, the checkpoint expects {dim}")
        else:
            notes.append(f"{key}: not in this store with the checkpoint's config: missing for every sample")
            vecs[key], masks[key] = np.zeros((st.n, dim), np.float32), np.zeros(st.n, bool)
    return vecs, masks


def data_for(meta, store: str, device: str = "cpu", allow_other: bool = False, notes: list | None = None) -> Data:
    """The checkpoint's expert groups, chosen by the config hashes it records. A group this store lacks is missing
    for every sample (the model masks it exactly), or with ``allow_other`` the store's own group of that expert is
    used (said in ``notes``). A store holding none of them is refused unless ``allow_other``."""
    from stores.loader import present_versions, read_labels
    from stores.store import Store
    notes = [] if notes is None else notes
    st = Store(store)
    recorded = meta.get("store_config_hashes", {})
    wanted = checkpoint_groups(meta)
    found, missing = present_versions(st, {k: recorded[k] for k in wanted if k in recorded})
    if not found and not allow_other:
        eg = ", ".join(f"{k} {recorded[k]['config_hash'][:12]}" for k in wanted[:3] if k in recorded)
        raise InputError(f"{store} holds none of the {len(wanted)} expert groups the checkpoint was trained on "
                         f"({eg}, ...): features would differ; pass --allow-other-features to evaluate deliberately "
                         "on this store's own features")
    vecs, masks = _read_checkpoint_groups(st, meta, wanted, found, allow_other, notes)
    labels = read_labels(st)
    for t in meta["tasks"]:                                   # a cohort without labels can still be predicted
        if t["name"] not in labels:
            width = t["cols"][1] - t["cols"][0]
            labels[t["name"]] = (np.full((st.n, width), np.nan, np.float32), {"type": t["type"], "labels": t["labels"]})
    data = Data.from_arrays(st.split(), labels,
                            {m: {e: vecs[f"{m}/{e}"] for e in names} for m, names in meta["layout"].items()},
                            {m: {e: masks[f"{m}/{e}"] for e in names} for m, names in meta["layout"].items()},
                            {m: vecs[f"{m}/teacher"] for m in meta.get("teacher_dims", {})},
                            {m: masks[f"{m}/teacher"] for m in meta.get("teacher_dims", {})},
                            [t["name"] for t in meta["tasks"]])
    if meta.get("normalisation"):
        from .normalise import apply_stats
        data = apply_stats(data, meta["normalisation"])
    return data.to(device)


def model_for(meta, state, recipe, data: Data):
    """The checkpoint's model on ``data``'s device, in eval mode."""
    model = build_model(meta["method"], data, recipe, meta.get("large_modality"))
    model.load_state_dict(state)
    return model.to(data.device).eval()
