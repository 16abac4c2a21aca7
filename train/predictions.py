"""Per-sample predictions as a table a reader can open anywhere: one row per (sample, task output, seed) with
``id, split, task, label, y_true, probability, threshold, predicted, seed`` (``probability`` = P(y_true = 1) for a
binary or multi-label output, the class's probability for a multi-class one; ``predicted`` = probability >=
the validation-tuned threshold, or the arg-max class). CSV (pyarrow, hence Parquet, is optional: written too when
installed). `python -m train` writes ``predictions/<method>.csv`` (validation and test rows, every seed);
`python -m train predict` writes the same columns for the rows it scores."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np

from stores.store import SPLIT_CODES

from .metrics import probabilities

log = logging.getLogger("medmix.train")
COLUMNS = ("id", "split", "task", "label", "y_true", "probability", "threshold", "predicted", "seed")
SPLIT_NAMES = {v: k for k, v in SPLIT_CODES.items()}


def rows_for(ids: list[str], split: np.ndarray, tasks: list[dict], logits: np.ndarray, y: np.ndarray,
             thresholds: dict | None, seed: int | None) -> list[dict]:
    """Rows of the predictions table for samples ``ids`` (their split codes, model logits (n, n_out), labels
    (n, n_cols)); thresholds per task from validation (None: 0.5)."""
    out = []
    for t in tasks:
        prob = probabilities(t, logits[:, _span(t["out"])])
        cols = y[:, _span(t["cols"])]
        multiclass = t["type"] == "multiclass"
        th = None if multiclass or not thresholds or t["name"] not in thresholds else np.asarray(thresholds[t["name"]])
        for j, label in enumerate(t["labels"]):
            for i, sid in enumerate(ids):
                truth = cols[i, 0] if multiclass else cols[i, j]
                cut = 0.5 if th is None else float(th[j])
                pred = int(prob[i].argmax() == j) if multiclass else int(prob[i, j] >= cut)
                out.append({"id": sid, "split": SPLIT_NAMES.get(int(split[i]), "none"), "task": t["name"],
                            "label": label, "y_true": "" if np.isnan(truth) else int(truth == j if multiclass
                                                                                    else truth),
                            "probability": round(float(prob[i, j]), 6),
                            "threshold": "" if multiclass else round(cut, 6),
                            "predicted": pred, "seed": "" if seed is None else seed})
    return out


def _span(cols) -> slice:
    """A task's columns: a slice in a run, a [start, stop] pair in a checkpoint's .json."""
    return cols if isinstance(cols, slice) else slice(cols[0], cols[1])


def write_table(rows: list[dict], path: Path) -> Path:
    """``path`` as CSV (and beside it as Parquet when pyarrow is installed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    try:
        import pandas as pd
        import pyarrow  # noqa: F401
    except ImportError:
        return path
    df = pd.DataFrame(rows, columns=COLUMNS).replace("", pd.NA)       # "" (unknown label, no threshold) = null
    df.astype(PARQUET_TYPES).to_parquet(path.with_suffix(".parquet"), index=False)
    return path


# the Parquet file's column types: nullable where a cell may be empty (y_true of an unknown label, the threshold of
# a multi-class output, the seed of a prediction without one)
PARQUET_TYPES = {"id": "string", "split": "string", "task": "string", "label": "string", "y_true": "Int64",
                 "probability": "float64", "threshold": "Float64", "predicted": "int64", "seed": "Int64"}


def _num(x, digits: int):
    """A JSON number, or null where the value is NaN/inf (JSON has no NaN)."""
    v = float(x)
    return round(v, digits) if np.isfinite(v) else None


def json_lines(meta: dict, data, out, idx, ids: list[str], empty: np.ndarray) -> str:
    """`train predict --json`: per sample the probabilities, the router weights per expert and the fusion weights
    per modality (what MedMIX relied on); ``"prediction": null`` with the reason for a sample with no modality."""
    logits = out.logits.cpu().numpy()
    router = {m: g.cpu().numpy() for m, g in out.router.items()}
    fusion = None if out.fusion is None else out.fusion.cpu().numpy()
    lines = []
    for r, i in enumerate(idx.tolist()):
        rec = {"id": ids[i], "split": SPLIT_NAMES.get(int(data.split[i]), "none"),
               "available": {m: bool(data.masks[m][i].any()) for m in data.layout}}
        if empty[r]:
            lines.append(json.dumps({**rec, "prediction": None, "reason": "no modality available"}))
            continue
        for t in meta["tasks"]:
            prob = probabilities(t, logits[r:r + 1, t["out"][0]:t["out"][1]])[0]
            rec[t["name"]] = dict(zip(t["labels"], [_num(p, 5) for p in prob]))
        if router:
            rec["router"] = {m: dict(zip(meta["layout"][m], [_num(x, 4) for x in g[r]]))
                             for m, g in router.items()}
        if fusion is not None:
            rec["fusion"] = dict(zip(meta["layout"], [_num(x, 4) for x in fusion[r]]))
        lines.append(json.dumps(rec, allow_nan=False))
    return "\n".join(lines) + "\n"
