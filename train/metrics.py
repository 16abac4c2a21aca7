"""AUROC, AUPRC, macro-F1, accuracy (scikit-learn), with decision thresholds tuned on VALIDATION only.

Multi-label: macro over labels; a label without both classes in the evaluated split is skipped (and listed).
Binary: macro-F1 over the two classes. Perf = mean of the four (METHOD section 6).
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score

METRICS = ("auroc", "auprc", "macro_f1", "accuracy")


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def tune_thresholds(prob: np.ndarray, y: np.ndarray, average: str = "macro") -> np.ndarray:
    """Per column: the probability cut that maximises the REPORTED F1 on the given (validation) rows: macro-F1 over
    the two classes for a binary task (``average="macro"``), the label's own F1 for a multi-label task ("binary"),
    which the report then averages over labels."""
    th = np.full(prob.shape[1], 0.5)
    for j in range(prob.shape[1]):
        known = ~np.isnan(y[:, j])
        yy, pp = y[known, j], prob[known, j]
        if len(np.unique(yy)) < 2:
            continue
        cands = np.unique(np.quantile(pp, np.linspace(0.01, 0.99, 99)))
        f1s = [f1_score(yy, pp >= c, average=average, zero_division=0) for c in cands]
        th[j] = float(cands[int(np.argmax(f1s))])
    return th


def binary_metrics(y: np.ndarray, p: np.ndarray, th: float, macro_over_classes: bool) -> dict:
    pred = p >= th
    return {"auroc": roc_auc_score(y, p), "auprc": average_precision_score(y, p),
            "macro_f1": f1_score(y, pred, average="macro" if macro_over_classes else "binary", zero_division=0),
            "accuracy": accuracy_score(y, pred)}


def task_metrics(task: dict, logits: np.ndarray, y: np.ndarray, thresholds: np.ndarray | None) -> dict:
    """Metrics of one task on one split; thresholds come from validation (None -> 0.5)."""
    if task["type"] == "multiclass":
        known = ~np.isnan(y[:, 0])
        yy = y[known, 0].astype(int)
        prob = np.exp(logits[known] - logits[known].max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        classes = np.arange(prob.shape[1])
        present = np.unique(yy)
        return {"auroc": roc_auc_score(yy, prob, multi_class="ovr", labels=classes) if len(present) > 1 else np.nan,
                "auprc": np.mean([average_precision_score(yy == c, prob[:, c]) for c in present]),
                "macro_f1": f1_score(yy, prob.argmax(1), average="macro"), "accuracy": accuracy_score(yy, prob.argmax(1)),
                "skipped_labels": []}
    prob = _sigmoid(logits)
    th = thresholds if thresholds is not None else np.full(prob.shape[1], 0.5)
    per, skipped = [], []
    for j in range(prob.shape[1]):
        known = ~np.isnan(y[:, j])
        yy = y[known, j]
        if len(np.unique(yy)) < 2:
            skipped.append(task["labels"][j])
            continue
        per.append(binary_metrics(yy, prob[known, j], th[j], macro_over_classes=task["type"] == "binary"))
    out = {k: float(np.mean([p[k] for p in per])) if per else float("nan") for k in METRICS}
    out["skipped_labels"] = skipped
    return out


def perf(m: dict) -> float:
    return float(np.mean([m[k] for k in METRICS]))
