"""One unit of work: load its rows (isolated), check them, run every pending job, write data then markers."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stores.errors import describe
from stores.store import FAILED, MISSING, OK, Unit

from plugins.datasets.base import DatasetAdapter, Failed, Missing
from plugins.inputs import check_input, load_rows, where
from plugins.readers.lazy import LazyView
from plugins.readers.wsi import TiledSlide
from plugins.registry import Encoder
from .context import (LAZY_GROUP, Context, cached_adapter, cached_encoder, cached_store, decode, encode_isolated,
                      lazy_group, peek)
from .plan import Job
from .slides import drop_tiles, embed_slides, keep_tiles


@dataclass
class _JobRows:
    job: Job
    group: object             # the job's ExpertGroup, opened once per unit
    values: list
    vectors: np.ndarray
    valid: np.ndarray
    reasons: list
    tiled: dict
    lazy: set


def _encode_into(st: _JobRows, enc: Encoder, rows: list[int], items: list) -> None:
    vecs, errs = encode_isolated(enc, items)
    for j, i in enumerate(rows):
        if errs[j] is None and vecs is not None and np.isfinite(vecs[j]).all():
            st.vectors[i], st.valid[i] = vecs[j], OK
        else:
            st.valid[i], st.reasons[i] = FAILED, errs[j] or "non-finite embedding"


def run_unit_task(ctx: Context, modality: str, unit: Unit, jobs: list[Job], force: bool = False) -> dict:
    """run_unit for a Dask worker: an error comes back as a plain RuntimeError whose message names the unit
    (some exceptions lose their message, or fail to unpickle, on the way back)."""
    try:
        return run_unit(ctx, modality, unit, jobs, force)
    except Exception as exc:  # noqa: BLE001
        raise RuntimeError(f"{modality} unit {unit.index} (rows {unit.start}-{unit.stop - 1}): "
                           f"{describe(exc)}"[:1000]) from None


def _sources(adapter: DatasetAdapter, modality: str, rows: list[int]) -> list[str]:
    out = []
    for r in rows:
        try:
            out.append(adapter.fingerprint(modality, r))
        except Exception:  # noqa: BLE001  (no fingerprint: the row is retried only with --retry-failed)
            out.append("")
    return out


def run_unit(ctx: Context, modality: str, unit: Unit, jobs: list[Job], force: bool = False) -> dict:
    """Load the unit's inputs; run every pending job on them; write data then markers. Returns counts per job.

    Loading is isolated per row (``inputs.load_rows``) and every input passes the input rules (``check_input``),
    so a bad record fails its row, never the unit. Raw volumes (lazy views) are decoded a few rows at a time, each
    view once for every job that reads it; slides go tile batch by tile batch (``embed_slides``); everything else
    is encoded in one call per job. ``force``: run the jobs even where the unit is committed (a retry).
    """
    if ctx.threads:
        torch.set_num_threads(ctx.threads)
    store = cached_store(ctx.request.store)
    rows = list(range(unit.start, unit.stop))
    adapter = cached_adapter(ctx)
    mspec = adapter.spec.modalities.get(modality)
    preprocess = dict(mspec.preprocess) if mspec is not None else {}
    inputs = []
    for r, x in zip(rows, load_rows(adapter, modality, rows)):
        checked = check_input(x, preprocess)
        if isinstance(checked, Failed) and checked is not x:        # a rule broken: name the record
            checked = Failed(f"{where(adapter, modality, r)}: {checked.reason}")
        inputs.append(checked)
    sources = _sources(adapter, modality, rows)
    groups = {j.name: store.expert_group(modality, j.name, j.config_hash) for j in jobs}
    pending = jobs if force else [j for j in jobs if not groups[j.name].done_units()[unit.index]]
    slides = embed_slides(ctx, store, modality, unit, pending, inputs)
    states = []
    for job in pending:
        group = groups[job.name]
        st = _JobRows(job, group, [peek(inp, job.view) for inp in inputs],
                      np.zeros((len(rows), group.group["vectors"].shape[1]), np.float32),
                      np.full(len(rows), MISSING, np.uint8), [""] * len(rows), {}, set())
        eager = []
        for i, v in enumerate(st.values):
            if isinstance(v, TiledSlide):                   # embedded tile batch by tile batch above
                v = slides[(job.name, i)]
                if not isinstance(v, Failed):
                    st.vectors[i], st.valid[i], st.tiled[i] = v, OK, True
                    continue
            if isinstance(v, (Missing, Failed)):
                st.valid[i], st.reasons[i] = (FAILED if isinstance(v, Failed) else MISSING), v.reason
            elif isinstance(v, LazyView):
                st.lazy.add(i)
            else:
                eager.append(i)
        if eager:
            _encode_into(st, cached_encoder(job, ctx.request.device), eager, [st.values[i] for i in eager])
        states.append(st)
    lazy_rows = sorted({i for st in states for i in st.lazy})
    kinds = {st.values[i].kind for st in states for i in st.lazy}
    step = min((lazy_group(k) for k in kinds), default=LAZY_GROUP)
    for g in range(0, len(lazy_rows), step):
        group_rows, decoded = lazy_rows[g:g + step], {}
        for st in states:
            todo, items = [], []
            for i in (r for r in group_rows if r in st.lazy):
                key = (i, st.job.view)
                if key not in decoded:
                    decoded[key] = decode(st.values[i])
                if isinstance(decoded[key], Failed):
                    st.valid[i], st.reasons[i] = FAILED, decoded[key].reason
                else:
                    todo.append(i)
                    items.append(decoded[key])
            if todo:
                _encode_into(st, cached_encoder(st.job, ctx.request.device), todo, items)
        del decoded
    counts = {}
    for st in states:
        job = st.job
        st.group.write_unit(unit, st.vectors, st.valid, st.reasons, sources=sources)
        for i in st.tiled:
            if not keep_tiles(inputs[i], job.view):
                drop_tiles(store, modality, job, unit.start + i)
        reason_counts = {}
        for i in np.flatnonzero(st.valid == FAILED):
            reason_counts[st.reasons[i]] = reason_counts.get(st.reasons[i], 0) + 1
        counts[f"{modality}/{job.name}"] = (int((st.valid == OK).sum()), int((st.valid == MISSING).sum()),
                                            int((st.valid == FAILED).sum()), reason_counts)
    return counts

