"""The extract stage as one call: dataset adapter -> store (samples, labels, split) -> experts -> RAG experts."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from stores import paths
from stores.errors import InputError
from stores.spec import load_spec
from stores.store import SPLIT_CODES, Store
from stores.table import format_table

from plugins.datasets.base import LIMIT, get_adapter
from plugins.request import ExtractRequest
from plugins.stages import run_expert_stages
from .run.context import Context
from .run.executors import DaskExecutor, LocalExecutor, Summary, run
from .run.plan import plan_jobs

log = logging.getLogger("medmix.extract")


def check_selection(spec, dataset: str, profile: str, modalities: list[str] | None, experts: list[str] | None) -> None:
    """--modality / --only-expert must name something this dataset and profile have (a typo is an error, never a
    run that does nothing)."""
    mods = list(spec.dataset(dataset).modalities)
    bad = [m for m in modalities or [] if m not in mods]
    if bad:
        raise InputError(f"--modality {', '.join(bad)}: not a modality of {dataset} (have: {', '.join(mods)})")
    names = set()
    for m in modalities or mods:
        names |= set(spec.experts_for(dataset, m, profile))
        names |= {"teacher"} if spec.teacher_for(dataset, m, profile) else set()
    bad = [e for e in experts or [] if e not in names]
    if bad:
        raise InputError(f"--only-expert {', '.join(bad)}: no such expert of {dataset} in profile {profile} "
                         f"(have: {', '.join(sorted(names))})")


def create_store(spec, dataset: str, adapter, path: Path, limit: int | None, replace_split: bool = False) -> Store:
    ids = adapter.ids()
    split = adapter.split()
    labels = adapter.label_arrays()
    if limit:
        ids, split = ids[:limit], split[:limit]
        labels = {k: (v[:limit], m) for k, (v, m) in labels.items()}
    return Store.create(path, dataset, ids, split, labels, chunk_rows=spec.defaults.chunk_rows,
                        attrs={"spec_file": spec.source_file, "limit": limit, "adapter": adapter.identity(),
                               "split_spec": spec.dataset(dataset).split.model_dump()}, replace_split=replace_split)


def extract(req: ExtractRequest) -> Summary:
    """Run one request: the store (samples, labels, split), the planned experts, then the other stages' experts."""
    spec = load_spec(req.config)
    root = paths.data_root(spec, req.data_root)
    run_options = {**(req.options or {}), LIMIT: req.limit} if req.limit else req.options   # --limit: one sample
    adapter = get_adapter(spec.dataset(req.dataset), root, run_options)                   # everywhere
    check_selection(spec, req.dataset, req.profile, req.modalities, req.experts)
    path = paths.store_path(spec, req.dataset, req.options, req.limit, req.store)
    st = create_store(spec, req.dataset, adapter, path, req.limit, req.replace_split)
    log.info("store %s: %d samples", path, st.n)
    train_rows = [int(i) for i in (st.split() == SPLIT_CODES["train"]).nonzero()[0]]   # fitted experts: train only
    plans = plan_jobs(spec, req.dataset, req.profile, adapter, req.modalities, req.experts, train_rows,
                      req.encoding_from)
    # workers and stages get the request with the paths this run resolved (a worker's cwd and env may differ)
    req = req.resolved(config=spec.source_file, data_root=str(root), store=str(path), options=run_options)
    threads = max(1, (os.cpu_count() or 2) // req.workers) if req.workers else None
    distributed = req.scheduler or req.workers or req.gpus
    executor = DaskExecutor(req.scheduler, req.workers, req.gpus) if distributed else LocalExecutor()
    try:
        summary = run(Context(req, threads), plans, executor, progress=req.progress, retry_failed=req.retry_failed)
    finally:
        executor.close()
    if req.rag and (not req.experts or "rag" in req.experts):
        roles = {e.role for m in spec.dataset(req.dataset).modalities if not req.modalities or m in req.modalities
                 for e in spec.experts_for(req.dataset, m, req.profile).values()} & {"rag"}
        run_expert_stages(roles, req, summary)
    print_summary(summary, str(path))
    return summary


def extract_dataset(dataset: str, **fields) -> Summary:
    """``extract(ExtractRequest(dataset, **fields))``: the call form scripts and `train demo` use."""
    return extract(ExtractRequest(dataset, **fields))


def print_summary(summary: Summary, store: str | None = None) -> None:
    """What this run did per expert (rows written ok / missing / failed, units reused) beside what the store holds
    (its current group's totals): a fully cached rerun shows 0 done and the store's full counts."""
    from stores.verify import coverage
    held = {f"{c['modality']}/{c['expert']}": c for c in coverage(Store(store)) if c["latest"]} if store else {}
    keys = sorted(set(summary.done) | set(summary.skipped_units))
    rows = [{"expert": k, "run: ok": summary.done.get(k, 0), "missing": summary.missing.get(k, 0),
             "failed": summary.failed.get(k, 0), "units reused": summary.skipped_units.get(k, 0),
             **({"store: ok": held[k]["ok"], "missing ": held[k]["missing"], "failed ": held[k]["failed"],
                 "pending": held[k]["pending"]} if k in held else {})}
            for k in keys]
    if rows:
        print(format_table(rows))
    for k, reasons in summary.reasons.items():
        top = sorted(reasons.items(), key=lambda kv: -kv[1])[:3]
        print(f"  failed in {k}: " + "; ".join(f"{r} (x{c})" for r, c in top))
    for k, n in getattr(summary, "retried_units", {}).items():
        print(f"  retried in {k}: {n} committed unit(s) with failed/missing rows whose input changed (or --retry-failed)")
    for reason in getattr(summary, "unit_errors", []):
        print(f"  unit error (left pending; rerun to retry): {reason}")
