"""Task loss (masked for unknown labels), cosine + relational distillation (METHOD section 3, step 7)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def task_loss(logits: torch.Tensor, y: torch.Tensor, tasks: list[dict], rows: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over tasks of BCE (binary / multi-label) or CE (multi-class); NaN labels are ignored."""
    if rows is not None:
        logits, y = logits[rows], y[rows]
    total, n = logits.new_zeros(()), 0
    for t in tasks:
        lo, yy = logits[:, t["out"]], y[:, t["cols"]]
        if t["type"] == "multiclass":
            known = ~torch.isnan(yy[:, 0])
            if known.any():
                total = total + F.cross_entropy(lo[known], yy[known, 0].long())
                n += 1
        else:
            known = ~torch.isnan(yy)
            if known.any():
                total = total + F.binary_cross_entropy_with_logits(lo[known], yy[known])
                n += 1
    return total / max(n, 1)


def rkd_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Distance-wise RKD (Park et al. 2019): pairwise distances, each normalised by its mean, Huber loss."""
    if len(student) < 2:
        return student.new_zeros(())
    with torch.no_grad():
        td = torch.cdist(teacher, teacher)
        td = td / td[td > 0].mean().clamp(min=1e-12) if (td > 0).any() else td
    sd = torch.cdist(student, student)
    sd = sd / sd[sd > 0].mean().clamp(min=1e-12) if (sd > 0).any() else sd
    off = ~torch.eye(len(student), dtype=torch.bool, device=student.device)
    return F.smooth_l1_loss(sd[off], td[off])


def distill_loss(z: dict[str, torch.Tensor], available: dict[str, torch.Tensor], teachers: dict[str, torch.Tensor],
                 teacher_masks: dict[str, torch.Tensor], proj: torch.nn.ModuleDict, lambda_rkd: float = 0.05) -> torch.Tensor:
    """sum over modalities with a teacher of [1 - cos + lambda_rkd * RKD], over samples that have both."""
    total = None
    for m, zt_raw in teachers.items():
        if m not in proj or m not in z:
            continue
        ok = available[m] & teacher_masks[m]
        if not ok.any():
            continue
        zs, zt = z[m][ok], proj[m](zt_raw[ok])
        loss = (1 - F.cosine_similarity(zs, zt, dim=-1)).mean() + lambda_rkd * rkd_distance(zs, zt)
        total = loss if total is None else total + loss
    return total if total is not None else next(iter(z.values())).new_zeros(())
