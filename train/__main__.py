"""`python -m train run|evaluate|predict|demo`: train MedMIX and the baselines on a cached store; evaluate a
checkpoint; predict; the demo. `run` is the default command; each has its own --help.

    python -m train --dataset mmist --seeds 5 --out runs/mmist        # = python -m train run ...
    python -m train --dataset physionet2012 --set b ...               # the store `extract --set b` wrote
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

from plugins.dataset_options import add_dataset_options, dataset_options
from stores.cli import CliError
from stores.table import format_table


def _recipe_args(ap):
    from .trainer import Recipe
    for f in dataclasses.fields(Recipe):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None,
                        help=f"recipe: {f.name} (default {f.default})")


def _recipe(args):
    from .trainer import RECIPES, Recipe
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe) if getattr(args, f.name) is not None}
    return dataclasses.replace(RECIPES[args.recipe], **kw)


def _default_store(dataset: str, store: str | None, options: dict | None = None, config: str | None = None,
                   limit: int | None = None) -> str:
    """The same store path the extract stage writes for these dataset options and --limit (stores/paths.py)."""
    from stores.paths import store_path
    from stores.spec import load_spec
    return str(store_path(load_spec(config), dataset, options, limit, store))


COMMANDS = {"evaluate": lambda a: _evaluate(a), "predict": lambda a: _predict(a), "run": lambda a: _train(a),
            "demo": lambda a: _train(["demo", *a])}


def main(argv: list[str] | None = None) -> int:
    """Known errors (store, checkpoint, data, config) are one line and exit 2 (stores/cli.py)."""
    from stores.cli import guarded
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command = COMMANDS.get(argv[0]) if argv else None
    return guarded(command or _train, argv[1:] if command else argv)


def _options(args) -> dict | None:
    """Dataset options that name a store (as `python -m extract --set` wrote it): plugins/dataset_options.py."""
    return dataset_options(args, args.dataset, getattr(args, "config", None))


def _train(argv: list[str]) -> int:
    if argv[:1] == ["demo"]:
        from .demo import main as demo_main
        return demo_main(argv[1:])
    from .protocols import DEFAULT_GRID
    from .trainer import METHODS
    from .tuning import parse_folds
    ap = argparse.ArgumentParser(prog="python -m train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--store", help="default: the store `python -m extract` wrote (<store root>/<dataset>[-options].zarr)")
    add_dataset_options(ap)                       # --set etc., as extract wrote the store
    ap.add_argument("--config", help="your own pipelines.yaml (as extract --config; default: MEDMIX_CONFIG, ...)")
    ap.add_argument("--limit", type=int, help="the store `extract --limit N` wrote (a label-stratified sample)")
    ap.add_argument("--methods", default=",".join(METHODS + ["large"]), help="comma list; 'large' = each teacher alone")
    ap.add_argument("--seeds", type=int, default=5, help="number of seeds (0..N-1)")
    ap.add_argument("--protocol", default="none", help=f"comma list, or 'all' ({', '.join(DEFAULT_GRID)})")
    ap.add_argument("--ablations", action="store_true", help="add w/o distillation, w/o intra-fusion, single modality")
    ap.add_argument("--tasks", help="comma list of tasks (default: all in the store)")
    ap.add_argument("--out", default=None, help="output folder (default runs/<dataset>)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--recipe", default="robust", choices=["robust", "paper"],
                    help="robust (default, chosen on validation; docs/train.md) or the paper's literal recipe")
    ap.add_argument("--tune", default="default",
                    help="validation grid every method gets, e.g. 'lr=3e-4,1e-3;dropout=0.1,0.3'; 'default' "
                         "(lr 3e-4,1e-3,3e-3 x normalise none,standard) or 'none'")
    ap.add_argument("--tune-folds", default=None, type=parse_folds, metavar="auto|0|N",
                    help="how the search scores a grid point: 'auto' (5-fold CV over train + validation when "
                         "validation holds < 30 of the rarer class, else the validation split), 0 (always the "
                         "validation split) or N folds")
    ap.add_argument("--modalities", help="comma list (default: all but the spec's opt-in ones)")
    ap.add_argument("--keep-modalities", default="",
                    help="comma list: keep these even when the class guard would leave them out")
    ap.add_argument("--profile", help="use the expert groups extracted with this profile (when the store records it)")
    ap.add_argument("--no-probes", action="store_true", help="skip the linear-probe diagnostics")
    _recipe_args(ap)
    args = ap.parse_args(argv)
    from .experiment import run_experiment
    from .report import headline_rows, write_report
    from .tuning import parse_grid
    device = _device(args.device)
    protocols = DEFAULT_GRID if args.protocol == "all" else args.protocol.split(",")
    out = Path(args.out or f"runs/{args.dataset}")
    if args.config:                               # every later spec lookup (opt-in modalities) reads the same file
        import os
        os.environ["MEDMIX_CONFIG"] = str(Path(args.config).resolve())
    store = _default_store(args.dataset, args.store, _options(args), args.config, args.limit)
    results = run_experiment(store, args.methods.split(","),
                             list(range(args.seeds)), protocols, _recipe(args), out,
                             tasks=args.tasks.split(",") if args.tasks else None, device=device,
                             ablations=args.ablations, modalities=args.modalities.split(",") if args.modalities else None,
                             profile=args.profile, keep_modalities=set(filter(None, args.keep_modalities.split(","))),
                             tune_grid=parse_grid(args.tune), recipe_name=args.recipe, probes=not args.no_probes,
                             tune_folds=args.tune_folds)
    report = write_report(results, out)
    print(format_table(headline_rows(results)))
    print(f"report: {report}")
    return 0


def _load_checkpoint(path: str):
    import torch
    from .trainer import Recipe, build_model
    try:
        meta = json.loads(Path(path).with_suffix(".json").read_text())
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError, EOFError) as exc:
        raise UsageError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})"[:300]) from None
    return meta, state, Recipe(**meta["recipe"]), build_model


def _device(name: str | None) -> str:
    from plugins.registry import pick_device            # the one device default (cuda when present, else cpu)
    return str(pick_device(name))


class UsageError(CliError):
    """A refusal with a one-line reason (exit status 2)."""


def _checkpoint_groups(meta) -> list[str]:
    return ([f"{m}/{n}" for m, names in meta["layout"].items() for n in names]
            + [f"{m}/teacher" for m in meta.get("teacher_dims", {})])


def _data_for(meta, store: str, device: str = "cpu", allow_other: bool = False, notes: list | None = None):
    """The checkpoint's expert groups, chosen by the config hashes it records. A group this store lacks is missing
    for every sample (the model masks it exactly), or with ``allow_other`` the store's own group of that expert is
    used (said in ``notes``). A store holding none of them is refused unless ``allow_other``."""
    import numpy as np

    from stores.loader import TEACHER, choose_group, present_versions, read_group, read_labels
    from stores.store import Store
    from .data import Data
    notes = [] if notes is None else notes
    st = Store(store)
    recorded = meta.get("store_config_hashes", {})
    wanted = _checkpoint_groups(meta)
    found, missing = present_versions(st, {k: recorded[k] for k in wanted if k in recorded})
    missing += [k for k in wanted if k not in recorded]
    if not found and not allow_other:
        eg = ", ".join(f"{k} {recorded[k]['config_hash'][:12]}" for k in wanted[:3] if k in recorded)
        raise UsageError(f"{store} holds none of the {len(wanted)} expert groups the checkpoint was trained on "
                         f"({eg}, ...): features would differ; pass --allow-other-features to evaluate deliberately "
                         "on this store's own features")
    vecs, masks = {}, {}
    n = st.n
    for key in wanted:
        mod, name = key.split("/", 1)
        m_i = meta["layout"].get(mod, [])
        dim = meta["teacher_dims"][mod] if name == TEACHER else meta["dims"][mod][m_i.index(name)]
        have_expert = mod in st.modalities() and name in st.experts(mod)
        if key in found or (allow_other and have_expert):
            g, _ = choose_group(st, mod, name, {key: found[key]} if key in found else {}, None)
            if key not in found:
                notes.append(f"{key}: OTHER features (store config {g.attrs['config_hash'][:12]}, checkpoint "
                             f"{recorded.get(key, {}).get('config_hash', '?')[:12]}) used (--allow-other-features)")
            vecs[key], masks[key] = read_group(g)
            if vecs[key].shape[1] != dim:
                raise UsageError(f"{store}: {key} has dim {vecs[key].shape[1]}, the checkpoint expects {dim}")
        else:
            notes.append(f"{key}: not in this store with the checkpoint's config: missing for every sample")
            vecs[key], masks[key] = np.zeros((n, dim), np.float32), np.zeros(n, bool)
    labels = read_labels(st)
    for t in meta["tasks"]:                                   # a cohort without labels can still be predicted
        if t["name"] not in labels:
            width = t["cols"][1] - t["cols"][0]
            labels[t["name"]] = (np.full((n, width), np.nan, np.float32), {"type": t["type"], "labels": t["labels"]})
    data = Data.from_arrays(st.split(), labels,
                            {m: {e: vecs[f"{m}/{e}"] for e in names} for m, names in meta["layout"].items()},
                            {m: {e: masks[f"{m}/{e}"] for e in names} for m, names in meta["layout"].items()},
                            {m: vecs[f"{m}/teacher"] for m in meta.get("teacher_dims", {})},
                            {m: masks[f"{m}/teacher"] for m in meta.get("teacher_dims", {})},
                            [t["name"] for t in meta["tasks"]])
    if meta.get("normalisation"):
        from .normalise import apply_stats
        data = apply_stats(data, meta["normalisation"])
    return data.to(device)


def _model(meta, state, recipe, build_model, data):
    model = build_model(meta["method"], data, recipe, meta.get("large_modality"))
    model.load_state_dict(state)
    return model.to(data.device).eval()


def _common_args(ap):
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--device", default=None)
    ap.add_argument("--allow-other-features", action="store_true",
                    help="use this store's expert groups where the checkpoint's config hashes are absent (a deliberate "
                         "cross-config evaluation; said in the output)")


def _num(x, digits: int):
    """A JSON number, or null where the value is NaN/inf (JSON has no NaN)."""
    import math
    v = float(x)
    return round(v, digits) if math.isfinite(v) else None


def _no_modality(data):
    """Rows with no modality at all: reported, never scored (their output would be the heads' bias)."""
    return ~data.available().any(1).cpu().numpy()


def _evaluate(argv):
    import numpy as np
    ap = argparse.ArgumentParser(prog="python -m train evaluate", description="external validation of a checkpoint")
    _common_args(ap)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--store")
    ap.add_argument("--split", default="all", help="train | val | test | all (default all: an external cohort)")
    add_dataset_options(ap)
    args = ap.parse_args(argv)
    from stores.loader import check_split
    from stores.store import SPLIT_CODES, Store
    from .evaluation import evaluate_split
    meta, state, recipe, build = _load_checkpoint(args.checkpoint)
    notes = []
    store = _default_store(args.dataset, args.store, _options(args))
    check_split(Store(store), meta, args.split)
    data = _data_for(meta, store, _device(args.device), args.allow_other_features, notes)
    model = _model(meta, state, recipe, build, data)
    th = {k: np.asarray(v) for k, v in meta["thresholds"].items()}
    part = "train" if args.split == "all" else args.split
    split = np.zeros_like(data.split) if args.split == "all" else data.split.copy()   # "all": every row as code 0
    empty = _no_modality(data) & (split == SPLIT_CODES[part])
    split[empty] = -1
    data.split = split
    if not (split == SPLIT_CODES[part]).any():
        raise UsageError(f"{store}: no sample of split '{args.split}' has any modality the checkpoint uses")
    res = evaluate_split(model, data, part, th)
    for line in notes:
        print(f"note: {line}")
    print(f"{int((split == SPLIT_CODES[part]).sum())} samples scored; {int(empty.sum())} with no modality not scored")
    rows = [{"task": t, **{k: f"{v:.4f}" for k, v in m.items() if isinstance(v, float)}} for t, m in res.items()
            if t != "degenerate"]
    print(format_table(rows))
    for t, why in res["degenerate"].items():
        print(f"warning: task {t}: degenerate predictions: {why}")
    return 0


def _predict(argv):
    import torch
    ap = argparse.ArgumentParser(prog="python -m train predict",
                                 description="predictions + router/fusion weights for samples with any modalities")
    _common_args(ap)
    ap.add_argument("--store", required=True)
    ap.add_argument("--ids", nargs="*", help="sample ids (default: all)")
    ap.add_argument("--out", help="write JSON lines here (default: stdout)")
    args = ap.parse_args(argv)
    from stores.store import Store
    from .trainer import forward
    meta, state, recipe, build = _load_checkpoint(args.checkpoint)
    notes = []
    data = _data_for(meta, args.store, _device(args.device), args.allow_other_features, notes)
    model = _model(meta, state, recipe, build, data)
    ids = Store(args.store).ids()
    pos = {s: i for i, s in enumerate(ids)}
    missing = [s for s in (args.ids or []) if s not in pos]
    if missing:
        raise UsageError(f"unknown sample ids {missing[:5]}")
    idx = torch.tensor([pos[s] for s in args.ids] if args.ids else list(range(len(ids))))
    with torch.no_grad():
        out = forward(model, data, idx)
    out.logits = out.logits.cpu()
    out.router = {m: g.cpu() for m, g in out.router.items()}
    out.fusion = None if out.fusion is None else out.fusion.cpu()
    empty = _no_modality(data)
    lines = []
    for r, i in enumerate(idx.tolist()):
        rec = {"id": ids[i], "available": {m: bool(data.masks[m][i].any()) for m in data.layout}}
        if empty[i]:
            lines.append(json.dumps({**rec, "prediction": None, "reason": "no modality available"}))
            continue
        for t in meta["tasks"]:
            lo = out.logits[r, t["out"][0]:t["out"][1]]
            prob = torch.softmax(lo, 0) if t["type"] == "multiclass" else torch.sigmoid(lo)
            rec[t["name"]] = dict(zip(t["labels"], [_num(p, 5) for p in prob]))
        if out.router:
            rec["router"] = {m: dict(zip(meta["layout"][m], [_num(x, 4) for x in g[r]])) for m, g in out.router.items()}
        if out.fusion is not None:
            rec["fusion"] = dict(zip(meta["layout"], [_num(x, 4) for x in out.fusion[r]]))
        lines.append(json.dumps(rec, allow_nan=False))
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    for line in notes:
        print(f"note: {line}", file=sys.stderr)
    print(f"{int(empty[idx.numpy()].sum())} of {len(idx)} samples have no modality: no prediction", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
