"""Everything retrieval needs for one profile, built once: encoders, corpus, index, projection."""
from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path

import numpy as np

from plugins.registry import build_encoder, load_all, model_options
from stores import paths
from stores.errors import InputError
from stores.spec import PipelineSpec, RagSpec, canonical_hash

from .adapted import adapted_root, attach, resolve_encoder
from .corpus import corpus_hash, load_topics, to_passages
from .fusion import fused_search
from .index import RetrievalIndex, normalise, open_index
from .softprompt import Projection, embed_with_prefix, projection_for

log = logging.getLogger("medmix.rag")


def search_config(cfg: RagSpec) -> RagSpec:
    """The RAG spec `rag search` uses: the profile's ``rag.search`` defaults (short queries) over the expert's."""
    if cfg.search is None:
        return cfg
    return cfg.model_copy(update={k: v for k, v in cfg.search.model_dump().items() if v is not None})


class RagService:
    def __init__(self, spec: PipelineSpec, profile: str, data_root_override: str | None = None,
                 rag: RagSpec | None = None, device: str | None = None, index_dir: str | None = None):
        self.spec, self.profile, self.device = spec, profile, device
        self.data_root_override = data_root_override
        self.cfg = rag or spec.profile(profile).rag
        if self.cfg is None:
            raise InputError(f"{spec.source_file}: profiles.{profile}.rag is not set")
        self.corpus_path = paths.corpus_path(spec, self.cfg, data_root_override)
        self._index_dir = Path(index_dir) if index_dir else None
        self._encoders = {}

    def encoder(self, key: str, fresh: bool = False):
        """The loaded encoder a config key names (a registry key or an adapted encoder); ``fresh``: a new,
        uncached instance (`rag adapt` trains it in place)."""
        if fresh or key not in self._encoders:
            options = model_options(self.spec.profile(self.profile), key, cache=paths.model_cache(self.spec))
            try:
                base, options = resolve_encoder(key, options, paths.model_cache(self.spec), load_all())
            except KeyError:
                base = key.removesuffix("_adapted")
                if base == key or base not in load_all() or options.source:
                    raise
                self._adapt_once(key, base)
                base, options = resolve_encoder(key, options, paths.model_cache(self.spec), load_all())
            enc = attach(build_encoder(base, options, self.device).load(), options)
            if fresh:
                return enc
            self._encoders[key] = enc
        return self._encoders[key]

    def _adapt_once(self, key: str, base: str) -> None:
        """A config names ``BASE_adapted`` that is not in the model cache yet: adapt BASE with the default recipe
        once (like building the index), under a lock so that concurrent callers train it once."""
        from filelock import FileLock

        from .adapt import Recipe, adapt_encoder
        folder = adapted_root(paths.model_cache(self.spec)) / key
        folder.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder) + ".lock"):
            if not folder.exists():
                log.warning("%s is not in the model cache: adapting %s once with the default recipe (`python -m rag "
                            "adapt`; about 5 min on 2 free CPU cores for MiniLM) into %s", key, base, folder)
                adapt_encoder(self.encoder(base, fresh=True), self.topics, self.passages, folder, Recipe())

    def heldout_topics(self, key: str) -> set[str] | None:
        """The topics an adapted encoder never trained on (None for a published encoder)."""
        enc = self.encoder(key)
        return set(enc.adapted["heldout_topics"]) if getattr(enc, "adapted", None) else None

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
        # keyed by the passages' content, not the corpus path: one build per corpus and encoder, reused everywhere
        tag = canonical_hash({"corpus": corpus_hash(self.passages), "article": self.cfg.article_encoder,
                              "index": self.cfg.index})[:12]
        return paths.rag_root(self.spec) / f"{self.cfg.article_encoder}-{tag}"

    def index(self, rebuild: bool = False) -> RetrievalIndex:
        if rebuild or not hasattr(self, "_index"):
            self._index = open_index(self.index_dir, self.passages, self.article_encoder, self.cfg.index, rebuild)
        return self._index

    def retrieve(self, texts: list[str], k: int | None = None, strategy: str | None = None):
        """Top-k passage ids and scores per text (sentence fusion when the config asks for it)."""
        return fused_search(self.index(), self.query_encoder.encode, texts, k or self.cfg.k, strategy or self.cfg.strategy,
                            self.cfg.rrf_k, self.cfg.bm25_weight, self.cfg.sentence_fusion)

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
        return embed_with_prefix(self.lm, texts, soft), ids, scores

    def identity(self) -> dict:
        idx = self.index()
        # generators enter the hash of the modality they bridge (rag/embed.py), not of every RAG expert
        rag = self.cfg.model_dump(exclude={"generators", "search", "sentence_fusion"})   # search: `rag search` only
        if self.cfg.sentence_fusion:            # only when on: configs from before the field keep their hash
            rag["sentence_fusion"] = True
        return {"rag": rag, "index": idx.meta["config_hash"],
                "corpus": idx.meta["corpus_hash"],
                "query": self.query_encoder.identity(), "lm": self.lm.identity()}
