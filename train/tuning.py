"""The same small validation search for every method: each grid point trains once (one seed) and is scored by the
validation AUROC (mean over tasks); the best point's recipe is the method's recipe. Test rows are never looked at."""
from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import Callable

import numpy as np

from .data import Data
from .trainer import Recipe, train_one

log = logging.getLogger("medmix.train")
DEFAULT_GRID = {"lr": [3e-4, 1e-3, 3e-3], "normalise": ["none", "standard"]}


def parse_grid(text: str | None) -> dict | None:
    """"lr=3e-4,1e-3;dropout=0.1,0.3" -> {"lr": [3e-4, 1e-3], "dropout": [0.1, 0.3]}; "none" / "" -> None."""
    if not text or text == "none":
        return None
    if text == "default":
        return dict(DEFAULT_GRID)
    fields = {f.name: f for f in dataclasses.fields(Recipe)}
    grid = {}
    for part in text.split(";"):
        name, _, values = part.partition("=")
        name = name.strip().replace("-", "_")
        if name not in fields or not values:
            raise ValueError(f"tune grid {part!r}: expected <recipe field>=v1,v2 (fields: {', '.join(fields)})")
        kind = type(fields[name].default)
        grid[name] = [kind(v) for v in values.split(",")]
    return grid


def points(grid: dict) -> list[dict]:
    keys = sorted(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def tune(method: str, data: Data | Callable[[Recipe], Data], base: Recipe, grid: dict, seed: int,
         large_mod: str | None = None, device: str = "cpu") -> tuple[Recipe, dict]:
    """``data``: the inputs, or a function recipe -> inputs when the grid changes them (``normalise``)."""
    from .evaluation import evaluate_split
    data_for = data if callable(data) else (lambda _recipe: data)
    table = []
    for point in points(grid):
        recipe = dataclasses.replace(base, **point)
        data = data_for(recipe)
        model, info = train_one(method, data, recipe, seed, large_modality=large_mod, device=device)
        val = evaluate_split(model, data, "val", None)["mean"]
        table.append({**point, "val_auroc": val["auroc"], "val_auprc": val["auprc"], "best_epoch": info["best_epoch"],
                      "epochs_run": info["epochs_run"]})
        log.info("tune %s %s: val AUROC %.4f (%d epochs)", method, point, val["auroc"], info["epochs_run"])
    scores = [r["val_auroc"] if np.isfinite(r["val_auroc"]) else -np.inf for r in table]
    best = table[int(np.argmax(scores))]
    chosen = {k: best[k] for k in grid}
    return dataclasses.replace(base, **chosen), {"grid": grid, "seed": seed, "scored_by": "validation AUROC",
                                                 "table": table, "chosen": chosen}
