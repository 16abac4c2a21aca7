"""The same small validation search for every method: each grid point trains with one seed and is scored by the
validation AUROC (mean over tasks); the best point's recipe is the method's recipe. Test rows are never looked at.

A validation split with few rows of the rarer class ranks grid points by noise (MMIST: ~9 deaths in 75 rows). There
the search scores each point by stratified k-fold cross-validation over train + validation instead (``folds``): every
pooled row is held out once, normalisation statistics are refitted on each fold's training rows, and the mean over
folds decides. The final models still train on the official split; only the choice of recipe changes."""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
from typing import Callable

import numpy as np
import torch

from stores.errors import InputError
from stores.store import SPLIT_CODES

from .data import Data
from .trainer import Recipe, train_one

log = logging.getLogger("medmix.train")
DEFAULT_GRID = {"lr": [3e-4, 1e-3, 3e-3], "normalise": ["none", "standard"]}
MIN_VAL_MINORITY = 30          # fewer validation rows of the rarer class than this: k-fold scoring (auto)
CV_FOLDS = 5


def parse_grid(text: str | None) -> dict | None:
    """"lr=3e-4,1e-3;dropout=0.1,0.3" -> {"lr": [3e-4, 1e-3], "dropout": [0.1, 0.3]}; "none" / "" -> None. A wrong
    field or value is named (InputError: one line, exit 2)."""
    if not text or text == "none":
        return None
    if text == "default":
        return dict(DEFAULT_GRID)
    fields = {f.name: f for f in dataclasses.fields(Recipe)}
    grid = {}
    for part in text.split(";"):
        name, _, values = part.partition("=")
        name = name.strip().replace("-", "_")
        if name not in fields:
            raise InputError(f"--tune {part!r}: {name!r} is not a recipe field (fields: {', '.join(fields)})")
        if not values:
            raise InputError(f"--tune {part!r}: expected {name}=v1,v2")
        grid[name] = [_grid_value(part, name, fields, v) for v in values.split(",")]
    return grid


def _grid_value(part: str, name: str, fields: dict, value: str):
    if "=" in value:                              # "lr=1e-3,foo=2": a second field joined with ',' instead of ';'
        other = value.split("=", 1)[0].strip().replace("-", "_")
        if other not in fields:
            raise InputError(f"--tune {part!r}: {other!r} is not a recipe field (fields: {', '.join(fields)})")
        raise InputError(f"--tune {part!r}: separate fields with ';' (e.g. '{name}=...;{other}=...')")
    kind = type(fields[name].default)
    try:
        return kind(value.strip())
    except ValueError:
        raise InputError(f"--tune {part!r}: {value.strip()!r} is not a valid {kind.__name__} for {name}") from None


def points(grid: dict) -> list[dict]:
    keys = sorted(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def _class_counts(col: np.ndarray, task_type: str, n_classes: int) -> np.ndarray:
    col = col[~np.isnan(col)].astype(int)
    return np.bincount(col, minlength=n_classes if task_type == "multiclass" else 2)


def minority_count(data: Data, part: str = "val") -> int:
    """Rows of the rarer class in ``part``, the smallest over tasks. A multilabel task counts its median label (its
    rarest findings alone would always ask for folds); a multiclass task its smallest class."""
    y = data.y[data.rows(part)].cpu().numpy()
    counts = []
    for t in data.tasks:
        cols = y[:, t["cols"]]
        per = [int(_class_counts(cols[:, j], t["type"], len(t["labels"])).min()) for j in range(cols.shape[1])]
        counts.append(int(np.median(per)) if t["type"] == "multilabel" else per[0])
    return min(counts)


def _stratify_key(data: Data, rows: np.ndarray) -> np.ndarray:
    """The first task's class per row of ``rows`` (missing label: its own stratum); multilabel: its most balanced
    label among those rows (never counted on test rows)."""
    t = data.tasks[0]
    cols = data.y[torch.as_tensor(rows, device=data.y.device), t["cols"]].cpu().numpy()
    j = 0
    if t["type"] == "multilabel":
        j = int(np.argmax([_class_counts(cols[:, k], "binary", 2).min() for k in range(cols.shape[1])]))
    col = cols[:, j]
    return np.where(np.isnan(col), -1, col).astype(int)


def cv_splits(data: Data, k: int, seed: int) -> list[np.ndarray]:
    """k split arrays: test rows untouched; train + validation pooled, fold f held out as "val", the rest "train"."""
    from sklearn.model_selection import StratifiedKFold
    tr, va = SPLIT_CODES["train"], SPLIT_CODES["val"]
    pool = np.flatnonzero(np.isin(data.split, [tr, va]))
    key = _stratify_key(data, pool)
    smallest = int(np.unique(key, return_counts=True)[1].min()) if len(key) else 0
    if smallest < k:
        raise InputError(f"--tune-folds {k}: the stratifying label has a class with only {smallest} rows in "
                         f"train + validation (fewer than the folds); use fewer folds or 0")
    out = []
    for _, held in StratifiedKFold(k, shuffle=True, random_state=seed).split(pool, key):
        split = data.split.copy()
        split[pool] = tr
        split[pool[held]] = va
        out.append(split)
    return out


def parse_folds(text: str) -> int | None:
    """--tune-folds / --folds: None = auto, 0 = the validation split, N >= 2 folds (argparse type: exits 2 else)."""
    if text == "auto":
        return None
    if text.isdigit() and int(text) != 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r}: expected auto, 0 or a number of folds >= 2")


