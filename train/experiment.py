"""Methods x seeds x protocols on one store -> results (per task: per-seed values, mean, std; bootstrap CIs and
paired differences against MedMIX), per-sample predictions, checkpoints, efficiency.

The orchestration only: what is planned (``train/plan.py``), costs (``train/efficiency.py``), checkpoints
(``train/checkpoint.py``), the fit ledger that shows progress and resumes (``train/progress.py``), uncertainty
(``train/stats.py``) and the predictions table (``train/predictions.py``) each live in their own module."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from stores.cli import Interrupted
from stores.spec import canonical_hash
from stores.store import SPLIT_CODES, Store, ids_digest

from .checkpoint import json_default, save_checkpoint
from .data import Data
from .efficiency import eff_scores, efficiency
from .evaluation import split_metrics, val_thresholds
from .metrics import METRICS, REPORTED
from .plan import plan as make_plan
from .progress import PARTIAL, FitLedger
from .protocols import Protocol, apply_to_masks, drop_modalities
from .trainer import Recipe, build_model, predict, recipe_dict, train_one

log = logging.getLogger("medmix.train")


@dataclass
class Run:
    """What every method of one run shares."""
    prep: object
    data: Data
    recipe: Recipe
    seeds: list[int]
    protocols: list[str]
    out_dir: Path
    device: str
    tune_grid: dict | None
    folds: list | None
    ledger: FitLedger | None = None
    views: dict = field(default_factory=dict)
    tuned: dict = field(default_factory=dict)
    preds: dict = field(default_factory=dict)      # method -> {"prob", "thresholds", "rows"} (protocol none)
    proto_preds: dict = field(default_factory=dict)    # protocol -> method -> {"prob", "thresholds"} (test rows)

    def inputs(self, r: Recipe, sub=None, split=None) -> Data:
        """The inputs recipe ``r`` trains on (normalised or raw, one preparation), ablation view applied; a fold's
        ``split`` re-splits the raw device copy (no copy) and refits statistics on that fold's training rows."""
        if split is not None:
            if "none" not in self.views:
                self.views["none"] = self.prep.raw.to(self.device)
            d = self.prep.for_split(r, split, self.views["none"])
        else:
            if r.normalise not in self.views:
                self.views[r.normalise] = self.prep.for_recipe(r)[0].to(self.device)
            d = self.views[r.normalise]
        return sub(d) if sub else d


def annotate_tasks(tasks: list[dict], dataset: str) -> None:
    """Each task's clinically positive class from the spec (``positive_label``, ``positive_name``)."""
    from stores.errors import InputError
    from stores.spec import SpecError, load_spec
    try:
        spec_tasks = load_spec().dataset(dataset).tasks
    except (SpecError, InputError, LookupError):    # a store of a dataset the spec does not describe (tests, benches)
        return
    for t in tasks:
        ts = spec_tasks.get(t["name"])
        if ts is not None:
            t["positive_label"], t["positive_name"] = ts.positive_label, ts.positive_name


def _train_protocols(protocols: list[str]) -> list[str]:
    """The models a method trains per seed: test-time protocols reuse the one trained without drops."""
    out = []
    for p in protocols:
        proto = Protocol.parse(p)
        name = proto.name if proto.phase == "train" else "none"
        if name not in out:
            out.append(name)
    return out


def _inherits(name: str, method: str, sub, plan: dict) -> bool:
    """An ablation (or a teacher alone) keeps MedMIX's tuned recipe: one change each."""
    return (sub is not None or name != method) and "medmix" in plan


def plan_fits(plan: dict, tune_grid: dict | None, n_folds: int, seeds: list, protocols: list[str]
              ) -> tuple[int, list[str]]:
    """How many fits the run makes, and the plan in words."""
    from .tuning import points
    n_points = len(points(tune_grid)) if tune_grid else 0
    tuned = sum(1 for name, (m, sub, _) in plan.items() if not _inherits(name, m, sub, plan)) if tune_grid else 0
    n_train = len(_train_protocols(protocols))
    parts = []
    if tuned:
        parts.append(f"{tuned} methods x {n_points} grid points x "
                     + (f"{n_folds} folds" if n_folds else "1 validation split"))
    protos = f" x {n_train} training protocols" if n_train > 1 else ""
    parts.append(f"{len(plan)} methods x {len(seeds)} seeds{protos}")
    return tuned * n_points * max(1, n_folds) + len(plan) * len(seeds) * n_train, parts


