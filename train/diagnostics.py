"""Why a fusion model does what it does: per expert and per modality, coverage, class balance on train, scale and
spread of the inputs, and the test AUROC of a simple linear probe on that input alone (scikit-learn logistic
regression fitted on train, C chosen on validation). Shown in every results.md and in the demo's report."""
from __future__ import annotations

import logging
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from stores.numeric import l2_normalise

from .data import Data

log = logging.getLogger("medmix.train")
PROBE_C = (0.01, 0.1, 1.0, 10.0)
SPREAD_ROWS = 512


def _auroc(y: np.ndarray, p: np.ndarray) -> float:
    if len(np.unique(y)) < 2:
        return float("nan")
    if p.ndim == 2:
        return float(roc_auc_score(y, p, multi_class="ovr", labels=np.arange(p.shape[1])))
    return float(roc_auc_score(y, p))


def _probe_model(c: float):
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=500))


def probe(xtr, ytr, xva, yva, xte, yte, cs=PROBE_C) -> dict:
    """One target (integer classes): C with the best validation AUROC, then that model's test AUROC."""
    if len(np.unique(ytr)) < 2 or len(xva) == 0 or len(xte) == 0:
        return {"C": None, "val_auroc": float("nan"), "test_auroc": float("nan")}
    best = None
    for c in cs:
        with warnings.catch_warnings(record=True) as caught:       # a log line, not a raw warning in the run log
            warnings.simplefilter("always", ConvergenceWarning)
            m = _probe_model(c).fit(xtr, ytr)
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            log.info("linear probe at C=%g: lbfgs stopped at its iteration cap before converging (its validation "
                     "AUROC still counts)", c)
        p = m.predict_proba(xva)
        s = _auroc(yva, p[:, 1] if p.shape[1] == 2 else p)
        if best is None or (np.isfinite(s) and (not np.isfinite(best[0]) or s > best[0])):
            best = (s, c, m)
    p = best[2].predict_proba(xte)
    if p.shape[1] != len(np.unique(ytr)):
        return {"C": best[1], "val_auroc": best[0], "test_auroc": float("nan")}
    return {"C": best[1], "val_auroc": best[0], "test_auroc": _auroc(yte, p[:, 1] if p.shape[1] == 2 else p)}


def _targets(data: Data):
    """(name, column values (N,), is_multiclass) for every binary / multi-class task and multi-label label."""
    y = data.y.cpu().numpy()
    for t in data.tasks:
        cols = y[:, t["cols"]]
        if t["type"] == "multiclass" or t["type"] == "binary":
            yield t["name"], cols[:, 0]
        else:
            for j, lab in enumerate(t["labels"]):
                yield f"{t['name']}:{lab}", cols[:, j]


def probe_auroc(x: np.ndarray, ok: np.ndarray, data: Data) -> dict:
    """Mean test AUROC over targets of the probe on one input (rows where it is valid), and per target."""
    per = {}
    parts = {p: data.rows(p).cpu().numpy() for p in ("train", "val", "test")}
    for name, yc in _targets(data):
        sel = {p: r[ok[r] & ~np.isnan(yc[r])] for p, r in parts.items()}
        per[name] = probe(x[sel["train"]], yc[sel["train"]].astype(int), x[sel["val"]], yc[sel["val"]].astype(int),
                          x[sel["test"]], yc[sel["test"]].astype(int))
    vals = [v["test_auroc"] for v in per.values() if np.isfinite(v["test_auroc"])]
    return {"test_auroc": float(np.mean(vals)) if vals else float("nan"), "per_target": per}


def spread(x: np.ndarray) -> dict:
    """Mean row L2 norm, mean per-dimension std, mean pairwise cosine (first SPREAD_ROWS rows) of valid rows."""
    if len(x) == 0:
        return {"mean_norm": float("nan"), "mean_dim_std": float("nan"), "mean_cosine": float("nan")}
    s = x[:SPREAD_ROWS].astype(np.float64)
    u = l2_normalise(s)
    cos = u @ u.T
    off = ~np.eye(len(s), dtype=bool)
    return {"mean_norm": float(np.linalg.norm(x, axis=1).mean()), "mean_dim_std": float(x.std(0).mean()),
            "mean_cosine": float(cos[off].mean()) if off.any() else float("nan")}


