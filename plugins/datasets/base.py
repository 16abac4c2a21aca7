"""Dataset adapters: raw public formats -> sample ids, labels, splits, and per-modality inputs ("views").

An adapter loads a modality's inputs for a list of rows ONCE; every expert and the teacher of that modality then
take the view they need (``text``, ``image``, ``series``, ``features``) from the same decoded sample.
A sample's input is a dict of views, or ``Missing(reason)`` (absent: mask 0), or ``Failed(reason)`` (bad input).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError
from sklearn.model_selection import train_test_split

from stores.registry import Registry
from stores.errors import InputError
from stores.spec import DatasetSpec, SpecError, key_paths


@dataclass(frozen=True)
class Missing:
    reason: str


@dataclass(frozen=True)
class Failed:
    reason: str


Input = dict[str, Any] | Missing | Failed
ADAPTERS: Registry[type["DatasetAdapter"]] = Registry(
    "dataset adapter", package=__name__.rsplit(".", 1)[0], group="medmix.datasets",
    row=lambda k, cls: {"adapter": k, "class": f"{cls.__module__}.{cls.__name__}", "version": cls.version,
                        "description": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""},
    # an adapter class named by an entry point (no @adapter) is known by the entry's name in provenance and reasons
    on_entry_point=lambda k, cls: setattr(cls, "name", cls.__dict__.get("name") or k))   # not an inherited name


class AdapterOptions(BaseModel):
    """A dataset's ``options`` (closed: a typo such as ``sett: b`` is an error, never silently ignored).
    Each adapter subclasses this with the options it reads."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    rag_bridge: dict[str, str] = {}          # image modality -> a text modality the RAG expert reads instead


def adapter(name: str, aliases: tuple[str, ...] = ()):
    """Register a dataset adapter under ``name`` (a second adapter of that name is an error naming both)."""
    def deco(cls):
        cls.name = name
        return ADAPTERS.add(name, cls, aliases)
    return deco


