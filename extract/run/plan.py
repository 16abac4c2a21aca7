"""Planning and identity: which experts run per modality, and the config hash that names their groups."""
from __future__ import annotations

from dataclasses import dataclass

from stores.paths import model_cache
from stores.spec import PipelineSpec, canonical_hash

from plugins.datasets.base import DatasetAdapter
from ..fitting import fitted_options
from plugins.registry import EncoderOptions, build_encoder, model_options

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



def plan_jobs(spec: PipelineSpec, dataset: str, profile: str, adapter: DatasetAdapter,
              only_modality: list[str] | None = None, only_expert: list[str] | None = None,
              train_rows: list[int] | None = None, encoding_from: str | None = None) -> dict[str, list[Job]]:
    """The non-RAG experts and teachers to run, per modality, each with its config hash.

    Experts that need fitting (``Encoder.needs_fit``) are fitted here on ``train_rows`` (default: the adapter's
    training split), or take ``encoding_from``'s encoding (extract/fitting.py), before any unit runs.
    """
    ds = spec.dataset(dataset)
    prof = spec.profile(profile)
    cache = model_cache(spec)
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
            options = model_options(prof, model, params, cache)
            enc = build_encoder(model, options, device="cpu")
            view = view or enc.input_view()
            if enc.needs_fit:
                if train_rows is None:
                    train_rows = [i for i, p in enumerate(adapter.split()) if p == "train"]
                options = fitted_options(enc, options, adapter, mod, view, name, train_rows, encoding_from)
                enc = build_encoder(model, options, device="cpu")
            config = {"expert": enc.identity(), "view": view, "modality": mspec.identity(),
                      "dataset": adapter.config_identity()}
            jobs.append(Job(mod, name, role, model, options, view, config, canonical_hash(config)))
        if jobs:
            plans[mod] = jobs
    return plans
