"""Per-variable summary statistics of an ICU stay as an EHR expert (the classical baseline beside the foundation
models: a logistic regression on such features is the strong reference on PhysioNet 2012).

Input (the ``events`` view of the EHR adapters): ``{"variables": {name: (times in hours, values)}, "window_hours":
W, "static": {"numeric": {...}, "categorical": {...}}}``. The adapter has already applied its garbage rules; here
only observations with 0 <= t <= W count (the configured window; ``params.window_hours`` narrows it).

Per variable, over the window: log1p(count), mean, std (population), min, max, first, last, slope (least squares,
per hour; 0 when all observations share one time), hours from the last observation to the window end, and a
missing flag. A variable without observations has count 0, every other statistic undefined (NaN) and its flag set;
the fitted encoding standardises each (variable, statistic) with the training rows' mean and std and puts an
undefined one at 0 = the training mean, so missingness is explicit in the flag, never a silent zero reading.
Static descriptors (age, sex, unit type, ...) go through the tabular encoding (``tabular.py``).
"""
from __future__ import annotations

import numpy as np

from ..registry import register
from .tabular import CLIP, FittedEncoder, FittedParams, TabularEncoding, _split_fields

STATS = ["log_count", "mean", "std", "min", "max", "first", "last", "slope", "hours_since_last"]


def variable_statistics(times: np.ndarray, values: np.ndarray, window: float) -> np.ndarray:
    """The STATS of one variable over [0, window] (NaN where undefined; log_count is 0 for no observation)."""
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if t.shape != v.shape:
        raise ValueError(f"{t.size} times for {v.size} values")
    keep = np.isfinite(t) & np.isfinite(v) & (t >= 0) & (t <= window)
    t, v = t[keep], v[keep]
    out = np.full(len(STATS), np.nan)
    out[0] = np.log1p(t.size)
    if t.size == 0:
        return out
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    dt = t - t.mean()
    var_t = float((dt * dt).mean())
    slope = float((dt * (v - v.mean())).mean() / var_t) if var_t > 1e-12 else 0.0
    out[1:] = [v.mean(), v.std(), v.min(), v.max(), v[0], v[-1], slope, window - t[-1]]
    return out


def summary_statistics(variables: dict, window: float, names: list[str] | None = None) -> np.ndarray:
    """(n variables, len(STATS)) raw statistics, in ``names`` order (default: the item's order)."""
    names = list(variables) if names is None else names
    absent = [n for n in names if n not in variables]
    extra = [n for n in variables if n not in names]
    if absent or extra:
        raise ValueError("variables differ from the fitted encoding's: "
                         + "; ".join(p for p in (f"absent {absent}" if absent else "",
                                                   f"unexpected {extra}" if extra else "") if p))
    return np.stack([variable_statistics(*variables[n], window) for n in names]) if names else np.zeros((0, len(STATS)))


def _check_item(item, where: str) -> dict:
    if not isinstance(item, dict) or "variables" not in item:
        raise ValueError(f"{where}: expected the EHR 'events' view (a dict with 'variables'), got {type(item).__name__}")
    return item


class StatsParams(FittedParams):
    window_hours: float | None = None        # narrows the events view's window (hours since admission)


@register("ehr_stats", modality="events", role="classical", dim=None, licence="n/a (no weights)",
          source="fitted:train-split", description="Per-variable summary statistics of the EHR window (count, mean, "
                                                   "std, min, max, first, last, slope, time since last; missing "
                                                   "flags), standardised with the training split's means and stds")
class SummaryStats(FittedEncoder):
    Params = StatsParams
    version = "1"

    def _window(self, item: dict) -> float:
        w = self.params.get("window_hours", item.get("window_hours"))
        if w is None:
            raise ValueError("no window: the events view has no 'window_hours' and params.window_hours is unset")
        return float(w)

    def fit(self, items: list) -> dict:
        if not items:
            raise ValueError("ehr_stats: no training rows to fit the encoding on")
        first = _check_item(items[0], "training item 0")
        names = list(first["variables"])
        window = self._window(first)
        raw = np.stack([summary_statistics(_check_item(it, f"training item {i}")["variables"], window, names)
                        for i, it in enumerate(items)])                      # (n, V, S)
        with np.errstate(invalid="ignore"):
            seen = np.isfinite(raw).sum(0)
            mean = np.where(seen > 0, np.nanmean(np.where(seen > 0, raw, 0.0), 0), 0.0)
            std = np.where(seen > 1, np.nanstd(np.where(seen > 0, raw, 0.0), 0), 1.0)
        std = np.where(std > 1e-12, std, 1.0)
        num, cat = {}, {}
        for it in items:
            n, c = _split_fields(it.get("static") or {"numeric": {}, "categorical": {}}, "static fields")
            for k, v in n.items():
                num.setdefault(k, []).append(np.nan if v is None else float(v))
            for k, v in c.items():
                cat.setdefault(k, []).append(v)
        return {"variables": names, "stats": STATS, "window_hours": window,
                "mean": np.round(mean, 8).tolist(), "std": np.round(std, 8).tolist(),
                "static": TabularEncoding.fit(num, cat).state()}

    def _probe_dim(self) -> int:
        s = self.encoding_state
        return len(s["variables"]) * (len(STATS) + 1) + TabularEncoding(s["static"]).dim

    def columns(self) -> list[str]:
        s = self.encoding_state
        return ([f"{v}:{st}" for v in s["variables"] for st in STATS] + [f"{v}:missing" for v in s["variables"]]
                + TabularEncoding(s["static"]).columns())

    def _forward(self, items: list) -> np.ndarray:
        s = self.encoding_state
        if s.get("stats") != STATS:
            raise ValueError(f"encoding was fitted with statistics {s.get('stats')}, this code computes {STATS}")
        names, window = s["variables"], float(s["window_hours"])
        mean, std = np.asarray(s["mean"]), np.asarray(s["std"])
        static = TabularEncoding(s["static"])
        out = []
        for i, it in enumerate(items):
            it = _check_item(it, f"item {i}")
            raw = summary_statistics(it["variables"], window, names)
            z = np.clip((raw - mean) / std, -CLIP, CLIP)
            missing = (raw[:, 0] == 0).astype(np.float64)
            n, c = _split_fields(it.get("static") or {"numeric": {}, "categorical": {}}, f"item {i} static fields")
            out.append(np.concatenate([np.nan_to_num(z, nan=0.0).reshape(-1), missing,
                                       static.transform(n, c, where=f"item {i} static fields")]))
        return np.asarray(out, np.float32)
