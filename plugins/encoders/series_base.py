"""Shared EHR time-series path: an item is a (T, V) array of hourly values (NaN = not measured).

Each time-series foundation model embeds series; the item embedding is the mean over variables of the per-series
embeddings, variables with too few observations masked (METHOD section 2, "ours").
"""
from __future__ import annotations

import numpy as np

from ..registry import Encoder


class SeriesEncoder(Encoder):
    min_observations: int = 2

    def _series_batch(self, series: list[np.ndarray]) -> np.ndarray:
        """Embed a list of 1-D series (NaN allowed) -> (n, D)."""
        raise NotImplementedError

    def _forward(self, items: list) -> np.ndarray:
        flat, owner = [], []
        for i, x in enumerate(items):
            x = np.asarray(x, dtype=np.float32)
            if x.ndim != 2:
                raise ValueError(f"item {i}: expected a (time, variables) array, got shape {x.shape}")
            cols = [x[:, v] for v in range(x.shape[1]) if np.isfinite(x[:, v]).sum() >= self.min_observations]
            if not cols:
                raise ValueError(f"item {i}: no variable has {self.min_observations}+ observations")
            flat += cols
            owner += [i] * len(cols)
        owner = np.asarray(owner)
        emb = []
        for b in range(0, len(flat), self.batch_size):
            emb.append(self._series_batch(flat[b:b + self.batch_size]))
        emb = np.concatenate(emb)
        return np.stack([emb[owner == i].mean(0) for i in range(len(items))])
