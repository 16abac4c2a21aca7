"""Your own cohort with no code: one table (CSV, TSV or Parquet), one row per sample, described in YAML only.

The dataset's ``path`` is the table (relative to the data root, or absolute); every file a cell names is relative to
the table's folder and may not leave it. Columns: an id (``options.id_column``, default ``id``), an optional split
(``options.split_column``: train / val / test), one per task label (binary 0/1, yes/no, true/false; multiclass: one
of the task's ``labels``; multilabel: one 0/1 column per label), and one per modality, named after it (or
``options.columns``): a PNG/JPEG/DICOM image (cxr), a NIfTI / .npy / .npz file or a DICOM-series folder (ct, mri),
a slide (svs/tif/tiff/ndpi/mrxs: wsi), a ``.txt`` file or the note itself (note), a per-patient events table
``time,variable,value`` (ehr, events_table.py); a tabular modality reads the field columns ``options.fields`` names.
An empty cell is a missing modality; a file that is absent or unreadable fails that row with a reason naming it.
``python -m extract init`` drafts the block from the table (extract/init.py; docs/datasets.md).
"""
from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from stores.errors import InputError, describe

from ..readers.lazy import LazyView
from .base import AdapterOptions, DatasetAdapter, Failed, Missing, _split_two, adapter
from .events_table import EventsError, ehr_views, read_events

TRUE, FALSE = {"1", "1.0", "true", "yes", "y", "positive", "pos"}, {"0", "0.0", "false", "no", "n", "negative", "neg"}
SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
SUFFIXES = {"cxr": (".png", ".jpg", ".jpeg", ".dcm"), "ct": (".nii", ".nii.gz", ".npy", ".npz", "/"),
            "mri": (".nii", ".nii.gz", ".npy", ".npz", "/"), "wsi": (".svs", ".tif", ".tiff", ".ndpi", ".mrxs"),
            "ehr": (".csv", ".tsv", ".txt")}


class FieldColumns(AdapterOptions):
    numeric: list[str] = []
    categorical: list[str] = []


class ManifestOptions(AdapterOptions):
    id_column: str = "id"
    split_column: str | None = None                     # train / val / test; else the spec's split method
    labels: dict[str, str | list[str]] = {}             # task -> its column (multilabel: its columns); default: name
    columns: dict[str, str] = {}                        # modality -> its column; default: the modality's name
    fields: dict[str, FieldColumns] = {}                # tabular modality -> its numeric and categorical columns
    variables: dict[str, list[str]] = {}                # ehr modality -> its variables; default: all in its files


@dataclass
class NamedView(LazyView):
    """A lazy raw input whose decoding error names the sample and the file (a truncated slide, a bad volume)."""
    label: str = ""

    def get(self):
        try:
            return dicom_image(self.path, self.preprocess) if self.kind == "dicom_image" else super().get()
        except Exception as exc:  # noqa: BLE001  (the runner records the row failed with this reason)
            hint = (" (set the modality's preprocess.fallback_mpp to read it at an assumed um/px)"
                    if "fallback_mpp" in str(exc) else "")
            raise InputError(f"{self.label}: {str(exc).strip() or describe(exc)}{hint}") from exc


