"""`python -m extract init`: draft a cohort's dataset block from its manifest table, say what was guessed and why.

    python -m extract init --manifest cohort.csv --dataset mycohort --labels death --out my.yaml

Kinds come from the cells (file extensions, folders, free text), task types from the label values, the split from a
column holding train/val/test; every other column becomes a field of a tabular modality (numeric when every value
is a number). The YAML written holds only the dataset: the packaged profiles apply to it (stores/spec.py).
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import yaml

from stores.cli import CliError

KINDS = ("cxr", "note", "ehr", "ct", "wsi", "mri", "tabular")
TABULAR_EXPERT = {"tabular": {"model": "tabular", "role": "classical", "view": "fields"}}


class InitError(CliError):
    """A manifest init cannot draft from (one line, exit 2)."""


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--manifest", required=True, help="the cohort table (CSV, TSV or Parquet), one row per sample")
    ap.add_argument("--dataset", required=True, help="the dataset's name in the config")
    ap.add_argument("--labels", required=True, help="comma list of label columns (one task each)")
    ap.add_argument("--kind", action="append", default=[], metavar="COL=KIND",
                    help=f"set a column's modality kind ({', '.join(KINDS)}) or 'ignore' (repeatable)")
    ap.add_argument("--id-column", default=None, help="the sample id column (default: 'id', else the first column)")
    ap.add_argument("--out", required=True, help="the YAML to write (refused when it exists, unless --force)")
    ap.add_argument("--force", action="store_true", help="overwrite --out")


def run(args) -> int:
    from plugins.datasets.manifest import read_table
    manifest = Path(args.manifest).resolve()
    if not manifest.is_file():
        raise InitError(f"--manifest {manifest}: no such file")
    out = Path(args.out)
    if out.exists() and not args.force:
        raise InitError(f"--out {out}: exists (pass --force to overwrite)")
    try:
        table = read_table(manifest)
    except ValueError as exc:
        raise InitError(str(exc)) from None
    block, notes = draft(table, manifest, args.labels.split(","), _kinds(args.kind), args.id_column)
    for line in notes:
        print(line)
    header = (f"# Drafted by `python -m extract init` from {manifest.name}: read it, edit it, then\n"
              f"#   python -m extract --config {out.name} --dataset {args.dataset}\n"
              f"#   python -m train --config {out.name} --dataset {args.dataset}\n"
              "# No 'version'/'profiles' here: the packaged pipelines.yaml's profiles apply (docs/datasets.md).\n")
    out.write_text(header + yaml.safe_dump({"datasets": {args.dataset: block}}, sort_keys=False, width=110,
                                                 default_flow_style=None))
    from stores.spec import load_spec
    load_spec(out).dataset(args.dataset)             # what was written loads (merged with the packaged profiles)
    print(f"wrote {out}")
    return 0


def _kinds(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        col, _, kind = p.partition("=")
        if kind not in (*KINDS, "ignore"):
            raise InitError(f"--kind {p}: expected COL=KIND with KIND one of {', '.join(KINDS)}, ignore")
        out[col.strip()] = kind
    return out


def draft(table, manifest: Path, labels: list[str], forced: dict[str, str], id_column: str | None):
    """(the dataset block, the lines saying what was guessed and why)."""
    cols = list(table.columns)
    id_col = id_column or ("id" if "id" in cols else cols[0])
    for c in [id_col, *labels, *forced]:
        if c not in cols:
            raise InitError(f"{manifest.name}: no column {c!r} (columns: {', '.join(cols)})")
    notes = [f"id column: {id_col} ({table[id_col].nunique()} distinct of {len(table)} rows)"]
    tasks = {}
    for c in labels:
        tasks[c], why = task_type(table[c])
        notes.append(f"label {c}: {tasks[c]['type']} ({why})")
    split_col = next((c for c in cols if c not in (id_col, *labels) and forced.get(c) is None and is_split(table[c])), None)
    strat = {"stratify": labels[0]} if labels else {}
    if split_col:
        split = {"method": "official", "val_fraction": 0.15, "seed": 0, **strat}
        notes.append(f"split column: {split_col} (values {', '.join(sorted(set(table[split_col])))}; "
                     "validation carved from train when it has none)")
    else:
        split = {"method": "random", "fractions": {"train": 0.7, "val": 0.15, "test": 0.15}, "seed": 0, **strat}
        notes.append("split: none in the table -> random 0.70/0.15/0.15" + (f", stratified on {labels[0]}" if labels
                                                                             else ""))
    modalities, options = {}, {"id_column": id_col, **({"split_column": split_col} if split_col else {})}
    fields = {"numeric": [], "categorical": []}
    for c in cols:
        if c in (id_col, split_col, *labels):
            continue
        kind, why = (forced[c], "--kind") if c in forced else guess_kind(table[c], manifest.parent)
        notes.append(f"column {c}: {kind} ({why})")
        if kind == "ignore":
            continue
        if kind == "tabular":
            fields["numeric" if is_numeric(table[c]) else "categorical"].append(c)
            continue
        modalities[c] = _modality(kind)
        if kind == "ehr":
            options.setdefault("variables", {})[c] = ehr_variables(table[c], manifest.parent)
    if fields["numeric"] or fields["categorical"]:
        modalities["clinical"] = {"kind": "tabular", "experts": {"offline": TABULAR_EXPERT, "paper": TABULAR_EXPERT}}
        options["fields"] = {"clinical": fields}
        notes.append(f"modality clinical (tabular): numeric {fields['numeric']}, categorical {fields['categorical']}")
    if not modalities:
        raise InitError(f"{manifest.name}: no modality column found (use --kind COL=KIND)")
    block = {"adapter": "manifest", "path": str(manifest), "description": f"cohort from {manifest.name}",
             "tasks": tasks, "split": split, "modalities": modalities, "options": options}
    return block, notes


def _modality(kind: str) -> dict:
    if kind == "wsi":      # tiles of 224 px at 0.5 um/px; a slide without recorded MPP fails unless fallback_mpp is set
        return {"kind": "wsi", "preprocess": {"mpp": 0.5, "tile": 224, "tissue_threshold": 0.5}}
    if kind == "ct":
        return {"kind": "ct", "preprocess": {"slices": 48, "hu": [-1000, 1000], "size": 224}}
    return {"kind": kind}


def filled(col) -> list[str]:
    return [v.strip() for v in col if v.strip()]


def is_numeric(col) -> bool:
    try:
        [float(v) for v in filled(col)]
        return True
    except ValueError:
        return False


def is_split(col) -> bool:
    from plugins.datasets.manifest import SPLITS
    values = {v.lower() for v in filled(col)}
    return bool(values) and values <= set(SPLITS) and "train" in values


def task_type(col) -> tuple[dict, str]:
    from plugins.datasets.manifest import FALSE, TRUE
    values = sorted(set(filled(col)))
    if not values:
        raise InitError(f"label column {col.name!r} is empty")
    if {v.lower() for v in values} <= TRUE | FALSE:
        return {"type": "binary"}, f"values {', '.join(values)}"
    if len(values) > 20:
        raise InitError(f"label column {col.name!r}: {len(values)} distinct values; a task is binary or has at "
                        "most 20 classes (bin a continuous outcome first)")
    return {"type": "multiclass", "labels": values}, f"{len(values)} classes: {', '.join(values)}"


MRI_NAME = re.compile(r"(^|[^a-z])(mri|t1w?|t2w?|flair|dwi|adc|swi)([^a-z]|$)", re.I)
CT_NAME = re.compile(r"(^|[^a-z])ct([^a-z]|$)", re.I)        # ct_t1 = a CT at time point 1: CT wins


def guess_kind(col, folder: Path) -> tuple[str, str]:
    """A column's kind from its filled cells: file extensions (or folders) first, then free text, else a field."""
    from plugins.datasets.manifest import SUFFIXES
    values = filled(col)
    if not values:
        return "ignore", "every cell is empty"
    for kind in ("cxr", "wsi", "ct"):
        exts = [e for e in SUFFIXES[kind] if e != "/"]
        hits = [v for v in values if v.lower().endswith(tuple(exts)) or (kind == "ct" and _is_dir(folder, v))]
        if len(hits) == len(values):
            why = f"{len(values)} of {len(col)} cells are {'/'.join(exts)} files" + (
                " or folders (DICOM series)" if kind == "ct" else "")
            name = str(col.name)                             # a volume is CT or MRI: only the name tells
            if kind == "ct" and MRI_NAME.search(name) and not CT_NAME.search(name):
                return "mri", why + f", and the column name {col.name!r} says MRI"
            return kind, why + (" (CT: a column named like mri/t1/t2/flair would be MRI; --kind COL=mri)"
                                if kind == "ct" else "")
    if all(v.lower().endswith(".txt") for v in values) and _looks_like_text(folder / values[0]):
        return "note", f"{len(values)} .txt files holding prose"
    if all(v.lower().endswith((".csv", ".tsv", ".txt")) for v in values):
        return "ehr", f"{len(values)} tables (time,variable,value events)"
    words = sum(len(v.split()) for v in values) / len(values)
    if words >= 5:
        return "note", f"free text inline ({words:.0f} words per cell on average)"
    return "tabular", ("numbers" if is_numeric(col) else "short values") + ": a field of the tabular modality"


def _is_dir(folder: Path, cell: str) -> bool:
    try:
        return "\n" not in cell and len(cell) < 255 and (folder / cell).is_dir()
    except OSError:
        return False


def _looks_like_text(path: Path) -> bool:
    """A .txt note is prose; a .txt events table has three comma-separated fields per line."""
    try:
        head = path.read_text(errors="replace")[:2000].splitlines()[:5]
    except OSError:
        return False
    return not head or not all(line.count(",") == 2 or line.count("\t") == 2 for line in head if line.strip())


def ehr_variables(col, folder: Path) -> list[str]:
    """Every variable named in the column's events tables (their union, sorted): the series view's columns."""
    from plugins.datasets.events_table import EventsError, read_events
    names: set[str] = set()
    from plugins.datasets.base import DatasetAdapter
    for v in filled(col):
        try:
            names |= set(read_events(DatasetAdapter.under(folder, v, "path"), v))
        except (EventsError, OSError, ValueError):
            continue                               # that row fails with its reason when extracted
    return sorted(names)
