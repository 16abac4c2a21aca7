"""Baselines on the SAME expert embeddings and masks (METHOD section 6).

MeanAvg / Concat / Max / Attention fuse per-expert projections across all modalities; M3Care imputes missing
modality representations from similar patients and fuses with a transformer; AdaCoMed gates modality experts and
co-trains small-model embeddings against the large (teacher) ones contrastively with adaptive weights; Large uses
one modality's teacher embedding alone. OneLLM (an 8B unified encoder fine-tuned end to end) is out of scope.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .medmix import NEG, Output, projection


class _PerExpert(nn.Module):
    """Project every (modality, expert) embedding to width d; missing ones are zero and flagged."""

    def __init__(self, layout: dict[str, list[int]], d: int, dropout: float):
        super().__init__()
        self.modalities = list(layout)
        self.proj = nn.ModuleDict({m: nn.ModuleList(projection(di, d, dropout) for di in dims)
                                   for m, dims in layout.items()})

    def tokens(self, xs, masks) -> tuple[torch.Tensor, torch.Tensor]:
        toks, flags = [], []
        for m in self.modalities:
            for k, p in enumerate(self.proj[m]):
                mk = masks[m][:, k:k + 1]
                e = torch.where(mk, xs[m][k], torch.zeros_like(xs[m][k]))
                toks.append(torch.where(mk, p(e), torch.zeros(1, device=e.device)))
                flags.append(mk.squeeze(1))
        return torch.stack(toks, 1), torch.stack(flags, 1)       # (B, T, d), (B, T)


class SimpleFusion(nn.Module):
    def __init__(self, layout, n_out, d=256, dropout=0.1, rule="mean", **_):
        super().__init__()
        self.rule = rule
        self.enc = _PerExpert(layout, d, dropout)
        n_tok = sum(len(v) for v in layout.values())
        if rule == "concat":
            self.head = nn.Sequential(nn.Linear(n_tok * (d + 1), d), nn.GELU(), nn.Dropout(dropout), nn.Linear(d, n_out))
        else:
            self.head = nn.Linear(d, n_out)
        if rule == "attention":
            self.query = nn.Parameter(torch.randn(d) / d ** 0.5)
            self.key = nn.Linear(d, d)

    def forward(self, xs, masks) -> Output:
        t, f = self.enc.tokens(xs, masks)
        fm = f.unsqueeze(-1).to(t.dtype)
        if self.rule == "mean":
            h = (t * fm).sum(1) / fm.sum(1).clamp(min=1)
        elif self.rule == "max":
            h = torch.where(f.unsqueeze(-1), t, torch.full_like(t, NEG)).max(1).values
            h = torch.where(f.any(1, keepdim=True), h, torch.zeros_like(h))
        elif self.rule == "concat":
            h = torch.cat([t.flatten(1), f.to(t.dtype)], 1)
        elif self.rule == "attention":
            s = (self.key(t) @ self.query) / t.shape[-1] ** 0.5
            a = torch.softmax(torch.where(f, s, torch.full_like(s, NEG)), 1) * f.any(1, keepdim=True)
            h = (a.unsqueeze(-1) * t).sum(1)
        else:
            raise ValueError(f"unknown fusion rule {self.rule!r}")
        return Output(logits=self.head(h))


class _PerModality(nn.Module):
    """Each modality: mean of its available experts' projections (the per-modality encoder)."""

    def __init__(self, layout, d, dropout):
        super().__init__()
        self.enc = _PerExpert(layout, d, dropout)
        self.sizes = [len(v) for v in layout.values()]

    def forward(self, xs, masks):
        t, f = self.enc.tokens(xs, masks)
        zs, avail, s = [], [], 0
        for n in self.sizes:
            tt, ff = t[:, s:s + n], f[:, s:s + n].unsqueeze(-1).to(t.dtype)
            zs.append((tt * ff).sum(1) / ff.sum(1).clamp(min=1))
            avail.append(f[:, s:s + n].any(1))
            s += n
        return torch.stack(zs, 1), torch.stack(avail, 1)         # (B, M, d), (B, M)


class M3Care(nn.Module):
    """M3Care (Zhang et al., KDD 2022), on cached embeddings: per-modality encoders; a learned patient-similarity
    graph (per modality, over samples in the batch that have the modality) imputes each missing modality as the
    similarity-weighted mean of the most similar patients' representations (similarity measured on the modalities
    both patients have); a transformer fuses the modality tokens."""

    def __init__(self, layout, n_out, d=256, dropout=0.1, top_k=8, **_):
        super().__init__()
        self.per_mod = _PerModality(layout, d, dropout)
        M = len(layout)
        self.sim_proj = nn.ModuleList(nn.Linear(d, d) for _ in range(M))
        self.mod_embed = nn.Parameter(torch.zeros(M, d))
        layer = nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=2 * d, dropout=dropout, batch_first=True)
        self.fuse = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.head = nn.Linear(d, n_out)
        self.top_k = top_k

    def forward(self, xs, masks) -> Output:
        z, a = self.per_mod(xs, masks)                            # (B, M, d), (B, M)
        B, M, _ = z.shape
        af = a.to(z.dtype)
        sim = torch.zeros(B, B, device=z.device)
        for m in range(M):
            h = F.normalize(self.sim_proj[m](z[:, m]), dim=-1)
            both = af[:, m:m + 1] * af[:, m].unsqueeze(0)
            sim = sim + (h @ h.T) * both
        shared = (af @ af.T).clamp(min=1)
        sim = sim / shared
        eye = torch.eye(B, dtype=torch.bool, device=z.device)
        imputed = []
        for m in range(M):
            s = torch.where(a[:, m].unsqueeze(0) & ~eye, sim, torch.full_like(sim, NEG))
            k = min(self.top_k, B)
            top, idx = s.topk(k, dim=1)
            w = torch.softmax(top, 1) * (top > NEG / 2)
            imp = (w.unsqueeze(-1) * z[idx, m]).sum(1)
            imputed.append(torch.where(a[:, m:m + 1], z[:, m], imp))
        tokens = torch.stack(imputed, 1) + self.mod_embed
        h = self.fuse(tokens).mean(1)
        return Output(logits=self.head(h))


