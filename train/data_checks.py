"""What training may rely on, checked before any epoch: rows with something to read, tasks with both classes, and
modalities whose TRAIN rows carry enough of each class to learn from. Each check says what it found; nothing is
dropped silently (the notes go to the log, results.json and results.md)."""
from __future__ import annotations

import logging

import numpy as np

from stores.errors import InputError

from .data import Data

log = logging.getLogger("medmix.train")
MIN_PER_CLASS = 5
PARTS = ("train", "val", "test")
ABSURD = 1e9            # no embedding or summary statistic comes near it: a corrupt row would swamp every gradient


class TrainDataError(InputError):
    """The store cannot be trained on as asked; the message names the store, split, task or modality."""


def exclude_rows_without_modality(data: Data) -> tuple[Data, dict[str, int]]:
    """Rows with no modality at all are taken out of every split (code -1): their output would be the heads' bias,
    so scoring them measures the label prior, not the model. Returns the counts per split."""
    from stores.store import SPLIT_CODES
    empty = ~data.available().any(1).cpu().numpy()
    counts = {p: int((empty & (data.split == SPLIT_CODES[p])).sum()) for p in PARTS}
    if empty.any():
        split = data.split.copy()
        split[empty] = -1
        data = Data(data.layout, data.xs, data.masks, data.y, data.tasks, data.teachers, data.teacher_masks, split)
        log.warning("%d samples have no modality (train %d, val %d, test %d): neither trained on nor scored",
                    int(empty.sum()), counts["train"], counts["val"], counts["test"])
    return data, counts


def _classes(task: dict, y: np.ndarray) -> list[np.ndarray]:
    """Per output column (one for binary / multi-class): the class counts of the known labels."""
    yy = y[:, task["cols"]]
    if task["type"] == "multiclass":
        k = yy[~np.isnan(yy[:, 0]), 0].astype(int)
        return [np.bincount(k, minlength=len(task["labels"]))]
    return [np.bincount(yy[~np.isnan(yy[:, j]), j].astype(int), minlength=2) for j in range(yy.shape[1])]


def check_values(data: Data, where: str) -> None:
    """Every valid row of every expert and teacher finite and below ``ABSURD`` in magnitude; labels in the classes.
    One line naming the store, the expert and a sample row, never a failure deep inside an epoch."""
    groups = [(f"{m}/{name}", data.xs[m][k], data.masks[m][:, k]) for m, names in data.layout.items()
              for k, name in enumerate(names)]
    groups += [(f"{m}/teacher", t, data.teacher_masks[m]) for m, t in data.teachers.items()]
    for key, x, mask in groups:
        x = x[mask.bool()]
        bad = ~(x.isfinite() & (x.abs() <= ABSURD)).all(1)
        if bad.any():
            row = int(mask.bool().nonzero()[bad.nonzero()[0, 0], 0])
            raise TrainDataError(f"{where}: {key}: {int(bad.sum())} valid row(s) hold NaN/inf or |x| > {ABSURD:g} "
                                 f"(e.g. row {row}): run `python -m stores verify`, then re-extract that expert")
    y = data.y.cpu().numpy()
    for t in data.tasks:
        yy = y[:, t["cols"]]
        known = yy[~np.isnan(yy)]
        top = len(t["labels"]) if t["type"] == "multiclass" else 2
        if ((known != np.round(known)) | (known < 0) | (known >= top)).any():
            raise TrainDataError(f"{where}: task '{t['name']}': label values outside its classes 0..{top - 1}")


def check_trainable(data: Data, where: str) -> None:
    """At least two training rows, one validation and one test row with a modality, and each task with two classes
    in train (a run without test rows would report metrics of nothing)."""
    n = {p: len(data.rows(p)) for p in PARTS}
    if n["train"] < 2 or n["val"] < 1 or n["test"] < 1:
        raise TrainDataError(f"{where}: {n['train']} training, {n['val']} validation and {n['test']} test samples "
                             "with any valid modality (need >= 2, >= 1 and >= 1): extract the store first, or check "
                             "its split")
    y = data.y[data.rows("train")].cpu().numpy()
    for t in data.tasks:
        if all((c > 0).sum() < 2 for c in _classes(t, y)):
            raise TrainDataError(f"{where}: task '{t['name']}' has one class only among the training rows")


def class_guard(data: Data, keep: set[str] | None = None, min_per_class: int = MIN_PER_CLASS
                ) -> tuple[Data, list[str]]:
    """Warn about every modality whose training rows (those that have it) hold one class, or fewer than
    ``min_per_class`` of a class, for some task; such a modality is left out unless named in ``keep``."""
    keep = keep or set()
    y = data.y.cpu().numpy()
    tr = data.rows("train").cpu().numpy()
    notes, drop = [], []
    for m in data.layout:
        has = data.masks[m][data.rows("train")].any(1).cpu().numpy()
        for t in data.tasks:
            counts = _classes(t, y[tr[has]])
            failing = [c for c in counts if (c > 0).sum() < 2 or c.min() < min_per_class]
            if len(failing) < len(counts):        # multi-label: the modality fails only if every label does
                continue
            kept = m in keep
            notes.append(f"modality '{m}', task '{t['name']}': training rows with it hold class counts "
                         f"{[c.tolist() for c in failing][:3]} (< {min_per_class} of a class): "
                         + ("KEPT (--keep-modalities)" if kept else "left out (--keep-modalities to insist)"))
            if not kept and m not in drop:
                drop.append(m)
    for t in data.tasks:                          # the task itself, over all training rows: warned, never dropped
        counts = _classes(t, y[tr])
        if all(c.min() < min_per_class for c in counts):
            notes.append(f"task '{t['name']}': training rows hold class counts {[c.tolist() for c in counts][:3]} "
                         f"(< {min_per_class} of a class): its metrics rest on very few cases")
    for line in notes:
        log.warning(line)
    if drop:
        if len(drop) == len(data.layout):
            raise TrainDataError("every modality fails the class guard: " + "; ".join(notes))
        data = subset_modalities(data, [m for m in data.layout if m not in drop])
    return data, notes


def subset_modalities(data: Data, modalities: list[str]) -> Data:
    teachers = {m: t for m, t in data.teachers.items() if m in modalities}
    return Data({m: data.layout[m] for m in modalities}, {m: data.xs[m] for m in modalities},
                {m: data.masks[m] for m in modalities}, data.y, data.tasks, teachers,
                {m: data.teacher_masks[m] for m in teachers}, data.split)


def modality_counts(data: Data) -> dict[str, dict[str, int]]:
    """Per split: how many rows have each modality (coverage)."""
    out = {}
    for p in PARTS:
        r = data.rows(p)
        out[p] = {m: int(data.masks[m][r].any(1).sum()) for m in data.layout}
        out[p]["rows"] = int(len(r))
    return out

