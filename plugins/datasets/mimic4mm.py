"""MIMIC-IV-MM from the official PhysioNet layouts (credentialed data; tested on small fixtures written in the
official column layout, never on real MIMIC rows here).

    <root>/hosp/patients.csv.gz, hosp/admissions.csv.gz, hosp/labevents.csv.gz
    <root>/icu/icustays.csv.gz, icu/chartevents.csv.gz
    <root>/<cxr_dir>/mimic-cxr-2.0.0-metadata.csv.gz + files/pXX/p<subject>/s<study>/<dicom_id>.jpg  (MIMIC-CXR-JPG)
    <root>/<note_dir>/note/radiology.csv.gz                                                            (MIMIC-IV-Note)

One sample per ICU stay. Tasks: in-hospital mortality (admissions.hospital_expire_flag), ICU length of stay >= 7 d
(icustays.los), 30-day readmission (a later admission of the same patient within 30 days of discharge; unknown
when the patient died in hospital). EHR: the first 48 h after ICU admission, hourly means of the variables in
``VARIABLES`` (itemids of chartevents / labevents; override with ``options.variables``). CXR: the latest frontal
(PA/AP) and lateral study image taken before the 48-h cut within the admission. Note: radiology reports of the
admission charted before the cut, concatenated.
"""
from __future__ import annotations

import logging
import zlib
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from ..readers.lazy import LazyView
from .archives import rules_version, unreadable
from .base import AdapterOptions, DatasetAdapter, Failed, Missing, adapter

log = logging.getLogger("medmix.datasets")

# name -> (table, itemids). MIMIC-IV MetaVision / lab itemids.
VARIABLES: dict[str, tuple[str, list[int]]] = {
    "HR": ("chart", [220045]), "SysBP": ("chart", [220050, 220179]), "DiasBP": ("chart", [220051, 220180]),
    "MAP": ("chart", [220052, 220181]), "RespRate": ("chart", [220210]), "SpO2": ("chart", [220277]),
    "TempC": ("chart", [223762]), "GCS_eye": ("chart", [220739]), "GCS_verbal": ("chart", [223900]),
    "GCS_motor": ("chart", [223901]), "FiO2": ("chart", [223835]), "Weight": ("chart", [226512]),
    "UrineOut": ("chart", [226559]), "CVP": ("chart", [220074]), "Glucose_chart": ("chart", [220621]),
    "Glucose": ("lab", [50931]), "Creatinine": ("lab", [50912]), "BUN": ("lab", [51006]), "Sodium": ("lab", [50983]),
    "Potassium": ("lab", [50971]), "Bicarbonate": ("lab", [50882]), "Chloride": ("lab", [50902]),
    "AnionGap": ("lab", [50868]), "Calcium": ("lab", [50893]), "Magnesium": ("lab", [50960]),
    "Phosphate": ("lab", [50970]), "Hemoglobin": ("lab", [51222]), "Hematocrit": ("lab", [51221]),
    "Platelets": ("lab", [51265]), "WBC": ("lab", [51301]), "Lactate": ("lab", [50813]), "pH": ("lab", [50820]),
    "pO2": ("lab", [50821]), "pCO2": ("lab", [50818]), "BaseExcess": ("lab", [50802]), "Bilirubin": ("lab", [50885]),
    "Albumin": ("lab", [50862]), "ALT": ("lab", [50861]), "AST": ("lab", [50878]), "ALP": ("lab", [50863]),
    "INR": ("lab", [51237]), "PT": ("lab", [51274]), "PTT": ("lab", [51275]), "TroponinT": ("lab", [51003]),
    "CRP": ("lab", [50889]), "RDW": ("lab", [51277]),
}
FRONTAL, LATERAL = {"PA", "AP"}, {"LATERAL", "LL"}


def _read(path: Path, **kw) -> pd.DataFrame:
    """A table, or one line naming it (empty, truncated gzip, a missing column)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: MIMIC-IV table not found")
    try:
        return pd.read_csv(path, **kw)
    except (ValueError, OSError, EOFError, pd.errors.ParserError, zlib.error) as exc:
        raise unreadable(path, exc) from None


def plausible(ev: pd.DataFrame, names: list[str], rules: dict) -> pd.DataFrame:
    """Events outside their variable's rule (pipelines.yaml ``plausible``) or non-finite: dropped, counted."""
    keep = np.isfinite(ev["valuenum"].to_numpy(float))
    for c, name in enumerate(names):
        rule = rules.get(name)
        if rule is not None:
            sel = (ev["col"] == c).to_numpy()
            keep[sel] &= [rule.check(float(v)) is None for v in ev["valuenum"].to_numpy(float)[sel]]
    if not keep.all():
        dropped = ev[~keep].groupby("col").size()
        log.warning("%d implausible or non-finite event(s) dropped: %s", int((~keep).sum()),
                    {names[int(c)]: int(k) for c, k in dropped.items()})
    return ev[keep]


