"""The retrieval index: FAISS over normalised article embeddings (+ BM25), saved with its metadata.

Saved as a folder: index.faiss, vectors.npy (passage embeddings, for mean-pooling what is retrieved),
passages.json, bm25/ (bm25s), meta.json (corpus hash, encoder identity, config hash, file sizes). The folder is
written whole elsewhere and renamed into place; ``open_index`` rebuilds a stale index (another corpus, encoder or
config) and a corrupt one (truncated or missing files) instead of using it.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

logging.getLogger("faiss.loader").setLevel(logging.WARNING)    # its AVX512/AVX2 probing is not news to a user
import faiss  # noqa: E402

from stores.cli import Progress
from stores.numeric import l2_normalise
from stores.spec import canonical_hash
from stores.store import file_digest

from .corpus import Passage, corpus_hash
from .fusion import rrf
from stores.errors import InputError

log = logging.getLogger("medmix.rag")


def normalise(x: np.ndarray) -> np.ndarray:
    return l2_normalise(np.asarray(x, dtype=np.float32))


def make_faiss(vectors: np.ndarray, kind: str = "flat") -> faiss.Index:
    d = vectors.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    elif kind == "ivf":
        nlist = max(1, min(4096, int(np.sqrt(len(vectors)))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = max(1, nlist // 8)
    else:
        raise InputError(f"unknown index kind {kind!r} (flat | ivf | hnsw)")
    if faiss.get_num_gpus() > 0 and hasattr(faiss, "index_cpu_to_all_gpus") and kind == "flat":
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(vectors)
    return index


def _tokenize_bm25(texts: list[str]):
    import bm25s
    return bm25s.tokenize(texts, stopwords="en", show_progress=False)


class RetrievalIndex:
    def __init__(self, folder: Path, passages: list[Passage], vectors: np.ndarray, index: faiss.Index, bm25, meta: dict):
        self.folder, self.passages, self.vectors, self.index, self.bm25, self.meta = folder, passages, vectors, index, bm25, meta

    # ---- search ---------------------------------------------------------------------------------------------
    def dense(self, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = self.index.search(normalise(query_vectors), k)
        return ids, scores

    def lexical(self, texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(self.passages))
        docs, scores = self.bm25.retrieve(_tokenize_bm25(texts), k=k, show_progress=False, n_threads=1)
        return np.asarray(docs, dtype=np.int64), np.asarray(scores, dtype=np.float32)

    def search(self, texts: list[str], query_vectors: np.ndarray | None, k: int, strategy: str,
               rrf_k: int = 60, bm25_weight: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Top-k passage ids and scores per query. hybrid = reciprocal rank fusion of dense and BM25, BM25's
        votes weighted by ``bm25_weight`` (1 = plain RRF)."""
        if strategy == "dense":
            return self.dense(query_vectors, k)
        if strategy == "bm25":
            return self.lexical(texts, k)
        if strategy != "hybrid":
            raise InputError(f"unknown retrieval strategy {strategy!r} (dense | bm25 | hybrid)")
        depth = min(len(self.passages), max(50, k))        # fixed: the top 5 is a prefix of the top 50
        d_ids, _ = self.dense(query_vectors, depth)
        l_ids, _ = self.lexical(texts, depth)
        out_ids = np.full((len(texts), k), -1, np.int64)
        out_scores = np.zeros((len(texts), k), np.float32)
        for q in range(len(texts)):
            best, scores = rrf([d_ids[q], l_ids[q]], [1.0, bm25_weight], rrf_k, k)
            out_ids[q, :len(best)] = best
            out_scores[q, :len(best)] = scores
        return out_ids, out_scores

    def topic_ranking(self, ids: np.ndarray) -> list[list[str]]:
        """Passage ids -> topic ids, first occurrence order (several passages may share a topic)."""
        out = []
        for row in ids:
            seen = []
            for pid in row:
                if pid < 0:
                    continue
                t = self.passages[int(pid)].topic_id
                if t not in seen:
                    seen.append(t)
            out.append(seen)
        return out


def index_meta(passages: list[Passage], encoder_identity: dict, kind: str) -> dict:
    meta = {"corpus_hash": corpus_hash(passages), "n_passages": len(passages), "encoder": encoder_identity,
            "index": kind, "format": 1}
    meta["config_hash"] = canonical_hash(meta)
    return meta


FILES = ("index.faiss", "vectors.npy", "passages.json", "meta.json")


class CorruptIndex(RuntimeError):
    """A saved index that cannot be read or does not add up (a killed build, a truncated copy)."""


