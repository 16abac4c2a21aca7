"""Fusion methods by name. Each method declares how it is built and what its training needs beyond the task loss
(distillation from the modality teachers, per-modality auxiliary heads, an extra loss of its own, teacher input),
so adding a method touches its own file (where it registers) and its test only: the trainer has no special cases."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from stores.errors import InputError
from stores.registry import Registry


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


# every module of train/models/ registers its methods by being there (no list to edit); other installed packages
# add theirs through the ``medmix.methods`` entry-point group
REGISTRY: Registry[Method] = Registry("fusion method", package=f"{__name__.rsplit('.', 1)[0]}.models",
                                     group="medmix.methods",
                                     row=lambda k, m: {"method": k, "distill": m.distill, "aux_heads": m.aux_heads,
                                                       "input": m.input, "main": m.main})


def register(method: Method) -> Method:
    return REGISTRY.add(method.name, method)


def get(name: str) -> Method:
    if name not in REGISTRY:
        raise InputError(f"unknown method {name!r} (have: {', '.join(REGISTRY)})")
    return REGISTRY[name]


def main_methods() -> list[str]:
    return [n for n, m in REGISTRY.items() if m.main and m.input == "experts"]
