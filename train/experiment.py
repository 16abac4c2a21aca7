"""Methods x seeds x protocols on one store -> results (per-seed values, mean, std), checkpoints, efficiency."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from stores.spec import canonical_hash
from stores.store import Store, ids_digest

from .data import Data
from .evaluation import evaluate_split, val_thresholds
from .metrics import METRICS
from .protocols import Protocol, apply_to_masks, drop_modalities
from .trainer import Recipe, predict, recipe_dict, train_one

log = logging.getLogger("medmix.train")


def _peak_rss_increase_mb(fn) -> float | None:
    """Peak resident memory above the level before ``fn`` (MB), via Linux's resettable high-water mark
    (/proc/self/clear_refs "5" resets VmHWM); None where the kernel does not offer it."""
    def field(name):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(name):
                return int(line.split()[1]) / 1024
        raise KeyError(name)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = field("VmRSS:")
    except (OSError, KeyError):
        return None
    fn()
    return max(0.0, field("VmHWM:") - before)


def inference_parameters(model) -> int:
    """Parameters used at inference: training-only parts (the distillation teacher projection) are excluded."""
    skip = {id(p) for name, mod in model.named_children() if name == "teacher_proj" for p in mod.parameters()}
    return int(sum(p.numel() for p in model.parameters() if id(p) not in skip))


def efficiency(model, data: Data) -> dict:
    """Inference parameters, forward FLOPs per sample and peak forward memory of the fusion model.

    Memory is a measured peak: CUDA's allocator peak on a GPU, the process's peak RSS increase on CPU (None where
    the OS cannot reset the high-water mark)."""
    from .trainer import forward
    device = next(model.parameters()).device
    data = data.to(device)
    idx = data.rows("test")[:64]
    if len(idx) == 0:
        idx = torch.arange(min(64, len(data.y)), device=data.device)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        forward(model, data, idx)
    flops = fc.get_total_flops() / len(idx)
    with torch.no_grad():
        forward(model, data, idx)                          # warm-up: lazy initialisation is not the model's memory
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            forward(model, data, idx)
            torch.cuda.synchronize(device)
            peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        else:
            peak = _peak_rss_increase_mb(lambda: forward(model, data, idx))
    return {"params": inference_parameters(model), "flops_per_sample": float(flops),
            "peak_memory_mb": None if peak is None else float(peak), "memory_measure": (
                "cuda max_memory_allocated" if device.type == "cuda" else "peak RSS increase (VmHWM)"),
            "batch": int(len(idx)), "device": str(device)}


def run_experiment(store_path: str, methods: list[str], seeds: list[int], protocols: list[str], recipe: Recipe,
                   out_dir: Path, select: dict | None = None, tasks: list[str] | None = None, device: str = "cpu",
                   ablations: bool = False, reuse: bool = False, modalities: list[str] | None = None,
                   versions: dict | None = None, profile: str | None = None, keep_modalities: set | None = None,
                   tune_grid: dict | None = None, recipe_name: str = "custom", probes: bool = True,
                   tune_folds: int | None = None) -> dict:
    """Train and evaluate every planned method; ``reuse`` returns an existing results.json of the same config hash
    (same store contents, recipe, seeds, protocols, plan and code version: CPU training is deterministic).
    ``tune_grid`` ({recipe field: [values]}) gives every method the same validation search (seed ``seeds[0]``),
    scored on the validation split or, with ``tune_folds`` (None = auto: when validation is small), on the same
    stratified folds of train + validation for every method."""
    from stores.provenance import code_version

    from .diagnostics import diagnose
    from .prepare import prepare
    from .tuning import cv_splits, resolve_folds, tune
    out_dir.mkdir(parents=True, exist_ok=True)
    store = Store(store_path)
    prep = prepare(store_path, recipe, select, tasks, modalities, versions, profile, keep_modalities)
    data = prep.data.to(device)
    plan = _plan(methods, data, ablations, prep.roles)
    if len(data.layout) == 1 and any(p != "none" for p in protocols):
        prep.notes.append(f"one modality ({next(iter(data.layout))}): missing-modality protocols not run (a drop "
                          f"would remove every input of a patient): {', '.join(p for p in protocols if p != 'none')}")
        log.warning(prep.notes[-1])
        protocols = ["none"]
    results = {"store": store.url, "dataset": store.meta["dataset"], "recipe": recipe_dict(recipe),
               "split_hash": store.split_hash(), "ids_hash": ids_digest(store.ids()),
               "recipe_name": recipe_name, "seeds": seeds, "protocols": protocols,
               "store_config_hashes": prep.selection, "selection": {"profile": profile, "pinned": versions or {}},
               "layout": data.layout, "teachers": sorted(data.teachers), "notes": prep.notes,
               "no_modality": prep.no_modality, "coverage": prep.coverage, "normalisation": prep.normalisation,
               "split_sizes": {p: int(len(data.rows(p))) for p in ("train", "val", "test")}, "tune_grid": tune_grid,
               "methods": {}}
    n_folds, results["tune_validation"] = resolve_folds(data, tune_folds) if tune_grid else (0, None)
    folds = cv_splits(prep.raw, n_folds, seeds[0]) if n_folds else None
    results["code_version"] = code_version()
    results["train_code_sha256"] = _train_code_fingerprint()
    results["config_hash"] = canonical_hash({**{k: results[k] for k in ("recipe", "seeds", "protocols", "split_hash",
                                                                      "store_config_hashes", "train_code_sha256",
                                                                      "tune_grid", "tune_validation")},
                                             "plan": sorted(plan), "select": select, "tasks": tasks,
                                             "modalities": modalities, "keep": sorted(keep_modalities or [])})
    previous = out_dir / "results.json"
    if reuse and previous.exists():
        old = json.loads(previous.read_text())
        if old.get("config_hash") == results["config_hash"]:
            log.info("%s: results for config %s already there: reused", out_dir, results["config_hash"][:12])
            return old
    t_start = time.perf_counter()
    results["diagnostics"] = diagnose(data, probes=probes)
    tuned, views = {}, {recipe.normalise: data}          # the base recipe's view is prepared already

    def inputs(r: Recipe, sub=None, split=None) -> Data:
        """The inputs recipe ``r`` trains on (normalised or raw, one preparation), ablation view applied; a fold's
        ``split`` re-splits the raw device copy (no copy) and refits statistics on that fold's training rows."""
        if split is not None:
            if "none" not in views:
                views["none"] = prep.raw.to(device)
            d = prep.for_split(r, split, views["none"])
        else:
            if r.normalise not in views:
                views[r.normalise] = prep.for_recipe(r)[0].to(device)
            d = views[r.normalise]
        return sub(d) if sub else d

    for name, (method, sub, large_mod) in plan.items():
        entry = {"method": method, "protocols": {}}
        m_recipe = recipe
        if tune_grid and (sub is not None or name != method) and "medmix" in tuned:
            m_recipe = tuned["medmix"]                    # an ablation keeps MedMIX's tuned recipe: one change each
            entry["tuning"] = {"inherited_from": "medmix", "chosen": results["methods"]["medmix"]["tuning"]["chosen"]}
        elif tune_grid:
            m_recipe, entry["tuning"] = tune(method, lambda r, split, sub=sub: inputs(r, sub, split), recipe,
                                             tune_grid, seeds[0], large_mod, device, folds)
            tuned[name] = m_recipe
        mdata = inputs(m_recipe, sub)
        entry["recipe"] = recipe_dict(m_recipe)
        entry["normalisation"] = m_recipe.normalise
        trained = {}
        for proto_name in protocols:
            proto = Protocol.parse(proto_name)
            per_seed = []
            for seed in seeds:
                train_proto = proto if proto.phase == "train" else Protocol("none")
                key = (seed, train_proto.name)
                if key not in trained:        # test-time protocols reuse the model trained without drops
                    t0 = time.perf_counter()
                    model, info = train_one(method, mdata, m_recipe, seed, train_proto, large_mod, device)
                    log.info("%s seed %d (%s): %d epochs, best %d, %.0f s", name, seed, train_proto.name,
                             info["epochs_run"], info["best_epoch"], time.perf_counter() - t0)
                    trained[key] = (model, info, val_thresholds(model, mdata))
                model, info, th = trained[key]
                masks = None
                if proto.phase == "test":
                    gen = torch.Generator().manual_seed(10_000 + seed)
                    keep = drop_modalities(mdata.available(), proto.kind, proto.rate, gen)
                    masks = apply_to_masks(mdata.masks, keep, list(mdata.layout))
                res = evaluate_split(model, mdata, "test", th, masks)
                per_seed.append({"seed": seed, **res["mean"], "tasks": {k: v for k, v in res.items() if k not in ("mean", "degenerate")},
                                 "best_epoch": info["best_epoch"], "epochs_run": info["epochs_run"],
                                 "degenerate": res["degenerate"]})
                if res["degenerate"]:
                    log.warning("%s seed %d (%s): degenerate predictions: %s", name, seed, proto_name, res["degenerate"])
                if proto_name == "none" and seed == seeds[0]:
                    _save_checkpoint(out_dir / "checkpoints" / f"{name}.pt", model, method, mdata, m_recipe, seed,
                                     large_mod, th, results,
                                     prep.stats if m_recipe.normalise == "standard" else None)
                    entry["efficiency"] = efficiency(model, mdata)
                    if method == "medmix":
                        entry["weights"] = mean_weights(model, mdata)
            entry["protocols"][proto_name] = summarise(per_seed)
            log.info("%s %s: AUROC %.4f ± %.4f", name, proto_name, entry["protocols"][proto_name]["auroc"]["mean"],
                     entry["protocols"][proto_name]["auroc"]["std"])
        results["methods"][name] = entry
        (out_dir / "results.partial.json").write_text(json.dumps(results, indent=2, default=_json_default))
    results["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    _eff_scores(results)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=_json_default))
    return results


def _train_code_fingerprint() -> str:
    """sha256 of the code that computes results (train/ and the loader): what a cached result depends on."""
    import hashlib
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for f in sorted([*root.glob("train/**/*.py"), root / "stores" / "loader.py"]):
        h.update(f.read_bytes())
    return h.hexdigest()


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, slice):
        return [o.start, o.stop]
    raise TypeError(type(o))


