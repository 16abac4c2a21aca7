"""AUROC, AUPRC, macro-F1, accuracy and Brier score (scikit-learn), with decision thresholds tuned on VALIDATION only.

Multi-label: macro over labels; a label without both classes in the evaluated split is skipped (and listed).
Binary: macro-F1 over the two classes; AUPRC is for the task's POSITIVE class (the clinical event: for MMIST's
``vital_status_12``, where 1 = alive, that is death; ``positive_label`` in pipelines.yaml), reported with that
class's prevalence, the AUPRC of a ranking by chance. Perf = mean of the four of METHOD section 6 (Brier is
reported, not in Perf).
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score, brier_score_loss, f1_score, roc_auc_score

METRICS = ("auroc", "auprc", "macro_f1", "accuracy")
REPORTED = (*METRICS, "brier")          # per task; Brier: lower is better


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def probabilities(task: dict, logits: np.ndarray) -> np.ndarray:
    """P(label = 1) per output column (sigmoid), or class probabilities (softmax) for a multi-class task."""
    if task["type"] != "multiclass":
        return _sigmoid(logits)
    prob = np.exp(logits - logits.max(1, keepdims=True))
    return prob / prob.sum(1, keepdims=True)


def positive_label(task: dict) -> int:
    """Which stored value (0 or 1) is the clinically positive class of a binary/multi-label task (default 1)."""
    return int(task.get("positive_label", 1))


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


def binary_metrics(y: np.ndarray, p: np.ndarray, th: float, macro_over_classes: bool, positive: int = 1) -> dict:
    """``p`` = P(y = 1); AUPRC and prevalence are for class ``positive``."""
    pred = p >= th
    pos = y == positive
    return {"auroc": roc_auc_score(y, p), "auprc": average_precision_score(pos, p if positive == 1 else 1 - p),
            "macro_f1": f1_score(y, pred, average="macro" if macro_over_classes else "binary", zero_division=0),
            "accuracy": accuracy_score(y, pred), "brier": brier_score_loss(y, p), "prevalence": float(pos.mean())}


def _multiclass(prob: np.ndarray, y: np.ndarray) -> dict:
    known = ~np.isnan(y[:, 0])
    yy, prob = y[known, 0].astype(int), prob[known]
    present = np.unique(yy)
    onehot = np.eye(prob.shape[1])[yy]
    return {"auroc": roc_auc_score(yy, prob, multi_class="ovr", labels=np.arange(prob.shape[1]))
            if len(present) > 1 else np.nan,
            "auprc": np.mean([average_precision_score(yy == c, prob[:, c]) for c in present]),
            "macro_f1": f1_score(yy, prob.argmax(1), average="macro"), "accuracy": accuracy_score(yy, prob.argmax(1)),
            "brier": float(((prob - onehot) ** 2).sum(1).mean()),
            "prevalence": float(np.mean([(yy == c).mean() for c in present])), "skipped_labels": []}


def prob_metrics(task: dict, prob: np.ndarray, y: np.ndarray, thresholds: np.ndarray | None) -> dict:
    """Metrics of one task from its probabilities (``probabilities``); thresholds from validation (None -> 0.5)."""
    if task["type"] == "multiclass":
        return _multiclass(prob, y)
    th = thresholds if thresholds is not None else np.full(prob.shape[1], 0.5)
    per, skipped = [], []
    for j in range(prob.shape[1]):
        known = ~np.isnan(y[:, j])
        yy = y[known, j]
        if len(np.unique(yy)) < 2:
            skipped.append(task["labels"][j])
            continue
        per.append(binary_metrics(yy, prob[known, j], th[j], task["type"] == "binary", positive_label(task)))
    out = {k: float(np.mean([p[k] for p in per])) if per else float("nan") for k in (*REPORTED, "prevalence")}
    out["skipped_labels"] = skipped
    return out


def task_metrics(task: dict, logits: np.ndarray, y: np.ndarray, thresholds: np.ndarray | None) -> dict:
    """Metrics of one task on one split; thresholds come from validation (None -> 0.5)."""
    return prob_metrics(task, probabilities(task, logits), y, thresholds)


def perf(m: dict) -> float:
    return float(np.mean([m[k] for k in METRICS]))


def positive_name(task: dict) -> str:
    """The positive class in words, for reports: the spec's ``positive_name``, else the label/task and its value."""
    if task.get("positive_name"):
        return task["positive_name"]
    if task["type"] == "multiclass":
        return "each class (one-vs-rest, macro)"
    return f"{task['name']} = {positive_label(task)}" if task["type"] == "binary" else "each label = 1 (macro)"
