"""`python -m rag embed`: the RAG expert of each modality, written into the dataset's store.

Bridge to text (METHOD section 4): notes and reports as they are; EHR serialized "variable: value; ..." (the
adapter's ``text`` view); images through the profile's report generator for their kind (``rag.generators``, e.g.
MAIRA-2 for CXR; rag/generators.py), whose reports are stored beside the vectors; else a text view the dataset's
options name (``rag_bridge: {frontal: note}``); else the image modality's RAG expert is recorded MISSING with the
reason (none ships offline). The retrieved passage ids and scores of every sample are stored for audit.
"""
from __future__ import annotations

import logging

import numpy as np
from tqdm.auto import tqdm

from plugins.datasets.base import Failed, Missing, get_adapter
from plugins.inputs import check_input, load_rows
from stores import paths
from stores.provenance import code_version, package_versions
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
                out.append(Failed(f"report generation: {type(exc).__name__}: {exc}"[:500]))
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


def embed_dataset(dataset: str, profile: str = "offline", config: str | None = None, data_root: str | None = None,
                  store: str | None = None, modalities: list[str] | None = None, options: dict | None = None,
                  progress: bool = True, summary=None, service: RagService | None = None) -> dict:
    spec = load_spec(config)
    root = paths.data_root(spec, data_root)
    ds = spec.dataset(dataset)
    adapter = get_adapter(ds, root, options)
    store = str(paths.store_path(spec, dataset, options, None, store))
    st = Store(store, mode="a")
    targets = [m for m in ds.modalities if (not modalities or m in modalities)
               and any(e.role == "rag" for e in spec.experts_for(dataset, m, profile).values())]
    if not targets:
        return {}
    svc = service or RagService(spec, profile, data_root)
    bridges = adapter.options.get("rag_bridge", {}) or {}
    counts = {}
    for mod in targets:
        kind = ds.modalities[mod].kind
        bridge_mod = bridges.get(mod, mod)
        generator = _generator(svc, kind, mod in bridges)
        config_obj = {"rag": svc.identity(), "bridge": bridge_mod,
                      **({"generator": generator.identity()} if generator else {}),
                      "modality": ds.modalities[mod].identity(),
                      "dataset": {"adapter": ds.adapter, "version": adapter.version, "options": adapter.options}}
        h = canonical_hash(config_obj)
        k = svc.cfg.k
        prov = {"model": f"rag:{svc.cfg.query_encoder}>{svc.cfg.lm}", "role": "rag", "family": "rag", "profile": profile,
                "config": config_obj, "index_meta": svc.index().meta, "packages": package_versions(),
                "code_version": code_version(), "lm": svc.lm.provenance(), "strategy": svc.cfg.strategy}
        extras = {"retrieved_ids": ((k,), "int32", -1), "retrieved_scores": ((k,), "float32", float("nan"))}
        if generator:
            extras["report"] = ((), str, "")
        group = st.require_expert_group(mod, RAG, h, svc.lm.dim, prov, extras=extras)
        pending = group.pending_units()
        bar = tqdm(total=sum(u.stop - u.start for u in pending), desc=f"{mod}/rag", unit="item", disable=not progress)
        ok = miss = fail = 0
        for unit in pending:
            rows = list(range(unit.start, unit.stop))
            if generator:
                texts = generated_texts(_inputs(adapter, ds, mod, rows), generator)
            else:
                texts = bridge_texts(_inputs(adapter, ds, bridge_mod, rows), kind, bridges.get(mod))
            todo = [i for i, t in enumerate(texts) if isinstance(t, str)]
            n = len(rows)
            vec = np.zeros((n, group.group["vectors"].shape[1]), np.float32)
            valid = np.array([FAILED if isinstance(t, Failed) else MISSING for t in texts], np.uint8)
            reasons = [t.reason if not isinstance(t, str) else "" for t in texts]
            ids = np.full((n, k), -1, np.int32)
            scores = np.full((n, k), np.nan, np.float32)
            if todo:
                try:
                    v, i_, s_ = svc.embed([texts[i] for i in todo])
                    vec[todo], ids[todo], scores[todo] = v, i_, s_
                    valid[todo] = OK
                except Exception as exc:  # noqa: BLE001  (isolate the bad sample(s))
                    for i in todo:
                        try:
                            v, i_, s_ = svc.embed([texts[i]])
                            vec[i], ids[i], scores[i], valid[i] = v[0], i_[0], s_[0], OK
                        except Exception as one:  # noqa: BLE001
                            valid[i], reasons[i] = FAILED, f"{type(one).__name__}: {one}"[:500]
                    log.warning("%s/rag unit %d: batch failed (%s); isolated per sample", mod, unit.index, exc)
            written = {"retrieved_ids": ids, "retrieved_scores": scores}
            if generator:
                written["report"] = np.asarray([t if isinstance(t, str) else "" for t in texts], dtype=object).astype(str)
            group.write_unit(unit, vec, valid, reasons, extras=written)
            ok, miss, fail = ok + int((valid == OK).sum()), miss + int((valid == MISSING).sum()), fail + int((valid == FAILED).sum())
            bar.update(n)
        bar.close()
        counts[f"{mod}/{RAG}"] = (ok, miss, fail, {})
        if summary is not None:
            summary.skipped_units[f"{mod}/{RAG}"] = group.n_units - len(pending)
    if summary is not None:
        summary.add(counts)
    return counts
