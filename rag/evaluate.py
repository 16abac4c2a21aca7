"""`python -m rag eval`: three retrieval benchmarks, scored over topics (passages of one topic count once).

- ``synonyms``: each MedlinePlus synonym ("also called"; never indexed) is a query, its topic the answer (lay and
  medical names: 901 over 497 topics).
- ``openi``: long clinical text. Each OpenI chest X-ray report (findings + impression, written by radiologists) is
  a query; the answers are the MedlinePlus topics whose MeSH headings equal one of the report's MeSH major headings
  (e.g. "Pulmonary Atelectasis" -> Collapsed Lung, "Pneumonia" -> Pneumonia). Reports with no such heading are left
  out. This is what the RAG expert queries with (whole reports).
- ``impressions``: short clinical phrasing, what a person types. The same reports' IMPRESSION alone, its normal
  statements ("No acute cardiopulmonary disease.") and administrative sentences ("Findings were discussed ...")
  removed, kept when something abnormal remains in at most ``SHORT_WORDS`` words; labelled like ``openi``.
A hit is any answer among the top k topics. Reports recall@1, recall@5 and MRR (over the top 50) per encoder and
retrieval variant, all benchmarks side by side; for an adapted encoder (``rag adapt``) also over the queries whose
answers are all topics held out of its training.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stores.errors import InputError

from .adapted import split_topics
from .fusion import fuse_pieces, query_pieces, split_sentences

BENCHMARKS = ("synonyms", "openi", "impressions")
SHORT_WORDS = 30
_MASK = re.compile(r"\bX{2,}\b")                       # "XXXX": the de-identification mask
_NORMAL_START = re.compile(
    r"^(no|negative|normal|clear|unremarkable|otherwise|without|there is no|there are no|heart size (is )?normal|"
    r"(the )?lungs? (are |is )?clear|well[- ]expanded and clear|stable (exam|chest|appearance)|comparison)\b", re.I)
_NORMAL_END = re.compile(r"(within normal limits|(is|are) (clear|normal)|clear lungs|unremarkable)\W*$", re.I)
_HEADER = re.compile(r"^(chest|(pa and )?lateral|(right|left) \w+|\w+ spine|rib films?)\W*$", re.I)   # "Chest. 1. ..."
_ADMIN = re.compile(r"\b(recommend\w*|discussed|notified|telephone|dr\.|correlation|critical result|technologist|"
                    r"follow[- ]?up|further evaluat\w*|if clinically|was called)\b", re.I)


def clean(text: str | None) -> str:
    return re.sub(r"\s+", " ", _MASK.sub(" ", text or "")).strip()


def abnormal_sentences(impression: str) -> list[str]:
    """The sentences of an impression that state a finding: normal and administrative ones dropped."""
    out = []
    for s in split_sentences(clean(impression)):
        if _NORMAL_START.match(s) or _HEADER.match(s) or _ADMIN.search(s) or (_NORMAL_END.search(s) and len(s.split()) < 8):
            continue
        if sum(ch.isalpha() for ch in s) < 6:
            continue
        out.append(s)
    return out


def synonym_queries(topics) -> tuple[list[str], list[set[str]]]:
    q, a = [], []
    for t in topics:
        for s in t.synonyms:
            if s.strip() and s.strip().lower() != t.title.lower():
                q.append(s.strip())
                a.append({t.id})
    return q, a


def _mesh_answers(topics) -> dict[str, set[str]]:
    by_mesh: dict[str, set[str]] = {}
    for t in topics:
        for m in t.mesh:
            by_mesh.setdefault(m.lower(), set()).add(t.id)
    if not by_mesh:
        raise InputError("the corpus carries no MeSH headings: the OpenI benchmarks need them (mesh_terms)")
    return by_mesh


def _labelled_reports(topics, reports_csv: Path):
    """(report row, topic ids sharing one of its MeSH major headings), for reports with at least one."""
    by_mesh = _mesh_answers(topics)
    with open(reports_csv, newline="") as f:
        for row in csv.DictReader(f):
            heads = {m.split("/")[0].strip().lower() for m in (row.get("MeSH") or "").split(";")}
            answers = set().union(*(by_mesh.get(h, set()) for h in heads))
            if answers:
                yield row, answers


def openi_queries(topics, reports_csv: Path) -> tuple[list[str], list[set[str]]]:
    """OpenI reports -> (findings + impression, topic ids sharing one of its MeSH major headings)."""
    q, a = [], []
    for row, answers in _labelled_reports(topics, reports_csv):
        text = clean(" ".join(x for x in (row.get("findings"), row.get("impression")) if x and x.strip()))
        if text:
            q.append(text)
            a.append(answers)
    return q, a


def impression_queries(topics, reports_csv: Path, max_words: int = SHORT_WORDS) -> tuple[list[str], list[set[str]]]:
    """OpenI impressions -> (their abnormal sentences, the report's MeSH-matched topics); normal/empty dropped."""
    q, a = [], []
    for row, answers in _labelled_reports(topics, reports_csv):
        text = " ".join(abnormal_sentences(row.get("impression") or ""))
        if text and len(text.split()) <= max_words:
            q.append(text)
            a.append(answers)
    return q, a


def score(rankings: list[list[str]], answers: list[set[str]]) -> dict:
    ranks = np.asarray([next((i + 1 for i, t in enumerate(r) if t in ans), np.inf)
                        for r, ans in zip(rankings, answers)])
    if not len(ranks):
        return {"queries": 0, "recall@1": float("nan"), "recall@5": float("nan"), "mrr": float("nan")}
    return {"queries": len(ranks), "recall@1": round(float((ranks <= 1).mean()), 4),
            "recall@5": round(float((ranks <= 5).mean()), 4),
            "mrr": round(float(np.where(np.isfinite(ranks), 1 / ranks, 0).mean()), 4)}


def benchmark(service, name: str) -> tuple[list[str], list[set[str]]]:
    if name == "synonyms":
        return synonym_queries(service.topics)
    if name in ("openi", "impressions"):
        from stores.paths import data_root
        path = data_root(service.spec, service.data_root_override) / "openi" / "indiana_reports.csv"
        if not path.exists():
            raise FileNotFoundError(f"{path}: the {name} benchmark needs the OpenI reports")
        return (openi_queries if name == "openi" else impression_queries)(service.topics, path)
    raise InputError(f"unknown benchmark {name!r} ({' | '.join(BENCHMARKS)})")


@dataclass(frozen=True)
class Variant:
    """One retrieval setting: strategy, BM25's share in hybrid, sentence fusion."""
    strategy: str
    bm25_weight: float = 1.0
    sentences: bool = False

    @classmethod
    def parse(cls, text: str) -> "Variant":
        """"dense", "bm25", "hybrid:0.25", "hybrid:1+sent" ..."""
        body, sent = (text[:-5], True) if text.endswith("+sent") else (text, False)
        strategy, _, w = body.partition(":")
        if strategy not in ("dense", "bm25", "hybrid"):
            raise InputError(f"retrieval variant {text!r}: strategy must be dense | bm25 | hybrid")
        return cls(strategy, float(w) if w else 1.0, sent)

    @property
    def name(self) -> str:
        w = f":{self.bm25_weight:g}" if self.strategy == "hybrid" else ""
        return f"{self.strategy}{w}{'+sent' if self.sentences else ''}"


DEFAULT_VARIANTS = ("dense", "bm25", "hybrid:0.25", "hybrid:1", "dense+sent", "hybrid:0.25+sent", "hybrid:1+sent")


def evaluate(service, variants=DEFAULT_VARIANTS, depth: int = 50, benchmarks=BENCHMARKS,
             heldout: set[str] | None = None) -> list[dict]:
    """One row per retrieval variant, recall@1/@5 and MRR of each benchmark side by side, over all queries and over
    the queries whose answers are all held-out topics (the adapted encoder's split, else the default split, so
    every encoder is scored on the same subset). The passage vectors are the index's (embedded once per encoder);
    each query and sentence is embedded once for all variants."""
    idx = service.index()
    variants = [v if isinstance(v, Variant) else Variant.parse(v) for v in variants]
    if heldout is None:
        heldout = service.heldout_topics(service.cfg.query_encoder) or split_topics(t.id for t in service.topics)[1]
    rows = {v.name: {"encoder": service.cfg.query_encoder, "queries": "all", "variant": v.name} for v in variants}
    sub_rows = {v.name: {"encoder": service.cfg.query_encoder, "queries": "held-out topics", "variant": v.name}
                for v in variants}
    for name in benchmarks:
        queries, answers = benchmark(service, name)
        pieces, owner = query_pieces(queries, any(v.sentences for v in variants))
        whole = [i for i, q in enumerate(owner) if i == 0 or owner[i - 1] != q]        # each query's first piece
        need_dense = any(v.strategy != "bm25" for v in variants)
        qv = service.query_encoder.encode(pieces) if need_dense else None
        cache = {}
        for v in variants:
            key = (v.strategy, v.bm25_weight if v.strategy == "hybrid" else None)
            if key not in cache:
                cache[key] = idx.search(pieces, qv, depth, v.strategy, service.cfg.rrf_k, v.bm25_weight)[0]
            ids = cache[key]
            ranked = fuse_pieces(ids, owner, len(queries), depth, service.cfg.rrf_k)[0] if v.sentences else ids[whole]
            topics = idx.topic_ranking(ranked)
            _put(rows[v.name], name, score(topics, answers))
            keep = [i for i, a in enumerate(answers) if a <= heldout]
            _put(sub_rows[v.name], name, score([topics[i] for i in keep], [answers[i] for i in keep]))
    return list(rows.values()) + list(sub_rows.values())


def _put(row: dict, bench: str, s: dict) -> None:
    short = {"synonyms": "syn", "openi": "rep", "impressions": "imp"}.get(bench, bench)
    row[f"{short} n"] = s["queries"]
    for m in ("recall@1", "recall@5", "mrr"):
        row[f"{short} {m.replace('recall', 'R')}"] = s[m]
