"""MMIST-ccRCC: 618 patients, official train/test split, label vital_status_12.

Modalities: ``ct``, ``mri``, ``wsi`` (the owners' precomputed features, read from mmist_features.tar.gz with
pickle disabled; raw volumes / slides from ``ct_dir`` / ``wsi_dir`` when present) and ``note`` = the clinical
variables serialized as text (never the label or the split), with the same table as structured ``fields``.
CT/MRI feature files are ``<case>-<k>.npz`` with k the 1-based row of the chosen series among that case's rows in
patients_with_labels_*_final.csv.
"""
from __future__ import annotations

import hashlib
import io
import logging
import math
import re
import tarfile
from functools import cached_property
from pathlib import Path

import numpy as np

from stores.errors import InputError

from .archives import ARCHIVE_ERRORS, member_id, read_table, unreadable
from .base import AdapterOptions, DatasetAdapter, Failed, Missing, adapter

log = logging.getLogger("medmix.datasets")

LABEL, SPLIT = "vital_status_12", "Split"
NOTE_FIELDS = [("gender", "gender (code)"), ("age_diag", "age at diagnosis (bin 1-8)"), ("grade", "tumour grade"),
               ("cancer_history", "prior cancer history"), ("ajcc_path_tumor_pt", "pathologic T stage (code)"),
               ("ajcc_path_nodes_pn", "pathologic N stage (code)"),
               ("ajcc_clin_metastasis_cm", "clinical M stage (code)"),
               ("ajcc_path_metastasis_pm", "pathologic M stage (code)"),
               ("ajcc_path_tumor_stage", "AJCC pathologic stage (code)")]
MUTATIONS = [("VHL_mutation", "VHL"), ("PBMR1_mutation", "PBRM1"), ("TTN_mutation", "TTN")]
FEATURE_DIRS = {"ct": "CT Features", "mri": "MRI Features", "wsi": "WSI Features"}


def _read_csv(path: Path, required: tuple[str, ...] = ("case_id",)) -> list[dict]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: MMIST-ccRCC file not found")
    return read_table(path, required)


def _label(text) -> float:
    """vital_status_12 as a class (0 / 1), NaN when empty; anything else raises (the row's label is refused)."""
    text = (text or "").strip()
    if text == "":
        return float("nan")
    v = float(text)
    if v not in (0.0, 1.0):
        raise InputError(f"{text[:20]!r} is not a class (0 or 1)")
    return v


