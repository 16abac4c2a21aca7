"""Every fit of a run (grid point x fold, method x seed x training protocol) counted, shown and kept.

A run prints its plan first (how many fits, and the time they take at the measured rate), shows one progress bar
over all fits with an ETA on a terminal (plain timestamped log lines every ``LINE_EVERY_S`` otherwise), and saves
each finished fit at once in ``results.partial.json`` (scores and timings) plus ``partial/<key>.pt`` (the trained
weights): after Ctrl-C or a kill the same command skips what is done and gives the same results, because every fit
seeds itself and a reloaded state dict evaluates exactly as the trained model did. The ledger is removed when the
run completes. A ledger of another configuration (different store, recipe, plan or code) is ignored and replaced.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from stores.cli import is_terminal

log = logging.getLogger("medmix.train")
LINE_EVERY_S = 30.0
PARTIAL = "results.partial.json"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


class FitLedger:
    """The run's fits: which are done (kept on disk), the progress display, the ETA."""

    def __init__(self, out_dir: Path, config_hash: str, total: int, show_bar: bool | None = None):
        self.out_dir, self.config_hash, self.total = Path(out_dir), config_hash, total
        self.path, self.states = self.out_dir / PARTIAL, self.out_dir / "partial"
        self.fits: dict[str, dict] = {}
        self.partial_results: dict = {}
        if self.path.exists():
            old = json.loads(self.path.read_text())
            if old.get("config_hash") == config_hash:
                self.fits = old.get("fits", {})
                self.partial_results = old.get("results", {})
            else:
                log.info("%s: from another configuration (%s): started afresh", self.path,
                         str(old.get("config_hash"))[:12])
                shutil.rmtree(self.states, ignore_errors=True)
        self.resumed = len(self.fits)
        self.ran, self.ran_seconds, self.started, self.last_line = 0, 0.0, time.monotonic(), time.monotonic()
        self.bar = None
        if show_bar if show_bar is not None else is_terminal():
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=min(self.resumed, total), unit="fit", desc="fits", dynamic_ncols=True)

    def rate(self) -> float | None:
        """Seconds per fit measured so far (this run, else the ledger's record of earlier runs)."""
        if self.ran:
            return self.ran_seconds / self.ran
        done = [f["seconds"] for f in self.fits.values() if "seconds" in f]
        return sum(done) / len(done) if done else None

    def plan_line(self, parts: list[str]) -> str:
        rate = self.rate()
        left = self.total - min(self.resumed, self.total)
        eta = (f"~{_minutes(left * rate)} at the measured rate ({rate:.1f} s per fit)" if rate
               else "the rate is measured on the first fit")
        resumed = f"; {self.resumed} done already ({self.path.name}): resuming" if self.resumed else ""
        return f"plan: {' + '.join(parts)} = {self.total} fits{resumed}; {eta}"

    def fit(self, key: str, compute: Callable[[], tuple[dict, dict | None]]) -> tuple[dict, dict | None]:
        """The record (and state dict, if the fit keeps one) of fit ``key``: from the ledger when done, else computed
        by ``compute() -> (record, state or None)`` and saved at once."""
        if key in self.fits:
            rec = self.fits[key]
            state = (torch.load(self.states / rec["state"], map_location="cpu", weights_only=True)
                     if rec.get("state") else None)
            return rec["record"], state
        t0 = time.perf_counter()
        record, state = compute()
        seconds = time.perf_counter() - t0
        entry = {"record": record, "seconds": round(seconds, 3)}
        if state is not None:
            self.states.mkdir(parents=True, exist_ok=True)
            entry["state"] = hashlib.sha256(key.encode()).hexdigest()[:24] + ".pt"
            tmp = self.states / (entry["state"] + ".tmp")
            torch.save(state, tmp)
            os.replace(tmp, self.states / entry["state"])
        self.fits[key] = entry
        self.save()
        self._advance(seconds)
        return record, state

    def save(self, results: dict | None = None) -> None:
        """Write the ledger atomically (a kill mid-write leaves the previous one)."""
        if results is not None:
            self.partial_results = results
        from .checkpoint import json_default
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"config_hash": self.config_hash, "fits": self.fits,
                                   "results": self.partial_results}, default=json_default))
        os.replace(tmp, self.path)

    def _advance(self, seconds: float) -> None:
        self.ran += 1
        self.ran_seconds += seconds
        if self.ran == 1 and not self.resumed:
            log.info("first fit took %.1f s: ~%s for the %d left", seconds, _minutes(seconds * (self.total - 1)),
                     self.total - 1)
        if self.bar is not None:
            self.bar.update(1)
            return
        now = time.monotonic()
        done = len(self.fits)
        if now - self.last_line >= LINE_EVERY_S or done >= self.total:
            self.last_line = now
            left = max(0, self.total - done) * (self.rate() or 0)
            log.info("progress: %d of %d fits (%.0f%%), %s elapsed, ETA %s", done, self.total,
                     100 * done / max(1, self.total), _minutes(now - self.started), _minutes(left))

    def close(self, completed: bool) -> None:
        """Close the display; on completion remove the ledger and the kept weights."""
        if self.bar is not None:
            self.bar.close()
        if completed:
            self.path.unlink(missing_ok=True)
            shutil.rmtree(self.states, ignore_errors=True)

    @property
    def done(self) -> int:
        return len(self.fits)
