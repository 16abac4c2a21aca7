"""Plan units of work, run them in-process or on Dask, commit them to the store.

A unit is (modality, row chunk): the adapter loads the chunk's inputs once, then every pending expert and the
teacher of that modality embed them, and each writes its chunk and then its marker. Raw volumes are decoded a few
rows at a time (each view once for all experts that read it) and slides a tile batch at a time, so memory stays
bounded whatever the chunk size. Units never share a chunk,
so any number of workers write concurrently without a lock; a rerun skips units whose marker is set; a duplicate
or retried unit rewrites the same bytes. Workers load each model once per process (``_ENCODERS``), and nothing
heavier than a small picklable ``Job`` travels through the scheduler.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from stores.spec import PipelineSpec, canonical_hash
from stores.store import FAILED, MISSING, OK, Store, Unit

from stores.tiles import require_slide_tiles, tiles_path

from .datasets.base import DatasetAdapter, Failed, Missing, get_adapter
from .fitting import fitted_options
from .readers.lazy import LazyView
from .readers.wsi import TiledSlide
from .registry import Encoder, EncoderOptions, build_encoder

log = logging.getLogger("medmix.extract")
TEACHER = "teacher"


@dataclass(frozen=True)
class Job:
    """One expert (or the teacher) of one modality: everything a worker needs, and nothing heavy."""
    modality: str
    name: str
    role: str
    model: str
    options: EncoderOptions
    view: str
    config: dict
    config_hash: str


@dataclass
class Context:
    """How a worker rebuilds the dataset adapter and opens the store (picklable)."""
    spec_file: str
    dataset: str
    data_root: str
    options: dict
    store_url: str
    device: str | None = None
    threads: int | None = None


@dataclass
class Summary:
    done: dict = field(default_factory=dict)       # "modality/expert" -> rows written ok
    failed: dict = field(default_factory=dict)
    missing: dict = field(default_factory=dict)
    skipped_units: dict = field(default_factory=dict)
    reasons: dict = field(default_factory=dict)    # "modality/expert" -> {reason: count}

    def add(self, other: dict) -> None:
        for key, (ok, miss, fail, reasons) in other.items():
            self.done[key] = self.done.get(key, 0) + ok
            self.missing[key] = self.missing.get(key, 0) + miss
            self.failed[key] = self.failed.get(key, 0) + fail
            for r, c in reasons.items():
                self.reasons.setdefault(key, {})[r] = self.reasons.get(key, {}).get(r, 0) + c


# ---- per-process caches (each worker loads a model once) -------------------------------------------------------
_ENCODERS: dict[str, Encoder] = {}
_ADAPTERS: dict[str, DatasetAdapter] = {}
_STORES: dict[str, Store] = {}


def _encoder(job: Job, device: str | None) -> Encoder:
    key = canonical_hash({"model": job.model, "options": job.options.__dict__, "device": device})
    if key not in _ENCODERS:
        _ENCODERS[key] = build_encoder(job.model, job.options, device).load()
    return _ENCODERS[key]


def _adapter(ctx: Context) -> DatasetAdapter:
    from stores.spec import load_spec
    key = canonical_hash([ctx.spec_file, ctx.dataset, ctx.data_root, ctx.options])
    if key not in _ADAPTERS:
        spec = load_spec(ctx.spec_file)
        _ADAPTERS[key] = get_adapter(spec.dataset(ctx.dataset), Path(ctx.data_root), ctx.options)
    return _ADAPTERS[key]


def _store(url: str) -> Store:
    if url not in _STORES:
        _STORES[url] = Store(url, mode="a")
    return _STORES[url]


def clear_caches() -> None:
    _ENCODERS.clear()
    _ADAPTERS.clear()
    _STORES.clear()


# ---- encoding with failure isolation --------------------------------------------------------------------------
def encode_isolated(enc: Encoder, items: list) -> tuple[np.ndarray | None, list[str | None]]:
    """Encode a batch; on error, find the bad items one by one so one bad sample never sinks its unit.

    CUDA out-of-memory halves the encoder's batch size and retries.
    """
    while True:
        try:
            return enc.encode(items), [None] * len(items)
        except torch.cuda.OutOfMemoryError:
            if enc.batch_size <= 1:
                raise
            enc.batch_size = max(1, enc.batch_size // 2)
            torch.cuda.empty_cache()
            log.warning("%s: CUDA out of memory, batch size -> %d", enc.card.key, enc.batch_size)
        except Exception as batch_error:  # noqa: BLE001  (any bad input must not stop the run)
            if len(items) == 1:
                return None, [f"{type(batch_error).__name__}: {batch_error}"[:500]]
            vecs, reasons = [], []
            for it in items:
                v, r = encode_isolated(enc, [it])
                vecs.append(None if v is None else v[0])
                reasons.append(r[0])
            ok = [v for v in vecs if v is not None]
            if not ok:
                return None, reasons
            dim = ok[0].shape[0]
            return np.stack([v if v is not None else np.zeros(dim, np.float32) for v in vecs]), reasons


def _view(inp, view: str):
    """The decoded input of a view; a successful decode replaces the LazyView, so it happens once per unit."""
    value = _peek(inp, view)
    if isinstance(value, LazyView):
        value = _decode(value)
        if not isinstance(value, Failed):
            inp[view] = value
    return value


LAZY_GROUP = 4        # raw volumes decoded at a time: memory stays bounded however large chunk_rows is


def _peek(inp, view: str):
    """The input of a view without decoding it (a LazyView stays lazy)."""
    if isinstance(inp, (Missing, Failed)):
        return inp
    if view not in inp:
        return Missing(f"no '{view}' input")
    return inp[view]


def _decode(value):
    try:
        return value.get()
    except Exception as exc:  # noqa: BLE001  (an unreadable volume fails its row, the unit goes on)
        return Failed(f"{type(exc).__name__}: {exc}"[:500])


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


def run_unit(ctx: Context, modality: str, unit: Unit, jobs: list[Job]) -> dict:
    """Load the unit's inputs; run every pending job on them; write data then markers. Returns counts per job.

    Raw volumes (lazy views) are decoded LAZY_GROUP rows at a time, each view once for every job that reads it;
    slides go tile batch by tile batch (``_embed_slides``); everything else is encoded in one call per job.
    """
    if ctx.threads:
        torch.set_num_threads(ctx.threads)
    store = _store(ctx.store_url)
    rows = list(range(unit.start, unit.stop))
    inputs = _adapter(ctx).load(modality, rows)
    groups = {j.name: store.expert_group(modality, j.name, j.config_hash) for j in jobs}
    pending = [j for j in jobs if not groups[j.name].done_units()[unit.index]]
    slides = _embed_slides(ctx, store, modality, unit, pending, inputs)
    states = []
    for job in pending:
        group = groups[job.name]
        st = _JobRows(job, group, [_peek(inp, job.view) for inp in inputs],
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
            _encode_into(st, _encoder(job, ctx.device), eager, [st.values[i] for i in eager])
        states.append(st)
    lazy_rows = sorted({i for st in states for i in st.lazy})
    for g in range(0, len(lazy_rows), LAZY_GROUP):
        group_rows, decoded = lazy_rows[g:g + LAZY_GROUP], {}
        for st in states:
            todo, items = [], []
            for i in (r for r in group_rows if r in st.lazy):
                key = (i, st.job.view)
                if key not in decoded:
                    decoded[key] = _decode(st.values[i])
                if isinstance(decoded[key], Failed):
                    st.valid[i], st.reasons[i] = FAILED, decoded[key].reason
                else:
                    todo.append(i)
                    items.append(decoded[key])
            if todo:
                _encode_into(st, _encoder(st.job, ctx.device), todo, items)
        del decoded
    counts = {}
    for st in states:
        job = st.job
        st.group.write_unit(unit, st.vectors, st.valid, st.reasons)
        for i in st.tiled:
            if not _keep_tiles(inputs[i], job.view):
                _drop_tiles(store, modality, job, unit.start + i)
        reason_counts = {}
        for i in np.flatnonzero(st.valid == FAILED):
            reason_counts[st.reasons[i]] = reason_counts.get(st.reasons[i], 0) + 1
        counts[f"{modality}/{job.name}"] = (int((st.valid == OK).sum()), int((st.valid == MISSING).sum()),
                                            int((st.valid == FAILED).sum()), reason_counts)
    return counts


def _embed_slides(ctx: Context, store: Store, modality: str, unit: Unit, jobs: list[Job], inputs: list) -> dict:
    """Whole-slide images: read each tile batch ONCE, feed it to every pending expert, store per-tile embeddings
    with a marker per batch (a killed run resumes inside a slide), and return each slide's mean embedding
    (or Failed) per (expert, row)."""
    out = {}
    ids = None
    for k, inp in enumerate(inputs):
        views = {}
        for j in jobs:                                   # only slides are planned here; volumes stay lazy
            raw = _peek(inp, j.view)
            views[j.name] = _view(inp, j.view) if isinstance(raw, LazyView) and raw.kind == "wsi" else raw
        work = [j for j in jobs if isinstance(views[j.name], TiledSlide)]
        if not work:
            continue
        ids = ids if ids is not None else store.ids()
        row = unit.start + k
        state = {}
        for j in work:
            s = views[j.name]
            try:
                enc = _encoder(j, ctx.device)
                state[j.name] = (s, enc, require_slide_tiles(store.root, modality, j.name, j.config_hash, row, ids[row],
                                                             s.coords, enc.dim, s.batch, s.info))
            except Exception as exc:  # noqa: BLE001
                out[(j.name, k)] = Failed(f"{type(exc).__name__}: {exc}"[:500])
        try:
            for b in range(max((s.n_batches for s, _, _ in state.values()), default=0)):
                need = [(n, s, enc, t) for n, (s, enc, t) in state.items()
                        if (n, k) not in out and b < s.n_batches and not t.done()[b]]
                read = {}
                for n, s, enc, t in need:
                    if id(s) not in read:
                        read[id(s)] = s.read(b)                 # one read of the batch for every expert
                    vecs, errs = encode_isolated(enc, [x[None] for x in read[id(s)]])
                    if vecs is None or any(errs) or not np.isfinite(vecs).all():
                        out[(n, k)] = Failed(f"tile batch {b}: {next((e for e in errs if e), 'non-finite embedding')}")
                    else:
                        t.write_batch(b, vecs)
            for n, (_s, _enc, t) in state.items():
                out.setdefault((n, k), t.mean())
        except Exception as exc:  # noqa: BLE001  (an unreadable region: the slide fails, the run goes on)
            for n in state:
                out.setdefault((n, k), Failed(f"{type(exc).__name__}: {exc}"[:500]))
        finally:
            for s, _, _ in state.values():
                s.close()
    return out


def _keep_tiles(inp, view: str) -> bool:
    v = inp.get(view) if isinstance(inp, dict) else None
    return getattr(v, "keep_tiles", True)


def _drop_tiles(store: Store, modality: str, job: Job, row: int) -> None:
    path = tiles_path(modality, job.name, job.config_hash, row)
    if path in store.root:
        del store.root[path]


def probe(ctx: Context, job: Job) -> tuple[int, dict]:
    """Load the encoder (where it will run) and report its output dim and provenance."""
    enc = _encoder(job, ctx.device)
    return enc.dim, enc.provenance()


# ---- planning -------------------------------------------------------------------------------------------------
def plan_jobs(spec: PipelineSpec, dataset: str, profile: str, adapter: DatasetAdapter,
              only_modality: list[str] | None = None, only_expert: list[str] | None = None,
              train_rows: list[int] | None = None, encoding_from: str | None = None) -> dict[str, list[Job]]:
    """The non-RAG experts and teachers to run, per modality, each with its config hash.

    Experts that need fitting (``Encoder.needs_fit``) are fitted here on ``train_rows`` (default: the adapter's
    training split), or take ``encoding_from``'s encoding (extract/fitting.py), before any unit runs.
    """
    ds = spec.dataset(dataset)
    prof = spec.profile(profile)
    plans: dict[str, list[Job]] = {}
    for mod, mspec in ds.modalities.items():
        if only_modality and mod not in only_modality:
            continue
        entries = [(n, e.role, e.model, e.view, e.params) for n, e in spec.experts_for(dataset, mod, profile).items()
                   if e.role != "rag"]
        t = spec.teacher_for(dataset, mod, profile)
        if t:
            entries.append((TEACHER, "teacher", t.model, t.view, t.params))
        jobs = []
        for name, role, model, view, params in entries:
            if only_expert and name not in only_expert:
                continue
            ov = prof.models.get(model)
            options = EncoderOptions(source=ov.source if ov else None, revision=ov.revision if ov else None,
                                     pooling=ov.pooling if ov else None, max_length=ov.max_length if ov else None,
                                     batch_size=ov.batch_size if ov else None,
                                     trust_remote_code=ov.trust_remote_code if ov else False, params=dict(params))
            enc = build_encoder(model, options, device="cpu")
            view = view or enc.input_view()
            if enc.needs_fit:
                if train_rows is None:
                    train_rows = [i for i, p in enumerate(adapter.split()) if p == "train"]
                options = fitted_options(enc, options, adapter, mod, view, name, train_rows, encoding_from)
                enc = build_encoder(model, options, device="cpu")
            config = {"expert": enc.identity(), "view": view, "modality": mspec.model_dump(exclude={"experts"}),
                      "dataset": {"adapter": ds.adapter, "version": adapter.version,
                                  "options": {**ds.options, **adapter.options}}}
            jobs.append(Job(mod, name, role, model, options, view, config, canonical_hash(config)))
        if jobs:
            plans[mod] = jobs
    return plans


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for p in ("medmix", "torch", "transformers", "timm", "open_clip_torch", "zarr", "numpy", "dask"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            pass
    return out


def code_version() -> str:
    import subprocess
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except Exception:  # noqa: BLE001
        return "unknown"


# ---- execution ------------------------------------------------------------------------------------------------
class LocalExecutor:
    """In-process: no Dask, no setup. Units run one after another."""

    def probe(self, ctx, job):
        return probe(ctx, job)

    def run(self, ctx, units, on_done):
        for mod, unit, jobs in units:
            on_done(mod, unit, jobs, run_unit(ctx, mod, unit, jobs))

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
                raise RuntimeError("--gpus needs dask-cuda (pip install 'medmix[gpu]')") from exc
            self.cluster = LocalCUDACluster(n_workers=gpus, threads_per_worker=1)
            self.client = Client(self.cluster)
        else:
            self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                        dashboard_address=None, memory_limit="auto", silence_logs=logging.ERROR)
            self.client = Client(self.cluster)

    def probe(self, ctx, job):
        return self.client.submit(probe, ctx, job, pure=False).result()

    def run(self, ctx, units, on_done):
        from distributed import as_completed
        futures = {}
        for mod, unit, jobs in units:
            f = self.client.submit(run_unit, ctx, mod, unit, jobs, pure=False, retries=1,
                                   key=f"unit-{mod}-{unit.index}-{time.monotonic_ns()}")
            futures[f] = (mod, unit, jobs)
        for f in as_completed(futures):
            mod, unit, jobs = futures[f]
            on_done(mod, unit, jobs, f.result())

    def close(self):
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def _cached_group(store: Store, modality: str, job: Job):
    try:
        return store.expert_group(modality, job.name, job.config_hash)
    except Exception:  # noqa: BLE001  (not there yet)
        return None


def run(ctx: Context, plans: dict[str, list[Job]], executor=None, progress: bool = True) -> Summary:
    """Create/reuse each job's group, then run every pending unit. Returns the per-expert summary."""
    executor = executor or LocalExecutor()
    store = Store(ctx.store_url, mode="a")
    summary = Summary()
    work = []
    bars = {}
    for mod, jobs in plans.items():
        pending_jobs = []
        for job in jobs:
            group = _cached_group(store, mod, job)
            if group is None or group.pending_units():
                dim, prov = executor.probe(ctx, job)
                prov = {**prov, "role": job.role, "view": job.view, "config": job.config,
                        "packages": package_versions(), "code_version": code_version()}
                group = store.require_expert_group(mod, job.name, job.config_hash, dim, prov)
            else:
                store.root[f"embeddings/{mod}/{job.name}"].attrs["latest"] = job.config_hash[:12]
            pend = group.pending_units()
            summary.skipped_units[f"{mod}/{job.name}"] = group.n_units - len(pend)
            if pend:
                pending_jobs.append((job, {u.index for u in pend}))
                if progress:
                    bars[f"{mod}/{job.name}"] = tqdm(total=sum(u.stop - u.start for u in pend), unit="item",
                                                     desc=f"{mod}/{job.name} ({job.model})", leave=True)
        if not pending_jobs:
            continue
        for unit in store.expert_group(mod, pending_jobs[0][0].name, pending_jobs[0][0].config_hash).units():
            todo = [j for j, idx in pending_jobs if unit.index in idx]
            if todo:
                work.append((mod, unit, todo))

    def on_done(mod, unit, jobs, counts):
        summary.add(counts)
        for job in jobs:
            bar = bars.get(f"{mod}/{job.name}")
            if bar is not None:
                bar.update(unit.stop - unit.start)

    try:
        executor.run(ctx, work, on_done)
    finally:
        for b in bars.values():
            b.close()
    return summary