class DatasetAdapter:
    name: str = ""
    version: str = "1"          # bump when what load() returns changes: it is part of every expert's config hash
    Options: ClassVar[type[AdapterOptions]] = AdapterOptions

    def __init__(self, spec: DatasetSpec, data_root: Path, options: dict | None = None):
        self.spec = spec
        self.root = (Path(data_root) / spec.path).resolve()
        self.data_root = Path(data_root).resolve()
        self.options = {**spec.options, **(options or {})}
        self.opts = self.check_options(self.options)
        if not self.root.exists():
            raise FileNotFoundError(f"dataset '{spec.adapter}': data folder {self.root} does not exist "
                                    f"(set --data-root or MEDMIX_DATA_ROOT)")

    # ---- what every adapter provides ------------------------------------------------------------------------
    def ids(self) -> list[str]:
        raise NotImplementedError

    def labels(self) -> dict[str, np.ndarray]:
        """task -> (N, C) float array, NaN where unknown."""
        raise NotImplementedError

    def load(self, modality: str, rows: list[int]) -> list[Input]:
        raise NotImplementedError

    def official_split(self) -> list[str] | None:
        return None

    def identity(self) -> dict:
        """What the adapter read (file names and sizes), for provenance."""
        return {"adapter": self.name, "root": str(self.root), "options": self.options}

    def config_identity(self) -> dict:
        """The dataset's part of every expert's config hash (extract and RAG alike): what changes its inputs."""
        return {"adapter": self.spec.adapter, "version": self.version, "options": self.options}

    def where(self, modality: str, row: int) -> str:
        """The record and file a row comes from, for failure reasons (adapters name their file and member)."""
        return f"{self.name}: sample {self.ids()[row]}"

    def fingerprint(self, modality: str, row: int) -> str:
        """What a row's input is now (content hash or size/mtime; '' = unknown): a failed or missing row whose
        fingerprint changed since it was written is retried by the next run."""
        return ""

    # ---- safe paths -----------------------------------------------------------------------------------------
    @staticmethod
    def under(folder: Path, name: str, what: str = "id") -> Path:
        """``folder / name`` for a name read from a data file, refused when it leads outside ``folder``
        (``../../x``, an absolute path): ids never reach files outside the dataset's folder. Checked on the
        name itself, so symlinks the user placed in the folder (e.g. to a shared slide) still work."""
        import os
        folder = Path(os.path.abspath(folder))
        p = Path(os.path.normpath(folder / name))
        if not p.is_relative_to(folder) or p == folder:
            raise InputError(f"{what} {name!r} points outside {folder}")
        return p

    @staticmethod
    def stat_fingerprint(*paths: Path) -> str:
        parts = []
        for p in paths:
            try:
                st = Path(p).stat()
                parts.append(f"{Path(p).name}:{st.st_size}:{st.st_mtime_ns}")
            except OSError:
                parts.append(f"{Path(p).name}:absent")
        return ";".join(parts)

    # ---- shared ---------------------------------------------------------------------------------------------
    @classmethod
    def check_options(cls, options: dict) -> AdapterOptions:
        """Validate options (the spec's, merged with the command line's); errors name the key path."""
        try:
            return cls.Options.model_validate(options)
        except ValidationError as exc:
            valid = ", ".join(sorted(cls.Options.model_fields))
            unknown = f"unknown option for dataset adapter '{cls.name}' (valid: {valid})"
            raise SpecError("; ".join(key_paths(exc, "options", unknown))) from None

    def path_option(self, key: str) -> Path | None:
        """A path from the dataset options, resolved against the dataset folder and checked to exist."""
        value = self.options.get(key)
        if not value:
            return None
        p = Path(value)
        p = (p if p.is_absolute() else self.root / p).resolve()
        if not p.exists():
            raise FileNotFoundError(f"dataset option '{key}': {p} does not exist")
        return p

    def label_arrays(self) -> dict[str, tuple[np.ndarray, dict]]:
        out = {}
        for task, arr in self.labels().items():
            t = self.spec.tasks[task]
            out[task] = (arr, {"type": t.type, "labels": t.labels or [task]})
        return out

    def split(self) -> list[str]:
        s = self.spec.split
        ids = self.ids()
        strat = self._strat_key(self.labels()[s.stratify]) if s.stratify else None
        if s.method == "official":
            official = self.official_split()
            if official is None:
                raise InputError(f"dataset {self.spec.adapter}: no official split in the data")
            train = [i for i, p in enumerate(official) if p == "train"]
            sub = strat[train] if strat is not None else None
            tr, va = _split_two(np.asarray(train), s.val_fraction, sub, s.seed)
            out = list(official)
            for i in va:
                out[i] = "val"
            return out
        idx = np.arange(len(ids))
        f = s.fractions
        if f.get("test", 0) >= 1.0:               # an external-validation cohort: every sample is test
            return ["test"] * len(ids)
        rest, test = _split_two(idx, f["test"], strat, s.seed)
        tr, va = _split_two(rest, f["val"] / (f["train"] + f["val"]), strat[rest] if strat is not None else None,
                            s.seed + 1)
        out = np.empty(len(ids), dtype=object)
        out[tr], out[va], out[test] = "train", "val", "test"
        return list(out)

    @staticmethod
    def _strat_key(y: np.ndarray) -> np.ndarray:
        """One stratum per sample: the class (binary/multiclass) or the rarest positive label (multi-label)."""
        y = np.asarray(y, dtype=float)
        if y.shape[1] == 1:
            return np.where(np.isnan(y[:, 0]), -1, y[:, 0]).astype(int)
        pos = np.nan_to_num(y) > 0
        prevalence = pos.sum(0)
        key = np.full(len(y), -1)
        for i, row in enumerate(pos):
            if row.any():
                cols = np.flatnonzero(row)
                key[i] = cols[np.argmin(prevalence[cols])]
        key[np.isnan(y).all(1)] = -2
        return key


def _split_two(idx: np.ndarray, frac: float, strat: np.ndarray | None, seed: int):
    """Seeded split of idx into (rest, part), stratified when every stratum has 2+ members."""
    if strat is not None:
        vals, counts = np.unique(strat, return_counts=True)
        rare = set(vals[counts < 2])
        strat = np.asarray([s if s not in rare else -99 for s in strat])
        if (np.unique(strat, return_counts=True)[1] < 2).any():
            strat = None
    a, b = train_test_split(idx, test_size=frac, random_state=seed, stratify=strat)
    return np.sort(a), np.sort(b)


def load_adapters() -> Registry[type[DatasetAdapter]]:
    """Every module of plugins/datasets/ registers its adapter by being there (no list to edit); other installed
    packages add theirs through the ``medmix.datasets`` entry-point group."""
    return ADAPTERS.load()


LIMIT = "limit"      # the run option `--limit N` travels under to every worker (never an adapter's own option)


