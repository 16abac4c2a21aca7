"""`python -m train run|evaluate|predict|demo` (or `medmix train ...`): train MedMIX and the baselines on a cached
store; evaluate a checkpoint; predict; the demo. `run` is the default command; each has its own --help.

    python -m train --dataset mmist --seeds 5 --out runs/mmist        # = python -m train run ...
    python -m train --dataset physionet2012 --set b ...               # the store `extract --set b` wrote
    python -m train --dataset physionet2012 --methods medmix,meanavg --protocol none,test_multi@0.3
    python -m train evaluate --checkpoint runs/p12/checkpoints/medmix.pt --dataset physionet2012 --store set-b.zarr
    python -m train predict --checkpoint runs/mmist/checkpoints/medmix.pt --store runs/stores/mmist.zarr --ids C3L-00004

Seeds: --seeds N trains N seeds starting at --seed S (default 0): S, S+1, ..., S+N-1.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from plugins.dataset_options import add_dataset_options, dataset_options
from stores.cli import InputError, Parser, guarded, setup_logging, version_text
from stores.table import format_table
from train.runinfo import seeds_count

log = logging.getLogger("medmix.train")


def _recipe_args(ap):
    """Every recipe field as a flag; its help shows the value each recipe uses (the one in effect is --recipe's)."""
    from .trainer import RECIPES, Recipe
    for f in dataclasses.fields(Recipe):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None,
                        help=f"recipe field {f.name} (default: {RECIPES['robust'].__dict__[f.name]} with the robust "
                             f"recipe, {RECIPES['paper'].__dict__[f.name]} with the paper recipe)")


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
    """Known errors (store, checkpoint, data, config, device) are one line and exit 2, Ctrl-C one line and 130
    (stores/cli.py); anything else is an internal error with its traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--version"], ["-V"]):
        print(version_text())
        return 0
    setup_logging(quiet="--quiet" in argv)
    command = COMMANDS.get(argv[0]) if argv else None
    return guarded(command or _train, argv[1:] if command else argv)


def _options(args) -> dict | None:
    """Dataset options that name a store (as `python -m extract --set` wrote it): plugins/dataset_options.py."""
    return dataset_options(args, args.dataset, getattr(args, "config", None))


def _run_parser():
    from .protocols import DEFAULT_GRID
    from .stats import N_BOOT
    from .trainer import METHODS
    from .tuning import parse_folds
    ap = Parser(prog="python -m train", description=__doc__, formatter_class=_Formatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--store", help="default: the store `python -m extract` wrote (<store root>/<dataset>[-options].zarr)")
    add_dataset_options(ap)                       # --set etc., as extract wrote the store
    ap.add_argument("--config", help="your own pipelines.yaml (as extract --config; default: MEDMIX_CONFIG, ...)")
    ap.add_argument("--limit", type=int, help="the store `extract --limit N` wrote (a label-stratified sample)")
    ap.add_argument("--methods", default=",".join(METHODS + ["large"]), help="comma list; 'large' = each teacher alone")
    ap.add_argument("--seeds", default="5", help="how many seeds (a count >= 1)")
    ap.add_argument("--seed", type=int, default=0, help="the first seed: seeds are SEED .. SEED+SEEDS-1")
    ap.add_argument("--protocol", default="none", help=f"comma list, or 'all' ({', '.join(DEFAULT_GRID)})")
    ap.add_argument("--ablations", action="store_true", help="add w/o distillation, w/o intra-fusion, single modality")
    ap.add_argument("--tasks", help="comma list of tasks (default: all in the store)")
    ap.add_argument("--out", default=None, help="output folder (default runs/<dataset>)")
    ap.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available, else cpu)")
    ap.add_argument("--recipe", default="robust", choices=["robust", "paper"],
                    help="robust (chosen on validation; docs/train.md) or the paper's literal recipe")
    ap.add_argument("--tune", default="default",
                    help="validation grid every method gets, e.g. 'lr=3e-4,1e-3;dropout=0.1,0.3'; 'default' "
                         "(lr 3e-4,1e-3,3e-3 x normalise none,standard) or 'none'")
    ap.add_argument("--tune-folds", default=None, type=parse_folds, metavar="auto|0|N",
                    help="how the search scores a grid point: 'auto' (5-fold CV over train + validation when "
                         "validation holds < 30 of the rarer class, else the validation split), 0 (always the "
                         "validation split) or N folds (default: auto)")
    ap.add_argument("--modalities", help="comma list (default: all but the spec's opt-in ones)")
    ap.add_argument("--keep-modalities", default="",
                    help="comma list: keep these even when the class guard would leave them out")
    ap.add_argument("--profile", help="use the expert groups extracted with this profile (when the store records it)")
    ap.add_argument("--no-probes", action="store_true", help="skip the linear-probe diagnostics")
    ap.add_argument("--bootstrap", type=int, default=N_BOOT, metavar="N",
                    help=f"bootstrap resamples of the test samples for CIs and paired differences (default "
                         f"{N_BOOT}; 0 = none)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar; third-party bars and chatter silenced")
    _recipe_args(ap)
    return ap


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the module docstring's layout and shows each option's default."""

    def _get_help_string(self, action):
        text = action.help or ""
        shown = action.default is not None and action.default is not False and action.default != ""
        if shown and action.default is not argparse.SUPPRESS and "default" not in text:
            text += f" (default: {action.default})"
        return text


