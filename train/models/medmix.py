"""MedMIX (METHOD section 3): intra-modality expert routing, then availability-gated fusion of modality heads.

Masking is exact: a missing expert's input is replaced by zeros (``torch.where``, not a product, so even NaN or
huge values cannot leak), its router score is -1e4 (softmax weight exactly 0 in float32), a missing modality's
fusion score is -1e4. A sample with nothing available gets the heads' bias: defined, finite.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

NEG = -1e4


def adapter_rank(d: int) -> int:
    """r = min(128, max(32, floor(d / 16)))."""
    return min(128, max(32, d // 16))


class ResidualAdapter(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        r = adapter_rank(d)
        self.down, self.up = nn.Linear(d, r), nn.Linear(r, d)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return e + self.up(F.gelu(self.down(e)))


def projection(d_in: int, d: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d), nn.LayerNorm(d), nn.GELU(), nn.Dropout(dropout))


class ExpertBranch(nn.Module):
    """Residual adapter + projection to the shared width."""

    def __init__(self, d_in: int, d: int, dropout: float):
        super().__init__()
        self.adapter = ResidualAdapter(d_in)
        self.proj = projection(d_in, d, dropout)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.proj(self.adapter(e))


@dataclass
class Output:
    logits: torch.Tensor                                   # (B, C) fused
    modality_z: dict = field(default_factory=dict)         # m -> (B, d)
    modality_logits: dict = field(default_factory=dict)    # m -> (B, C)
    router: dict = field(default_factory=dict)             # m -> (B, K_m)
    fusion: torch.Tensor | None = None                     # (B, M)
    available: torch.Tensor | None = None                  # (B, M) bool


class MedMIX(nn.Module):
    def __init__(self, layout: dict[str, list[int]], n_out: int, d: int = 256, dropout: float = 0.1,
                 teacher_dims: dict[str, int] | None = None, intra: str = "router", uniform_init: bool = False):
        super().__init__()
        self.modalities = list(layout)
        self.intra = intra                                  # router | mean (ablation: uniform mean over experts)
        self.branches = nn.ModuleDict({m: nn.ModuleList(ExpertBranch(di, d, dropout) for di in dims)
                                       for m, dims in layout.items()})
        self.router = nn.ModuleDict({m: nn.Linear(d, 1) for m in layout})
        self.heads = nn.ModuleDict({m: nn.Linear(d, n_out) for m in layout})
        self.scorer = nn.ModuleDict({m: nn.Linear(d, 1) for m in layout})
        self.teacher_proj = nn.ModuleDict({m: nn.Linear(dt, d) for m, dt in (teacher_dims or {}).items() if m in layout})
        if uniform_init:              # equal router and fusion weights at the start; learned away from there
            for lin in [*self.router.values(), *self.scorer.values()]:
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)

    def router_parameters(self):
        return list(self.router.parameters())

    def forward(self, xs: dict[str, list[torch.Tensor]], masks: dict[str, torch.Tensor]) -> Output:
        out = Output(logits=None)
        scores, logits, avail = [], [], []
        for m in self.modalities:
            mask = masks[m]                                               # (B, K) bool
            zs = []
            for k, branch in enumerate(self.branches[m]):
                e = torch.where(mask[:, k:k + 1], xs[m][k], torch.zeros_like(xs[m][k]))
                zs.append(torch.where(mask[:, k:k + 1], branch(e), torch.zeros(1, device=e.device)))
            z = torch.stack(zs, 1)                                        # (B, K, d)
            if self.intra == "router":
                s = self.router[m](z).squeeze(-1)
            else:
                s = torch.zeros(z.shape[:2], device=z.device)
            s = torch.where(mask, s, torch.full_like(s, NEG))
            g = torch.softmax(s, dim=1)
            a = mask.any(1)                                               # availability gate
            zm = (g.unsqueeze(-1) * z).sum(1) * a.unsqueeze(-1).to(z.dtype)
            lm = self.heads[m](zm)
            sm = self.scorer[m](zm).squeeze(-1)
            scores.append(torch.where(a, sm, torch.full_like(sm, NEG)))
            logits.append(lm)
            avail.append(a)
            out.modality_z[m], out.modality_logits[m], out.router[m] = zm, lm, g
        w = torch.softmax(torch.stack(scores, 1), dim=1)                  # (B, M)
        out.logits = (w.unsqueeze(-1) * torch.stack(logits, 1)).sum(1)
        out.fusion, out.available = w, torch.stack(avail, 1)
        return out


def _build(intra: str, distill: bool):
    def build(dims, n_out, teacher_dims, recipe, large_modality=None):
        return MedMIX(dims, n_out, d=recipe.hidden, dropout=recipe.dropout, intra=intra,
                      teacher_dims=teacher_dims if distill else None, uniform_init=recipe.fusion_init == "uniform")
    return build


def _register():
    from ..methods import Method, register
    register(Method("medmix", _build("router", True), distill=True, aux_heads=True))
    # ablations: each removes exactly one component
    register(Method("medmix_nodistill", _build("router", False), aux_heads=True, main=False))
    register(Method("medmix_mean", _build("mean", True), distill=True, aux_heads=True, main=False))


_register()
