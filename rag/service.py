"""Everything retrieval needs for one profile, built once: encoders, corpus, index, projection."""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from extract.registry import build_encoder, model_options
from stores import paths
from stores.spec import PipelineSpec, RagSpec, canonical_hash

from .corpus import load_topics, to_passages
from .index import RetrievalIndex, normalise, open_index
from .softprompt import Projection, projection_for


class RagService:
    def __init__(self, spec: PipelineSpec, profile: str, data_root_override: str | None = None,
                 rag: RagSpec | None = None, device: str | None = None, index_dir: str | None = None):
        self.spec, self.profile, self.device = spec, profile, device
        self.data_root_override = data_root_override
        self.cfg = rag or spec.profile(profile).rag
        if self.cfg is None:
            raise ValueError(f"{spec.source_file}: profiles.{profile}.rag is not set")
        self.corpus_path = paths.corpus_path(spec, self.cfg, data_root_override)
        self._index_dir = Path(index_dir) if index_dir else None
        self._encoders = {}

    def encoder(self, key: str):
        if key not in self._encoders:
            self._encoders[key] = build_encoder(key, model_options(self.spec.profile(self.profile), key,
                                                                  cache=paths.model_cache(self.spec)),
                                                    self.device).load()
        return self._encoders[key]

    @property
    def query_encoder(self):
        return self.encoder(self.cfg.query_encoder)

    @property
    def article_encoder(self):
        return self.encoder(self.cfg.article_encoder)

    @property
    def lm(self):
        return self.encoder(self.cfg.lm)

    @cached_property
    def topics(self):
        return load_topics(self.corpus_path)

    @cached_property
    def passages(self):
        return to_passages(self.topics, self.cfg.passage_words)

    @property
    def index_dir(self) -> Path:
        if self._index_dir:
            return self._index_dir
        tag = canonical_hash({"corpus": str(self.corpus_path), "article": self.cfg.article_encoder,
                              "words": self.cfg.passage_words, "index": self.cfg.index})[:12]
        return paths.rag_root(self.spec) / f"{self.cfg.article_encoder}-{tag}"

    def index(self, rebuild: bool = False) -> RetrievalIndex:
        if rebuild or not hasattr(self, "_index"):
            self._index = open_index(self.index_dir, self.passages, self.article_encoder, self.cfg.index, rebuild)
        return self._index

    def retrieve(self, texts: list[str], k: int | None = None, strategy: str | None = None):
        strategy = strategy or self.cfg.strategy
        qv = None if strategy == "bm25" else self.query_encoder.encode(texts)
        return self.index().search(texts, qv, k or self.cfg.k, strategy, self.cfg.rrf_k, self.cfg.bm25_weight)

    def retrieve_topics(self, text: str, k: int | None = None, strategy: str | None = None) -> list[tuple[int, float]]:
        """The top-k topics for a text, each as (its best passage id, score): what `rag search` lists."""
        k = k or self.cfg.k
        ids, scores = self.retrieve([text], k=max(50, k), strategy=strategy)
        seen, out = set(), []
        passages = self.index().passages
        for pid, sc in zip(ids[0], scores[0]):
            if pid >= 0 and passages[int(pid)].topic_id not in seen:
                seen.add(passages[int(pid)].topic_id)
                out.append((int(pid), float(sc)))
        return out[:k]

    @cached_property
    def projection(self) -> Projection:
        idx = self.index()
        return projection_for(idx.folder, [p.as_document() for p in idx.passages], idx.vectors, self.lm)

    def embed(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """RAG embeddings of bridged texts: retrieve top-K, mean-pool, project, soft-prompt the LM."""
        ids, scores = self.retrieve(texts)
        pooled = normalise(self.index().vectors[ids].mean(1))
        soft = self.projection(pooled)
        return self.lm.embed_with_prefix(texts, soft), ids, scores

    def identity(self) -> dict:
        idx = self.index()
        # generators enter the hash of the modality they bridge (rag/embed.py), not of every RAG expert
        return {"rag": self.cfg.model_dump(exclude={"generators"}), "index": idx.meta["config_hash"],
                "corpus": idx.meta["corpus_hash"],
                "query": self.query_encoder.identity(), "lm": self.lm.identity()}