def _train(argv: list[str]) -> int:
    if argv[:1] == ["demo"]:
        from .demo import main as demo_main
        return demo_main(argv[1:])
    args = _run_parser().parse_args(argv)
    n_seeds = seeds_count(args.seeds)
    device = check_device(args.device)
    from .experiment import run_experiment
    from .protocols import DEFAULT_GRID
    from .report import headline_rows, write_report
    from .runinfo import end_run, start_run
    from .tuning import parse_grid
    from stores.store import Store
    protocols = DEFAULT_GRID if args.protocol == "all" else args.protocol.split(",")
    out = Path(args.out or f"runs/{args.dataset}")
    if args.config:                               # every later spec lookup (opt-in modalities) reads the same file
        os.environ["MEDMIX_CONFIG"] = str(Path(args.config).resolve())
    store = _default_store(args.dataset, args.store, _options(args), args.config, args.limit)
    recipe = _recipe(args)
    seeds = list(range(args.seed, args.seed + n_seeds))
    grid = parse_grid(args.tune)
    Store(store)                                       # a missing store is refused before the run folder is made
    handler = start_run(out, argv, {**vars(args), "store": store, "device": device, "seeds": seeds,
                                    "protocols": protocols, "recipe_resolved": dataclasses.asdict(recipe)})
    try:
        results = run_experiment(store, args.methods.split(","), seeds, protocols, recipe, out,
                                 tasks=args.tasks.split(",") if args.tasks else None, device=device,
                                 ablations=args.ablations, keep_modalities=_names(args.keep_modalities),
                                 modalities=args.modalities.split(",") if args.modalities else None,
                                 profile=args.profile, tune_grid=grid, recipe_name=args.recipe,
                                 probes=not args.no_probes, tune_folds=args.tune_folds, n_boot=args.bootstrap,
                                 show_bar=False if args.quiet else None)
    finally:
        end_run(handler)
    report = write_report(results, out)
    print(format_table(headline_rows(results)))
    print(f"report: {report}")
    return 0


def _names(text: str) -> set[str]:
    return set(filter(None, text.split(",")))