def build_index(folder: Path, passages: list[Passage], encoder, kind: str = "flat") -> RetrievalIndex:
    """Embed and index the passages into a temporary sibling folder, then swap it in by rename: a killed build
    never leaves a half-written index under ``folder``."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".{folder.name}.tmp-*"):      # left by a killed build (callers hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        return _build_into(tmp, folder, passages, encoder, kind)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)                     # a failed build leaves nothing behind
        raise


def _file_digests(folder: Path, names: list[str] | None = None) -> dict[str, str]:
    """sha256 of the index's files (every file a build wrote but meta.json, bm25/ included; or ``names``): checked
    at every open. Files added later beside them (the soft-prompt projection fits) carry their own hashes."""
    paths = [folder / n for n in names] if names is not None else \
        [p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "meta.json"]
    return {p.relative_to(folder).as_posix(): file_digest(p) for p in paths if p.is_file()}


def _build_into(tmp: Path, folder: Path, passages: list[Passage], encoder, kind: str) -> RetrievalIndex:
    import bm25s
    t0 = time.perf_counter()
    docs, step = [p.as_document() for p in passages], 256
    inputs = [encoder.article_input(p.title, p.text) for p in passages]      # as the encoder reads articles (MedCPT)
    with Progress(len(docs), f"index ({encoder.card.key})", unit="passage", logger="medmix.rag") as bar:
        parts = []
        for i in range(0, len(docs), step):
            parts.append(encoder.encode(inputs[i:i + step]))
            bar.update(len(parts[-1]))
    vectors = normalise(np.concatenate(parts))
    index = make_faiss(vectors, kind)
    bm25 = bm25s.BM25()
    bm25.index(_tokenize_bm25(docs), show_progress=False)
    meta = {**index_meta(passages, encoder.identity(), kind), "build_seconds": round(time.perf_counter() - t0, 2)}
    cpu_index = faiss.index_gpu_to_cpu(index) if hasattr(faiss, "index_gpu_to_cpu") and faiss.get_num_gpus() else index
    faiss.write_index(cpu_index, str(tmp / "index.faiss"))
    np.save(tmp / "vectors.npy", vectors, allow_pickle=False)
    (tmp / "passages.json").write_text(json.dumps([asdict(p) for p in passages]))
    bm25.save(str(tmp / "bm25"))
    meta["file_sizes"] = {f: (tmp / f).stat().st_size for f in FILES[:-1]}
    meta["file_sha256"] = _file_digests(tmp)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    old = folder.parent / f".{folder.name}.old-{os.getpid()}"
    if folder.exists():
        os.rename(folder, old)
    os.rename(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    log.info("built %s index over %d passages in %.1fs", kind, len(passages), meta["build_seconds"])
    return RetrievalIndex(folder, passages, vectors, index, bm25, meta)


def load_index(folder: Path) -> RetrievalIndex:
    """Load a saved index; ``CorruptIndex`` (naming the file) when a part is missing, unreadable or inconsistent."""
    import bm25s
    try:
        meta = json.loads((folder / "meta.json").read_text())
        for name, size in meta.get("file_sizes", {}).items():
            if (folder / name).stat().st_size != size:
                raise CorruptIndex(f"{folder / name}: {(folder / name).stat().st_size} bytes, meta.json says {size}")
        if "file_sha256" not in meta:
            raise CorruptIndex(f"{folder}: written before content hashes (meta.json has no file_sha256)")
        have = _file_digests(folder, list(meta["file_sha256"]))
        changed = sorted(n for n in set(have) | set(meta["file_sha256"]) if have.get(n) != meta["file_sha256"].get(n))
        if changed:
            raise CorruptIndex(f"{folder / changed[0]}: content does not match its sha256 in meta.json")
        passages = [Passage(**p) for p in json.loads((folder / "passages.json").read_text())]
        vectors = np.load(folder / "vectors.npy", allow_pickle=False)
        index = faiss.read_index(str(folder / "index.faiss"))
        bm25 = bm25s.BM25.load(str(folder / "bm25"))
    except CorruptIndex:
        raise
    except Exception as exc:  # noqa: BLE001  (json, numpy, faiss and bm25s each raise their own)
        raise CorruptIndex(f"{folder}: unreadable index ({type(exc).__name__}: {exc})"[:500]) from exc
    n = meta.get("n_passages")
    if not (len(passages) == n == vectors.shape[0] == index.ntotal):
        raise CorruptIndex(f"{folder}: passages {len(passages)}, vectors {vectors.shape[0]}, faiss {index.ntotal}, "
                           f"meta {n} disagree")
    return RetrievalIndex(folder, passages, vectors, index, bm25, meta)


def open_index(folder: Path, passages: list[Passage], encoder, kind: str = "flat", rebuild: bool = False) -> RetrievalIndex:
    """Load the saved index if it matches (corpus, encoder, kind) and reads back whole; otherwise (re)build it.
    A file lock makes concurrent callers build once and share the result."""
    from filelock import FileLock
    want = index_meta(passages, encoder.identity(), kind)["config_hash"]
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not rebuild and (folder / "meta.json").exists():
            try:
                have = json.loads((folder / "meta.json").read_text()).get("config_hash")
                if have == want:
                    return load_index(folder)
                log.info("index at %s is stale (config %s != %s): rebuilding", folder, str(have)[:12], want[:12])
            except (CorruptIndex, ValueError) as exc:
                log.warning("index at %s is corrupt, rebuilding: %s", folder, exc)
        elif not rebuild and folder.exists():
            log.warning("index at %s is incomplete (no meta.json): rebuilding", folder)
        return build_index(folder, passages, encoder, kind)
