"""bench/probe: how much one stored expert says on its own -- a linear probe (scikit-learn LogisticRegression on
the training rows, C chosen by validation AUROC, test AUROC reported once), beside the time the classical
experts take to encode a whole cohort.

    python bench/probe.py --store runs/stores/physionet2012.zarr --expert ehr/stats --task mortality
    python bench/probe.py --store runs/stores/mmist.zarr --expert note/tabular --task vital_status_12
    python bench/probe.py --speed physionet2012       # encode every set-a stay's events view, timed
"""
from __future__ import annotations

import argparse

import numpy as np
from _common import timed

C_GRID = [0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]


def probe(store_path: str, expert: str, task: str) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler
    from stores.loader import read_experts, read_labels
    from stores.store import Store
    mod, name = expert.split("/")
    store = Store(store_path)
    ex = read_experts(store, {mod: [name]}, teachers=False)
    x, ok = ex.vectors[mod][name], ex.masks[mod][name]
    y = read_labels(store)[task][0][:, 0]
    split = store.split()
    rows = {p: np.flatnonzero((split == c) & ok & np.isfinite(y)) for p, c in (("train", 0), ("val", 1), ("test", 2))}
    scaler = StandardScaler().fit(x[rows["train"]])          # fitted on train rows only
    z = scaler.transform(x)
    val = {}
    for c in C_GRID:
        m = LogisticRegression(C=c, max_iter=5000).fit(z[rows["train"]], y[rows["train"]])
        val[c] = roc_auc_score(y[rows["val"]], m.predict_proba(z[rows["val"]])[:, 1])
    best = max(val, key=val.get)
    m = LogisticRegression(C=best, max_iter=5000).fit(z[rows["train"]], y[rows["train"]])
    test = roc_auc_score(y[rows["test"]], m.predict_proba(z[rows["test"]])[:, 1])
    return {"expert": expert, "task": task, "C (chosen on val)": best, "val_auroc": round(val[best], 4),
            "test_auroc": round(float(test), 4), "n": {p: int(len(r)) for p, r in rows.items()}}


def speed(dataset: str) -> None:
    from plugins.datasets.base import get_adapter
    from plugins.registry import EncoderOptions, build_encoder
    from stores.paths import data_root
    from stores.spec import load_spec
    spec = load_spec()
    ad = get_adapter(spec.dataset(dataset), data_root(spec))
    rows = list(range(len(ad.ids())))
    inputs, t_load = timed(ad.load, "ehr", rows)
    items = [x["events"] for x in inputs if isinstance(x, dict)]
    enc = build_encoder("ehr_stats")
    state, t_fit = timed(enc.fit, items)
    enc = build_encoder("ehr_stats", EncoderOptions(params={"encoding": state}))
    v, t_enc = timed(enc.encode, items)
    print(f"{dataset}: {len(items)} stays, adapter load (parse + all views) {t_load:.1f} s, fit {t_fit:.1f} s, "
          f"encode {t_enc:.1f} s -> {v.shape[1]}-d; encode {len(items) / t_enc:,.0f} stays/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store")
    ap.add_argument("--expert", action="append", help="modality/expert (repeatable)")
    ap.add_argument("--task")
    ap.add_argument("--speed", help="dataset whose whole cohort the ehr_stats expert encodes, timed")
    args = ap.parse_args()
    if args.speed:
        speed(args.speed)
    for e in args.expert or []:
        print(probe(args.store, e, args.task))


if __name__ == "__main__":
    main()