def _header(store, prep, data, recipe, recipe_name, seeds, protocols, profile, versions, tune_grid) -> dict:
    return {"store": store.url, "dataset": store.meta["dataset"], "recipe": recipe_dict(recipe),
            "split_hash": store.split_hash(), "ids_hash": ids_digest(store.ids()), "recipe_name": recipe_name, "seeds": seeds, "protocols": protocols,
            "store_config_hashes": prep.selection, "selection": {"profile": profile, "pinned": versions or {}},
            "layout": data.layout, "teachers": sorted(data.teachers), "notes": prep.notes,
            "no_modality": prep.no_modality, "coverage": prep.coverage, "normalisation": prep.normalisation,
            "split_sizes": {p: int(len(data.rows(p))) for p in ("train", "val", "test")}, "tune_grid": tune_grid,
            "tasks": [{k: v for k, v in t.items() if k not in ("cols", "out")} for t in data.tasks], "methods": {}}


def run_experiment(store_path: str, methods: list[str], seeds: list[int], protocols: list[str], recipe: Recipe,
                   out_dir: Path, select: dict | None = None, tasks: list[str] | None = None, device: str = "cpu",
                   ablations: bool = False, reuse: bool = False, modalities: list[str] | None = None,
                   versions: dict | None = None, profile: str | None = None, keep_modalities: set | None = None,
                   tune_grid: dict | None = None, recipe_name: str = "custom", probes: bool = True,
                   tune_folds: int | None = None, n_boot: int | None = None, show_bar: bool | None = None) -> dict:
    """Train and evaluate every planned method; ``reuse`` returns an existing results.json of the same config hash
    (same store contents, recipe, seeds, protocols, plan and code version: CPU training is deterministic).
    ``tune_grid`` ({recipe field: [values]}) gives every method the same validation search (seed ``seeds[0]``),
    scored on the validation split or, with ``tune_folds`` (None = auto: when validation is small), on the same
    stratified folds of train + validation for every method. Finished fits are kept in results.partial.json: an
    interrupted run resumes where it stopped (``train/progress.py``)."""
    from stores.provenance import code_version

    from .diagnostics import diagnose
    from .prepare import prepare
    from .tuning import cv_splits, resolve_folds
    out_dir.mkdir(parents=True, exist_ok=True)
    store = Store(store_path)
    prep = prepare(store_path, recipe, select, tasks, modalities, versions, profile, keep_modalities)
    annotate_tasks(prep.data.tasks, store.meta.get("dataset", ""))
    data = prep.data.to(device)
    plan = make_plan(methods, data, ablations, prep.roles)
    if len(data.layout) == 1 and any(p != "none" for p in protocols):
        prep.notes.append(f"one modality ({next(iter(data.layout))}): missing-modality protocols not run (a drop "
                          f"would remove every input of a patient): {', '.join(p for p in protocols if p != 'none')}")
        log.warning(prep.notes[-1])
        protocols = ["none"]
    results = _header(store, prep, data, recipe, recipe_name, seeds, protocols, profile, versions, tune_grid)
    n_folds, results["tune_validation"] = resolve_folds(data, tune_folds) if tune_grid else (0, None)
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
    run = Run(prep, data, recipe, seeds, protocols, out_dir, device, tune_grid,
              cv_splits(prep.raw, n_folds, seeds[0]) if n_folds else None)
    total, parts = plan_fits(plan, tune_grid, n_folds, seeds, protocols)
    run.ledger = FitLedger(out_dir, results["config_hash"], total, show_bar)
    log.info(run.ledger.plan_line(parts))
    t_start = time.perf_counter()
    try:
        results["diagnostics"] = diagnose(data, probes=probes)
        for name, (method, sub, large_mod) in plan.items():
            results["methods"][name] = _run_method(run, results, name, method, sub, large_mod, plan)
            run.ledger.save(results)
    except KeyboardInterrupt:
        run.ledger.close(completed=False)
        raise Interrupted(f"{run.ledger.done} of {total} fits kept in {out_dir / PARTIAL}; the same command "
                          "resumes from there") from None
    results["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    results["fit_seconds"] = round(sum(f.get("seconds", 0) for f in run.ledger.fits.values()), 1)
    _finish(run, results, store, n_boot)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=json_default))
    run.ledger.close(completed=True)
    return results


