"""`python -m train`: train MedMIX and the baselines on a cached store; evaluate a checkpoint; predict.

    python -m train --dataset mmist --seeds 5 --out runs/mmist
    python -m train --dataset physionet2012 --methods medmix,meanavg --protocol none,test_multi@0.3
    python -m train evaluate --checkpoint runs/p12/checkpoints/medmix.pt --dataset physionet2012 --store set-b.zarr
    python -m train predict --checkpoint runs/mmist/checkpoints/medmix.pt --store runs/stores/mmist.zarr --ids C3L-00004
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from stores.table import format_table


def _recipe_args(ap):
    from .trainer import Recipe
    for f in dataclasses.fields(Recipe):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None,
                        help=f"recipe: {f.name} (default {f.default})")


def _recipe(args):
    from .trainer import Recipe
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe) if getattr(args, f.name) is not None}
    return Recipe(**kw)


def _default_store(dataset: str, store: str | None) -> str:
    if store:
        return store
    from stores.spec import load_spec, store_root
    return str(store_root(load_spec()) / f"{dataset}.zarr")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if argv[:1] == ["evaluate"]:
        return _evaluate(argv[1:])
    if argv[:1] == ["predict"]:
        return _predict(argv[1:])
    if argv[:1] == ["demo"]:
        from .demo import main as demo_main
        return demo_main(argv[1:])
    from .protocols import DEFAULT_GRID
    from .trainer import METHODS
    ap = argparse.ArgumentParser(prog="python -m train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--store", help="default: <store_root>/<dataset>.zarr")
    ap.add_argument("--methods", default=",".join(METHODS + ["large"]), help="comma list; 'large' = each teacher alone")
    ap.add_argument("--seeds", type=int, default=5, help="number of seeds (0..N-1)")
    ap.add_argument("--protocol", default="none", help=f"comma list, or 'all' ({', '.join(DEFAULT_GRID)})")
    ap.add_argument("--ablations", action="store_true", help="add w/o distillation, w/o intra-fusion, single modality")
    ap.add_argument("--tasks", help="comma list of tasks (default: all in the store)")
    ap.add_argument("--out", default=None, help="output folder (default runs/<dataset>)")
    ap.add_argument("--device", default=None)
    _recipe_args(ap)
    args = ap.parse_args(argv)
    import torch
    from .experiment import run_experiment
    from .report import headline_rows, write_report
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    protocols = DEFAULT_GRID if args.protocol == "all" else args.protocol.split(",")
    out = Path(args.out or f"runs/{args.dataset}")
    results = run_experiment(_default_store(args.dataset, args.store), args.methods.split(","),
                             list(range(args.seeds)), protocols, _recipe(args), out,
                             tasks=args.tasks.split(",") if args.tasks else None, device=device,
                             ablations=args.ablations)
    report = write_report(results, out)
    print(format_table(headline_rows(results)))
    print(f"report: {report}")
    return 0


def _load_checkpoint(path: str):
    import torch
    from .trainer import Recipe, build_model
    meta = json.loads(Path(path).with_suffix(".json").read_text())
    return meta, torch.load(path, map_location="cpu", weights_only=True), Recipe(**meta["recipe"]), build_model


def _device(name: str | None) -> str:
    import torch
    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def _data_for(meta, store: str, device: str = "cpu"):
    from stores.loader import load_bundle
    from .trainer import Data
    bundle = load_bundle(store, {m: names for m, names in meta["layout"].items()},
                         teachers=bool(meta["teacher_dims"]))
    data = Data.from_bundle(bundle, [t["name"] for t in meta["tasks"]])
    for m, names in meta["layout"].items():
        for k, n in enumerate(names):
            if data.xs[m][k].shape[1] != meta["dims"][m][k]:
                raise ValueError(f"{store}: {m}/{n} has dim {data.xs[m][k].shape[1]}, the checkpoint expects {meta['dims'][m][k]}")
    return data.to(device)


def _model(meta, state, recipe, build_model, data):
    model = build_model(meta["method"], data, recipe, meta.get("large_modality"))
    model.load_state_dict(state)
    return model.to(data.device).eval()


def _evaluate(argv):
    import numpy as np
    ap = argparse.ArgumentParser(prog="python -m train evaluate", description="external validation of a checkpoint")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--store")
    ap.add_argument("--split", default="all", help="train | val | test | all (default all: an external cohort)")
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    from .experiment import evaluate_split
    meta, state, recipe, build = _load_checkpoint(args.checkpoint)
    data = _data_for(meta, _default_store(args.dataset, args.store), _device(args.device))
    model = _model(meta, state, recipe, build, data)
    th = {k: np.asarray(v) for k, v in meta["thresholds"].items()}
    if args.split == "all":
        data.split = np.zeros_like(data.split)      # every sample counts ("train" code 0 = all rows)
        part = "train"
    else:
        part = args.split
    res = evaluate_split(model, data, part, th)
    rows = [{"task": t, **{k: f"{v:.4f}" for k, v in m.items() if isinstance(v, float)}} for t, m in res.items()]
    print(format_table(rows))
    return 0


def _predict(argv):
    import torch
    ap = argparse.ArgumentParser(prog="python -m train predict",
                                 description="predictions + router/fusion weights for samples with any modalities")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--store", required=True)
    ap.add_argument("--ids", nargs="*", help="sample ids (default: all)")
    ap.add_argument("--out", help="write JSON lines here (default: stdout)")
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    from stores.store import Store
    from .trainer import forward
    meta, state, recipe, build = _load_checkpoint(args.checkpoint)
    data = _data_for(meta, args.store, _device(args.device))
    model = _model(meta, state, recipe, build, data)
    ids = Store(args.store).ids()
    pos = {s: i for i, s in enumerate(ids)}
    missing = [s for s in (args.ids or []) if s not in pos]
    if missing:
        print(f"error: unknown sample ids {missing[:5]}", file=sys.stderr)
        return 2
    idx = torch.tensor([pos[s] for s in args.ids] if args.ids else list(range(len(ids))))
    with torch.no_grad():
        out = forward(model, data, idx)
    out.logits = out.logits.cpu()
    out.router = {m: g.cpu() for m, g in out.router.items()}
    out.fusion = None if out.fusion is None else out.fusion.cpu()
    lines = []
    for r, i in enumerate(idx.tolist()):
        rec = {"id": ids[i], "available": {m: bool(data.masks[m][i].any()) for m in data.layout}}
        for t in meta["tasks"]:
            lo = out.logits[r, t["out"][0]:t["out"][1]]
            prob = torch.softmax(lo, 0) if t["type"] == "multiclass" else torch.sigmoid(lo)
            rec[t["name"]] = dict(zip(t["labels"], [round(float(p), 5) for p in prob]))
        if out.router:
            rec["router"] = {m: dict(zip(meta["layout"][m], [round(float(x), 4) for x in g[r]])) for m, g in out.router.items()}
        if out.fusion is not None:
            rec["fusion"] = dict(zip(meta["layout"], [round(float(x), 4) for x in out.fusion[r]]))
        lines.append(json.dumps(rec))
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
