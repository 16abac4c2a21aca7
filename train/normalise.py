"""Input normalisation as a recorded step: per expert (and per teacher) mean / std fitted on the TRAIN split's valid
rows only, saved in the checkpoint and applied unchanged by evaluate / predict. Missing rows stay exactly 0.0 (the
models mask them anyway; ``torch.where`` keeps them bit-identical)."""
from __future__ import annotations

import torch

from stores.errors import InputError

from .data import Data

STD_FLOOR = 1e-6


def _fit(x: torch.Tensor, ok: torch.Tensor) -> dict:
    rows = x[ok]
    if len(rows) == 0:
        return {"mean": [0.0] * x.shape[1], "std": [1.0] * x.shape[1], "n": 0}
    mean = rows.double().mean(0)
    std = rows.double().std(0, unbiased=False)
    std = torch.where(std < STD_FLOOR, torch.ones_like(std), std)
    return {"mean": mean.float().tolist(), "std": std.float().tolist(), "n": int(len(rows))}


def fit_stats(data: Data) -> dict:
    """{"experts": {"m/e": {mean, std, n}}, "teachers": {m: ...}} from the train rows where each input is valid."""
    tr = data.rows("train")
    experts = {f"{m}/{e}": _fit(data.xs[m][k][tr], data.masks[m][tr, k])
               for m, names in data.layout.items() for k, e in enumerate(names)}
    teachers = {m: _fit(t[tr], data.teacher_masks[m][tr]) for m, t in data.teachers.items()}
    return {"kind": "standard", "fitted_on": "train rows with a valid input", "experts": experts, "teachers": teachers}


def _apply(x: torch.Tensor, ok: torch.Tensor, st: dict) -> torch.Tensor:
    mean = torch.tensor(st["mean"], dtype=x.dtype, device=x.device)
    std = torch.tensor(st["std"], dtype=x.dtype, device=x.device)
    return torch.where(ok.unsqueeze(1), (x - mean) / std, torch.zeros((), dtype=x.dtype, device=x.device))


def apply_stats(data: Data, stats: dict | None) -> Data:
    """The same data with every valid row standardised by the recorded stats (None or kind "none": unchanged)."""
    if not stats or stats.get("kind") == "none":
        return data
    missing = [f"{m}/{e}" for m, names in data.layout.items() for e in names if f"{m}/{e}" not in stats["experts"]]
    if missing:
        raise InputError(f"normalisation stats lack experts {missing}")
    xs = {m: [_apply(data.xs[m][k], data.masks[m][:, k], stats["experts"][f"{m}/{e}"]) for k, e in enumerate(names)]
          for m, names in data.layout.items()}
    teachers = {m: _apply(t, data.teacher_masks[m], stats["teachers"][m]) if m in stats["teachers"] else t
                for m, t in data.teachers.items()}
    return Data(data.layout, xs, data.masks, data.y, data.tasks, teachers, data.teacher_masks, data.split)