def _finish(run: Run, results: dict, store: Store, n_boot: int | None) -> None:
    """EffScore, per-sample predictions files, bootstrap CIs and paired differences (protocol none, test rows)."""
    from .predictions import write_table
    from .stats import N_BOOT, bootstrap
    eff_scores(results)
    ids = store.ids()
    results["predictions"] = {}
    for name, pred in run.preds.items():
        rows = [dict(r, id=ids[r["id"]]) for r in pred["rows"]]
        path = write_table(rows, run.out_dir / "predictions" / f"{_file_name(name)}.csv")
        results["predictions"][name] = str(path.relative_to(run.out_dir))
    n_boot = N_BOOT if n_boot is None else n_boot
    if n_boot and run.preds:
        test = run.data.rows("test").cpu().numpy()
        y = run.data.y[test].cpu().numpy()
        ys = {t["name"]: y[:, t["cols"]] for t in run.data.tasks}
        t0 = time.perf_counter()
        results["bootstrap"] = bootstrap(run.data.tasks, ys, run.preds, "medmix", n_boot)
        t1 = time.perf_counter()
        results["bootstrap"]["protocols"] = {          # the missing-modality curves' CIs (no paired differences)
            proto: bootstrap(run.data.tasks, ys, preds, None, n_boot)["methods"]
            for proto, preds in run.proto_preds.items()}
        log.info("bootstrap: %d resamples of %d test samples, %d methods: %.0f s; the %d missing-modality "
                 "protocols' CIs: %.0f s", n_boot, len(test), len(run.preds), t1 - t0, len(run.proto_preds),
                 time.perf_counter() - t1)


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name).strip("_")


def _tuned_recipe(run: Run, results: dict, entry: dict, name, method, sub, large_mod, plan) -> Recipe:
    from .tuning import tune
    if not run.tune_grid:
        return run.recipe
    if _inherits(name, method, sub, plan) and "medmix" in run.tuned:
        entry["tuning"] = {"inherited_from": "medmix", "chosen": results["methods"]["medmix"]["tuning"]["chosen"]}
        return run.tuned["medmix"]
    fit = lambda key, compute: run.ledger.fit(f"tune|{name}|{key}", compute)  # noqa: E731
    recipe, entry["tuning"] = tune(method, lambda r, split, sub=sub: run.inputs(r, sub, split), run.recipe,
                                   run.tune_grid, run.seeds[0], large_mod, run.device, run.folds, fit)
    run.tuned[name] = recipe
    return recipe


def _trained(run: Run, name, method, mdata: Data, recipe: Recipe, seed: int, proto: Protocol, large_mod):
    """The model of (method, seed, training protocol): from the ledger when an earlier run finished it."""
    def compute():
        t0 = time.perf_counter()
        model, info = train_one(method, mdata, recipe, seed, proto, large_mod, run.device)
        log.info("%s seed %d (%s): %d epochs, best %d, %.0f s", name, seed, proto.name, info["epochs_run"],
                 info["best_epoch"], time.perf_counter() - t0)
        return {k: info[k] for k in ("best_epoch", "epochs_run", "best_val_loss")}, model.state_dict()
    info, state = run.ledger.fit(f"train|{name}|{seed}|{proto.name}", compute)
    model = build_model(method, mdata, recipe, large_mod).to(run.device)
    model.load_state_dict(state)
    model.eval()
    return model, info, val_thresholds(model, mdata)


def _run_method(run: Run, results: dict, name, method, sub, large_mod, plan) -> dict:
    entry = {"method": method, "protocols": {}}
    m_recipe = _tuned_recipe(run, results, entry, name, method, sub, large_mod, plan)
    mdata = run.inputs(m_recipe, sub)
    entry["recipe"] = recipe_dict(m_recipe)
    entry["normalisation"] = m_recipe.normalise
    trained = {}
    for proto_name in run.protocols:
        proto = Protocol.parse(proto_name)
        per_seed = []
        for seed in run.seeds:
            train_proto = proto if proto.phase == "train" else Protocol("none")
            if (seed, train_proto.name) not in trained:
                trained[(seed, train_proto.name)] = _trained(run, name, method, mdata, m_recipe, seed, train_proto,
                                                             large_mod)
            model, info, th = trained[(seed, train_proto.name)]
            masks = None
            if proto.phase == "test":
                gen = torch.Generator().manual_seed(10_000 + seed)
                keep = drop_modalities(mdata.available(), proto.kind, proto.rate, gen)
                masks = apply_to_masks(mdata.masks, keep, list(mdata.layout))
            with torch.no_grad():
                logits = predict(model, mdata, mdata.rows("test"), masks).logits.cpu().numpy()
            res = split_metrics(mdata, "test", logits, th)
            if proto_name != "none":                 # the protocol's bootstrap CIs resample these probabilities
                _append_probabilities(run.proto_preds.setdefault(proto_name, {}).setdefault(
                    name, {"prob": {}, "thresholds": {}}), mdata.tasks, logits, th)
            per_seed.append({"seed": seed, **res["mean"], "tasks": {k: v for k, v in res.items()
                                                                     if k not in ("mean", "degenerate")},
                             "best_epoch": info["best_epoch"], "epochs_run": info["epochs_run"],
                             "degenerate": res["degenerate"]})
            if res["degenerate"]:
                log.warning("%s seed %d (%s): degenerate predictions: %s", name, seed, proto_name, res["degenerate"])
            if proto_name == "none":
                _keep_predictions(run, name, model, mdata, th, seed)
                if seed == run.seeds[0]:
                    _first_seed_outputs(run, results, entry, name, method, model, mdata, m_recipe, th, large_mod)
        entry["protocols"][proto_name] = summarise(per_seed)
        s = entry["protocols"][proto_name]["auroc"]
        log.info("%s %s: AUROC %.4f%s", name, proto_name, s["mean"], f" ± {s['std']:.4f}" if len(per_seed) > 1 else "")
    return entry


