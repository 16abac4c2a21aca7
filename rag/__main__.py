"""`python -m rag`: build-index | search | eval | adapt | embed (the retrieval-augmented expert, METHOD section 4)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from plugins.request import ExtractRequest
from stores.cli import Parser, setup_logging
from stores.spec import load_spec
from stores.table import format_table

from .evaluate import BENCHMARKS, DEFAULT_VARIANTS
from .adapt import add_adapt_arguments, run_adapt


def _common_options(ap: argparse.ArgumentParser, suppress: bool) -> None:
    """The options every command takes, before or after the command name (after it, an option left out must not
    overwrite one given before it: hence SUPPRESS there)."""
    d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    ap.add_argument("--profile", default=d("offline"), help="paper | offline")
    ap.add_argument("--config", default=d(None), help="your own pipelines.yaml")
    ap.add_argument("--data-root", default=d(None),
                    help="the run's data root (the corpus is looked up there, then under the configured one)")
    ap.add_argument("--encoder", default=d(None), help="override the query/article encoder (a registry key)")
    ap.add_argument("--strategy", default=d(None), choices=["dense", "bm25", "hybrid"],
                    help="override the retrieval strategy")
    ap.add_argument("--bm25-weight", default=d(None), type=float, help="override hybrid's BM25 share in the rank fusion")
    ap.add_argument("--sentence-fusion", action=argparse.BooleanOptionalAction, default=d(None),
                    help="override: rank each sentence of a long text and fuse the rankings (RRF)")
    ap.add_argument("--index-dir", default=d(None), help="where the index lives (default: under the model cache)")
    ap.add_argument("--quiet", action="store_true", default=d(False),
                    help="no progress (bars on a terminal, timestamped lines elsewhere); third-party chatter silenced")


def main(argv: list[str] | None = None) -> int:
    """Known errors (config, paths, a missing faiss, a store) are one line and exit 2 (stores/cli.py)."""
    from stores.cli import guarded
    return guarded(_main, list(sys.argv[1:] if argv is None else argv))


def _parser() -> argparse.ArgumentParser:
    ap = Parser(prog="python -m rag", description=__doc__)
    _common_options(ap, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _common_options(common, suppress=True)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def command(name: str, **kw) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kw)        # every command takes the common options too

    b = command("build-index", help="index the MedlinePlus corpus (rebuilt when stale)")
    b.add_argument("--rebuild", action="store_true")
    s = command("search", help="print the top-K topics (best passage of each) for a text")
    s.add_argument("text")
    s.add_argument("-k", type=int, default=None)
    s.add_argument("--passages", action="store_true", help="the top-K passages as the RAG expert pools them")
    ev = command("eval", help="retrieval benchmarks (MedlinePlus synonyms; OpenI reports and impressions -> "
                              "MeSH topics): recall@1/@5, MRR per encoder and retrieval variant, one table")
    ev.add_argument("--benchmark", action="append", choices=list(BENCHMARKS), help="one or more (default: all)")
    ev.add_argument("--encoders", help="comma-separated encoder keys to compare (default: the profile's)")
    ev.add_argument("--variant", action="append",
                    help=f"dense | bm25 | hybrid:W, optional +sent (default: {', '.join(DEFAULT_VARIANTS)})")
    ev.add_argument("--out", help="also write the table as JSON here")
    a = command("adapt", help="fine-tune an offline encoder on the corpus's own structure (held-out topics) "
                              "and save it into the model cache as a registry-loadable encoder")
    add_adapt_arguments(a)
    e = command("embed", help="write the RAG expert of a dataset's modalities into its store")
    # the extract stage's own flags (and every dataset option, e.g. --set): the same request, the same store
    ExtractRequest.add_arguments(e, only=("dataset", "store", "modalities", "limit"))
    return ap


def _service(args, spec):
    """The retrieval service the command line configures (the profile's RAG settings, with the overrides)."""
    from .service import RagService, search_config
    cfg = spec.profile(args.profile).rag
    updates = {}
    if args.encoder:
        updates.update(query_encoder=args.encoder, article_encoder=args.encoder)
    if args.strategy:
        updates["strategy"] = args.strategy
    if args.bm25_weight is not None:
        updates["bm25_weight"] = args.bm25_weight
    if args.sentence_fusion is not None:
        updates["sentence_fusion"] = args.sentence_fusion
    if args.cmd == "search" and not args.passages:     # typed queries: the profile's `rag.search` defaults
        cfg = search_config(cfg)
    return RagService(spec, args.profile, args.data_root, cfg.model_copy(update=updates) if updates else cfg,
                      index_dir=args.index_dir)


def _build_index(args, spec, svc) -> None:
    idx = svc.index(rebuild=args.rebuild)
    print(f"index: {idx.folder} ({idx.meta['n_passages']} passages, {idx.meta['index']}, "
          f"encoder {svc.cfg.article_encoder}, config {idx.meta['config_hash'][:12]})")


def _search(args, spec, svc) -> None:
    if args.passages:
        ids, scores = svc.retrieve([args.text], k=args.k)
        hits = list(zip(ids[0].tolist(), scores[0].tolist()))
    else:
        hits = svc.retrieve_topics(args.text, k=args.k)
    passages = svc.index().passages
    rows = [{"rank": r + 1, "score": f"{sc:.4f}", "title": passages[p].title, "url": passages[p].url,
             **({"passage": p} if args.passages else {})} for r, (p, sc) in enumerate(hits)]
    w = f" (BM25 weight {svc.cfg.bm25_weight:g})" if svc.cfg.strategy == "hybrid" else ""
    print(f"strategy {svc.cfg.strategy}{w}, encoder {svc.cfg.query_encoder}"
          f"{', sentence fusion' if svc.cfg.sentence_fusion else ''}")
    print(format_table(rows))


def _eval(args, spec, svc) -> None:
    from .evaluate import evaluate
    from .service import RagService
    rows, keys = [], args.encoders.split(",") if args.encoders else [svc.cfg.query_encoder]
    services = [svc] if not args.encoders else [RagService(spec, args.profile, args.data_root, svc.cfg.model_copy(
        update={"query_encoder": key, "article_encoder": key})) for key in keys]
    # every encoder is scored on the same held-out subset: an adapted encoder's, else the default split
    heldout = next((h for one, key in zip(services, keys) if (h := one.heldout_topics(key))), None)
    for one in services:
        rows += evaluate(one, tuple(args.variant or DEFAULT_VARIANTS), benchmarks=tuple(args.benchmark or BENCHMARKS),
                         heldout=heldout)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    print(format_table(rows))


def _adapt(args, spec, svc) -> None:
    print(format_table([run_adapt(args, spec, svc)]))


def _embed(args, spec, svc) -> None:
    from .embed import embed_dataset
    request = ExtractRequest.from_args(args).resolved(progress=not args.quiet)     # a bar on a terminal, else lines
    counts = embed_dataset(request, service=svc)
    print(format_table([{"expert": k, "ok": v[0], "missing": v[1], "failed": v[2]} for k, v in counts.items()]))


COMMANDS = {"build-index": _build_index, "search": _search, "eval": _eval, "adapt": _adapt, "embed": _embed}


def _main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    setup_logging(quiet=args.quiet)
    spec = load_spec(args.config)
    COMMANDS[args.cmd](args, spec, _service(args, spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
