"""Structured clinical fields as an expert: numeric fields standardised, categorical fields one-hot, missing flags.

The encoding (means, stds, categories) is FITTED on the training split only (the runner hands the train rows to
``fit`` before any unit runs, ``extract/fitting.py``), travels in the expert's params, so it enters the config hash
and the group's provenance, and an external cohort reuses the training cohort's encoding (``encoding_from``).

An item (the ``fields`` view) is ``{"numeric": {name: float (NaN = missing)}, "categorical": {name: str | None}}``;
which fields are numeric or categorical is the dataset adapter's declaration, never guessed from values.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from ..registry import Encoder, NoParams, register

CLIP = 10.0          # standardised values beyond +-10 train stds are clipped: one absurd value cannot dominate


class TabularEncoding:
    """A fitted, JSON-serialisable encoding of numeric and categorical columns.

    Numeric column -> (x - mean) / std, clipped to +-CLIP, plus a missing flag; a missing value becomes 0 (the
    training mean) WITH its flag set. Categorical column -> one-hot over the training categories (sorted) plus a
    missing flag; a category never seen in training gives an all-zero one-hot (and no missing flag).
    """

    def __init__(self, state: dict):
        self.numeric: dict[str, tuple[float, float]] = {k: (float(m), float(s)) for k, (m, s) in state["numeric"].items()}
        self.categorical: dict[str, list[str]] = {k: list(v) for k, v in state["categorical"].items()}

    @classmethod
    def fit(cls, numeric: dict[str, np.ndarray], categorical: dict[str, list[str | None]]) -> "TabularEncoding":
        """numeric: column -> values over the training rows (NaN = missing); categorical: column -> values."""
        num = {}
        for k, col in numeric.items():
            x = np.asarray(col, dtype=np.float64)
            x = x[np.isfinite(x)]
            mean = float(x.mean()) if x.size else 0.0
            std = float(x.std()) if x.size > 1 else 0.0
            num[k] = (mean, std if std > 1e-12 else 1.0)
        cat = {k: sorted({str(v) for v in col if v is not None}) for k, col in categorical.items()}
        return cls({"numeric": num, "categorical": cat})

    def state(self) -> dict:
        return {"numeric": {k: [m, s] for k, (m, s) in self.numeric.items()},
                "categorical": {k: list(v) for k, v in self.categorical.items()}}

    @property
    def dim(self) -> int:
        return 2 * len(self.numeric) + sum(len(v) + 1 for v in self.categorical.values())

    def columns(self) -> list[str]:
        """The name of every output column, in order (for reports and tests)."""
        out = []
        for k in self.numeric:
            out += [k, f"{k}:missing"]
        for k, cats in self.categorical.items():
            out += [f"{k}={c}" for c in cats] + [f"{k}:missing"]
        return out

    def transform(self, numeric: dict[str, float], categorical: dict[str, Any], where: str = "item") -> np.ndarray:
        missing_num = [k for k in self.numeric if k not in numeric]
        missing_cat = [k for k in self.categorical if k not in categorical]
        if missing_num or missing_cat:
            raise ValueError(f"{where}: fields of the fitted encoding absent from the input: "
                             f"{', '.join(missing_num + missing_cat)} (a cohort must declare the same fields)")
        out = np.zeros(self.dim, np.float32)
        j = 0
        for k, (mean, std) in self.numeric.items():
            v = numeric[k]
            v = float("nan") if v is None else float(v)
            if math.isfinite(v):
                out[j] = float(np.clip((v - mean) / std, -CLIP, CLIP))
            else:
                out[j + 1] = 1.0
            j += 2
        for k, cats in self.categorical.items():
            v = categorical[k]
            if v is None:
                out[j + len(cats)] = 1.0
            elif str(v) in cats:
                out[j + cats.index(str(v))] = 1.0
            j += len(cats) + 1
        return out


class FittedParams(NoParams):
    encoding: dict[str, Any] | None = None   # the fitted state (set by the runner from the training rows)
    encoding_from: str | None = None         # the training cohort's store it was copied from (provenance only)


class FittedEncoder(Encoder):
    """An encoder whose output depends on statistics of the training rows (no weights to load).

    ``needs_fit``: the runner calls ``fit(train items)`` once before planning units, and puts the returned state
    in ``params["encoding"]``; ``params["encoding_from"]`` (a store path) is provenance only, not identity.
    """
    needs_fit: ClassVar[bool] = True
    Params = FittedParams
    batch_size = 4096

    def load(self):
        if self.model is None:
            self.model, self.preprocess, self.precision = "fitted-statistics", None, None
        return self

    def _build(self):
        return "fitted-statistics", None, None

    @property
    def encoding_state(self) -> dict:
        state = self.params.get("encoding")
        if not state:
            raise ValueError(f"{self.card.key}: not fitted (params.encoding is empty): run it through the extract "
                             "runner, which fits it on the training split, or give params.encoding_from")
        return state

    def fit(self, items: list) -> dict:
        raise NotImplementedError

    def identity(self) -> dict:
        params = {k: v for k, v in self.params.items() if k != "encoding_from"}
        return {"model": self.card.key, "encoder_version": self.version, "params": params}

    def provenance(self) -> dict:
        return {"model": self.card.key, "family": self.card.family, "class": type(self).__name__,
                "encoder_version": self.version, "licence": self.card.licence, "source": self.card.source,
                "precision": "float32", "device_type": "cpu", "encoding": self.encoding_state,
                "encoding_from": self.params.get("encoding_from") or "fitted on this store's training rows"}


def _split_fields(item: Any, where: str) -> tuple[dict, dict]:
    if not isinstance(item, dict) or not ({"numeric", "categorical"} >= set(item)):
        raise ValueError(f"{where}: expected {{'numeric': {{...}}, 'categorical': {{...}}}}, got {type(item).__name__}")
    return dict(item.get("numeric", {})), dict(item.get("categorical", {}))


@register("tabular", modality="fields", role="classical", dim=None, licence="n/a (no weights)",
          source="fitted:train-split", description="Structured clinical fields: numeric scaled, categorical one-hot, "
                                                   "missing flags; encoding fitted on the training split")
class Tabular(FittedEncoder):
    version = "1"

    def fit(self, items: list) -> dict:
        if not items:
            raise ValueError("tabular: no training rows to fit the encoding on")
        num, cat = {}, {}
        for i, it in enumerate(items):
            n, c = _split_fields(it, f"training item {i}")
            for k, v in n.items():
                num.setdefault(k, []).append(np.nan if v is None else float(v))
            for k, v in c.items():
                cat.setdefault(k, []).append(v)
        return TabularEncoding.fit(num, cat).state()

    def _probe_dim(self) -> int:
        return TabularEncoding(self.encoding_state).dim

    def _forward(self, items: list) -> np.ndarray:
        enc = TabularEncoding(self.encoding_state)
        return np.stack([enc.transform(*_split_fields(it, f"item {i}"), where=f"item {i}") for i, it in enumerate(items)])
