"""Which recipe is the default: every candidate scored on VALIDATION only (mean val AUROC over seeds), per dataset.

    python -m train.select_recipe --datasets mmist,physionet2012,openi --seeds 3 --out runs/recipe

A small validation split is replaced by k-fold cross-validation over train + validation (``--folds``, as
``python -m train --tune-folds``). Candidates: the paper's literal recipe, the robust recipe, and the robust recipe
with one component changed at a time (so each component's effect is a validation figure). Writes
recipe_selection.json and .md; the default in trainer.RECIPES must be the candidate with the best mean over
datasets (docs/train.md quotes the table).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

from .trainer import RECIPES, Recipe, train_one
from .tuning import cv_splits, parse_folds, resolve_folds

ROBUST = RECIPES["robust"]
PAPER = RECIPES["paper"]
CANDIDATES = {
    "paper": PAPER,
    "robust": ROBUST,
    "robust, epoch warm-up (paper: 50 epochs)": dataclasses.replace(ROBUST, warmup_steps=0, warmup_epochs=50),
    "robust, standardised inputs": dataclasses.replace(ROBUST, normalise="standard"),
    "robust, default fusion init": dataclasses.replace(ROBUST, fusion_init="default"),
    "robust, no auxiliary losses": dataclasses.replace(ROBUST, aux_weight=0.0),
    "robust, no modality dropout": dataclasses.replace(ROBUST, modality_dropout=0.0),
}


def score(store: str, recipe: Recipe, methods: list[str], seeds: list[int], device: str,
          folds: int | None = 0) -> dict:
    """Mean validation AUROC per method: over ``seeds`` on the official split, or (``folds`` k > 0; None = auto, as
    ``python -m train --tune-folds``) over k stratified folds of train + validation, fold i trained with seed i and
    normalised with statistics of its own training rows."""
    from .evaluation import evaluate_split
    from .prepare import prepare
    prep = prepare(store, recipe)
    k, how = resolve_folds(prep.raw, folds)
    if k:
        runs = [(i, prep.for_split(recipe, split).to(device)) for i, split in enumerate(cv_splits(prep.raw, k, 0))]
    else:
        runs = [(seed, prep.data.to(device)) for seed in seeds]
    out = {}
    for method in methods:
        vals, epochs = [], []
        for seed, data in runs:
            model, info = train_one(method, data, recipe, seed, device=device)
            vals.append(evaluate_split(model, data, "val", None)["mean"]["auroc"])
            epochs.append(info["epochs_run"])
        out[method] = {"val_auroc": float(np.mean(vals)), "std": float(np.std(vals)), "values": vals,
                       "epochs": epochs, "scored_on": how["scored_on"]}
    return out


def main(argv=None) -> int:
    from .__main__ import _default_store
    ap = Parser(prog="python -m train.select_recipe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="mmist,physionet2012,openi")
    ap.add_argument("--stores", help="comma list of store paths, in the order of --datasets (default: store root)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", default="medmix,meanavg")
    ap.add_argument("--candidates", help="comma list of candidate names (default: all)")
    ap.add_argument("--out", default="runs/recipe")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--folds", default=None, type=parse_folds, metavar="auto|0|N",
                    help="auto (k-fold over train + validation when validation holds < 30 of the rarer class), "
                         "0 (the validation split, --seeds seeds) or N folds")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    datasets = args.datasets.split(",")
    stores = args.stores.split(",") if args.stores else [_default_store(d, None) for d in datasets]
    names = args.candidates.split(",") if args.candidates else list(CANDIDATES)
    path = out / "recipe_selection.json"
    res = json.loads(path.read_text()) if path.exists() else {}       # resumes: finished cells are kept
    for ds, store in zip(datasets, stores):
        for name in names:
            key = f"{ds} | {name}"
            how = {"recipe": dataclasses.asdict(CANDIDATES[name]), "store": store, "folds": args.folds,
                   "seeds": args.seeds, "methods": args.methods}
            if key in res and all(res[key].get(k) == v for k, v in how.items()):
                continue                                  # the same cell, scored the same way: kept
            t0 = time.perf_counter()
            res[key] = {"dataset": ds, "candidate": name, **how,
                        "scores": score(store, CANDIDATES[name], args.methods.split(","), list(range(args.seeds)),
                                        args.device, args.folds), "seconds": round(time.perf_counter() - t0, 1)}
            path.write_text(json.dumps(res, indent=2))
            print(key, {m: round(v["val_auroc"], 4) for m, v in res[key]["scores"].items()}, f"{res[key]['seconds']} s",
                  flush=True)
    (out / "recipe_selection.md").write_text(table(res, datasets, names, args.methods.split(",")))
    print(table(res, datasets, names, args.methods.split(",")))
    return 0


def table(res: dict, datasets: list[str], names: list[str], methods: list[str]) -> str:
    lines = ["| candidate | method | " + " | ".join(datasets) + " | mean |", "|---|---|" + "---|" * (len(datasets) + 1)]
    for name in names:
        for m in methods:
            vals = [res.get(f"{d} | {name}", {}).get("scores", {}).get(m, {}) for d in datasets]
            cells = [f"{v['val_auroc']:.4f} ± {v['std']:.4f}" if v else "" for v in vals]
            got = [v["val_auroc"] for v in vals if v]
            mean = f"{np.mean(got):.4f}" if len(got) == len(datasets) else ""
            lines.append(f"| {name} | {m} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
