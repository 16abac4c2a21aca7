"""Plain-text tables for the CLIs (registry listing, store coverage, results)."""
from __future__ import annotations


def format_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "(empty)"
    columns = columns or list(rows[0])
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])
