"""Training recipe over in-memory tensors: batches are index slices, never a per-sample Dataset.

``RECIPES["paper"]`` is METHOD section 5 literally: AdamW (0.9/0.999, wd 1e-2), grad-norm clip 1.0, base lr 1e-5
(router 0.3x), linear warm-up over 50 epochs, <= 200 epochs, batch 256, distillation weight ramped 0 -> 0.3 over 30
epochs, early stop after 20 epochs without a better validation loss, best checkpoint kept. ``RECIPES["robust"]``
(the default; chosen on validation, docs/train.md) counts the warm-up in optimizer steps, starts fusion uniform,
adds per-modality auxiliary losses and modality dropout; it feeds the experts' vectors as extracted (``normalise``
none: z-scoring lost on validation by 0.02-0.03 on MMIST and PhysioNet and was level on OpenI, docs/train.md;
the validation grid still tries it per method). Every field is a CLI flag.
"""
from __future__ import annotations

import copy
import random
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import methods as registry
from .methods import Batch
from .losses import distill_loss, task_loss
from .protocols import Protocol, apply_to_masks, drop_modalities

if TYPE_CHECKING:                      # Data lives in train/data.py; here it is only an annotation
    from .data import Data


@dataclass
class Recipe:
    lr: float = 1e-5
    router_lr_scale: float = 0.3
    weight_decay: float = 1e-2
    clip: float = 1.0
    warmup_epochs: int = 50
    max_epochs: int = 200
    batch_size: int = 256
    patience: int = 20
    lambda_d: float = 0.3
    distill_ramp_epochs: int = 30
    lambda_rkd: float = 0.05
    hidden: int = 256
    dropout: float = 0.1
    cotrain_weight: float = 0.1        # AdaCoMed's contrastive co-training term
    warmup_steps: int = 0              # > 0: warm-up counted in optimizer steps (replaces warmup_epochs)
    normalise: str = "none"            # none | standard (train-split mean/std per expert, train/normalise.py)
    fusion_init: str = "default"       # default | uniform (router and fusion scorers start at zero: equal weights)
    aux_weight: float = 0.0            # per-modality auxiliary task losses (models with per-modality heads)
    modality_dropout: float = 0.0      # training: each available modality dropped with this probability (>= 1 kept)


RECIPES = {
    "paper": Recipe(),
    "robust": Recipe(lr=1e-3, warmup_steps=20, max_epochs=100, patience=15, batch_size=64, distill_ramp_epochs=10,
                     normalise="none", fusion_init="uniform", aux_weight=0.3, modality_dropout=0.2),
}


METHODS = registry.main_methods()          # medmix, meanavg, concat, max, attention, m3care, adacomed


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


def build_model(method: str, data: Data, recipe: Recipe, large_modality: str | None = None):
    dims = {m: [x.shape[1] for x in xs] for m, xs in data.xs.items()}
    tdims = {m: t.shape[1] for m, t in data.teachers.items()}
    model = registry.get(method).build(dims, data.n_out, tdims, recipe, large_modality)
    model.method = method
    return model


def forward(model, data: Data, idx: torch.Tensor, masks=None):
    idx = idx.to(data.device)
    if registry.get(model.method).input == "teacher":
        m = model.modality
        tmask = data.teacher_masks[m][idx]
        if masks is not None and m in masks:              # a dropped modality takes its teacher input with it
            tmask = tmask & masks[m][idx].any(1)
        return model(data.teachers[m][idx], tmask)
    xs, mk = data.batch(idx, masks)
    return model(xs, mk)


def available_from(masks: dict[str, torch.Tensor], order: list[str]) -> torch.Tensor:
    return torch.stack([masks[m].any(1) for m in order], 1)


