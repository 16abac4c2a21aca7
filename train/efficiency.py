"""What a deployed fusion model costs: inference parameters, forward FLOPs per sample, peak forward memory, and the
EffScore that weighs a method's Perf against MedMIX's by those costs (METHOD section 6)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from .data import Data


def _peak_rss_increase_mb(fn) -> float | None:
    """Peak resident memory above the level before ``fn`` (MB), via Linux's resettable high-water mark
    (/proc/self/clear_refs "5" resets VmHWM); None where the kernel does not offer it."""
    def field(name):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(name):
                return int(line.split()[1]) / 1024
        raise KeyError(name)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = field("VmRSS:")
    except (OSError, KeyError):
        return None
    fn()
    return max(0.0, field("VmHWM:") - before)


def inference_parameters(model) -> int:
    """Parameters used at inference: training-only parts (the distillation teacher projection) are excluded."""
    skip = {id(p) for name, mod in model.named_children() if name == "teacher_proj" for p in mod.parameters()}
    return int(sum(p.numel() for p in model.parameters() if id(p) not in skip))


def efficiency(model, data: Data) -> dict:
    """Inference parameters, forward FLOPs per sample and peak forward memory of the fusion model.

    Memory is a measured peak: CUDA's allocator peak on a GPU, the process's peak RSS increase on CPU (None where
    the OS cannot reset the high-water mark)."""
    from .trainer import forward
    device = next(model.parameters()).device
    data = data.to(device)
    idx = data.rows("test")[:64]
    if len(idx) == 0:
        idx = torch.arange(min(64, len(data.y)), device=data.device)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        forward(model, data, idx)
    flops = fc.get_total_flops() / len(idx)
    with torch.no_grad():
        forward(model, data, idx)                          # warm-up: lazy initialisation is not the model's memory
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            forward(model, data, idx)
            torch.cuda.synchronize(device)
            peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        else:
            peak = _peak_rss_increase_mb(lambda: forward(model, data, idx))
    return {"params": inference_parameters(model), "flops_per_sample": float(flops),
            "peak_memory_mb": None if peak is None else float(peak), "memory_measure": (
                "cuda max_memory_allocated" if device.type == "cuda" else "peak RSS increase (VmHWM)"),
            "batch": int(len(idx)), "device": str(device)}


def eff_scores(results: dict) -> None:
    """EffScore = (Perf / Perf_MedMIX) / geomean of the cost ratios. Peak memory counts only when it is an allocator
    figure (CUDA): a CPU RSS increase of a small model is page-level noise (often 0) and would dominate the ratio."""
    ref = results["methods"].get("medmix")
    if not ref or "efficiency" not in ref or "none" not in ref["protocols"]:
        return
    p_ref = ref["protocols"]["none"]["perf"]["mean"]
    keys = ["params", "flops_per_sample"] + (["peak_memory_mb"] if ref["efficiency"].get("device", "").startswith("cuda")
                                             else [])
    results["eff_score_terms"] = keys
    for entry in results["methods"].values():
        if "efficiency" not in entry or "none" not in entry["protocols"]:
            continue
        e, r = entry["efficiency"], ref["efficiency"]
        ratios = [max(e[k], 1e-9) / max(r[k], 1e-9) for k in keys if e.get(k) is not None and r.get(k) is not None]
        entry["eff_score"] = (entry["protocols"]["none"]["perf"]["mean"] / p_ref) / float(np.exp(np.mean(np.log(ratios))))


