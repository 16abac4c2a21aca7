"""Uncertainty over test patients: a bootstrap 95% CI of each method's metrics per task, and a paired bootstrap of
each method against MedMIX (the difference, same resampled patients for both, and its CI).

Both use a method's seed-averaged test probabilities (the ensemble of its seeds) at the mean of its seeds'
validation thresholds; the spread over seeds is reported beside them as mean ± std. Resamples whose draw lacks a
class for a label skip that label (as the metrics do); a CI from fewer than half the resamples is not reported.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from .metrics import REPORTED, positive_label, prob_metrics

N_BOOT = 1000
BOOT_SEED = 0


def ensemble(pred: dict) -> tuple[dict, dict]:
    """Seed-averaged probabilities and mean thresholds per task from ``pred`` ({"prob": {task: (S, N, C)},
    "thresholds": {task: (S, C)}})."""
    prob = {t: np.mean(p, 0) for t, p in pred["prob"].items()}
    th = {t: np.mean(v, 0) for t, v in pred["thresholds"].items()}
    return prob, th


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def _average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """scikit-learn's average_precision_score (step-wise, one point per distinct score), without its overhead."""
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(ss)), len(ss) - 1]     # the last row of each distinct score
    tps = np.cumsum(ys)[last]
    precision = tps / (last + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def binary_fast(y: np.ndarray, p: np.ndarray, th: float, macro: bool, positive: int = 1) -> dict:
    """``metrics.binary_metrics`` in plain numpy (equal to scikit-learn's, tests/test_train_results.py checks it):
    the bootstrap calls it thousands of times."""
    y = y.astype(int)
    n1 = int(y.sum())
    n0 = len(y) - n1
    auroc = (rankdata(p)[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)
    pos = (y == positive).astype(int)
    pred = (p >= th).astype(int)
    tp, fp = int((pred & y).sum()), int((pred & (1 - y)).sum())
    fn, tn = n1 - tp, n0 - fp
    f1 = (_f1(tp, fp, fn) + _f1(tn, fn, fp)) / 2 if macro else _f1(tp, fp, fn)
    return {"auroc": float(auroc), "auprc": _average_precision(pos, p if positive == 1 else 1 - p), "macro_f1": f1,
            "accuracy": (tp + tn) / len(y), "brier": float(np.mean((p - y) ** 2)), "prevalence": float(pos.mean())}


def fast_metrics(task: dict, prob: np.ndarray, y: np.ndarray, th: np.ndarray | None) -> dict:
    """``metrics.prob_metrics`` for binary and multi-label tasks via ``binary_fast``; multi-class: scikit-learn."""
    if task["type"] == "multiclass":
        return prob_metrics(task, prob, y, th)
    th = th if th is not None else np.full(prob.shape[1], 0.5)
    per = []
    for j in range(prob.shape[1]):
        known = ~np.isnan(y[:, j])
        yy = y[known, j]
        if 0 < yy.sum() < len(yy):
            per.append(binary_fast(yy, prob[known, j], th[j], task["type"] == "binary", positive_label(task)))
    return {k: float(np.mean([p[k] for p in per])) if per else float("nan") for k in (*REPORTED, "prevalence")}


def _draws(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _ci(values: list[float], n_boot: int) -> list[float] | None:
    v = np.asarray([x for x in values if np.isfinite(x)])
    if len(v) < n_boot / 2:
        return None
    return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]


def bootstrap(tasks: list[dict], y: dict, methods: dict[str, dict], reference: str | None = "medmix",
              n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> dict:
    """Per method and task: point estimate and 95% CI of every reported metric; per method other than
    ``reference`` (when present) and task: the paired difference method - reference with its CI.
    ``y``: {task: (N, C) labels of the test rows}; ``methods``: {name: predictions as ``ensemble`` takes}."""
    n = len(next(iter(y.values()))) if y else 0
    draws = _draws(n, n_boot, seed)
    ens = {name: ensemble(pred) for name, pred in methods.items()}
    out = {"n_boot": n_boot, "seed": seed, "n_test": n, "methods": {}, "paired": {}}
    per_draw = {}
    for name, (prob, th) in ens.items():
        out["methods"][name], per_draw[name] = {}, {}
        for t in tasks:
            k = t["name"]
            point = prob_metrics(t, prob[k], y[k], th.get(k))
            draws_m = [fast_metrics(t, prob[k][d], y[k][d], th.get(k)) for d in draws]
            per_draw[name][k] = draws_m
            out["methods"][name][k] = {m: {"value": point[m], "ci95": _ci([d[m] for d in draws_m], n_boot)}
                                       for m in REPORTED}
    if reference in ens:
        for name in ens:
            if name == reference:
                continue
            out["paired"][name] = {}
            for t in tasks:
                k = t["name"]
                a, b = per_draw[name][k], per_draw[reference][k]
                pa, pb = out["methods"][name][k], out["methods"][reference][k]
                out["paired"][name][k] = {m: {"diff": pa[m]["value"] - pb[m]["value"],
                                              "ci95": _ci([x[m] - z[m] for x, z in zip(a, b)], n_boot)}
                                          for m in REPORTED}
        out["reference"] = reference
    return out
