"""A per-patient events table (three columns: time, variable, value; the PhysioNet 2012 layout) -> the EHR views.

Time is HH:MM elapsed (``36:15``), hours (``36.25``) or a timestamp (``2024-03-01 08:15``: hours since the
file's earliest one). The rules are PhysioNet's (docs/datasets.md, Bad input): a line without 3 fields, a time
that parses as none of these (or a file mixing them), a value that is not a finite number within +-1e6 fail the
record with a reason naming file and line; observations before 0 or after the window are outside the task and
dropped. Views: ``series`` (window hours x variables, hourly means, NaN = not measured), ``text`` ("variable:
last value; ...", NA = never), ``events`` (per variable (hours, values), for the summary-statistics expert).
"""
from __future__ import annotations

import csv
import io
import math
import re
from datetime import datetime
from pathlib import Path

import numpy as np

ABSURD = 1e6
_HHMM = re.compile(r"(\d{1,4}):([0-5]\d)")


class EventsError(ValueError):
    """A malformed events table (the message names the file and line)."""


def _time(cell: str) -> tuple[str, float | datetime]:
    """(format, hours or timestamp) of one time cell; EventsError when it is none of the three formats."""
    cell = cell.strip()
    m = _HHMM.fullmatch(cell)
    if m:
        return "HH:MM", int(m[1]) + int(m[2]) / 60
    try:
        h = float(cell)
        if math.isfinite(h):
            return "hours", h
    except ValueError:
        pass
    try:
        return "timestamp", datetime.fromisoformat(cell)
    except ValueError:
        raise EventsError(f"time {cell[:25]!r} is not HH:MM, hours or a timestamp") from None


def read_events(path: Path, label: str) -> dict[str, tuple[list[float], list[float]]]:
    """variable -> (hours, values) of every well-formed observation (a header line is skipped)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventsError(f"{label}: invalid UTF-8 at byte {exc.start:,}") from None
    reader = csv.reader(io.StringIO(text), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    rows, fmt = [], None
    try:
        for row in reader:
            if not row or not any(c.strip() for c in row):
                continue
            line = f"{label}: line {reader.line_num}"
            if len(row) != 3:
                raise EventsError(f"{line}: {len(row)} fields, expected 3 (time,variable,value)")
            if reader.line_num == 1 and row[0].strip().lower() in ("time", "charttime", "timestamp", "hours"):
                continue
            try:
                kind, t = _time(row[0])
            except EventsError as exc:
                raise EventsError(f"{line}: {exc}") from None
            if fmt not in (None, kind):
                raise EventsError(f"{line}: time {row[0].strip()!r} is {kind}, earlier lines are {fmt}")
            fmt = kind
            rows.append((t, row[1].strip(), _value(row[2], f"{line}: {row[1].strip()[:30]}")))
    except csv.Error as exc:
        raise EventsError(f"{label}: line {reader.line_num}: {exc}") from None
    if fmt == "timestamp":
        start = min(t for t, _, _ in rows)
        rows = [((t - start).total_seconds() / 3600, v, x) for t, v, x in rows]
    out: dict[str, tuple[list[float], list[float]]] = {}
    for t, var, x in rows:
        times, values = out.setdefault(var, ([], []))
        times.append(float(t))
        values.append(x)
    return out


def _value(cell: str, where: str) -> float:
    try:
        x = float(cell)
    except ValueError:
        raise EventsError(f"{where} value {cell.strip()[:20]!r} is not a number") from None
    if not math.isfinite(x) or abs(x) > ABSURD:
        raise EventsError(f"{where} value {cell.strip()[:20]} is not finite or beyond +-{ABSURD:g}")
    return x


def ehr_views(events: dict, variables: list[str], hours: int, label: str) -> dict:
    """The series, text and events views over ``variables`` (others ignored) within [0, hours]."""
    series_sum = np.zeros((hours, len(variables)))
    counts = np.zeros_like(series_sum)
    kept, last = {}, {}
    for j, var in enumerate(variables):
        t, x = (np.asarray(a, np.float64) for a in events.get(var, ([], [])))
        keep = (t >= 0) & (t <= hours)
        t, x = t[keep], x[keep]
        kept[var] = (t.astype(np.float32), x.astype(np.float32))
        if len(t):
            last[var] = float(x[np.argmax(t)])
            np.add.at(series_sum[:, j], np.minimum(hours - 1, t.astype(int)), x)
            np.add.at(counts[:, j], np.minimum(hours - 1, t.astype(int)), 1)
    if not last:
        raise EventsError(f"{label}: no observation of {', '.join(variables[:5])}"
                          f"{', ...' if len(variables) > 5 else ''} within 0-{hours} h")
    with np.errstate(invalid="ignore", divide="ignore"):
        series = np.where(counts > 0, series_sum / np.maximum(counts, 1), np.nan).astype(np.float32)
    text = "; ".join(f"{v}: {last[v]:.4g}" if v in last else f"{v}: NA" for v in variables)
    return {"series": series, "text": text,
            "events": {"variables": kept, "window_hours": float(hours), "static": {"numeric": {}, "categorical": {}}}}
