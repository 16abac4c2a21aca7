"""`python -m rag embed`: the RAG expert of each modality, written into the dataset's store.

Bridge to text (METHOD section 4): notes and reports as they are; EHR serialized "variable: value; ..." (the
adapter's ``text`` view); images through the profile's report generator for their kind (``rag.generators``, e.g.
MAIRA-2 for CXR; rag/generators.py), whose reports are stored beside the vectors; else a text view the dataset's
options name (``rag_bridge: {frontal: note}``); else the image modality's RAG expert is recorded MISSING with the
reason (none ships offline). The retrieved passage ids and scores of every sample are stored for audit.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from plugins.datasets.base import Failed, LIMIT, Missing, get_adapter
from plugins.inputs import check_input, halve_batch, load_rows, run_isolated
from plugins.request import ExtractRequest
from stores import paths
from stores.cli import Progress
from stores.errors import reason
from stores.provenance import group_provenance
from stores.spec import canonical_hash, load_spec
from stores.store import FAILED, MISSING, OK, Store

from .generators import GeneratorLoadError
from .service import RagService

log = logging.getLogger("medmix.rag")
RAG = "rag"


def bridge_texts(inputs: list, modality_kind: str, bridge_view: str | None) -> list:
    """Each input -> its text, or Missing/Failed with a reason."""
    out = []
    for inp in inputs:
        if isinstance(inp, (Missing, Failed)):
            out.append(inp)
        elif "text" in inp and isinstance(inp["text"], str):
            out.append(inp["text"] if inp["text"].strip() else Missing("empty text"))
        elif bridge_view:
            out.append(Missing(f"bridge view '{bridge_view}' has no text"))
        else:
            out.append(Missing(f"no report generator configured for {modality_kind} (see docs/rag.md)"))
    return out


def generated_texts(inputs: list, generator) -> list:
    """Each image input -> its generated report, or Missing/Failed with a reason (one bad image never stops a unit).
    The generator reads its own view (``image`` for LLaVA-class, ``volume`` for Merlin); raw files decode here."""
    from plugins.readers.lazy import LazyView
    view, out = getattr(generator, "view", "image"), []
    for inp in inputs:
        if isinstance(inp, (Missing, Failed)):
            out.append(inp)
        elif not isinstance(inp, dict) or inp.get(view) is None:
            out.append(Missing(f"no {view} to generate a report from"))
        else:
            try:
                x = inp[view].get() if isinstance(inp[view], LazyView) else inp[view]
                out.append(generator.generate([x])[0])
            except GeneratorLoadError:          # the generator itself cannot run: stop once, not per row
                raise
            except Exception as exc:  # noqa: BLE001
                out.append(Failed(reason(exc, "report generation")))
    return out


def _inputs(adapter, ds, modality: str, rows: list[int]) -> list:
    """The rows' inputs, each loaded in isolation and checked by the same rules as the extract stage (one bad record
    fails its row, never the unit)."""
    pre = dict(ds.modalities[modality].preprocess)
    return [check_input(x, pre) for x in load_rows(adapter, modality, rows)]


def _generator(svc: RagService, kind: str, bridged: bool):
    spec = (svc.cfg.generators or {}).get(kind)
    if spec is None or bridged:
        return None
    from plugins.registry import pick_device

    from .generators import build_generator
    kw = {"prompt": spec.prompt} if spec.prompt else {}
    return build_generator(spec.model, source=spec.source, revision=spec.revision,
                           trust_remote_code=spec.trust_remote_code, max_new_tokens=spec.max_new_tokens,
                           params=dict(spec.params), device=str(pick_device(svc.device)), **kw)


def _targets(spec, request: ExtractRequest) -> list[str]:
    """The modalities (of those the request names) whose profile has a RAG expert."""
    ds = spec.dataset(request.dataset)
    return [m for m in ds.modalities if (not request.modalities or m in request.modalities)
            and any(e.role == "rag" for e in spec.experts_for(request.dataset, m, request.profile).values())]


def embed_dataset(request: ExtractRequest, summary=None, service: RagService | None = None) -> dict:
    """The RAG expert of each modality the request names, into its store: `rag embed`, and the extract stage's
    ``medmix.expert_stages`` entry point (which passes its request whole, paths resolved)."""
    spec = load_spec(request.config)
    ds = spec.dataset(request.dataset)
    options = {**(request.options or {}), LIMIT: request.limit} if request.limit else request.options  # the sample
    adapter = get_adapter(ds, paths.data_root(spec, request.data_root), options)                    # extract wrote
    st = Store(str(paths.store_path(spec, request.dataset, request.options, request.limit, request.store)), mode="a")
    st.check_rows(request.dataset, adapter.ids(), adapter.options)
    targets = _targets(spec, request)
    if not targets:
        return {}
    svc = service or RagService(spec, request.profile, request.data_root, device=request.device)
    counts = {}
    for mod in targets:
        group, job = _open_group(st, svc, ds, adapter, mod, request.profile)
        pending = group.pending_units()
        counts[f"{mod}/{RAG}"] = _embed_units(group, pending, svc, job, request.progress)
        if summary is not None:
            summary.skipped_units[f"{mod}/{RAG}"] = group.n_units - len(pending)
    if summary is not None:
        summary.add(counts)
    return counts


@dataclass
class _Job:
    """How one modality's texts are made: its own text, a bridged modality's, or a generator's reports."""
    adapter: object
    ds: object
    modality: str
    source: str               # the modality whose inputs are read (the bridge's, else the modality itself)
    bridged: bool
    generator: object


