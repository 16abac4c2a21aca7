"""`python -m stores info STORE` and `python -m stores verify STORE`."""
from __future__ import annotations

import json
import sys

from .cli import Parser, guarded, setup_logging
from .paths import PathError
from .spec import SpecError
from .store import SPLIT_CODES, Store, StoreError
from .table import format_table
from .verify import check, coverage, failure_reasons


def main(argv: list[str] | None = None) -> int:
    """Known errors one line and exit 2, Ctrl-C 130 (stores/cli.py)."""
    return guarded(_main, list(sys.argv[1:] if argv is None else argv))


def _main(argv: list[str]) -> int:
    ap = Parser(prog="python -m stores", description="Inspect and check a MedMIX Zarr store.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("info", help="what is inside: samples, splits, labels, coverage per expert")
    _store_arguments(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("verify", help="check shapes, masks vs vectors, markers vs data; exit 1 on any problem")
    _store_arguments(p)
    args = ap.parse_args(argv)
    setup_logging()
    try:
        args.store = _locate(args)
    except (StoreError, SpecError, PathError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        store = Store(args.store)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001  (truncated / corrupt root metadata: a finding, not a traceback)
        if args.cmd == "verify":
            print(f"FAIL {args.store}/zarr.json: unreadable store metadata ({type(exc).__name__}: {exc})"[:500])
            return 1
        print(f"error: {args.store}: unreadable store ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    if args.cmd == "verify":
        report = check(store)
        for line in report.notes:
            print(f"note {line}")
        for line in report.problems:
            print(f"FAIL {line}")
        problems = report.problems
        print(f"{store.url}: {'consistent' if not problems else f'{len(problems)} problem(s)'}")
        return 1 if problems else 0
    split = store.split()
    info = {"store": store.url, **store.meta,
            "split": {k: int((split == v).sum()) for k, v in SPLIT_CODES.items()},
            "labels": {t: {"type": m.get("type"), "shape": list(v.shape)} for t, (v, m) in store.labels().items()},
            "coverage": coverage(store), "failures": failure_reasons(store)}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{store.url}: dataset {store.meta['dataset']}, {store.n} samples, split {info['split']}")
    for t, m in info["labels"].items():
        print(f"  label {t}: {m['type']} {m['shape']}")
    print(format_table(info["coverage"]))
    for group, reasons in info["failures"].items():
        print(f"  failures in {group}: " + "; ".join(f"{r} (x{c})" for r, c in reasons.items()))
    return 0


def _store_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", nargs="?", help="the store folder (or --dataset: the store `python -m extract` wrote)")
    p.add_argument("--dataset", help="locate the dataset's store as extract does (with --config, --limit)")
    p.add_argument("--config", help="your own pipelines.yaml (as extract --config)")
    p.add_argument("--limit", type=int, help="the store `extract --limit N` wrote")


def _locate(args) -> str:
    if args.store:
        return args.store
    if not args.dataset:
        raise StoreError("give a STORE folder, or --dataset (with --config) to find the store extract wrote")
    from .paths import store_path
    from .spec import load_spec
    return str(store_path(load_spec(args.config), args.dataset, None, args.limit))


if __name__ == "__main__":
    sys.exit(main())
