"""Shared bits of the benchmarks: timing and a ratio line. Benchmarks print; tests never assert timings."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# run from bench/ or from the root: use the project's weight cache, never a second copy under bench/
os.environ.setdefault("MEDMIX_MODEL_CACHE", str(ROOT / "cache" / "models"))


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def report(name: str, ours: float, bare: float, unit: str, goal: str) -> None:
    print(f"{name}: ours {ours:,.1f} {unit}, bare {bare:,.1f} {unit}, ratio {ours / bare:.3f} (goal {goal})")
