"""Whole-slide images: tile batch by tile batch, one read per batch for every pending expert."""
from __future__ import annotations

import numpy as np

from stores.errors import reason
from stores.store import Store, Unit
from stores.tiles import require_slide_tiles, tiles_path

from plugins.datasets.base import Failed
from plugins.readers.lazy import LazyView
from plugins.readers.wsi import TiledSlide
from .context import Context, cached_encoder, encode_isolated, peek, view_of
from .plan import Job


def embed_slides(ctx: Context, store: Store, modality: str, unit: Unit, jobs: list[Job], inputs: list) -> dict:
    """Whole-slide images: read each tile batch ONCE, feed it to every pending expert, store per-tile embeddings
    with a marker per batch (a killed run resumes inside a slide), and return each slide's mean embedding
    (or Failed) per (expert, row)."""
    out = {}
    ids = None
    for k, inp in enumerate(inputs):
        views = {}
        for j in jobs:                                   # only slides are planned here; volumes stay lazy
            raw = peek(inp, j.view)
            views[j.name] = view_of(inp, j.view) if isinstance(raw, LazyView) and raw.kind == "wsi" else raw
        work = [j for j in jobs if isinstance(views[j.name], TiledSlide)]
        if not work:
            continue
        ids = ids if ids is not None else store.ids()
        row = unit.start + k
        state = {}
        for j in work:
            s = views[j.name]
            try:
                enc = cached_encoder(j, ctx.request.device)
                state[j.name] = (s, enc, require_slide_tiles(store.root, modality, j.name, j.config_hash, row, ids[row],
                                                             s.coords, enc.dim, s.batch, s.info))
            except Exception as exc:  # noqa: BLE001
                out[(j.name, k)] = Failed(reason(exc))
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
                out.setdefault((n, k), Failed(reason(exc)))
        finally:
            for s, _, _ in state.values():
                s.close()
    return out


def keep_tiles(inp, view: str) -> bool:
    v = inp.get(view) if isinstance(inp, dict) else None
    return getattr(v, "keep_tiles", True)


def drop_tiles(store: Store, modality: str, job: Job, row: int) -> None:
    path = tiles_path(modality, job.name, job.config_hash, row)
    if path in store.root:
        del store.root[path]