def _open_group(st: Store, svc: RagService, ds, adapter, mod: str, profile: str):
    """The modality's RAG group (created, or reopened when this config already wrote one) and how its texts are made."""
    kind = ds.modalities[mod].kind
    bridges = adapter.opts.rag_bridge
    source = bridges.get(mod, mod)
    generator = _generator(svc, kind, mod in bridges)
    config = {"rag": svc.identity(), "bridge": source, **({"generator": generator.identity()} if generator else {}),
              "modality": ds.modalities[mod].identity(), "dataset": adapter.config_identity()}
    prov = group_provenance({"model": f"rag:{svc.cfg.query_encoder}>{svc.cfg.lm}", "family": "rag",
                             "index_meta": svc.index().meta, "lm": svc.lm.provenance(), "strategy": svc.cfg.strategy},
                            role=RAG, config=config, profile=profile)
    k = svc.cfg.k
    extras = {"retrieved_ids": ((k,), "int32", -1), "retrieved_scores": ((k,), "float32", float("nan"))}
    if generator:
        extras["report"] = ((), str, "")
    group = st.require_expert_group(mod, RAG, canonical_hash(config), svc.lm.dim, prov, extras=extras)
    return group, _Job(adapter, ds, mod, source, mod in bridges, generator)


def _texts(job: _Job, rows: list[int]) -> list:
    if job.generator:
        return generated_texts(_inputs(job.adapter, job.ds, job.modality, rows), job.generator)
    bridge = job.source if job.bridged else None
    return bridge_texts(_inputs(job.adapter, job.ds, job.source, rows), job.ds.modalities[job.modality].kind, bridge)


def _embed_units(group, pending: list, svc: RagService, job: _Job, progress: bool) -> tuple:
    """Each pending unit: texts -> RAG vectors (one bad text fails alone; out of memory halves the batch) ->
    written, marker last. Returns (ok, missing, failed, {})."""
    bar = Progress(sum(u.stop - u.start for u in pending), f"{job.modality}/rag", enabled=progress,
                   logger="medmix.rag")
    totals = np.zeros(3, int)
    for unit in pending:
        texts = _texts(job, list(range(unit.start, unit.stop)))
        vec, valid, reasons, extras = _embed_texts(texts, svc, group.group["vectors"].shape[1])
        if job.generator:
            extras["report"] = np.asarray([t if isinstance(t, str) else "" for t in texts], dtype=object).astype(str)
        group.write_unit(unit, vec, valid, reasons, extras=extras)
        totals += [(valid == OK).sum(), (valid == MISSING).sum(), (valid == FAILED).sum()]
        bar.update(len(texts))
    bar.close()
    return (*(int(t) for t in totals), {})


def _embed_texts(texts: list, svc: RagService, dim: int):
    """Vectors, validity, reasons and the retrieved passages of one unit's texts (Missing/Failed pass through)."""
    n, k = len(texts), svc.cfg.k
    vec = np.zeros((n, dim), np.float32)
    valid = np.array([FAILED if isinstance(t, Failed) else MISSING for t in texts], np.uint8)
    reasons = [t.reason if not isinstance(t, str) else "" for t in texts]
    ids, scores = np.full((n, k), -1, np.int32), np.full((n, k), np.nan, np.float32)
    todo = [i for i, t in enumerate(texts) if isinstance(t, str)]
    if todo:
        out, why = run_isolated(lambda xs: list(zip(*svc.embed(xs))), [texts[i] for i in todo],
                                shrink=lambda: halve_batch(svc.query_encoder, svc.lm))
        for i, one, bad in zip(todo, out, why):
            if bad is None:
                vec[i], ids[i], scores[i] = one
                valid[i] = OK
            else:
                valid[i], reasons[i] = FAILED, bad
    return vec, valid, reasons, {"retrieved_ids": ids, "retrieved_scores": scores}