def resolve_folds(data: Data, folds: int | None) -> tuple[int, dict]:
    """``folds`` None = auto (CV_FOLDS when validation holds < MIN_VAL_MINORITY of the rarer class, else none);
    0 = the official validation split; N = N folds. Returns (k, the record for results.json)."""
    n = minority_count(data, "val")
    k = (CV_FOLDS if n < MIN_VAL_MINORITY else 0) if folds is None else int(folds)
    if k == 1 or k < 0:
        raise InputError(f"--tune-folds {folds}: expected auto, 0 (the validation split) or >= 2")
    why = ("asked" if folds is not None else
           f"validation holds {n} of the rarer class (< {MIN_VAL_MINORITY})" if k else
           f"validation holds {n} of the rarer class (>= {MIN_VAL_MINORITY})")
    scored = f"{k}-fold cross-validation over train + validation" if k else "the validation split"
    return k, {"folds": k, "val_minority": n, "why": why, "scored_on": scored}


def tune(method: str, data: Data | Callable[..., Data], base: Recipe, grid: dict, seed: int,
         large_mod: str | None = None, device: str = "cpu", folds: list[np.ndarray] | None = None,
         fit: Callable | None = None) -> tuple[Recipe, dict]:
    """``data``: the inputs, or a function (recipe, split) -> inputs when the grid changes them (``normalise``) or
    folds re-split the rows (split None: the official one). ``folds``: split arrays to score on (``cv_splits``).
    Plain ``data`` with folds is only re-split: pass raw inputs there (statistics fitted on the official train split
    would include each fold's held-out rows); ``Prepared.for_split`` refits them per fold. ``fit(key, compute)``
    (the run's ledger, ``train/progress.py``) keeps each grid point x fold's score so a rerun skips it."""
    data_for = data if callable(data) else (
        lambda _recipe, split: data if split is None else dataclasses.replace(data, split=split))
    fit = fit or (lambda _key, compute: compute())
    splits = folds or [None]
    table = []
    for point in points(grid):
        recipe = dataclasses.replace(base, **point)
        scores = [fit(f"{json.dumps(point, sort_keys=True)}|fold {i}",
                      lambda split=split: (_score(method, data_for(recipe, split), recipe, seed, large_mod, device),
                                           None))[0]
                  for i, split in enumerate(splits)]
        vals = [s["auroc"] for s in scores]
        best = [s["best_epoch"] for s in scores]
        run = [s["epochs_run"] for s in scores]
        row = {**point, "val_auroc": float(np.nanmean(vals)),
               "val_auprc": float(np.nanmean([s["auprc"] for s in scores])),
               "best_epoch": best[0] if folds is None else best, "epochs_run": run[0] if folds is None else run}
        if folds:
            row.update(fold_auroc=vals, val_auroc_std=float(np.nanstd(vals)))
        table.append(row)
        log.info("tune %s %s: val AUROC %.4f%s (%s epochs)", method, point, row["val_auroc"],
                 f" ± {row['val_auroc_std']:.4f} over {len(splits)} folds" if folds else "", row["epochs_run"])
    scores = [r["val_auroc"] if np.isfinite(r["val_auroc"]) else -np.inf for r in table]
    best_row = table[int(np.argmax(scores))]
    chosen = {k: best_row[k] for k in grid}
    scored_by = (f"mean validation AUROC over {len(folds)} stratified folds of train + validation" if folds
                 else "validation AUROC")
    return dataclasses.replace(base, **chosen), {"grid": grid, "seed": seed, "scored_by": scored_by,
                                                 "table": table, "chosen": chosen}


def _score(method: str, d: Data, recipe: Recipe, seed: int, large_mod, device) -> dict:
    """One grid point on one split: validation AUROC/AUPRC (mean over tasks) and the epochs it took."""
    from .evaluation import evaluate_split
    model, info = train_one(method, d, recipe, seed, large_modality=large_mod, device=device)
    val = evaluate_split(model, d, "val", None)["mean"]
    return {"auroc": val["auroc"], "auprc": val["auprc"], "best_epoch": info["best_epoch"],
            "epochs_run": info["epochs_run"]}
