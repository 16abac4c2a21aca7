"""bench/rag: index build time and queries/s of the project's retrieval vs the bare encoder + bare faiss search.

    python bench/rag.py [--queries 901] [--reports 200]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import faiss
from _common import report, timed

from rag.evaluate import openi_queries, synonym_queries
from rag.index import build_index, normalise
from rag.service import RagService
from stores.paths import data_root
from stores.spec import load_spec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=901)
    ap.add_argument("--reports", type=int, default=200)
    args = ap.parse_args()
    spec = load_spec()
    cfg = spec.profile("offline").rag.model_copy(update={"strategy": "dense"})
    svc = RagService(spec, "offline", rag=cfg, index_dir=tempfile.mkdtemp())
    passages = svc.passages
    enc = svc.article_encoder
    docs = [p.as_document() for p in passages]
    idx, t_ours = timed(build_index, Path(svc.index_dir), passages, enc)

    def bare_build():
        v = normalise(enc.encode(docs))
        ix = faiss.IndexFlatIP(v.shape[1])
        ix.add(v)
        return ix
    bare_ix, t_bare = timed(bare_build)
    print(f"{len(passages)} passages ({cfg.passage_words} words), encoder {cfg.article_encoder}")
    report("index build passages/s (ours adds BM25 + saving)", len(passages) / t_ours, len(passages) / t_bare,
           "passages/s", "close to 1")
    queries = synonym_queries(svc.topics)[0][: args.queries]
    svc._index = idx
    _, t_q = timed(svc.retrieve, queries)
    _, t_qb = timed(lambda: bare_ix.search(normalise(svc.query_encoder.encode(queries)), cfg.k))
    report("dense queries/s", len(queries) / t_q, len(queries) / t_qb, "queries/s", "close to 1")
    _, t_h = timed(svc.retrieve, queries, strategy="hybrid")
    report("hybrid (dense + BM25, RRF) queries/s vs bare dense", len(queries) / t_h,
           len(queries) / t_qb, "queries/s", "the price of BM25 + fusion")
    reports = openi_queries(svc.topics, data_root(spec) / "openi" / "indiana_reports.csv")[0][: args.reports]
    _, t_r = timed(svc.retrieve, reports)
    svc.cfg = cfg.model_copy(update={"sentence_fusion": True})
    _, t_s = timed(svc.retrieve, reports)
    report("long reports, sentence fusion (each sentence ranked, RRF) vs whole-report dense", len(reports) / t_s,
           len(reports) / t_r, "reports/s", "the price of ranking every sentence")


if __name__ == "__main__":
    main()