def check_device(name: str | None) -> str:
    """The torch device to use; a CUDA device on a machine without one is bad input (one line, exit 2)."""
    import torch

    from plugins.registry import pick_device        # the one device default (cuda when present, else cpu)
    if name is None:
        return str(pick_device())
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: this machine has no usable CUDA GPU (torch.cuda.is_available() is "
                             "False): use --device cpu")
        index = int(name.split(":", 1)[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif name not in ("cpu", "mps"):
        raise InputError(f"--device {name}: expected cpu, cuda or cuda:N")
    return name


def _common_args(ap):
    ap.add_argument("--checkpoint", required=True, help="a checkpoints/<method>.pt (its .json beside it)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--allow-other-features", action="store_true",
                    help="use this store's expert groups where the checkpoint's config hashes are absent (a deliberate "
                         "cross-config evaluation; said in the output)")
    ap.add_argument("--quiet", action="store_true", help="third-party chatter silenced")


def _no_modality(data):
    """Rows with no modality at all: reported, never scored (their output would be the heads' bias)."""
    return ~data.available().any(1).cpu().numpy()


def _evaluate(argv):
    import numpy as np

    from stores.store import SPLIT_CODES
    from .checkpoint import data_for, load_checkpoint, model_for
    from .evaluation import evaluate_split
    ap = Parser(prog="python -m train evaluate", description="external validation of a checkpoint")
    _common_args(ap)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--store")
    ap.add_argument("--split", default="test", choices=["train", "val", "test", "all"],
                    help="the store's rows to score (default: test; 'all' for an external cohort, every row)")
    ap.add_argument("--config", help="your own pipelines.yaml (as extract --config; default: MEDMIX_CONFIG, ...)")
    ap.add_argument("--limit", type=int, help="the store `extract --limit N` wrote (a label-stratified sample)")
    add_dataset_options(ap)
    args = ap.parse_args(argv)
    from stores.loader import check_split
    from stores.store import Store
    meta, state, recipe = load_checkpoint(args.checkpoint)
    notes = []
    store = _default_store(args.dataset, args.store, _options(args), args.config, args.limit)
    check_split(Store(store), meta, args.split)           # a replaced split is refused before anything is read
    data = data_for(meta, store, check_device(args.device), args.allow_other_features, notes)
    model = model_for(meta, state, recipe, data)
    th = {k: np.asarray(v) for k, v in meta["thresholds"].items()}
    counts = {p: int((data.split == SPLIT_CODES[p]).sum()) for p in ("train", "val", "test")}
    part = "train" if args.split == "all" else args.split
    split = np.zeros_like(data.split) if args.split == "all" else data.split.copy()   # "all": every row as code 0
    empty = _no_modality(data) & (split == SPLIT_CODES[part])
    split[empty] = -1
    data.split = split
    if not (split == SPLIT_CODES[part]).any():
        raise InputError(f"{store}: no sample of split '{args.split}' has any modality the checkpoint uses")
    res = evaluate_split(model, data, part, th)
    for line in notes:
        print(f"note: {line}")
    print(f"scored split '{args.split}' of {store}: {int((split == SPLIT_CODES[part]).sum())} samples "
          f"(the store: train {counts['train']}, val {counts['val']}, test {counts['test']}); "
          f"{int(empty.sum())} with no modality not scored")
    if args.split in ("all", "train") and counts["train"] and meta.get("store") == _store_url(store):
        print(f"warning: {counts['train']} of the scored rows are the checkpoint's TRAINING rows: these figures "
              "overstate performance; use --split test", file=sys.stderr)
    rows = [{"task": t, **{k: f"{v:.4f}" for k, v in m.items() if isinstance(v, float)}} for t, m in res.items()
            if t != "degenerate"]
    print(format_table(rows))
    for t, why in res["degenerate"].items():
        print(f"warning: task {t}: degenerate predictions: {why}")
    return 0


def _store_url(path: str) -> str:
    from stores.store import Store
    return Store(path).url


def _predict(argv):
    import torch

    from stores.store import Store
    from .checkpoint import data_for, load_checkpoint, model_for
    from .predictions import COLUMNS, rows_for, write_table
    from .trainer import forward
    ap = Parser(prog="python -m train predict",
                description="per-sample predictions (the columns of a run's predictions/<method>.csv); with --json, "
                            "JSON lines with router/fusion weights")
    _common_args(ap)
    ap.add_argument("--store", required=True)
    ap.add_argument("--ids", nargs="*", help="sample ids (default: all)")
    ap.add_argument("--out", help="write here (.csv, or JSON lines with --json; default: stdout)")
    ap.add_argument("--json", action="store_true", help="JSON lines with the router and fusion weights")
    args = ap.parse_args(argv)
    meta, state, recipe = load_checkpoint(args.checkpoint)
    notes = []
    data = data_for(meta, args.store, check_device(args.device), args.allow_other_features, notes)
    model = model_for(meta, state, recipe, data)
    ids = Store(args.store).ids()
    pos = {s: i for i, s in enumerate(ids)}
    missing = [s for s in (args.ids or []) if s not in pos]
    if missing:
        raise InputError(f"unknown sample ids {missing[:5]}")
    idx = torch.tensor([pos[s] for s in args.ids] if args.ids else list(range(len(ids))))
    with torch.no_grad():
        out = forward(model, data, idx)
    empty = _no_modality(data)[idx.numpy()]
    if args.json:
        from .predictions import json_lines
        text = json_lines(meta, data, out, idx, ids, empty)
    else:
        keep = idx.numpy()[~empty]
        rows = rows_for([ids[i] for i in keep], data.split[keep], meta["tasks"], out.logits.cpu().numpy()[~empty],
                        data.y[torch.as_tensor(keep)].cpu().numpy(), meta["thresholds"], meta.get("seed"))
        if args.out:
            write_table(rows, Path(args.out))
            text = None
        else:
            import csv
            w = csv.DictWriter(sys.stdout, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)
            text = None
    if text is not None:
        Path(args.out).write_text(text) if args.out else sys.stdout.write(text)
    for line in notes:
        print(f"note: {line}", file=sys.stderr)
    print(f"{int(empty.sum())} of {len(idx)} samples have no modality: no prediction", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
