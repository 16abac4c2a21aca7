"""The soft-prompt bridge: retrieved-passage embedding -> one token in the LM's input-embedding space.

Ours (METHOD section 4): the projection is fit offline by least squares from each corpus passage's retrieval
embedding to the mean input-token embedding of that passage's text under the LM's tokenizer, so the soft token
"reads like" the retrieved knowledge. Saved next to the index, keyed by the LM's identity.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from plugins.encoders.hf_text import pool_hidden
from stores.errors import describe
from stores.spec import canonical_hash
from stores.store import file_digest

log = logging.getLogger("medmix.rag")


@dataclass
class Projection:
    weight: np.ndarray      # (d_in, d_out)
    bias: np.ndarray        # (d_out,)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float32) @ self.weight + self.bias).astype(np.float32)


def fit_projection(x: np.ndarray, y: np.ndarray, ridge: float = 1e-3) -> Projection:
    """Least squares with an intercept and a small ridge (more passages than dims is not guaranteed)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    xm, ym = x.mean(0), y.mean(0)
    xc, yc = x - xm, y - ym
    gram = xc.T @ xc + ridge * len(x) * np.eye(x.shape[1])
    w = np.linalg.solve(gram, xc.T @ yc)
    return Projection(w.astype(np.float32), (ym - xm @ w).astype(np.float32))


def projection_for(folder: Path, passages_text: list[str], passage_vectors: np.ndarray, lm) -> Projection:
    """Load the projection fitted for this index + LM, or fit and save it. The weights' sha256 sits in the JSON
    beside them and is checked at load (a changed or half-written file is fitted again, with a warning); a fit is
    written whole (temporary name, then rename) under a lock, so concurrent workers fit once. A read-only index
    folder (a shared or packed cache) is read without a lock; a fit it cannot save serves this run only."""
    from filelock import FileLock
    key = canonical_hash({"lm": lm.identity(), "n": len(passages_text), "vectors_sum": float(passage_vectors.sum())})[:16]
    wf, mf = folder / f"projection-{key}.npz", folder / f"projection-{key}.json"
    proj = _load_projection(wf, mf, warn=False)
    if proj is not None:
        return proj
    try:
        with FileLock(str(wf) + ".lock"):
            proj = _load_projection(wf, mf, warn=True)       # another worker may have fitted it meanwhile
            if proj is None:
                proj = _fit_and_save(wf, mf, passages_text, passage_vectors, lm)
    except OSError as exc:                                   # no write access to the index folder
        log.warning("%s: cannot save the projection fit (%s): fitted for this run only", folder, describe(exc))
        proj = fit_projection(passage_vectors, mean_token_embedding(lm, passages_text))
    return proj


def _load_projection(wf: Path, mf: Path, warn: bool) -> Projection | None:
    """The saved projection when its weights match the sha256 in its JSON; None (said when ``warn``) otherwise."""
    if not (wf.exists() and mf.exists()):
        return None
    try:
        want = json.loads(mf.read_text()).get("sha256")
        if want and file_digest(wf) == want:
            with np.load(wf, allow_pickle=False) as z:
                return Projection(z["weight"], z["bias"])
        why = (f"content does not match the sha256 in {mf.name}" if want
               else "saved before projections carried a sha256")
    except (OSError, ValueError) as exc:
        why = f"unreadable ({describe(exc)})"
    if warn:
        log.warning("%s: %s: fitting it again", wf, why)
    return None


def _fit_and_save(wf: Path, mf: Path, passages_text: list[str], passage_vectors: np.ndarray, lm) -> Projection:
    target = mean_token_embedding(lm, passages_text)
    proj = fit_projection(passage_vectors, target)
    tmp = wf.with_name(f".{wf.stem}.tmp.npz")
    np.savez(tmp, weight=proj.weight, bias=proj.bias)
    resid = float(np.mean((proj(passage_vectors) - target) ** 2) / max(np.var(target), 1e-12))
    tmp_meta = mf.with_name(f".{mf.name}.tmp")
    tmp_meta.write_text(json.dumps({"lm": lm.identity(), "relative_mse": resid, "sha256": file_digest(tmp)}, indent=2))
    os.replace(tmp, wf)
    os.replace(tmp_meta, mf)
    return proj


# ---- the LM side: any registry text encoder (plugins/encoders/hf_text.py) as the soft-prompt LM -----------------
def input_embedding_dim(lm) -> int:
    lm.load()
    return int(lm.model.get_input_embeddings().weight.shape[1])


@torch.inference_mode()
def mean_token_embedding(lm, texts: list[str]) -> np.ndarray:
    """Mean input-token embedding of each text under the LM's tokenizer (the target of the projection fit)."""
    lm.load()
    table = lm.model.get_input_embeddings().weight
    out = []
    for ids in lm._token_ids(texts):
        ids = torch.tensor(ids[: lm.window()] or [0], device=table.device)
        out.append(table[ids].float().mean(0).cpu().numpy())
    return np.stack(out)


@torch.inference_mode()
def embed_with_prefix(lm, texts: list[str], prefix: np.ndarray) -> np.ndarray:
    """The LM's pooled hidden state of [soft token] + text, one window per text (truncated to the max length)."""
    lm.load()
    win = lm.window() - 1
    ids = [t[:win] for t in lm._token_ids(texts)]
    out = []
    with lm.autocast():
        for b in range(0, len(ids), lm.batch_size):
            p = torch.as_tensor(prefix[b:b + lm.batch_size], dtype=torch.float32, device=lm.device)
            out.append(_forward_prefixed(lm, ids[b:b + lm.batch_size], p).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def _forward_prefixed(lm, batch_ids: list[list[int]], prefix: torch.Tensor) -> torch.Tensor:
    """Padded texts with one soft-prompt vector (B, H) inserted after the leading specials ([CLS]) / at the start."""
    pre, post = lm._specials()
    enc = lm.preprocess.pad({"input_ids": [pre + t + post for t in batch_ids]}, return_tensors="pt").to(lm.device)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    emb = lm.model.get_input_embeddings()(ids)
    at = len(pre)
    soft = prefix.to(emb.dtype).unsqueeze(1)
    emb = torch.cat([emb[:, :at], soft, emb[:, at:]], 1)
    mask = torch.cat([mask[:, :at], torch.ones_like(mask[:, :1]), mask[:, at:]], 1)
    hidden = lm.model(inputs_embeds=emb, attention_mask=mask).last_hidden_state
    return pool_hidden(hidden.float(), mask, lm.pooling)
