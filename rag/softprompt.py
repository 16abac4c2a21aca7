"""The soft-prompt bridge: retrieved-passage embedding -> one token in the LM's input-embedding space.

Ours (METHOD section 4): the projection is fit offline by least squares from each corpus passage's retrieval
embedding to the mean input-token embedding of that passage's text under the LM's tokenizer, so the soft token
"reads like" the retrieved knowledge. Saved next to the index, keyed by the LM's identity.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stores.spec import canonical_hash


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
    """Load the projection fitted for this index + LM, or fit and save it."""
    key = canonical_hash({"lm": lm.identity(), "n": len(passages_text), "vectors_sum": float(passage_vectors.sum())})[:16]
    wf, mf = folder / f"projection-{key}.npz", folder / f"projection-{key}.json"
    if wf.exists() and mf.exists():
        with np.load(wf, allow_pickle=False) as z:
            return Projection(z["weight"], z["bias"])
    target = lm.mean_token_embedding(passages_text)
    proj = fit_projection(passage_vectors, target)
    np.savez(wf, weight=proj.weight, bias=proj.bias)
    resid = float(np.mean((proj(passage_vectors) - target) ** 2) / max(np.var(target), 1e-12))
    mf.write_text(json.dumps({"lm": lm.identity(), "relative_mse": resid}, indent=2))
    return proj