class MIMICOptions(AdapterOptions):
    cxr_dir: str | None = None            # MIMIC-CXR-JPG folder (files/p.../s.../*.jpg)
    note_dir: str | None = None           # MIMIC-IV-Note folder (note/radiology.csv.gz)
    variables: dict[str, tuple[str, list[int]]] | None = None   # name -> (chart | lab, itemids); default VARIABLES


@adapter("mimic4mm")
class MIMIC4MM(DatasetAdapter):
    version = "2"          # 2: non-finite events dropped (they failed the stay); plausibility rules from the spec
    Options = MIMICOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.version = rules_version(type(self).version, self.spec)

    @property
    def hours(self) -> int:
        """The observation window (``preprocess.hours`` of the ehr modality)."""
        ehr = self.spec.modalities.get("ehr")
        return ehr.pre.hours if ehr is not None else 48

    # ---- table access (MIMIC-III overrides these) -------------------------------------------------------------
    def icustays(self) -> pd.DataFrame:
        return _read(self.root / "icu" / "icustays.csv.gz", parse_dates=["intime", "outtime"])

    def admissions(self) -> pd.DataFrame:
        return _read(self.root / "hosp" / "admissions.csv.gz", parse_dates=["admittime", "dischtime"])

    def patients(self, icu: pd.DataFrame) -> pd.DataFrame:
        """subject_id, gender, anchor_age."""
        return _read(self.root / "hosp" / "patients.csv.gz")[["subject_id", "gender", "anchor_age"]]

    def event_files(self) -> dict[str, Path]:
        return {"chart": self.root / "icu" / "chartevents.csv.gz", "lab": self.root / "hosp" / "labevents.csv.gz"}

    def event_columns(self) -> dict[str, str]:
        """Our name -> the file's column name."""
        return {"hadm_id": "hadm_id", "itemid": "itemid", "charttime": "charttime", "valuenum": "valuenum"}

    def radiology_notes(self) -> pd.DataFrame:
        """hadm_id, charttime, text."""
        return _read(self.path_option("note_dir") / "note" / "radiology.csv.gz", parse_dates=["charttime"])

    @cached_property
    def stays(self) -> pd.DataFrame:
        icu = self.icustays()
        adm = self.admissions()
        df = icu.merge(adm[["hadm_id", "admittime", "dischtime", "hospital_expire_flag"]], on="hadm_id", how="left")
        df = df.merge(self.patients(df), on="subject_id", how="left")
        df["cut"] = df["intime"] + pd.Timedelta(hours=self.hours)
        adm = adm.sort_values(["subject_id", "admittime"])
        nxt = adm.groupby("subject_id")["admittime"].shift(-1)
        gap = (nxt - adm["dischtime"]).dt.total_seconds() / 86400
        adm["readmit30"] = np.where(adm["hospital_expire_flag"] == 1, np.nan, (gap <= 30).astype(float))
        df = df.merge(adm[["hadm_id", "readmit30"]], on="hadm_id", how="left")
        return df.sort_values("stay_id").reset_index(drop=True)

    def ids(self) -> list[str]:
        return [str(s) for s in self.stays["stay_id"]]

    def labels(self) -> dict[str, np.ndarray]:
        s = self.stays
        return {"mortality": s[["hospital_expire_flag"]].to_numpy(np.float32),
                "los7": (s[["los"]].to_numpy(np.float32) >= 7).astype(np.float32),
                "readmission30": s[["readmit30"]].to_numpy(np.float32)}

    # ---- EHR ------------------------------------------------------------------------------------------------
    @property
    def variables(self) -> dict[str, tuple[str, list[int]]]:
        return {k: (v[0], list(v[1])) for k, v in (self.options.get("variables") or VARIABLES).items()}

    def _events(self, table: str) -> pd.DataFrame:
        """Rows of the wanted itemids for the stays' admissions, read in chunks (chartevents is hundreds of GB)."""
        path = self.event_files()[table]
        cols = self.event_columns()
        items = {i for t, ids in self.variables.values() if t == table for i in ids}
        keys = set(self.stays["hadm_id"].dropna().astype(int))
        parts = []
        for chunk in _read(path, usecols=list(cols.values()), chunksize=2_000_000):
            chunk = chunk.rename(columns={v: k for k, v in cols.items()})
            chunk["charttime"] = pd.to_datetime(chunk["charttime"])
            chunk = chunk[chunk["itemid"].isin(items) & chunk["hadm_id"].isin(keys)]
            parts.append(chunk.dropna(subset=["valuenum"]))
        return pd.concat(parts) if parts else pd.DataFrame(columns=["hadm_id", "itemid", "charttime", "valuenum"])

    @cached_property
    def _windowed(self) -> pd.DataFrame:
        """Every kept event inside a stay's window: stay_id, col (variable index), t (hours since ICU admission),
        valuenum. Both the hourly ``series`` and the ``events`` view derive from it."""
        names = list(self.variables)
        col = {(t, i): names.index(n) for n, (t, ids) in self.variables.items() for i in ids}
        parts = []
        for table in ("chart", "lab"):
            ev = self._events(table)
            if ev.empty:
                continue
            ev = ev.merge(self.stays[["hadm_id", "stay_id", "intime", "cut"]], on="hadm_id")
            ev = ev[(ev["charttime"] >= ev["intime"]) & (ev["charttime"] < ev["cut"])].copy()
            ev["t"] = (ev["charttime"] - ev["intime"]).dt.total_seconds() / 3600
            ev["col"] = [col[(table, int(i))] for i in ev["itemid"]]
            parts.append(plausible(ev[["stay_id", "col", "t", "valuenum"]], names, self.spec.plausible))
        return pd.concat(parts) if parts else pd.DataFrame(columns=["stay_id", "col", "t", "valuenum"])

    @cached_property
    def _series(self) -> dict[int, np.ndarray]:
        n = len(self.variables)
        out = {}
        for stay, g in self._windowed.groupby("stay_id"):
            s, c = np.zeros((self.hours, n)), np.zeros((self.hours, n))
            idx = (g["t"].to_numpy(float).astype(int), g["col"].to_numpy(int))
            np.add.at(s, idx, g["valuenum"].to_numpy(float))
            np.add.at(c, idx, 1)
            out[int(stay)] = np.where(c > 0, s / np.maximum(c, 1), np.nan).astype(np.float32)
        return out

    @cached_property
    def _stay_events(self) -> dict[int, dict[str, tuple[np.ndarray, np.ndarray]]]:
        """stay -> variable -> (hours, values) of the window's events (the summary-statistics expert's view)."""
        names = list(self.variables)
        out = {}
        for stay, g in self._windowed.groupby("stay_id"):
            per = {v: (np.zeros(0, np.float32), np.zeros(0, np.float32)) for v in names}
            for c, gc in g.groupby("col"):
                per[names[int(c)]] = (gc["t"].to_numpy(np.float32), gc["valuenum"].to_numpy(np.float32))
            out[int(stay)] = per
        return out

    def events(self, row) -> dict:
        age = float(row.anchor_age) if pd.notna(row.anchor_age) else np.nan
        gender = str(row.gender) if isinstance(row.gender, str) and row.gender else None
        return {"variables": self._stay_events[int(row.stay_id)], "window_hours": float(self.hours),
                "static": {"numeric": {"Age": age}, "categorical": {"Gender": gender}}}

    def serialize(self, row, series: np.ndarray) -> str:
        parts = [f"Age: {row.anchor_age}", f"Gender: {row.gender}"]
        for j, name in enumerate(self.variables):
            obs = series[:, j][np.isfinite(series[:, j])]
            parts.append(f"{name}: {obs[-1]:.4g}" if obs.size else f"{name}: NA")
        return "; ".join(parts)

    # ---- CXR and notes --------------------------------------------------------------------------------------
    @cached_property
    def _cxr(self) -> pd.DataFrame:
        d = self.path_option("cxr_dir")
        meta = _read(d / "mimic-cxr-2.0.0-metadata.csv.gz", dtype={"StudyDate": str, "StudyTime": str})
        meta["time"] = pd.to_datetime(meta["StudyDate"] + meta["StudyTime"].str.split(".").str[0].str.zfill(6),
                                      format="%Y%m%d%H%M%S")
        return meta

    def _image(self, row, views: set[str]):
        meta = self._cxr
        m = meta[(meta["subject_id"] == row.subject_id) & meta["ViewPosition"].isin(views)
                 & (meta["time"] >= row.admittime) & (meta["time"] < row.cut)].sort_values("time")
        if m.empty:
            return Missing("no such CXR in the admission's first 48 h of ICU")
        r = m.iloc[-1]
        sid = str(int(r["subject_id"]))
        rel = f"files/p{sid[:2]}/p{sid}/s{int(r['study_id'])}/{r['dicom_id']}.jpg"
        try:
            path = self.under(self.path_option("cxr_dir"), rel, "mimic-cxr metadata: dicom_id")
        except ValueError as exc:
            return Failed(str(exc))
        if not path.exists():
            return Missing(f"{path.name}: image file not on disk")
        mspec = self.spec.modalities.get("frontal" if views is FRONTAL else "lateral")
        return {"image": LazyView("image", path, dict(mspec.preprocess) if mspec else {}), "file": str(path)}

    @cached_property
    def _notes(self) -> pd.DataFrame:
        return self.radiology_notes()

    def load(self, modality: str, rows: list[int]):
        out = []
        for r in rows:
            row = self.stays.iloc[r]
            if modality == "ehr":
                s = self._series.get(int(row.stay_id))
                out.append(Missing("no charted or lab value in the first 48 h") if s is None
                           else {"series": s, "text": self.serialize(row, s), "events": self.events(row)})
            elif modality in ("frontal", "lateral"):
                out.append(self._image(row, FRONTAL if modality == "frontal" else LATERAL))
            elif modality == "note":
                n = self._notes
                n = n[(n["hadm_id"] == row.hadm_id) & (n["charttime"] < row.cut)].sort_values("charttime")
                text = "\n\n".join(t for t in n["text"].astype(str) if t.strip())
                out.append({"text": text} if text else Missing("no radiology report before the cut"))
            else:
                out.append(Missing(f"unknown modality {modality}"))
        return out
