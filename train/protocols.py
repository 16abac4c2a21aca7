"""Missing-modality protocols (METHOD section 6) as seeded transforms of the availability masks.

    none                      nothing removed
    train_drop_one@p          training: with probability p per sample, one available modality is removed
    test_drop_one@p           the same, applied to the test set only
    train_multi@p             training: each modality removed independently with probability p
    test_multi@r              test set: each modality removed independently with probability r
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from stores.errors import InputError

DEFAULT_GRID = (["none"] + [f"train_drop_one@{p}" for p in (0.3, 0.5, 0.7)]
                + [f"test_drop_one@{p}" for p in (0.3, 0.5, 0.7)]
                + [f"train_multi@{p}" for p in (0.1, 0.3, 0.5, 0.7)] + [f"test_multi@{r}" for r in (0.1, 0.3, 0.5, 0.7)])


@dataclass(frozen=True)
class Protocol:
    name: str
    phase: str = "none"      # none | train | test
    kind: str = "none"       # drop_one | multi
    rate: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "Protocol":
        if text == "none":
            return cls("none")
        try:
            head, rate = text.split("@")
            phase, kind = head.split("_", 1)
            rate = float(rate)
        except ValueError:
            raise InputError(f"protocol {text!r}: expected none | train_drop_one@p | test_drop_one@p | "
                             "train_multi@p | test_multi@r") from None
        if phase not in ("train", "test") or kind not in ("drop_one", "multi") or not 0 <= rate <= 1:
            raise InputError(f"protocol {text!r}: unknown phase/kind or rate outside [0, 1]")
        return cls(text, phase, kind, rate)


def drop_modalities(avail: torch.Tensor, kind: str, rate: float, gen: torch.Generator) -> torch.Tensor:
    """(B, M) availability -> which modalities to KEEP after the drop (never adds a modality)."""
    B, M = avail.shape
    if kind == "multi":
        keep = torch.rand(B, M, generator=gen) >= rate
        return avail & keep.to(avail.device)
    chosen = torch.rand(B, generator=gen) < rate
    scores = torch.rand(B, M, generator=gen).to(avail.device)
    scores = torch.where(avail, scores, torch.full_like(scores, -1))
    victim = scores.argmax(1)
    drop = torch.zeros_like(avail)
    drop[torch.arange(B), victim] = True
    drop &= chosen.to(avail.device).unsqueeze(1) & avail
    return avail & ~drop


def apply_to_masks(masks: dict[str, torch.Tensor], keep: torch.Tensor, order: list[str]) -> dict[str, torch.Tensor]:
    return {m: masks[m] & keep[:, i:i + 1] for i, m in enumerate(order)}