def modality_dropout(avail: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Each available modality dropped with probability p; a sample keeps at least one of its modalities."""
    keep = avail & (torch.rand(avail.shape, generator=gen) >= p).to(avail.device)
    lost = avail.any(1) & ~keep.any(1)
    return torch.where(lost.unsqueeze(1), avail, keep)


def aux_loss(out, y: torch.Tensor, tasks: list[dict], order: list[str]) -> torch.Tensor:
    """Mean over modalities of the task loss of each modality's own head, on the samples that have the modality."""
    losses = [task_loss(out.modality_logits[m], y, tasks, out.available[:, i])
              for i, m in enumerate(order) if out.available[:, i].any()]
    return torch.stack(losses).mean() if losses else out.logits.new_zeros(())


def _optimizer(model, recipe: Recipe):
    router = set(map(id, model.router_parameters())) if hasattr(model, "router_parameters") else set()
    groups = [{"params": [p for p in model.parameters() if id(p) not in router], "lr": recipe.lr}]
    if router:
        groups.append({"params": [p for p in model.parameters() if id(p) in router], "lr": recipe.lr * recipe.router_lr_scale})
    return torch.optim.AdamW(groups, betas=(0.9, 0.999), weight_decay=recipe.weight_decay, foreach=True)


def train_one(method: str, data: Data, recipe: Recipe, seed: int, protocol: Protocol = Protocol("none"),
              large_modality: str | None = None, device: str = "cpu", log=None) -> tuple[torch.nn.Module, dict]:
    gen = seed_everything(seed)
    data = data.to(device)
    model = build_model(method, data, recipe, large_modality).to(device)
    opt = _optimizer(model, recipe)
    base_lrs = [g["lr"] for g in opt.param_groups]
    train_idx, val_idx = data.rows("train"), data.rows("val")
    avail = data.available()
    best, best_state, best_epoch, history = float("inf"), None, -1, []
    steps_per_epoch = max(1, -(-len(train_idx) // recipe.batch_size))
    spec = registry.get(method)
    distills = spec.distill and bool(data.teachers)
    warmup = recipe.warmup_steps or recipe.warmup_epochs * steps_per_epoch
    for epoch in range(recipe.max_epochs):
        model.train()
        perm = train_idx[torch.randperm(len(train_idx), generator=gen).to(data.device)]
        masks = data.masks
        if protocol.phase == "train":
            keep = drop_modalities(avail, protocol.kind, protocol.rate, gen)
            masks = apply_to_masks(data.masks, keep, list(data.layout))
        if recipe.modality_dropout > 0:
            masks = apply_to_masks(masks, modality_dropout(available_from(masks, data.layout), recipe.modality_dropout,
                                                           gen), list(data.layout))
        lam = recipe.lambda_d * min(1.0, epoch / max(1, recipe.distill_ramp_epochs))
        total = 0.0
        for step in range(steps_per_epoch):
            progress = (epoch * steps_per_epoch + step + 1) / max(1, warmup)
            for g, lr in zip(opt.param_groups, base_lrs):
                g["lr"] = lr * min(1.0, progress)
            idx = perm[step * recipe.batch_size:(step + 1) * recipe.batch_size]
            out = forward(model, data, idx, masks)
            loss = task_loss(out.logits, data.y[idx], data.tasks)
            if recipe.aux_weight > 0 and spec.aux_heads and out.modality_logits:
                loss = loss + recipe.aux_weight * aux_loss(out, data.y[idx], data.tasks, list(data.layout))
            if distills and lam > 0:
                mk = {m: masks[m][idx].any(1) for m in data.layout}
                loss = loss + lam * distill_loss(out.modality_z, mk, {m: t[idx] for m, t in data.teachers.items()},
                                                 {m: t[idx] for m, t in data.teacher_masks.items()},
                                                 model.teacher_proj, recipe.lambda_rkd)
            if spec.extra_loss is not None:
                loss = loss + spec.extra_loss(model, out, Batch(data.y[idx], data.tasks,
                                                                {m: t[idx] for m, t in data.teachers.items()},
                                                                {m: t[idx] for m, t in data.teacher_masks.items()}),
                                              recipe)
            if not loss.requires_grad:        # no known label and no other term in this batch: nothing to learn
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip)
            opt.step()
            total += loss.item()
        val = evaluate_loss(model, data, val_idx)
        history.append({"epoch": epoch, "train_loss": total / steps_per_epoch, "val_loss": val})
        if val < best - 1e-6:
            best, best_epoch, best_state = val, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= recipe.patience:
            break
    model.load_state_dict(best_state)
    return model, {"best_epoch": best_epoch, "best_val_loss": best, "epochs_run": len(history), "history": history}


@torch.no_grad()
def evaluate_loss(model, data: Data, idx: torch.Tensor) -> float:
    model.eval()
    idx = idx.to(data.device)
    out = forward(model, data, idx)
    return float(task_loss(out.logits, data.y[idx], data.tasks))


@torch.no_grad()
def predict(model, data: Data, idx: torch.Tensor, masks=None):
    model.eval()
    return forward(model, data, idx, masks)


def recipe_dict(r: Recipe) -> dict:
    return asdict(r)