def _first_seed_outputs(run, results, entry, name, method, model, mdata, m_recipe, th, large_mod) -> None:
    from .diagnostics import mean_weights
    save_checkpoint(run.out_dir / "checkpoints" / f"{name}.pt", model, method, mdata, m_recipe, run.seeds[0],
                    large_mod, th, results, run.prep.stats if m_recipe.normalise == "standard" else None)
    entry["efficiency"] = efficiency(model, mdata)
    if method == "medmix":
        entry["weights"] = mean_weights(model, mdata)


@torch.no_grad()
def _keep_predictions(run: Run, name: str, model, data: Data, th: dict, seed: int) -> None:
    """Validation and test rows' outputs of one seed: the predictions table, and the test probabilities the
    bootstrap resamples."""
    from .predictions import rows_for
    idx = torch.cat([data.rows("val"), data.rows("test")])
    logits = predict(model, data, idx).logits.cpu().numpy()
    y = data.y[idx].cpu().numpy()
    rows_idx = idx.cpu().numpy()
    p = run.preds.setdefault(name, {"prob": {}, "thresholds": {}, "rows": []})
    p["rows"] += rows_for(list(rows_idx), data.split[rows_idx], data.tasks, logits, y, th, seed)
    test = data.split[rows_idx] == SPLIT_CODES["test"]
    _append_probabilities(p, data.tasks, logits[test], th)


def _append_probabilities(p: dict, tasks: list[dict], logits: np.ndarray, th: dict) -> None:
    """One seed's test probabilities and thresholds per task, appended to ``p`` (the layout ``stats.ensemble``
    averages over seeds)."""
    from .metrics import probabilities
    for t in tasks:
        p["prob"].setdefault(t["name"], []).append(probabilities(t, logits[:, t["out"]]))
        cut = th.get(t["name"]) if t["type"] != "multiclass" else None
        p["thresholds"].setdefault(t["name"], []).append(np.full(t["out"].stop - t["out"].start, 0.5)
                                                         if cut is None else np.asarray(cut))


def _train_code_fingerprint() -> str:
    """sha256 of the code that computes results (train/ and the loader): what a cached result depends on."""
    import hashlib
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for f in sorted([*root.glob("train/**/*.py"), root / "stores" / "loader.py"]):
        h.update(f.read_bytes())
    return h.hexdigest()


def _stats(vals: list[float]) -> dict:
    vals = [float(v) for v in vals]
    return {"mean": float(np.nanmean(vals)) if vals else float("nan"),
            "std": float(np.nanstd(vals)) if len(vals) > 1 else None, "values": vals}


def summarise(per_seed: list[dict]) -> dict:
    """Mean and std over seeds (std None for one seed: nothing to spread) of the mean over tasks and of each task."""
    out = {k: _stats([p[k] for p in per_seed]) for k in (*METRICS, "perf")}
    tasks = per_seed[0].get("tasks", {}) if per_seed else {}
    out["tasks"] = {t: {**{k: _stats([p["tasks"][t][k] for p in per_seed]) for k in REPORTED
                           if k in per_seed[0]["tasks"][t]},
                        "prevalence": per_seed[0]["tasks"][t].get("prevalence")} for t in tasks}
    out["per_seed"] = per_seed
    return out