def get_adapter(spec: DatasetSpec, data_root: Path, options: dict | None = None) -> DatasetAdapter:
    """The dataset's adapter; with ``options['limit'] = N`` a label-stratified sample of N samples (``Sample``)."""
    load_adapters()
    if spec.adapter not in ADAPTERS:
        raise NotImplementedError(f"dataset adapter {spec.adapter!r} is not implemented (have: "
                                  f"{', '.join(sorted(ADAPTERS))}; see docs/datasets.md)")
    options = dict(options or {})
    limit = options.pop(LIMIT, None)
    full = ADAPTERS[spec.adapter](spec, data_root, options)
    return Sample(full, int(limit)) if limit else full


class Sample:
    """``--limit N`` (smoke runs): N samples that keep every split non-empty and every class of the stratification
    task (else the first task) in each split, so a smoke store trains. Within a (split, class) stratum the first
    rows in the data's order are taken, so a larger N keeps the rows of a smaller one. Row r of the sample is row
    ``rows[r]`` of the full adapter; every other attribute is the full adapter's."""

    def __init__(self, full: DatasetAdapter, n: int):
        if n < 1:
            raise InputError(f"--limit {n}: must be at least 1")
        self.full, self.n = full, n
        self.rows, self.per_split = sample_rows(full.split(), _sample_key(full), n)

    def __getattr__(self, name: str):
        if name == "full":                     # not yet set (unpickling): never recurse
            raise AttributeError(name)
        return getattr(self.full, name)

    def ids(self) -> list[str]:
        ids = self.full.ids()
        return [ids[r] for r in self.rows]

    def labels(self) -> dict[str, np.ndarray]:
        return {k: v[self.rows] for k, v in self.full.labels().items()}

    def label_arrays(self) -> dict[str, tuple[np.ndarray, dict]]:
        return {k: (v[self.rows], meta) for k, (v, meta) in self.full.label_arrays().items()}

    def split(self) -> list[str]:
        split = self.full.split()
        return [split[r] for r in self.rows]

    def load(self, modality: str, rows: list[int]) -> list[Input]:
        return self.full.load(modality, [self.rows[r] for r in rows])

    def where(self, modality: str, row: int) -> str:
        return self.full.where(modality, self.rows[row])

    def fingerprint(self, modality: str, row: int) -> str:
        return self.full.fingerprint(modality, self.rows[row])

    def identity(self) -> dict:
        """The full adapter's identity plus how the sample was drawn (stored in the store's attributes)."""
        return {**self.full.identity(), "sample": {
            "limit": self.n, "rows": len(self.rows), "per_split": self.per_split,
            "method": "label-stratified per split: the first rows of each (split, class) in the data's order"}}


def _sample_key(full: DatasetAdapter) -> np.ndarray:
    labels = full.labels()
    task = full.spec.split.stratify or next(iter(full.spec.tasks), None)
    if task is None or task not in labels:
        return np.zeros(len(full.ids()), int)
    return DatasetAdapter._strat_key(labels[task])


def sample_rows(split: list[str], key: np.ndarray, n: int) -> tuple[list[int], dict[str, int]]:
    """Rows of a sample of ``n``: per split a share proportional to its size (at least 1 each), inside a split per
    class (at least 1 each where the share allows), the first rows of each stratum."""
    split = np.asarray(split, dtype=object)
    names = [s for s in ("train", "val", "test") if (split == s).any()]
    if n < len(names) and n < len(split):
        raise InputError(f"--limit {n}: at least {len(names)} samples are needed to keep every split "
                         f"({', '.join(names)}) non-empty")
    shares = _allocate([int((split == s).sum()) for s in names], n)
    rows, per_split = [], {}
    for name, share in zip(names, shares):
        idx = np.flatnonzero(split == name)
        classes = sorted(set(key[idx].tolist()))
        takes = _allocate([int((key[idx] == c).sum()) for c in classes], share)
        for c, k in zip(classes, takes):
            rows += idx[key[idx] == c][:k].tolist()
        per_split[name] = int(share)
    return sorted(rows), per_split


def _allocate(sizes: list[int], n: int) -> np.ndarray:
    """n split over groups of these sizes: 1 each first (when n allows), then to the group furthest below its
    proportional share; never more than a group holds."""
    sizes = np.asarray(sizes, dtype=int)
    n = min(n, int(sizes.sum()))
    take = np.minimum(sizes, 1) if n >= len(sizes) else np.zeros(len(sizes), int)
    while take.sum() < n:
        want = sizes * n / sizes.sum() - take
        want[take >= sizes] = -np.inf
        take[int(np.argmax(want))] += 1
    return take
