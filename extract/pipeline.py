"""The extract stage as one call: dataset adapter -> store (samples, labels, split) -> experts -> RAG experts."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from stores.spec import data_root as _data_root
from stores.spec import load_spec, store_root
from stores.store import SPLIT_CODES, Store
from stores.table import format_table

from .datasets.base import get_adapter
from .runner import Context, DaskExecutor, LocalExecutor, Summary, plan_jobs, run

log = logging.getLogger("medmix.extract")


def default_store_path(spec, dataset: str, store: str | None, options: dict | None, limit: int | None) -> Path:
    if store:
        return Path(store).expanduser().resolve()
    suffix = "".join(f"-{k}{v}" for k, v in sorted((options or {}).items()) if v is not None)
    suffix += f"-first{limit}" if limit else ""
    return store_root(spec) / f"{dataset}{suffix}.zarr"


def create_store(spec, dataset: str, adapter, path: Path, limit: int | None) -> Store:
    ids = adapter.ids()
    split = adapter.split()
    labels = adapter.label_arrays()
    if limit:
        ids, split = ids[:limit], split[:limit]
        labels = {k: (v[:limit], m) for k, (v, m) in labels.items()}
    return Store.create(path, dataset, ids, split, labels, chunk_rows=spec.defaults.chunk_rows,
                        attrs={"spec_file": spec.source_file, "limit": limit, "adapter": adapter.identity(),
                               "split_spec": spec.dataset(dataset).split.model_dump()})


def extract_dataset(dataset: str, profile: str = "offline", config: str | None = None, data_root: str | None = None,
                    store: str | None = None, scheduler: str | None = None, workers: int = 0, gpus: int = 0,
                    device: str | None = None, modalities: list[str] | None = None, experts: list[str] | None = None,
                    options: dict | None = None, limit: int | None = None, rag: bool = True,
                    progress: bool = True, encoding_from: str | None = None) -> Summary:
    spec = load_spec(config)
    root = _data_root(spec, data_root)
    adapter = get_adapter(spec.dataset(dataset), root, options)
    path = default_store_path(spec, dataset, store, options, limit)
    st = create_store(spec, dataset, adapter, path, limit)
    log.info("store %s: %d samples", path, st.n)
    train_rows = [int(i) for i in (st.split() == SPLIT_CODES["train"]).nonzero()[0]]   # fitted experts: train only
    plans = plan_jobs(spec, dataset, profile, adapter, modalities, experts, train_rows, encoding_from)
    threads = max(1, (os.cpu_count() or 2) // workers) if workers else None
    ctx = Context(spec.source_file, dataset, str(root), dict(options or {}), str(path), device, threads)
    executor = DaskExecutor(scheduler, workers, gpus) if (scheduler or workers or gpus) else LocalExecutor()
    try:
        summary = run(ctx, plans, executor, progress=progress)
    finally:
        executor.close()
    if rag and (not experts or "rag" in experts):
        from rag.embed import embed_dataset
        embed_dataset(dataset, profile=profile, config=config, data_root=str(root), store=str(path),
                      modalities=modalities, options=options, progress=progress, summary=summary)
    print_summary(summary)
    return summary


def print_summary(summary: Summary) -> None:
    keys = sorted(set(summary.done) | set(summary.skipped_units))
    rows = [{"expert": k, "ok": summary.done.get(k, 0), "missing": summary.missing.get(k, 0),
             "failed": summary.failed.get(k, 0), "units skipped (cached)": summary.skipped_units.get(k, 0)}
            for k in keys]
    if rows:
        print(format_table(rows))
    for k, reasons in summary.reasons.items():
        top = sorted(reasons.items(), key=lambda kv: -kv[1])[:3]
        print(f"  failed in {k}: " + "; ".join(f"{r} (x{c})" for r, c in top))
