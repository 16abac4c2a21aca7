"""What a worker holds: the picklable Context, per-process caches (a model loads once per process), and
encoding / decoding with failure isolation (one bad item never sinks its batch)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stores.spec import canonical_hash
from stores.store import Store

from plugins.datasets.base import DatasetAdapter, Failed, Missing, get_adapter
from plugins.inputs import describe
from plugins.readers.lazy import LazyView
from plugins.registry import Encoder, build_encoder
from .plan import Job

log = logging.getLogger("medmix.extract")


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
    profile: str | None = None       # recorded in each group's provenance (train --profile selects by it)


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
                return None, [describe(batch_error)[:500]]
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
IMAGE_GROUP = 16      # 2-D images decoded at a time (each <= 2x the encoder's input side after decode)


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
        return Failed(describe(exc)[:500])


def lazy_group(kind: str) -> int:
    """Rows decoded at a time: 2-D images are small once downscaled (an encoder batch); volumes are not."""
    return IMAGE_GROUP if kind == "image" else LAZY_GROUP


def probe(ctx: Context, job: Job) -> tuple[int, dict]:
    """Load the encoder (where it will run) and report its output dim and provenance."""
    enc = _encoder(job, ctx.device)
    return enc.dim, enc.provenance()

