"""The one training container: the tensors a method needs, laid out by modality, built from the store's arrays.

``stores/loader.py`` reads plain numpy arrays (the shared layer stays free of torch); ``Data`` is where they become
torch tensors: ``Data.from_store`` for a run, ``Data.from_arrays`` for arrays assembled elsewhere (a checkpoint's
expert groups in ``python -m train evaluate|predict``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stores.loader import read_experts, read_labels
from stores.store import SPLIT_CODES, Store


def _tensor(a) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))


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
    def from_arrays(cls, split: np.ndarray, labels: dict[str, tuple[np.ndarray, dict]],
                    vectors: dict[str, dict[str, np.ndarray]], masks: dict[str, dict[str, np.ndarray]],
                    teachers: dict[str, np.ndarray] | None = None, teacher_masks: dict[str, np.ndarray] | None = None,
                    tasks: list[str] | None = None) -> "Data":
        """From per-expert arrays (modality -> expert -> (N, D) float32 / (N,) bool, the order is the layout) and
        labels (task -> ((N, C) float32, {type, labels})); ``tasks`` picks and orders the tasks (default: all)."""
        layout = {m: list(e) for m, e in vectors.items()}
        xs = {m: [_tensor(vectors[m][e]) for e in names] for m, names in layout.items()}
        mk = {m: torch.stack([_tensor(masks[m][e]) for e in names], 1) for m, names in layout.items()}
        spec, cols, out, col = [], [], 0, 0
        for t in tasks or list(labels):
            y, meta = labels[t]
            width = y.shape[1]
            n_out = width if meta["type"] != "multiclass" else len(meta["labels"])
            spec.append({"name": t, "type": meta["type"], "labels": list(meta.get("labels", [t])),
                         "cols": slice(col, col + width), "out": slice(out, out + n_out)})
            cols.append(_tensor(y))
            col += width
            out += n_out
        return cls(layout, xs, mk, torch.cat(cols, 1), spec,
                   {m: _tensor(t) for m, t in (teachers or {}).items()},
                   {m: _tensor(t) for m, t in (teacher_masks or {}).items()}, split)

    @classmethod
    def from_store(cls, store: Store | str, select: dict[str, list[str]] | None = None, tasks: list[str] | None = None,
                   teachers: bool = True, versions: dict[str, str] | None = None, profile: str | None = None
                   ) -> tuple["Data", dict[str, dict]]:
        """The chosen experts of a store (``stores.loader.read_experts``: selection, pins, profile) and its labels;
        returns (data, provenance: "modality/expert" -> {config_hash, model, role, chosen, ...})."""
        store = store if isinstance(store, Store) else Store(store)
        ex = read_experts(store, select, teachers, versions, profile)
        data = cls.from_arrays(store.split(), read_labels(store), ex.vectors, ex.masks, ex.teachers,
                               ex.teacher_masks, tasks)
        return data, ex.provenance

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
        return torch.from_numpy(np.flatnonzero(self.split == SPLIT_CODES[part])).to(self.device)

    def available(self) -> torch.Tensor:
        return torch.stack([self.masks[m].any(1) for m in self.layout], 1)

    def batch(self, idx: torch.Tensor, masks: dict[str, torch.Tensor] | None = None):
        masks = masks or self.masks
        return ({m: [x[idx] for x in xs] for m, xs in self.xs.items()}, {m: mk[idx] for m, mk in masks.items()})
