"""What a worker holds: the picklable Context, per-process caches (a model loads once per process), and
encoding / decoding with failure isolation (one bad item never sinks its batch)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stores.errors import reason
from stores.spec import canonical_hash
from stores.store import Store

from plugins.datasets.base import DatasetAdapter, Failed, Missing, get_adapter
from plugins.inputs import halve_batch, run_isolated
from plugins.readers.lazy import LazyView
from plugins.registry import Encoder, build_encoder
from plugins.request import ExtractRequest
from .plan import Job

log = logging.getLogger("medmix.extract")


@dataclass
class Context:
    """How a worker rebuilds the dataset adapter and opens the store (picklable): the run's request, whole, with
    its paths resolved, and the torch threads a worker may use."""
    request: ExtractRequest
    threads: int | None = None


# ---- per-process caches (each worker loads a model once) -------------------------------------------------------
_ENCODERS: dict[str, Encoder] = {}
_ADAPTERS: dict[str, DatasetAdapter] = {}
_STORES: dict[str, Store] = {}


def cached_encoder(job: Job, device: str | None) -> Encoder:
    key = canonical_hash({"model": job.model, "options": job.options.__dict__, "device": device})
    if key not in _ENCODERS:
        _ENCODERS[key] = build_encoder(job.model, job.options, device).load()
    return _ENCODERS[key]


def cached_adapter(ctx: Context) -> DatasetAdapter:
    from stores.spec import load_spec
    req = ctx.request
    key = canonical_hash([req.config, req.dataset, req.data_root, req.options or {}])
    if key not in _ADAPTERS:
        spec = load_spec(req.config)
        _ADAPTERS[key] = get_adapter(spec.dataset(req.dataset), Path(req.data_root), req.options)
    return _ADAPTERS[key]


def cached_store(url: str) -> Store:
    if url not in _STORES:
        _STORES[url] = Store(url, mode="a")
    return _STORES[url]


def clear_caches() -> None:
    _ENCODERS.clear()
    _ADAPTERS.clear()
    _STORES.clear()

# ---- encoding with failure isolation --------------------------------------------------------------------------
def encode_isolated(enc: Encoder, items: list) -> tuple[np.ndarray | None, list[str | None]]:
    """Encode a batch; one bad item fails alone with its reason, never its unit (plugins/inputs.py); CUDA
    out-of-memory halves the encoder's batch size and retries."""
    vecs, reasons = run_isolated(lambda xs: list(enc.encode(xs)), items, shrink=lambda: halve_batch(enc))
    ok = [v for v in vecs if v is not None]
    if not ok:
        return None, reasons
    dim = ok[0].shape[0]
    return np.stack([v if v is not None else np.zeros(dim, np.float32) for v in vecs]), reasons


def view_of(inp, view: str):
    """The decoded input of a view; a successful decode replaces the LazyView, so it happens once per unit."""
    value = peek(inp, view)
    if isinstance(value, LazyView):
        value = decode(value)
        if not isinstance(value, Failed):
            inp[view] = value
    return value


LAZY_GROUP = 4        # raw volumes decoded at a time: memory stays bounded however large chunk_rows is
IMAGE_GROUP = 16      # 2-D images decoded at a time (each <= 2x the encoder's input side after decode)


def peek(inp, view: str):
    """The input of a view without decoding it (a LazyView stays lazy)."""
    if isinstance(inp, (Missing, Failed)):
        return inp
    if view not in inp:
        return Missing(f"no '{view}' input")
    return inp[view]


def decode(value):
    try:
        return value.get()
    except Exception as exc:  # noqa: BLE001  (an unreadable volume fails its row, the unit goes on)
        return Failed(reason(exc))


def lazy_group(kind: str) -> int:
    """Rows decoded at a time: 2-D images are small once downscaled (an encoder batch); volumes are not."""
    return IMAGE_GROUP if kind == "image" else LAZY_GROUP


def probe(ctx: Context, job: Job) -> tuple[int, dict]:
    """Load the encoder (where it will run) and report its output dim and provenance."""
    enc = cached_encoder(job, ctx.request.device)
    return enc.dim, enc.provenance()