def _features_of(name: str, data: bytes) -> np.ndarray | str:
    """One owner's feature file -> a finite float32 vector, or an error string (the row fails with it)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            v = np.asarray(z[z.files[0]], dtype=np.float64).reshape(-1)
    except Exception as exc:  # noqa: BLE001  (a corrupt member fails its row)
        return f"{name}: unreadable npz ({type(exc).__name__}: {exc})"[:300]
    if not np.isfinite(v).all() or np.abs(v).max(initial=0) > ABSURD_FEATURE:
        return f"{name}: features non-finite or beyond +-{ABSURD_FEATURE:g} (max |x| {np.abs(v).max():.3g})"
    return v.astype(np.float32)


def _finite(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


ABSURD_FEATURE = 1e6        # the owners' features are O(1-100); beyond = corrupt
RAW_DIR_OPTION = {"ct": "ct_dir", "wsi": "wsi_dir"}      # modality -> the option naming its raw-file folder


class MMISTOptions(AdapterOptions):
    features: str | None = None           # the owners' features tar (default mmist_features.tar.gz)
    ct_dir: str | None = None             # raw CT volumes <case_id>.nii.gz (or DICOM folders), when you have them
    wsi_dir: str | None = None            # raw slides <case_id>.svs, when you have them


@adapter("mmist")
class MMIST(DatasetAdapter):
    Options = MMISTOptions

    @cached_property
    def _clinical(self) -> list[dict]:
        """The clinical table's rows. A row without a case id or with a Split other than train/test cannot be placed
        in a split: left out with a warning naming it; two rows of one case refuse the table (naming both)."""
        rows, seen, left_out = [], {}, []
        for line, r in enumerate(_read_csv(self.root / "clinical+genomic_split.csv", ("case_id", LABEL, SPLIT)), 2):
            case = (r.get("case_id") or "").strip()
            if not case or r.get(SPLIT) not in ("train", "test"):
                left_out.append(f"line {line}: case {case[:40]!r}, Split {str(r.get(SPLIT))[:20]!r}")
                continue
            if case in seen:
                raise InputError(f"clinical+genomic_split.csv: case {case[:40]!r} on lines {seen[case]} and {line}: "
                                 "refused (which row is right is unknowable)")
            seen[case] = line
            rows.append(r)
        if left_out:
            log.warning("clinical+genomic_split.csv: %d row(s) left out (no case id, or Split not train/test): %s",
                        len(left_out), "; ".join(left_out[:3]))
        return rows

    def ids(self) -> list[str]:
        return [r["case_id"] for r in self._clinical]

    def labels(self) -> dict[str, np.ndarray]:
        y, bad = np.full((len(self._clinical), 1), np.nan, np.float32), []
        for i, r in enumerate(self._clinical):
            try:
                y[i, 0] = _label(r.get(LABEL))
            except ValueError as exc:
                bad.append(f"case {r['case_id'][:40]}: {LABEL} {exc}")
        if bad:
            log.warning("clinical+genomic_split.csv: %d label(s) not a class of the task (unknown): %s", len(bad),
                        "; ".join(bad[:3]))
        return {LABEL: y}

    def official_split(self) -> list[str]:
        return [r[SPLIT] for r in self._clinical]

    def note(self, r: dict) -> str:
        parts = [f"{name}: {r[k] if r.get(k, '') != '' else 'unknown'}" for k, name in NOTE_FIELDS]
        races = [k[5:] for k in r if k.startswith("race_") and r[k] == "1"]
        parts.append(f"race: {', '.join(races) if races else 'unknown'}")
        for k, gene in MUTATIONS:
            v = r.get(k, "")
            parts.append(f"{gene} mutation: " + {"1": "yes", "0": "no"}.get(v, "unknown"))
        return "; ".join(parts)

    def fields(self, r: dict) -> dict:
        """The clinical table as structured fields (the ``fields`` view, for the tabular expert).

        Used: the diagnosis-time variables of NOTE_FIELDS, race and the three mutation calls. Left out: case_id (an
        identifier; its prefix names the source cohort), the label and the Split column. Code -1 (and an empty
        cell) = not recorded -> missing. Age bin is ordinal (numeric); grade and the AJCC T/N/M/stage codes are
        one-hot: their code order is not documented as ordinal."""
        def code(k):
            v = (r.get(k) or "").strip()
            return None if v in ("", "-1", "-1.0") else v.removesuffix(".0")
        age = code("age_diag")
        if age is not None and not _finite(age):
            raise InputError(f"clinical+genomic_split.csv: case {r['case_id'][:40]}: age_diag {age[:20]!r} "
                             "is not a number")
        races = [k[5:] for k in r if k.startswith("race_") and r[k] == "1"]
        cat = {k: code(k) for k, _ in NOTE_FIELDS if k != "age_diag"}
        cat["cancer_history"] = "yes" if code("cancer_history") == "1" else "not recorded"
        cat["race"] = ", ".join(races) if races else None
        cat.update({gene: code(k) for k, gene in MUTATIONS})
        return {"numeric": {"age_diag": float(age) if age is not None else float("nan")}, "categorical": cat}

    # ---- the owners' features -------------------------------------------------------------------------------
    def _chosen_files(self, modality: str) -> dict[str, str]:
        """case_id -> member name of the chosen feature file for ct / mri / wsi."""
        cols = ("case_id", "chosen_exam")
        if modality == "wsi":
            return {r["case_id"]: r["chosen_exam"] for r in _read_csv(self.root / "WSI_patientfiles.csv", cols)
                    if r.get("chosen_exam")}
        tag = {"ct": "CT", "mri": "MR"}[modality]
        table = self.root / f"{'MRI' if tag == 'MR' else 'CT'}_patientfiles.csv"
        chosen = {r["case_id"]: r["chosen_exam"] for r in _read_csv(table, cols) if r.get("chosen_exam")}
        per_case: dict[str, list[str]] = {}
        for r in _read_csv(self.root / f"patients_with_labels_{tag}_final.csv", ("case_id", "File")):
            if r.get("File"):
                per_case.setdefault(r["case_id"], []).append(r["File"])
        out = {}
        for case, exam in chosen.items():
            series = per_case.get(case, [])
            if exam in series:
                out[case] = f"{case}-{series.index(exam) + 1}.npz"
        return out

    @cached_property
    def _features(self) -> dict[str, dict[str, np.ndarray | str]]:
        """modality -> member file name -> vector (or an error string). One pass over the tar."""
        tar_path = self.path_option("features") or self.root / "mmist_features.tar.gz"
        wanted = {m: set(self._chosen_files(m).values()) for m in FEATURE_DIRS}
        by_dir = {d: m for m, d in FEATURE_DIRS.items()}
        out = {m: {} for m in FEATURE_DIRS}
        if tar_path.stat().st_size == 0:
            raise InputError(f"{tar_path}: empty file (0 bytes)")
        pattern = re.compile(r"(?:.*/)?(?:CT|MRI|WSI) Features/([^/]+\.npz)")
        try:
            with tarfile.open(tar_path, "r:*") as tar:
                for member in tar:
                    if not member.isfile() or member_id(member.name, pattern, tar_path) is None:
                        continue
                    d, name = member.name.rsplit("/", 1)
                    m = by_dir.get(d.split("/")[-1])
                    if m is None or name not in wanted[m]:
                        continue
                    if name in out[m]:
                        raise InputError(f"{tar_path}: two members {d}/{name}: refused (which is right is unknowable)")
                    out[m][name] = _features_of(member.name, tar.extractfile(member).read())
        except ARCHIVE_ERRORS as exc:
            raise unreadable(tar_path, exc) from None
        return out

    def load(self, modality: str, rows: list[int]):
        out = []
        cases = self.ids()
        if modality == "note":
            return [self._note_input(self._clinical[r]) for r in rows]
        chosen = self._chosen_files(modality) if modality in FEATURE_DIRS else {}
        raw_dir = self.path_option(RAW_DIR_OPTION[modality]) if modality in RAW_DIR_OPTION else None
        for r in rows:
            case = cases[r]
            views = {}
            fname = chosen.get(case)
            if fname is not None:
                feat = self._features[modality].get(fname)
                if isinstance(feat, str):
                    out.append(Failed(feat))
                    continue
                if feat is not None:
                    views["features"] = feat
            if raw_dir is not None:
                try:
                    views.update(self._raw_views(modality, raw_dir, case))
                except ValueError as exc:       # a case id leading outside the raw folder
                    out.append(Failed(str(exc)))
                    continue
            if not views:
                out.append(Missing(f"no {modality} for {case}"))
            else:
                out.append(views)
        return out

    def _note_input(self, r: dict):
        """The note and fields of one clinical row, or Failed naming the row's problem (a short row, a bad cell)."""
        if "__error__" in r:
            return Failed(r["__error__"])
        try:
            return {"text": self.note(r), "fields": self.fields(r)}
        except ValueError as exc:
            return Failed(str(exc))

    def _raw_views(self, modality: str, raw_dir: Path, case: str) -> dict:
        """Lazy raw inputs: the runner decodes them once, only when an expert of that view runs."""
        p = self._raw_path(modality, raw_dir, case)
        if p is None:
            return {}
        from ..readers.lazy import LazyView
        pre = self.spec.modalities[modality].preprocess
        if modality == "ct":
            return {"image": LazyView("ct", p, pre), "volume": LazyView("ct_volume", p, pre)}
        return {"image": LazyView("wsi", p, pre)}

    RAW_EXTS = {"ct": (".nii.gz", ".nii", ".npy", ".npz", "/"), "wsi": (".svs", ".tif", ".tiff", ".ndpi", ".mrxs")}

    def _raw_path(self, modality: str, raw_dir: Path, case: str) -> Path | None:
        """The case's raw file: <case>.<ext>, or for CT a folder <case>/ holding a DICOM series."""
        for ext in self.RAW_EXTS.get(modality, ()):
            p = self.under(raw_dir, case if ext == "/" else f"{case}{ext}", "case id")
            if (p.is_dir() and any(p.iterdir())) if ext == "/" else p.is_file():
                return p
        return None

    def where(self, modality: str, row: int) -> str:
        return f"clinical+genomic_split.csv: case {self.ids()[row]}"

    def fingerprint(self, modality: str, row: int) -> str:
        case = self.ids()[row]
        if modality == "note":
            return hashlib.sha256(self.note(self._clinical[row]).encode()).hexdigest()[:32]
        parts = []
        if modality in FEATURE_DIRS:
            parts.append(self.stat_fingerprint(self.path_option("features") or self.root / "mmist_features.tar.gz"))
        raw_dir = self.path_option(f"{modality}_dir") if self.options.get(f"{modality}_dir") else None
        if raw_dir is not None:
            p = self._raw_path(modality, raw_dir, case)
            files = ([p] if p.is_file() else sorted(p.iterdir())) if p is not None else [raw_dir / f"{case}"]
            parts.append(self.stat_fingerprint(*files))
        return ";".join(parts)
