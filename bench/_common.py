"""Shared bits of the benchmarks: timing and a ratio line. Benchmarks print; tests never assert timings."""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def report(name: str, ours: float, bare: float, unit: str, goal: str) -> None:
    print(f"{name}: ours {ours:,.1f} {unit}, bare {bare:,.1f} {unit}, ratio {ours / bare:.3f} (goal {goal})")