def summarise(per_seed: list[dict]) -> dict:
    out = {}
    for k in (*METRICS, "perf"):
        vals = [float(p[k]) for p in per_seed]
        out[k] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "values": vals}
    out["per_seed"] = per_seed
    return out


def _subset(modalities=None, drop_role_experts=None, roles=None, only_expert=None):
    """Ablation views of the data: some modalities, no experts of a role, or one named expert where present."""
    def sub(data: Data) -> Data:
        layout, xs, masks = {}, {}, {}
        for m, names in data.layout.items():
            if modalities and m not in modalities:
                continue
            keep = [k for k, n in enumerate(names) if not drop_role_experts or roles.get(f"{m}/{n}") not in drop_role_experts]
            if only_expert and only_expert in names:
                keep = [names.index(only_expert)]
            if keep:
                layout[m], xs[m], masks[m] = [names[k] for k in keep], [data.xs[m][k] for k in keep], data.masks[m][:, keep]
        teachers = {m: t for m, t in data.teachers.items() if m in layout}
        return Data(layout, xs, masks, data.y, data.tasks, teachers, {m: data.teacher_masks[m] for m in teachers}, data.split)
    return sub


def _plan(methods: list[str], data: Data, ablations: bool, roles: dict | None = None) -> dict:
    plan = {}
    for m in methods:
        if m == "large":
            for mod in data.teachers:
                plan[f"{mod}-large"] = ("large", None, mod)
        else:
            plan[m] = (m, None, None)
    if ablations:
        plan["medmix w/o distillation"] = ("medmix_nodistill", None, None)
        plan["medmix w/o intra-fusion (uniform mean)"] = ("medmix_mean", None, None)
        for name in sorted({n for names in data.layout.values() for n in names}):
            if any(len(names) > 1 and name in names for names in data.layout.values()):
                plan[f"medmix single expert '{name}' per modality"] = ("medmix", _subset(only_expert=name), None)
        present = {roles.get(f"{m}/{n}") for m, names in data.layout.items() for n in names} - {None}
        for role in sorted(present):
            if len(present) > 1:
                plan[f"medmix w/o {role} experts"] = ("medmix", _subset(drop_role_experts={role}, roles=roles), None)
        if len(data.layout) > 1:
            for mod in data.layout:
                plan[f"medmix {mod} only"] = ("medmix", _subset(modalities=[mod]), None)
    return plan


