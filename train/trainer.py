"""Training recipe (METHOD section 5) over in-memory tensors: batches are index slices, never a per-sample Dataset.

AdamW (0.9/0.999, wd 1e-2), grad-norm clip 1.0, base lr 1e-5 (router 0.3x), linear warm-up over 50 epochs,
<= 200 epochs, batch 256, distillation weight ramped 0 -> 0.3 over 30 epochs, early stop after 20 epochs without a
better validation loss, best checkpoint kept. Everything is a field of ``Recipe`` and overridable from the CLI.
"""
from __future__ import annotations

import copy
import random
from dataclasses import asdict, dataclass

import numpy as np
import torch

from stores.loader import Bundle

from .losses import distill_loss, task_loss
from .models.baselines import AdaCoMed, Large, M3Care, SimpleFusion
from .models.medmix import MedMIX
from .protocols import Protocol, apply_to_masks, drop_modalities


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


METHODS = ["medmix", "meanavg", "concat", "max", "attention", "m3care", "adacomed"]


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


@dataclass
class Data:
    """The tensors a method needs, laid out by modality (experts in a fixed order)."""
    layout: dict[str, list[str]]
    xs: dict[str, list[torch.Tensor]]
    masks: dict[str, torch.Tensor]            # m -> (N, K) bool
    y: torch.Tensor                           # (N, C_total)
    tasks: list[dict]
    teachers: dict[str, torch.Tensor]
    teacher_masks: dict[str, torch.Tensor]
    split: np.ndarray

    @classmethod
    def from_bundle(cls, b: Bundle, task_names: list[str] | None = None) -> "Data":
        layout = {m: list(e) for m, e in b.experts.items()}
        xs = {m: [b.experts[m][e] for e in names] for m, names in layout.items()}
        masks = {m: torch.stack([b.masks[m][e] for e in names], 1) for m, names in layout.items()}
        tasks, cols, out = [], [], 0
        col = 0
        for t in task_names or list(b.labels):
            y = b.labels[t]
            meta = b.label_meta[t]
            width = y.shape[1]
            n_out = width if meta["type"] != "multiclass" else len(meta["labels"])
            tasks.append({"name": t, "type": meta["type"], "labels": list(meta.get("labels", [t])),
                          "cols": slice(col, col + width), "out": slice(out, out + n_out)})
            cols.append(y)
            col += width
            out += n_out
        return cls(layout, xs, masks, torch.cat(cols, 1), tasks, dict(b.teachers), dict(b.teacher_masks), b.split)

    @property
    def n_out(self) -> int:
        return self.tasks[-1]["out"].stop

    @property
    def device(self) -> torch.device:
        return self.y.device

    def to(self, device: torch.device | str) -> "Data":
        """The same data on ``device`` (self when already there): the one way data reaches a model's device."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if self.y.device == device:
            return self
        mv = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return Data(self.layout, {m: [x.to(device) for x in xs] for m, xs in self.xs.items()}, mv(self.masks),
                    self.y.to(device), self.tasks, mv(self.teachers), mv(self.teacher_masks), self.split)

    def rows(self, part: str) -> torch.Tensor:
        from stores.store import SPLIT_CODES
        return torch.from_numpy(np.flatnonzero(self.split == SPLIT_CODES[part])).to(self.device)

    def available(self) -> torch.Tensor:
        return torch.stack([self.masks[m].any(1) for m in self.layout], 1)

    def batch(self, idx: torch.Tensor, masks: dict[str, torch.Tensor] | None = None):
        masks = masks or self.masks
        return ({m: [x[idx] for x in xs] for m, xs in self.xs.items()}, {m: mk[idx] for m, mk in masks.items()})


def build_model(method: str, data: Data, recipe: Recipe, large_modality: str | None = None):
    dims = {m: [x.shape[1] for x in xs] for m, xs in data.xs.items()}
    tdims = {m: t.shape[1] for m, t in data.teachers.items()}
    kw = {"d": recipe.hidden, "dropout": recipe.dropout}
    if method in ("medmix", "medmix_nodistill"):
        return MedMIX(dims, data.n_out, teacher_dims=tdims if method == "medmix" else None, **kw)
    if method == "medmix_mean":
        return MedMIX(dims, data.n_out, teacher_dims=tdims, intra="mean", **kw)
    if method in ("meanavg", "concat", "max", "attention"):
        return SimpleFusion(dims, data.n_out, rule={"meanavg": "mean"}.get(method, method), **kw)
    if method == "m3care":
        return M3Care(dims, data.n_out, **kw)
    if method == "adacomed":
        return AdaCoMed(dims, data.n_out, teacher_dims=tdims, **kw)
    if method == "large":
        return Large(tdims[large_modality], data.n_out, modality=large_modality, **kw)
    raise ValueError(f"unknown method {method!r} (have: {', '.join(METHODS + ['large', 'medmix_nodistill', 'medmix_mean'])})")


def forward(model, data: Data, idx: torch.Tensor, masks=None):
    idx = idx.to(data.device)
    if isinstance(model, Large):
        m = model.modality
        tmask = data.teacher_masks[m][idx]
        if masks is not None and m in masks:              # a dropped modality takes its teacher input with it
            tmask = tmask & masks[m][idx].any(1)
        return model(data.teachers[m][idx], tmask)
    xs, mk = data.batch(idx, masks)
    return model(xs, mk)


def _optimizer(model, recipe: Recipe):
    router = set(map(id, model.router_parameters())) if hasattr(model, "router_parameters") else set()
    groups = [{"params": [p for p in model.parameters() if id(p) not in router], "lr": recipe.lr}]
    if router:
        groups.append({"params": [p for p in model.parameters() if id(p) in router], "lr": recipe.lr * recipe.router_lr_scale})
    return torch.optim.AdamW(groups, betas=(0.9, 0.999), weight_decay=recipe.weight_decay)


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
    distills = method in ("medmix",) and bool(data.teachers)
    for epoch in range(recipe.max_epochs):
        model.train()
        perm = train_idx[torch.randperm(len(train_idx), generator=gen).to(data.device)]
        masks = data.masks
        if protocol.phase == "train":
            keep = drop_modalities(avail, protocol.kind, protocol.rate, gen)
            masks = apply_to_masks(data.masks, keep, list(data.layout))
        lam = recipe.lambda_d * min(1.0, epoch / max(1, recipe.distill_ramp_epochs))
        total = 0.0
        for step in range(steps_per_epoch):
            progress = (epoch * steps_per_epoch + step + 1) / max(1, recipe.warmup_epochs * steps_per_epoch)
            for g, lr in zip(opt.param_groups, base_lrs):
                g["lr"] = lr * min(1.0, progress)
            idx = perm[step * recipe.batch_size:(step + 1) * recipe.batch_size]
            out = forward(model, data, idx, masks)
            loss = task_loss(out.logits, data.y[idx], data.tasks)
            if distills and lam > 0:
                mk = {m: masks[m][idx].any(1) for m in data.layout}
                loss = loss + lam * distill_loss(out.modality_z, mk, {m: t[idx] for m, t in data.teachers.items()},
                                                 {m: t[idx] for m, t in data.teacher_masks.items()},
                                                 model.teacher_proj, recipe.lambda_rkd)
            if isinstance(model, AdaCoMed):
                loss = loss + recipe.cotrain_weight * model.co_training_loss(
                    out, {m: t[idx] for m, t in data.teachers.items()}, {m: t[idx] for m, t in data.teacher_masks.items()},
                    lambda lo, ok, _y=data.y[idx]: task_loss(lo, _y, data.tasks, ok))
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
