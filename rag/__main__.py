"""`python -m rag`: build-index | search | eval | embed (the retrieval-augmented expert, METHOD section 4)."""
from __future__ import annotations

import argparse
import logging
import sys

from stores.spec import load_spec
from stores.table import format_table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rag", description=__doc__)
    ap.add_argument("--profile", default="offline", help="paper | offline")
    ap.add_argument("--config", help="your own pipelines.yaml")
    ap.add_argument("--data-root", help="folder with medlineplus/ (default ../shared/data or MEDMIX_DATA_ROOT)")
    ap.add_argument("--encoder", help="override the query/article encoder (a registry key)")
    ap.add_argument("--strategy", choices=["dense", "bm25", "hybrid"], help="override the retrieval strategy")
    ap.add_argument("--index-dir", help="where the index lives (default: under the model cache)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build-index", help="index the MedlinePlus corpus (rebuilt when stale)")
    b.add_argument("--rebuild", action="store_true")
    s = sub.add_parser("search", help="print the top-K passages for a text")
    s.add_argument("text")
    s.add_argument("-k", type=int, default=None)
    sub.add_parser("eval", help="synonym -> topic retrieval benchmark: recall@1/@5, MRR per strategy")
    e = sub.add_parser("embed", help="write the RAG expert of a dataset's modalities into its store")
    e.add_argument("--dataset", required=True)
    e.add_argument("--store")
    e.add_argument("--modality", action="append")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from .service import RagService
    spec = load_spec(args.config)
    cfg = spec.profile(args.profile).rag
    updates = {}
    if args.encoder:
        updates.update(query_encoder=args.encoder, article_encoder=args.encoder)
    if args.strategy:
        updates["strategy"] = args.strategy
    svc = RagService(spec, args.profile, args.data_root, cfg.model_copy(update=updates) if updates else None,
                     index_dir=args.index_dir)
    if args.cmd == "build-index":
        idx = svc.index(rebuild=args.rebuild)
        print(f"index: {idx.folder} ({idx.meta['n_passages']} passages, {idx.meta['index']}, "
              f"encoder {svc.cfg.article_encoder}, config {idx.meta['config_hash'][:12]})")
    elif args.cmd == "search":
        ids, scores = svc.retrieve([args.text], k=args.k)
        rows = [{"rank": r + 1, "score": f"{sc:.4f}", "title": svc.index().passages[int(p)].title,
                 "url": svc.index().passages[int(p)].url} for r, (p, sc) in enumerate(zip(ids[0], scores[0]))]
        print(f"strategy {svc.cfg.strategy}, encoder {svc.cfg.query_encoder}")
        print(format_table(rows))
    elif args.cmd == "eval":
        print(format_table(__import__("rag.evaluate", fromlist=["evaluate"]).evaluate(svc)))
    elif args.cmd == "embed":
        from .embed import embed_dataset
        counts = embed_dataset(args.dataset, args.profile, args.config, args.data_root, args.store, args.modality,
                               service=svc)
        print(format_table([{"expert": k, "ok": v[0], "missing": v[1], "failed": v[2]} for k, v in counts.items()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
