"""Small numeric helpers every layer shares (numpy only: stores/ never imports torch)."""
from __future__ import annotations

import numpy as np

EPS = 1e-12


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Each row scaled to unit L2 norm (an all-zero row stays zero); the dtype is kept."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), EPS)