def class_balance(ok: np.ndarray, data: Data) -> dict:
    tr = data.rows("train").cpu().numpy()
    out = {}
    for name, yc in _targets(data):
        r = tr[ok[tr] & ~np.isnan(yc[tr])]
        vals, counts = np.unique(yc[r].astype(int), return_counts=True)
        out[name] = {int(v): int(c) for v, c in zip(vals, counts)}
    return out


def _entry(x: np.ndarray, ok: np.ndarray, data: Data, probe_it: bool) -> dict:
    n = len(ok)
    e = {"coverage": float(ok.mean()) if n else 0.0, "n_valid": int(ok.sum()),
         "train_class_counts": class_balance(ok, data), **spread(x[ok])}
    if probe_it:
        e["probe"] = probe_auroc(x, ok, data)
    return e


def diagnose(data: Data, probes: bool = True) -> dict:
    """{"experts": {"m/e": entry}, "teachers": {m: entry}, "modalities": {m: entry}} over the data as trained on
    (after normalisation when the recipe normalises). A modality's input is its experts side by side."""
    out = {"experts": {}, "teachers": {}, "modalities": {}}
    for m, names in data.layout.items():
        mk = data.masks[m].cpu().numpy()
        xs = [x.cpu().numpy() for x in data.xs[m]]
        for k, e in enumerate(names):
            out["experts"][f"{m}/{e}"] = _entry(xs[k], mk[:, k], data, probes)
        if len(names) > 1:
            out["modalities"][m] = _entry(np.concatenate(xs, 1), mk.any(1), data, probes)
        else:
            out["modalities"][m] = out["experts"][f"{m}/{names[0]}"]
    for m, t in data.teachers.items():
        out["teachers"][m] = _entry(t.cpu().numpy(), data.teacher_masks[m].cpu().numpy(), data, probes)
    return out


def degenerate(task: dict, logits: np.ndarray, thresholds) -> str | None:
    """Why a task's predictions are degenerate (no spread, or one class predicted for every sample), else None."""
    if len(logits) == 0:
        return None
    if float(np.ptp(logits, axis=0).max()) < 1e-6:
        return "zero spread (the same output for every sample)"
    if task["type"] == "multiclass":
        if len(np.unique(logits.argmax(1))) == 1:
            return "one class predicted for every sample"
        return None
    prob = 1 / (1 + np.exp(-logits))
    th = thresholds if thresholds is not None else np.full(prob.shape[1], 0.5)
    pred = prob >= th
    if all(pred[:, j].all() or (~pred[:, j]).all() for j in range(pred.shape[1])):
        return "one class predicted for every sample"
    return None


def diagnostics_rows(diag: dict) -> list[dict]:
    rows = []
    for kind, label in (("experts", "expert"), ("teachers", "teacher"), ("modalities", "modality")):
        for name, e in diag.get(kind, {}).items():
            rows.append({"input": f"{label} {name}", "coverage": f"{e['coverage']:.2f}",
                         "train classes": "; ".join(f"{t}: {c}" for t, c in list(e["train_class_counts"].items())[:2]),
                         "mean norm": f"{e['mean_norm']:.3g}", "dim std": f"{e['mean_dim_std']:.3g}",
                         "mean cos": f"{e['mean_cosine']:.3f}",
                         "probe test AUROC": f"{e['probe']['test_auroc']:.4f}" if "probe" in e else ""})
    return rows


@torch.no_grad()
def mean_weights(model, data: Data) -> dict:
    """Mean router weight per expert (over samples with the modality) and mean fusion weight per modality."""
    from .trainer import predict
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
