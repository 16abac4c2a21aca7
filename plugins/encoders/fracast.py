"""Fracast-0 (85k-parameter time-series foundation model; real weights on PyPI) as an EHR expert.

Fracast's context window is fixed at 2,048 steps, so one forward costs the same for 48 steps as for 2,048.
Layout ``concat`` (default; ours): a stay's variables, each robust-normalised, are laid end to end in ONE context
(36 x 48 h = 1,728 steps), and each variable's embedding is the mean hidden state over its own observed steps;
one forward per stay. Layout ``per_variable`` runs one context per variable (36 forwards per stay: 2.2 s per stay
on 2 CPU cores, measured; for GPUs). Either way the stay embedding is the mean over observed variables.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from typing import Literal

from ..registry import Encoder, NoParams, register


class FracastParams(NoParams):
    layout: Literal["concat", "per_variable"] = "concat"     # how the stay's variables become Fracast rows


@register("fracast0", modality="series", role="general", dim=64, licence="Apache-2.0", source="pypi:fracast==0.1.0")
class Fracast0(Encoder):
    Params = FracastParams
    batch_size = 16
    min_observations = 1
    version = "1"

    def _build(self):
        if self.resolved.kind == "pypi" and self.resolved.location not in sys.path:
            sys.path.insert(0, self.resolved.location)      # the package carries both code and weights
        from fracast import FracastModel
        src = None if self.resolved.kind == "pypi" else self.resolved.location
        wrapper = FracastModel.from_pretrained(src, weights="fp32", device=self.device)
        return wrapper, None, torch.float32

    def _probe_dim(self) -> int:
        return 64

    def identity(self) -> dict:
        return {**super().identity(), "layout": self.params.get("layout", "concat")}

    @staticmethod
    def _normalise(col: np.ndarray) -> np.ndarray:
        obs = col[np.isfinite(col)]
        lo, span = obs.min(), max(obs.max() - obs.min(), 1e-5)
        return (col - lo) / span

    def _contexts(self, x: np.ndarray, W: int) -> tuple[list[np.ndarray], list[np.ndarray], list[list[slice]]]:
        """Rows of (values, observed) of length W and, per row, the positions of each variable."""
        cols = [x[:, v] for v in range(x.shape[1]) if np.isfinite(x[:, v]).sum() >= self.min_observations]
        if not cols:
            raise ValueError("no variable has an observation")
        T = x.shape[0]
        per_row = 1 if self.params.get("layout", "concat") == "per_variable" else max(1, W // T)
        rows_v, rows_m, rows_pos = [], [], []
        for s in range(0, len(cols), per_row):
            group = cols[s:s + per_row]
            vals = np.zeros(W, np.float32)
            obs = np.zeros(W, bool)
            start = W - T * len(group)
            pos = []
            for j, c in enumerate(group):
                sl = slice(start + j * T, start + (j + 1) * T)
                m = np.isfinite(c)
                vals[sl] = np.where(m, self._normalise(c), 0.0)
                obs[sl] = m
                pos.append((sl, m))
            rows_v.append(vals)
            rows_m.append(obs)
            rows_pos.append(pos)
        return rows_v, rows_m, rows_pos

    def _forward(self, items: list) -> np.ndarray:
        W = self.model.context_length
        core = self.model.core
        rows_v, rows_m, owner, positions = [], [], [], []
        for i, x in enumerate(items):
            x = np.asarray(x, dtype=np.float32)
            if x.ndim != 2 or x.shape[0] > W:
                raise ValueError(f"item {i}: expected (time <= {W}, variables), got {x.shape}")
            v, m, p = self._contexts(x, W)
            rows_v += v
            rows_m += m
            positions += p
            owner += [i] * len(v)
        var_emb = [[] for _ in items]
        for b in range(0, len(rows_v), self.batch_size):
            vals = torch.from_numpy(np.stack(rows_v[b:b + self.batch_size]))[:, None].to(self.device)
            obs = torch.from_numpy(np.stack(rows_m[b:b + self.batch_size]))[:, None].to(self.device)
            hidden = core(vals, obs, obs.float()).float().cpu().numpy()       # (B, W, 64)
            for r, h in enumerate(hidden):
                for sl, m in positions[b + r]:
                    steps = h[sl][m]
                    var_emb[owner[b + r]].append(steps.mean(0))
        return np.stack([np.mean(v, 0) for v in var_emb])