def dicom_image(path: Path, pre: dict) -> np.ndarray:
    """A 2-D DICOM radiograph -> (1, 3, H, W) in [0, 1] under the cxr rules of readers/image.py (pixel budget before
    decoding, minimum side, blank refused); rescale slope/intercept applied, MONOCHROME1 inverted."""
    import pydicom
    from ..readers.image import MAX_PIXELS, MIN_SIDE, ImageRejected, reduce_factor
    ds = pydicom.dcmread(str(path))
    h, w = int(ds.Rows), int(ds.Columns)
    if h * w > pre.get("max_pixels", MAX_PIXELS):
        raise ImageRejected(f"{path.name}: {w}x{h} px exceeds the pixel budget (preprocess.max_pixels); not decoded")
    if min(h, w) < pre.get("min_side", MIN_SIDE):
        raise ImageRejected(f"{path.name}: {w}x{h} px is below the minimum side (preprocess.min_side)")
    a = ds.pixel_array.astype(np.float32)
    if a.ndim != 2:
        raise ImageRejected(f"{path.name}: expected one 2-D frame, got shape {a.shape}")
    a = a * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
    if a.max() == a.min():
        raise ImageRejected(f"{path.name}: blank image (every pixel is {a.reshape(-1)[0]})")
    f = reduce_factor(w, h, pre.get("size", 224))
    if f > 1:
        a = a[:h // f * f, :w // f * f].reshape(h // f, f, w // f, f).mean((1, 3))
    lo, hi = np.percentile(a, [0.5, 99.5])
    a = np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        a = 1.0 - a
    return np.repeat(a[None, None], 3, 1)


def _cell_text(path: Path, column, value) -> str:
    """A typed Parquet cell as the text a CSV cell would hold ('' for a null); a nested value is refused."""
    if isinstance(value, (list, tuple, dict, np.ndarray)):
        raise InputError(f"{path}: column {column!r} holds lists or records; a manifest cell is one value")
    return "" if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)) else str(value)


def read_table(path: Path) -> pd.DataFrame:
    """The manifest as strings ('' = empty cell); Parquet needs pyarrow or fastparquet."""
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        if not (importlib.util.find_spec("pyarrow") or importlib.util.find_spec("fastparquet")):
            raise InputError(f"{path}: reading Parquet needs the package pyarrow (not installed): "
                             "pip install pyarrow, or save the table as CSV")
        try:       # nullable dtypes: an integer column with empty cells stays "1", not "1.0"
            table = pd.read_parquet(path, dtype_backend="numpy_nullable")
        except (OSError, ValueError) as e:       # pyarrow's ArrowInvalid is a ValueError
            raise InputError(f"{path}: not a readable Parquet table ({describe(e)})") from None
        return pd.DataFrame({c: [_cell_text(path, c, v) for v in table[c].tolist()] for c in table.columns},
                            index=table.index, dtype=str)
    if not name.endswith((".csv", ".tsv", ".txt")):
        raise InputError(f"{path}: a manifest is a .csv, .tsv or .parquet table")
    return pd.read_csv(path, sep="\t" if name.endswith(".tsv") else ",", dtype=str, keep_default_na=False,
                       na_filter=False, skipinitialspace=True)


