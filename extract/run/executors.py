"""Executors (in-process, Dask) and ``run``: create/reuse groups, plan pending and retried units, collect the summary."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from stores.cli import INSTALL_HINTS, Progress
from stores.errors import describe
from stores.provenance import group_provenance
from stores.store import Store

from plugins.datasets.base import DatasetAdapter
from .context import Context, cached_adapter, probe
from .plan import Job
from .units import run_unit, run_unit_task

log = logging.getLogger("medmix.extract")


@dataclass
class Summary:
    done: dict = field(default_factory=dict)       # "modality/expert" -> rows written ok
    failed: dict = field(default_factory=dict)
    missing: dict = field(default_factory=dict)
    skipped_units: dict = field(default_factory=dict)
    reasons: dict = field(default_factory=dict)    # "modality/expert" -> {reason: count}
    retried_units: dict = field(default_factory=dict)   # "modality/expert" -> committed units run again
    unit_errors: list = field(default_factory=list)     # "modality unit k: reason" (left pending; rerun retries)
    cached_failed: dict = field(default_factory=dict)   # "modality/expert" -> failed rows in units not run again

    def add(self, other: dict) -> None:
        for key, (ok, miss, fail, reasons) in other.items():
            self.done[key] = self.done.get(key, 0) + ok
            self.missing[key] = self.missing.get(key, 0) + miss
            self.failed[key] = self.failed.get(key, 0) + fail
            for r, c in reasons.items():
                self.reasons.setdefault(key, {})[r] = self.reasons.get(key, {}).get(r, 0) + c



class LocalExecutor:
    """In-process: no Dask, no setup. Units run one after another."""

    def probe(self, ctx, job):
        return probe(ctx, job)

    def run(self, ctx, units, on_done, on_error=None):
        for mod, unit, jobs, force in units:
            try:
                counts = run_unit(ctx, mod, unit, jobs, force)
            except Exception as exc:  # noqa: BLE001  (the unit stays pending; the run goes on)
                if on_error is None:
                    raise
                on_error(mod, unit, jobs, f"{mod} unit {unit.index} (rows {unit.start}-{unit.stop - 1}): "
                                          f"{describe(exc)}")
                continue
            on_done(mod, unit, jobs, counts)

    def close(self):
        pass


class DaskExecutor:
    """A Dask cluster: an existing scheduler (--scheduler), or a LocalCluster of --workers processes / --gpus GPUs."""

    def __init__(self, scheduler: str | None = None, workers: int = 2, gpus: int = 0):
        from distributed import Client, LocalCluster
        self.cluster = None
        if scheduler:
            self.client = Client(scheduler)
        elif gpus:
            try:
                from dask_cuda import LocalCUDACluster
            except ImportError as exc:
                raise RuntimeError(f"--gpus needs dask-cuda ({INSTALL_HINTS['dask_cuda']})") from exc
            self.cluster = LocalCUDACluster(n_workers=gpus, threads_per_worker=1)
            self.client = Client(self.cluster)
        else:
            self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                        dashboard_address=None, memory_limit="auto", silence_logs=logging.ERROR)
            self.client = Client(self.cluster)

    def probe(self, ctx, job):
        return self.client.submit(probe, ctx, job, pure=False).result()

    def run(self, ctx, units, on_done, on_error=None):
        from distributed import as_completed
        futures = {}
        for mod, unit, jobs, force in units:
            f = self.client.submit(run_unit_task, ctx, mod, unit, jobs, force, pure=False, retries=1,
                                   key=f"unit-{mod}-{unit.index}-{time.monotonic_ns()}")
            futures[f] = (mod, unit, jobs)
        for f in as_completed(futures):
            mod, unit, jobs = futures[f]
            try:
                counts = f.result()
            except Exception as exc:  # noqa: BLE001
                if on_error is None:
                    raise
                on_error(mod, unit, jobs, describe(exc))
                continue
            on_done(mod, unit, jobs, counts)

    def close(self):
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def _cached_group(store: Store, modality: str, job: Job):
    try:
        return store.expert_group(modality, job.name, job.config_hash)
    except Exception:  # noqa: BLE001  (not there yet)
        return None



def retry_units(group, adapter: DatasetAdapter, modality: str, retry_failed: bool = False) -> set[int]:
    """Committed units to run again: those holding a failed row (``retry_failed``), or any written row (ok too)
    whose input fingerprint changed since it was written (a fixed or edited file is picked up without any flag)."""
    from stores.store import FAILED as _F, MISSING as _M, OK as _OK
    valid = group.group["valid"][:]
    done = group.done_units()
    out = set()
    bad_rows = np.flatnonzero(np.isin(valid, (_F, _M, _OK)))
    if not bad_rows.size:
        return out
    stored = group.sources()
    for r in bad_rows:
        u = int(r) // group.chunk_rows
        if u in out or not done[u]:
            continue
        if retry_failed and valid[r] == _F:
            out.add(u)
        elif stored is not None and str(stored[r]):
            try:
                now = adapter.fingerprint(modality, int(r))
            except Exception:  # noqa: BLE001
                now = ""
            if now and now != str(stored[r]):
                out.add(u)
    return out


def run(ctx: Context, plans: dict[str, list[Job]], executor=None, progress: bool = True,
        retry_failed: bool = False) -> Summary:
    """Create/reuse each job's group, then run every pending unit (and committed units to retry, see
    ``retry_units``). Returns the per-expert summary; a unit that errors as a whole stays pending and is listed in
    ``summary.unit_errors`` while the run goes on."""
    executor = executor or LocalExecutor()
    store = Store(ctx.request.store, mode="a")
    summary = Summary()
    work = []
    bars = {}
    for mod, jobs in plans.items():
        pending_jobs = []
        for job in jobs:
            group = _cached_group(store, mod, job)
            if group is None or group.pending_units():
                dim, prov = executor.probe(ctx, job)
                prov = group_provenance({**prov, "view": job.view}, job.role, job.config, ctx.request.profile)
                group = store.require_expert_group(mod, job.name, job.config_hash, dim, prov)
            else:
                store.set_latest(mod, job.name, job.config_hash[:12])
            pend = {u.index for u in group.pending_units()}
            retry = retry_units(group, cached_adapter(ctx), mod, retry_failed) - pend
            key = f"{mod}/{job.name}"
            summary.skipped_units[key] = group.n_units - len(pend) - len(retry)
            summary.cached_failed[key] = group.failed_rows(exclude_units=pend | retry)
            if retry:
                summary.retried_units[key] = len(retry)
            if pend or retry:
                pending_jobs.append((job, pend, retry))
                bars[key] = Progress(sum(u.stop - u.start for u in group.units() if u.index in pend | retry),
                                     f"{key} ({job.model})", enabled=progress, logger="medmix.extract")
        if not pending_jobs:
            continue
        for unit in store.expert_group(mod, pending_jobs[0][0].name, pending_jobs[0][0].config_hash).units():
            todo = [j for j, pend, retry in pending_jobs if unit.index in pend or unit.index in retry]
            force = any(unit.index in retry for _, _, retry in pending_jobs)
            if todo:
                work.append((mod, unit, todo, force))

    def on_done(mod, unit, jobs, counts):
        summary.add(counts)
        for job in jobs:
            bar = bars.get(f"{mod}/{job.name}")
            if bar is not None:
                bar.update(unit.stop - unit.start)

    def on_error(mod, unit, jobs, reason):
        log.error("unit failed (left pending, a rerun retries it): %s", reason)
        summary.unit_errors.append(reason)

    try:
        executor.run(ctx, work, on_done, on_error)
    finally:
        for b in bars.values():
            b.close()
    return summary
