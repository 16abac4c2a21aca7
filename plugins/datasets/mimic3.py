"""MIMIC-III (v1.4 layout: upper-case CSVs) for external validation, reusing the MIMIC-IV-MM logic.

Differences handled here: column names (ICUSTAY_ID, ...), age from DOB at ICU admission (ages > 89 are shifted
by the dataset; reported as 90), CareVue and MetaVision chart itemids side by side, radiology reports from
NOTEEVENTS (CATEGORY = 'Radiology'; CHARTDATE when CHARTTIME is empty). Tested on a fixture in the official
layout (the data are credentialed).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .base import adapter
from .mimic4mm import MIMIC4MM, VARIABLES, _read

CAREVUE = {"HR": [211], "SysBP": [51, 442, 455, 6701], "DiasBP": [8368, 8440, 8441, 8555], "MAP": [52, 443, 456, 6702],
           "RespRate": [615, 618], "SpO2": [646], "TempC": [676], "GCS_eye": [184], "GCS_verbal": [723],
           "GCS_motor": [454], "FiO2": [190, 3420], "Weight": [762, 763, 3580, 3723], "UrineOut": [40055, 43175, 40069],
           "CVP": [113], "Glucose_chart": [807, 811, 1529, 3745]}


def _upper(path: Path, **kw) -> pd.DataFrame:
    df = _read(path, **kw)
    df.columns = [c.lower() for c in df.columns]
    return df


@adapter("mimic3")
class MIMIC3(MIMIC4MM):
    def _csv(self, name: str, **kw) -> pd.DataFrame:
        return _upper(self.root / f"{name}.csv.gz", **kw)

    @property
    def variables(self):
        base = self.options.get("variables") or VARIABLES
        return {k: (t, list(ids) + (CAREVUE.get(k, []) if t == "chart" else [])) for k, (t, ids) in base.items()}

    def icustays(self) -> pd.DataFrame:
        df = self._csv("ICUSTAYS", parse_dates=["INTIME", "OUTTIME"])
        return df.rename(columns={"icustay_id": "stay_id"})

    def admissions(self) -> pd.DataFrame:
        return self._csv("ADMISSIONS", parse_dates=["ADMITTIME", "DISCHTIME"])

    def patients(self, icu: pd.DataFrame) -> pd.DataFrame:
        pat = self._csv("PATIENTS", parse_dates=["DOB"])
        df = icu[["subject_id", "intime"]].merge(pat[["subject_id", "gender", "dob"]], on="subject_id")
        years = df["intime"].dt.year - df["dob"].dt.year
        df["anchor_age"] = np.where(years > 89, 90, years)
        return df.drop_duplicates("subject_id")[["subject_id", "gender", "anchor_age"]]

    def event_files(self) -> dict[str, Path]:
        return {"chart": self.root / "CHARTEVENTS.csv.gz", "lab": self.root / "LABEVENTS.csv.gz"}

    def event_columns(self) -> dict[str, str]:
        return {"hadm_id": "HADM_ID", "itemid": "ITEMID", "charttime": "CHARTTIME", "valuenum": "VALUENUM"}

    def radiology_notes(self) -> pd.DataFrame:
        n = self._csv("NOTEEVENTS", parse_dates=["CHARTDATE", "CHARTTIME"])
        n = n[n["category"].str.strip().str.lower() == "radiology"].copy()
        n["charttime"] = n["charttime"].fillna(n["chartdate"])
        return n[["hadm_id", "charttime", "text"]]