@adapter("manifest")
class Manifest(DatasetAdapter):
    """One table (CSV/TSV/Parquet) of sample ids, split, labels and per-modality file paths or values"""
    Options = ManifestOptions

    @property
    def table_path(self) -> Path:
        if not self.root.is_file():
            raise InputError(f"dataset '{self.spec.adapter}': path {self.root} is not a table file (CSV/TSV/Parquet)")
        return self.root

    @property
    def folder(self) -> Path:
        return self.table_path.parent

    @cached_property
    def table(self) -> pd.DataFrame:
        df = read_table(self.table_path)
        df.columns = [str(c).strip() for c in df.columns]
        name, col = self.table_path.name, self.opts.id_column
        need = [col] + ([self.opts.split_column] if self.opts.split_column else []) + self._label_columns() + [
            self.column(m) for m, s in self.spec.modalities.items() if s.kind != "tabular"] + [
            c for f in self.opts.fields.values() for c in (*f.numeric, *f.categorical)]
        absent = [c for c in dict.fromkeys(need) if c not in df.columns]
        if absent:
            raise InputError(f"{name}: no column {', '.join(map(repr, absent))} (columns: {', '.join(df.columns)})")
        df[col] = df[col].str.strip()
        if (df[col] == "").any():
            raise InputError(f"{name}: line {int(np.flatnonzero(df[col] == '')[0]) + 2}: empty {col!r}")
        dup = df[col][df[col].duplicated()].tolist()
        if dup:
            raise InputError(f"{name}: {col} {dup[0]!r} appears more than once")
        return df.reset_index(drop=True)

    def column(self, modality: str) -> str:
        return self.opts.columns.get(modality, modality)

    def _label_columns(self) -> list[str]:
        out = []
        for task, t in self.spec.tasks.items():
            c = self.opts.labels.get(task, t.labels if t.type == "multilabel" else task)
            out += [c] if isinstance(c, str) else list(c)
        return out

    def ids(self) -> list[str]:
        return self.table[self.opts.id_column].tolist()

    def labels(self) -> dict[str, np.ndarray]:
        return {task: self._task_labels(task, t) for task, t in self.spec.tasks.items()}

    def _task_labels(self, task: str, t) -> np.ndarray:
        cols = self.opts.labels.get(task, t.labels if t.type == "multilabel" else task)
        cols = [cols] if isinstance(cols, str) else list(cols)
        y = np.full((len(self.table), t.n_outputs), np.nan, np.float32)
        for i, sid in enumerate(self.ids()):
            for j, c in enumerate(cols):
                v = self.table.at[i, c].strip()
                if v == "":
                    continue
                where = f"{self.table_path.name}: sample {sid}: {c} {v!r}"
                if t.type == "multiclass":
                    if v not in t.labels:
                        raise InputError(f"{where} is not one of the task's labels {t.labels}")
                    y[i] = 0.0
                    y[i, t.labels.index(v)] = 1.0
                elif v.lower() in TRUE | FALSE:
                    y[i, j] = float(v.lower() in TRUE)
                else:
                    raise InputError(f"{where} is not a binary label (1/0, yes/no, true/false)")
        return y

    def split(self) -> list[str]:
        """The split column as written; a column without validation rows has it carved from train (val_fraction)."""
        given = self.official_split()
        if given is None or "val" in given:
            return super().split() if given is None else given
        s = self.spec.split
        train = np.flatnonzero(np.asarray(given) == "train")
        strat = self._strat_key(self.labels()[s.stratify])[train] if s.stratify else None
        _, val = _split_two(train, s.val_fraction or 0.15, strat, s.seed)
        carved = set(val.tolist())
        return ["val" if i in carved else p for i, p in enumerate(given)]

    def official_split(self) -> list[str] | None:
        col = self.opts.split_column
        if not col:
            return None
        out = []
        for sid, v in zip(self.ids(), self.table[col]):
            if v.strip().lower() not in SPLITS:
                raise InputError(f"{self.table_path.name}: sample {sid}: {col} {v!r} is not train, val or test")
            out.append(SPLITS[v.strip().lower()])
        return out

    # ---- inputs ---------------------------------------------------------------------------------------------
    def where(self, modality: str, row: int) -> str:
        sid = self.table.at[row, self.opts.id_column]          # one cell (where() runs per row)
        if self.spec.modalities[modality].kind == "tabular":
            return f"{self.table_path.name}: sample {sid}"
        cell = self.table.at[row, self.column(modality)].strip()
        shown = cell if len(cell) <= 80 and "\n" not in cell else "(inline text)"
        return f"{self.table_path.name}: sample {sid}: {self.column(modality)} {shown}"

    def fingerprint(self, modality: str, row: int) -> str:
        kind = self.spec.modalities[modality].kind
        if kind == "tabular" or (kind == "note" and not self._is_file_cell(self._cell(modality, row))):
            blob = repr(self._cell(modality, row) if kind != "tabular" else self.table.iloc[row].tolist())
            return hashlib.sha256(blob.encode()).hexdigest()[:32]
        cell = self._cell(modality, row)
        if not cell:
            return "empty"
        try:
            p = self.under(self.folder, cell, "path")
        except ValueError:
            return "outside"
        return self.stat_fingerprint(*(sorted(p.iterdir()) if p.is_dir() else [p]))

    def _cell(self, modality: str, row: int) -> str:
        return self.table.at[row, self.column(modality)].strip()

    @staticmethod
    def _is_file_cell(cell: str) -> bool:
        return cell.lower().endswith(".txt") and "\n" not in cell and len(cell) < 500

    def load(self, modality: str, rows: list[int]):
        kind = self.spec.modalities[modality].kind
        out = []
        for r in rows:
            try:
                out.append(self._fields(modality, r) if kind == "tabular" else self._load_one(modality, kind, r))
            except (EventsError, ValueError, OSError) as exc:
                out.append(Failed(str(exc) if isinstance(exc, (EventsError, ValueError)) else
                                  f"{self.where(modality, r)}: {describe(exc)}"))
        return out

    def _load_one(self, modality: str, kind: str, r: int):
        cell, label = self._cell(modality, r), self.where(modality, r)
        if not cell:
            return Missing(f"{self.column(modality)}: empty cell")
        if kind == "note" and not self._is_file_cell(cell):
            return {"text": cell}
        path = self.under(self.folder, cell, f"{label}: path")
        if not path.exists():
            raise InputError(f"{label}: file not found ({path})")
        pre = dict(self.spec.modalities[modality].preprocess)
        if kind == "note":
            try:
                return {"text": path.read_bytes().decode("utf-8")}
            except UnicodeDecodeError as exc:
                raise InputError(f"{label}: invalid UTF-8 at byte {exc.start:,}") from None
        if kind == "ehr":
            hours = int(self.spec.modalities[modality].pre.hours)
            return ehr_views(read_events(path, label), self._variables(modality), hours, label)
        if kind == "cxr":
            view = NamedView("dicom_image" if path.suffix.lower() == ".dcm" else "image", path, pre, label)
            return {"image": view, "file": str(path)}
        if kind in ("ct", "mri"):
            if kind == "mri":         # no HU: each volume windowed at its own percentiles (stores/preprocess.py)
                pre = {"percentiles": tuple(self.spec.modalities[modality].pre.percentiles), **pre}
            return {"image": NamedView("ct", path, pre, label), "volume": NamedView("ct_volume", path, pre, label)}
        if kind == "wsi":
            return {"image": NamedView("wsi", path, pre, label)}
        raise InputError(f"{label}: the manifest adapter has no reader for kind {kind!r}")

    def _fields(self, modality: str, r: int):
        f = self.opts.fields.get(modality)
        if f is None:
            raise InputError(f"options.fields.{modality}: a tabular modality needs its numeric/categorical columns")
        row = self.table.iloc[r]
        numeric = {}
        for c in f.numeric:
            v = row[c].strip()
            try:
                numeric[c] = float(v) if v else float("nan")
            except ValueError:
                raise InputError(f"{self.where(modality, r)}: {c} {v[:20]!r} is not a number") from None
        categorical = {c: (row[c].strip() or None) for c in f.categorical}
        if all(np.isnan(v) for v in numeric.values()) and all(v is None for v in categorical.values()):
            return Missing("every field cell is empty")
        return {"fields": {"numeric": numeric, "categorical": categorical}}

    def _variables(self, modality: str) -> list[str]:
        return self.opts.variables.get(modality) or self._all_variables(modality)

    def _all_variables(self, modality: str) -> list[str]:
        """Every variable named in the modality's files (sorted), when ``options.variables`` does not list them."""
        cache = self._variables_cache
        if modality not in cache:
            names: set[str] = set()
            for r in range(len(self.table)):
                cell = self._cell(modality, r)
                try:
                    path = self.under(self.folder, cell, "path") if cell else None
                    if path is not None and path.is_file():
                        names |= set(read_events(path, cell))
                except (EventsError, ValueError, OSError):
                    continue                    # that row fails on its own when loaded
            cache[modality] = sorted(names)
        return cache[modality]

    @cached_property
    def _variables_cache(self) -> dict[str, list[str]]:
        return {}

    def identity(self) -> dict:
        st = self.table_path.stat()
        return {**super().identity(), "table": str(self.table_path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
