"""A trained model on one split: metrics at validation-tuned thresholds, and the thresholds themselves.
Shared by the experiment loop, the validation search and `train evaluate` (below all three)."""
from __future__ import annotations

import numpy as np

from .data import Data
from .metrics import METRICS, perf, task_metrics, tune_thresholds
from .trainer import predict


def evaluate_split(model, data: Data, part: str, thresholds: dict | None, masks=None) -> dict:
    return split_metrics(data, part, predict(model, data, data.rows(part), masks).logits.cpu().numpy(), thresholds)


def split_metrics(data: Data, part: str, logits: np.ndarray, thresholds: dict | None) -> dict:
    """Per task and mean metrics of ``logits`` (the model's outputs for the rows of split ``part``)."""
    y = data.y[data.rows(part)].cpu().numpy()
    res = {}
    for t in data.tasks:
        th = thresholds.get(t["name"]) if thresholds else None
        res[t["name"]] = task_metrics(t, logits[:, t["out"]], y[:, t["cols"]], th)
    res["mean"] = {k: float(np.nanmean([res[t["name"]][k] for t in data.tasks])) for k in METRICS}
    res["mean"]["perf"] = perf(res["mean"])
    from .diagnostics import degenerate
    flags = {t["name"]: degenerate(t, logits[:, t["out"]], thresholds.get(t["name"]) if thresholds else None)
             for t in data.tasks}
    res["degenerate"] = {k: v for k, v in flags.items() if v}
    return res


def val_thresholds(model, data: Data) -> dict:
    idx = data.rows("val")
    logits = predict(model, data, idx).logits.cpu().numpy()
    y = data.y[idx].cpu().numpy()
    out = {}
    for t in data.tasks:
        if t["type"] != "multiclass":
            out[t["name"]] = tune_thresholds(1 / (1 + np.exp(-logits[:, t["out"]])), y[:, t["cols"]],
                                             "macro" if t["type"] == "binary" else "binary")
    return out
