"""Fusion methods by name. Each method declares how it is built and what its training needs beyond the task loss
(distillation from the modality teachers, per-modality auxiliary heads, an extra loss of its own, teacher input),
so adding a method touches its own file (where it registers) and its test only: the trainer has no special cases."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from stores.plugins import import_all


@dataclass(frozen=True)
class Method:
    name: str
    build: Callable          # (dims {m: [d_k]}, n_out, teacher_dims {m: d}, recipe, large_modality) -> nn.Module
    distill: bool = False    # cosine + RKD distillation of each modality's representation toward its teacher
    aux_heads: bool = False  # the recipe's per-modality auxiliary losses apply (per-modality heads)
    extra_loss: Callable | None = None   # (model, out, batch: Batch, recipe) -> scalar tensor, added to the loss
    input: str = "experts"   # experts | teacher (one modality's teacher embedding alone)
    main: bool = True        # listed in the default `--methods` (ablation variants are not)


@dataclass
class Batch:
    """What an extra loss may read for the rows of one step."""
    y: object
    tasks: list
    teachers: dict
    teacher_masks: dict


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in REGISTRY:
        raise ValueError(f"method {method.name!r} registered twice")
    REGISTRY[method.name] = method
    return method


def _load() -> None:
    """Every module of train/models/ registers its methods by being there (no list to edit)."""
    import_all(f"{__name__.rsplit('.', 1)[0]}.models")


def get(name: str) -> Method:
    _load()
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r} (have: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name]


def main_methods() -> list[str]:
    _load()
    return [n for n, m in REGISTRY.items() if m.main and m.input == "experts"]