class AdaCoMed(nn.Module):
    """AdaCoMed (CVPR 2025), on cached embeddings: a mixture-of-modality-experts gate over available modalities,
    and large/small co-training: an InfoNCE loss aligns each modality's small-model representation with its projected
    large-model (teacher) embedding, weighted adaptively per modality by its current task-loss confidence."""

    def __init__(self, layout, n_out, d=256, dropout=0.1, teacher_dims=None, **_):
        super().__init__()
        self.modalities = list(layout)
        self.per_mod = _PerModality(layout, d, dropout)
        self.gate = nn.Linear(d, 1)
        self.heads = nn.ModuleList(nn.Linear(d, n_out) for _ in layout)
        self.teacher_proj = nn.ModuleDict({m: nn.Linear(dt, d) for m, dt in (teacher_dims or {}).items() if m in layout})
        self.temperature = 0.1

    def forward(self, xs, masks) -> Output:
        z, a = self.per_mod(xs, masks)
        s = torch.where(a, self.gate(z).squeeze(-1), torch.full(a.shape, NEG, device=z.device))
        w = torch.softmax(s, 1)
        logits = torch.stack([h(z[:, i]) for i, h in enumerate(self.heads)], 1)
        out = Output(logits=(w.unsqueeze(-1) * logits).sum(1), fusion=w, available=a)
        out.modality_z = {m: z[:, i] for i, m in enumerate(self.modalities)}
        out.modality_logits = {m: logits[:, i] for i, m in enumerate(self.modalities)}
        return out

    def co_training_loss(self, out: Output, teachers, teacher_masks, task_loss_fn) -> torch.Tensor:
        losses, conf = [], []
        for i, m in enumerate(self.modalities):
            if m not in self.teacher_proj or m not in teachers:
                continue
            ok = out.available[:, i] & teacher_masks[m]
            if ok.sum() < 2:
                continue
            zs = F.normalize(out.modality_z[m][ok], dim=-1)
            zt = F.normalize(self.teacher_proj[m](teachers[m][ok]), dim=-1)
            logits = zs @ zt.T / self.temperature
            target = torch.arange(len(zs), device=zs.device)
            losses.append(0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)))
            conf.append(-task_loss_fn(out.modality_logits[m], ok).detach())
        if not losses:
            return torch.zeros((), device=out.logits.device)
        weights = torch.softmax(torch.stack(conf), 0)
        return (weights * torch.stack(losses)).sum()


class Large(nn.Module):
    """A single modality's teacher embedding alone ("*-Large" reference)."""

    def __init__(self, teacher_dim, n_out, d=256, dropout=0.1, modality="", **_):
        super().__init__()
        self.modality = modality
        self.net = nn.Sequential(projection(teacher_dim, d, dropout), nn.Linear(d, n_out))

    def forward(self, teacher: torch.Tensor, mask: torch.Tensor) -> Output:
        x = torch.where(mask.unsqueeze(-1), teacher, torch.zeros_like(teacher))
        out = self.net(x)
        return Output(logits=torch.where(mask.unsqueeze(-1), out, self.net[-1].bias.expand_as(out)))


def _co_training(model, out, batch, recipe):
    from ..losses import task_loss
    return recipe.cotrain_weight * model.co_training_loss(
        out, batch.teachers, batch.teacher_masks, lambda lo, ok: task_loss(lo, batch.y, batch.tasks, ok))


def _register():
    from ..methods import Method, register

    def simple(rule):
        return lambda dims, n_out, tdims, r, lm=None: SimpleFusion(dims, n_out, d=r.hidden, dropout=r.dropout, rule=rule)
    for name, rule in (("meanavg", "mean"), ("concat", "concat"), ("max", "max"), ("attention", "attention")):
        register(Method(name, simple(rule)))
    register(Method("m3care", lambda dims, n_out, tdims, r, lm=None: M3Care(dims, n_out, d=r.hidden, dropout=r.dropout)))
    register(Method("adacomed", lambda dims, n_out, tdims, r, lm=None: AdaCoMed(dims, n_out, d=r.hidden, dropout=r.dropout,
                                                                               teacher_dims=tdims),
                    extra_loss=_co_training))
    register(Method("large", lambda dims, n_out, tdims, r, lm=None: Large(tdims[lm], n_out, d=r.hidden,
                                                                          dropout=r.dropout, modality=lm),
                    input="teacher"))


_register()
