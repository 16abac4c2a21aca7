"""Store -> the Data a run trains on, every choice explicit and recorded: which expert groups (config hash + model,
and how each was chosen), opt-in modalities left out, rows without any modality, the class guard, normalisation."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

from stores.store import Store

from .data import Data
from .data_checks import (TrainDataError, check_trainable, check_values, class_guard, exclude_rows_without_modality,
                          modality_counts)
from .normalise import apply_stats, fit_stats
from .trainer import Recipe

log = logging.getLogger("medmix.train")


@dataclass
class Prepared:
    data: Data
    selection: dict                       # "m/e" -> {config_hash, model, role, chosen, profile, versions_in_store}
    roles: dict
    notes: list[str] = field(default_factory=list)
    no_modality: dict = field(default_factory=dict)
    coverage: dict = field(default_factory=dict)
    normalisation: dict | None = None     # the statistics applied to ``data`` (None: raw inputs)
    opt_in_left_out: list[str] = field(default_factory=list)
    raw: Data | None = None               # the inputs before normalisation
    stats: dict | None = None             # train-split statistics, fitted whatever the recipe says

    def for_recipe(self, recipe: Recipe) -> tuple[Data, dict | None]:
        """The inputs a recipe trains on and the statistics it applies: a validation grid may try ``normalise``
        per method, so both views come from one preparation (statistics from train rows only, either way)."""
        _check_normalise(recipe)
        if recipe.normalise == "standard":
            return apply_stats(self.raw, self.stats), self.stats
        return self.raw, None

    def for_split(self, recipe: Recipe, split, base: Data | None = None) -> Data:
        """The inputs on a re-split of the rows (a cross-validation fold): raw ones share ``base``'s tensors (default
        the raw inputs; pass the device copy), standardised ones use statistics of THAT split's training rows."""
        _check_normalise(recipe)
        raw = dataclasses.replace(base if base is not None else self.raw, split=split)
        return apply_stats(raw, fit_stats(raw)) if recipe.normalise == "standard" else raw


def _check_normalise(recipe: Recipe) -> None:
    if recipe.normalise not in ("none", "standard"):
        raise TrainDataError(f"recipe normalise={recipe.normalise!r}: expected none | standard")


def opt_in_modalities(dataset: str) -> set[str]:
    """Modalities the pipeline spec marks opt-in for this dataset (trained on only when asked by name)."""
    try:
        from stores.spec import load_spec
        spec = load_spec().dataset(dataset)
    except Exception:                     # a store of a dataset the spec does not describe (benches, tests)
        return set()
    return {m for m, ms in spec.modalities.items() if getattr(ms, "opt_in", False)}


def _drop_empty_experts(data: Data, notes: list[str]) -> Data:
    """Experts with no valid training row carry nothing to learn from: left out (and said so in the log)."""
    tr = data.rows("train")
    layout, xs, masks = {}, {}, {}
    for m, names in data.layout.items():
        keep = [k for k in range(len(names)) if data.masks[m][tr, k].any()]
        if keep:
            layout[m] = [names[k] for k in keep]
            xs[m] = [data.xs[m][k] for k in keep]
            masks[m] = data.masks[m][:, keep]
        else:
            notes.append(f"modality {m} left out: no expert has a valid training row")
            log.warning(notes[-1])
    if not layout:
        raise TrainDataError("no expert of any modality has a valid training row (is the store extracted?)")
    teachers = {m: t for m, t in data.teachers.items() if m in layout and data.teacher_masks[m][tr].any()}
    return Data(layout, xs, masks, data.y, data.tasks, teachers, {m: data.teacher_masks[m] for m in teachers},
                data.split)


def check_complete(store: Store, selection: dict) -> None:
    """A group an extract run has not finished (running, or stopped) holds zeros for its pending units: training on
    it would read them as missing modalities. Refused, naming the groups and how to finish them."""
    partial = {k: p for k, p in selection.items() if p.get("pending_units")}
    if partial:
        what = "; ".join(f"{k} (config {p['config_hash'][:12]}): {p['pending_units']} of {p['units']} units pending"
                         for k, p in partial.items())
        raise TrainDataError(f"{store.url}: expert groups not fully extracted: {what}. Finish them with "
                             f"`python -m extract --dataset {store.meta.get('dataset', '<dataset>')}` (it resumes), "
                             "or leave those experts out")


def prepare(store_path: str, recipe: Recipe, select: dict | None = None, tasks: list[str] | None = None,
            modalities: list[str] | None = None, versions: dict | None = None, profile: str | None = None,
            keep_modalities: set[str] | None = None) -> Prepared:
    store = Store(store_path)
    notes, opt_out = [], []
    if select is None:
        asked = set(modalities or [])
        opt_in = opt_in_modalities(store.meta.get("dataset", ""))
        mods = [m for m in store.modalities() if (m in asked if asked else m not in opt_in)]
        opt_out = sorted(m for m in store.modalities() if m in opt_in and m not in asked)
        if opt_out:
            notes.append(f"opt-in modalities not used (name them in --modalities to use them): {', '.join(opt_out)}")
        unknown = sorted(asked - set(store.modalities()))
        if unknown:
            raise TrainDataError(f"{store.url}: no modality {unknown} (store has {store.modalities()})")
        select = {m: [e for e in store.experts(m) if e != "teacher"] for m in mods}
    data, selection = Data.from_store(store, select, tasks, versions=versions, profile=profile)
    check_complete(store, selection)
    check_values(data, store.url)
    for key, p in selection.items():
        log.info("expert group %s: config %s, model %s (%s; %d group(s) in the store)", key, p["config_hash"][:12],
                 p["model"], p["chosen"], p["versions_in_store"])
    data = _drop_empty_experts(data, notes)           # first: a row whose only modality goes is a row without any
    data, empty = exclude_rows_without_modality(data)
    if any(empty.values()):
        notes.append(f"samples with no modality (not trained on, not scored): {empty}")
    check_trainable(data, store.url)
    data, guard = class_guard(data, keep_modalities)
    notes += guard
    check_trainable(data, store.url)
    roles = {k: v.get("role") for k, v in selection.items()}
    prep = Prepared(data, selection, roles, notes, empty, modality_counts(data), None, opt_out, data, fit_stats(data))
    prep.data, prep.normalisation = prep.for_recipe(recipe)
    return prep
