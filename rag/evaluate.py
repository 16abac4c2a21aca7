"""`python -m rag eval`: retrieval benchmark built from the corpus itself.

Each MedlinePlus synonym ("also called"; never indexed) is a query whose answer is its own topic. Reports
recall@1, recall@5 and MRR (over the top 50) per encoder and strategy.
"""
from __future__ import annotations

import numpy as np


def synonym_queries(topics) -> tuple[list[str], list[str]]:
    q, a = [], []
    for t in topics:
        for s in t.synonyms:
            if s.strip() and s.strip().lower() != t.title.lower():
                q.append(s.strip())
                a.append(t.id)
    return q, a


def evaluate(service, strategies=("dense", "bm25", "hybrid"), depth: int = 50) -> list[dict]:
    queries, answers = synonym_queries(service.topics)
    rows = []
    qv = service.query_encoder.encode(queries)
    idx = service.index()
    for strategy in strategies:
        ids, _ = idx.search(queries, qv, depth, strategy, service.cfg.rrf_k)
        ranks = []
        for ranking, ans in zip(idx.topic_ranking(ids), answers):
            ranks.append(ranking.index(ans) + 1 if ans in ranking else np.inf)
        ranks = np.asarray(ranks)
        rows.append({"encoder": service.cfg.query_encoder, "strategy": strategy, "queries": len(queries),
                     "recall@1": round(float((ranks <= 1).mean()), 4), "recall@5": round(float((ranks <= 5).mean()), 4),
                     "mrr": round(float(np.where(np.isfinite(ranks), 1 / ranks, 0).mean()), 4)})
    return rows
