"""Rank fusion: weighted reciprocal rank fusion (RRF), and sentence fusion for long queries.

A long text (a whole report, a serialized stay) mixes several findings; one embedding of all of it blurs them. With
sentence fusion the text and each of its sentences are ranked on their own and the rankings fused by RRF, so a
passage that matches one finding well still scores (`rag eval` measures both; docs/rag.md).
"""
from __future__ import annotations

import re

import numpy as np

_NUMBERED = re.compile(r"(?:^|\s)\d{1,2}[.)]\s+")          # "1. ... 2. ..." lists in impressions
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")


def split_sentences(text: str, min_words: int = 1) -> list[str]:
    """Sentences (and numbered items) of a text; pieces under ``min_words`` words and without a letter dropped."""
    parts = []
    for item in _NUMBERED.split(text):
        parts.extend(s.strip() for s in _SENTENCE_END.split(item))
    return [p for p in parts if len(p.split()) >= min_words and any(c.isalpha() for c in p)]


def rrf(rankings: list, weights: list[float] | None = None, rrf_k: int = 60, k: int = 5) -> tuple[list[int], list[float]]:
    """Fuse rankings of ids (best first; negative ids are empty slots): score = sum of weight / (rrf_k + rank)."""
    weights = [1.0] * len(rankings) if weights is None else weights
    fused: dict[int, float] = {}
    for weight, ranking in zip(weights, rankings):
        for rank, pid in enumerate(ranking):
            if pid >= 0:
                fused[int(pid)] = fused.get(int(pid), 0.0) + weight / (rrf_k + rank + 1)
    best = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return [p for p, _ in best], [s for _, s in best]


def query_pieces(texts: list[str], sentences: bool) -> tuple[list[str], list[int]]:
    """The texts to rank and the query each belongs to: the whole text, plus its sentences when there are several."""
    pieces, owner = [], []
    for q, t in enumerate(texts):
        pieces.append(t)
        owner.append(q)
        if sentences:
            sents = split_sentences(t)
            if len(sents) > 1:
                pieces.extend(sents)
                owner.extend([q] * len(sents))
    return pieces, owner


def fuse_pieces(ids: np.ndarray, owner: list[int], n_queries: int, k: int, rrf_k: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Per query, RRF over the rankings of its pieces (a query with one piece keeps that piece's ranking)."""
    rows: list[list[int]] = [[] for _ in range(n_queries)]
    for i, q in enumerate(owner):
        rows[q].append(i)
    out_ids = np.full((n_queries, k), -1, np.int64)
    out_scores = np.zeros((n_queries, k), np.float32)
    for q, members in enumerate(rows):
        best, scores = rrf([ids[i] for i in members], rrf_k=rrf_k, k=k)
        out_ids[q, :len(best)] = best
        out_scores[q, :len(best)] = scores
    return out_ids, out_scores


def fused_search(index, encode, texts: list[str], k: int, strategy: str, rrf_k: int = 60, bm25_weight: float = 1.0,
                 sentences: bool = False, depth: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """``index.search``, with sentence fusion when asked. ``encode``: texts -> query vectors (unused for bm25)."""
    if not sentences:
        qv = None if strategy == "bm25" else encode(texts)
        return index.search(texts, qv, k, strategy, rrf_k, bm25_weight)
    pieces, owner = query_pieces(texts, True)
    qv = None if strategy == "bm25" else encode(pieces)
    ids, _ = index.search(pieces, qv, max(k, depth), strategy, rrf_k, bm25_weight)
    return fuse_pieces(ids, owner, len(texts), k, rrf_k)
