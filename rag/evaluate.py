"""`python -m rag eval`: two retrieval benchmarks, scored over topics (passages of one topic count once).

- ``synonyms``: each MedlinePlus synonym ("also called"; never indexed) is a query, its topic the answer (lay and
  medical names: 901 over 497 topics).
- ``openi``: clinical phrasing. Each OpenI chest X-ray report (findings + impression, written by radiologists) is a
  query; the answers are the MedlinePlus topics whose MeSH headings equal one of the report's MeSH major headings
  (e.g. "Pulmonary Atelectasis" -> Collapsed Lung, "Pneumonia" -> Pneumonia). Reports with no such heading are left
  out. A hit is any answer among the top k topics.
Reports recall@1, recall@5 and MRR (over the top 50) per encoder and strategy.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np


def synonym_queries(topics) -> tuple[list[str], list[set[str]]]:
    q, a = [], []
    for t in topics:
        for s in t.synonyms:
            if s.strip() and s.strip().lower() != t.title.lower():
                q.append(s.strip())
                a.append({t.id})
    return q, a


def openi_queries(topics, reports_csv: Path) -> tuple[list[str], list[set[str]]]:
    """OpenI reports -> (report text, topic ids sharing one of its MeSH major headings)."""
    by_mesh: dict[str, set[str]] = {}
    for t in topics:
        for m in t.mesh:
            by_mesh.setdefault(m.lower(), set()).add(t.id)
    if not by_mesh:
        raise ValueError("the corpus carries no MeSH headings: the openi benchmark needs them (mesh_terms)")
    q, a = [], []
    with open(reports_csv, newline="") as f:
        for row in csv.DictReader(f):
            heads = {m.split("/")[0].strip().lower() for m in (row.get("MeSH") or "").split(";")}
            answers = set().union(*(by_mesh.get(h, set()) for h in heads))
            text = " ".join(x for x in (row.get("findings"), row.get("impression")) if x and x.strip())
            text = re.sub(r"\s+", " ", text.replace("XXXX", " ")).strip()     # XXXX: the de-identification mask
            if answers and text:
                q.append(text)
                a.append(answers)
    return q, a


def score(rankings: list[list[str]], answers: list[set[str]]) -> dict:
    ranks = np.asarray([next((i + 1 for i, t in enumerate(r) if t in ans), np.inf)
                        for r, ans in zip(rankings, answers)])
    return {"queries": len(ranks), "recall@1": round(float((ranks <= 1).mean()), 4),
            "recall@5": round(float((ranks <= 5).mean()), 4),
            "mrr": round(float(np.where(np.isfinite(ranks), 1 / ranks, 0).mean()), 4)}


def benchmark(service, name: str) -> tuple[list[str], list[set[str]]]:
    if name == "synonyms":
        return synonym_queries(service.topics)
    if name == "openi":
        from stores.paths import data_root
        path = data_root(service.spec, service.data_root_override) / "openi" / "indiana_reports.csv"
        if not path.exists():
            raise FileNotFoundError(f"{path}: the openi benchmark needs the OpenI reports")
        return openi_queries(service.topics, path)
    raise ValueError(f"unknown benchmark {name!r} (synonyms | openi)")


def evaluate(service, strategies=("dense", "bm25", "hybrid"), depth: int = 50,
             benchmarks=("synonyms", "openi")) -> list[dict]:
    rows = []
    idx = service.index()
    for name in benchmarks:
        queries, answers = benchmark(service, name)
        qv = service.query_encoder.encode(queries)
        for strategy in strategies:
            ids, _ = idx.search(queries, qv, depth, strategy, service.cfg.rrf_k, service.cfg.bm25_weight)
            rows.append({"benchmark": name, "encoder": service.cfg.query_encoder, "strategy": strategy,
                         "bm25_weight": service.cfg.bm25_weight if strategy == "hybrid" else "",
                         **score(idx.topic_ranking(ids), answers)})
    return rows