@torch.no_grad()
def mean_weights(model, data: Data) -> dict:
    """Mean router weight per expert (over samples with the modality) and mean fusion weight per modality."""
    idx = data.rows("test")
    out = predict(model, data, idx)
    router, fusion = {}, {}
    for i, m in enumerate(data.layout):
        a = data.masks[m][idx].any(1)                     # only patients who HAVE the modality
        if m in out.router:
            router[m] = {n: float(out.router[m][a, k].mean()) if a.any() else float("nan")
                         for k, n in enumerate(data.layout[m])}
        fusion[m] = float(out.fusion[a, i].mean()) if a.any() else float("nan")
    return {"router": router, "fusion": fusion, "averaged_over": "test patients who have the modality"}


def _eff_scores(results: dict) -> None:
    """EffScore = (Perf / Perf_MedMIX) / geomean of the cost ratios. Peak memory counts only when it is an allocator
    figure (CUDA): a CPU RSS increase of a small model is page-level noise (often 0) and would dominate the ratio."""
    ref = results["methods"].get("medmix")
    if not ref or "efficiency" not in ref or "none" not in ref["protocols"]:
        return
    p_ref = ref["protocols"]["none"]["perf"]["mean"]
    keys = ["params", "flops_per_sample"] + (["peak_memory_mb"] if ref["efficiency"].get("device", "").startswith("cuda")
                                             else [])
    results["eff_score_terms"] = keys
    for entry in results["methods"].values():
        if "efficiency" not in entry or "none" not in entry["protocols"]:
            continue
        e, r = entry["efficiency"], ref["efficiency"]
        ratios = [max(e[k], 1e-9) / max(r[k], 1e-9) for k in keys if e.get(k) is not None and r.get(k) is not None]
        entry["eff_score"] = (entry["protocols"]["none"]["perf"]["mean"] / p_ref) / float(np.exp(np.mean(np.log(ratios))))


def _save_checkpoint(path: Path, model, method, data: Data, recipe: Recipe, seed, large_mod, thresholds, results,
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
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, default=_json_default))
