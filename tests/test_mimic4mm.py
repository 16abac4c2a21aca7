"""MIMIC-IV-MM adapter on a small fixture written in the official PhysioNet column layout (the real data are
credentialed and not here)."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from plugins.datasets.base import Missing, get_adapter
from stores.spec import load_spec


@pytest.fixture
def mimic_root(tmp_path):
    root = tmp_path / "mimic-iv"
    for d in ("hosp", "icu", "mimic-cxr-jpg", "mimic-iv-note/note"):
        (root / d).mkdir(parents=True)
    def w(df, rel):
        df.to_csv(root / rel, index=False, compression="gzip")
    w(pd.DataFrame({"subject_id": [10000032, 10000033], "gender": ["F", "M"], "anchor_age": [52, 70],
                    "anchor_year": [2180, 2150], "anchor_year_group": ["2014 - 2016", "2008 - 2010"], "dod": [None, "2150-03-02"]}),
      "hosp/patients.csv.gz")
    w(pd.DataFrame({"subject_id": [10000032, 10000032, 10000033], "hadm_id": [22595853, 22841357, 29079034],
                    "admittime": ["2180-05-06 22:23:00", "2180-06-10 08:00:00", "2150-02-20 10:00:00"],
                    "dischtime": ["2180-05-20 17:15:00", "2180-06-15 12:00:00", "2150-03-02 09:00:00"],
                    "deathtime": [None, None, "2150-03-02 09:00:00"], "admission_type": ["URGENT"] * 3,
                    "admit_provider_id": ["P1"] * 3, "admission_location": ["ER"] * 3, "discharge_location": ["HOME"] * 3,
                    "insurance": ["Other"] * 3, "language": ["ENGLISH"] * 3, "marital_status": ["WIDOWED"] * 3,
                    "race": ["WHITE"] * 3, "edregtime": [None] * 3, "edouttime": [None] * 3,
                    "hospital_expire_flag": [0, 0, 1]}), "hosp/admissions.csv.gz")
    w(pd.DataFrame({"subject_id": [10000032, 10000032, 10000033], "hadm_id": [22595853, 22841357, 29079034],
                    "stay_id": [39553978, 39553979, 30000001], "first_careunit": ["MICU"] * 3, "last_careunit": ["MICU"] * 3,
                    "intime": ["2180-05-07 00:00:00", "2180-06-10 10:00:00", "2150-02-20 12:00:00"],
                    "outtime": ["2180-05-16 00:00:00", "2180-06-12 10:00:00", "2150-03-01 12:00:00"], "los": [9.0, 2.0, 10.0]}),
      "icu/icustays.csv.gz")
    w(pd.DataFrame({"subject_id": [10000032] * 4, "hadm_id": [22595853] * 4, "stay_id": [39553978] * 4,
                    "caregiver_id": [1] * 4,
                    "charttime": ["2180-05-07 00:10:00", "2180-05-07 00:40:00", "2180-05-07 05:00:00", "2180-05-10 00:00:00"],
                    "storetime": ["2180-05-07 01:00:00"] * 4, "itemid": [220045, 220045, 220045, 220045],
                    "value": ["80", "90", "100", "120"], "valuenum": [80, 90, 100, 120], "valueuom": ["bpm"] * 4,
                    "warning": [0] * 4}), "icu/chartevents.csv.gz")
    w(pd.DataFrame({"labevent_id": [1, 2], "subject_id": [10000032, 10000033], "hadm_id": [22595853, 29079034],
                    "specimen_id": [1, 2], "itemid": [50912, 50912], "order_provider_id": [None, None],
                    "charttime": ["2180-05-07 03:00:00", "2150-02-21 00:00:00"], "storetime": [None, None],
                    "value": ["1.2", "2.5"], "valuenum": [1.2, 2.5], "valueuom": ["mg/dL"] * 2, "ref_range_lower": [0.5] * 2,
                    "ref_range_upper": [1.2] * 2, "flag": [None, "abnormal"], "priority": ["ROUTINE"] * 2,
                    "comments": [None, None]}), "hosp/labevents.csv.gz")
    w(pd.DataFrame({"dicom_id": ["abc-1", "abc-2"], "subject_id": [10000032, 10000032], "study_id": [50414267, 50414267],
                    "PerformedProcedureStepDescription": ["CHEST (PA AND LAT)"] * 2, "ViewPosition": ["PA", "LATERAL"],
                    "Rows": [64, 64], "Columns": [64, 64], "StudyDate": ["21800507", "21800507"],
                    "StudyTime": ["101500.000", "101600.000"], "ProcedureCodeSequence_CodeMeaning": ["CHEST"] * 2,
                    "ViewCodeSequence_CodeMeaning": ["postero-anterior", "lateral"],
                    "PatientOrientationCodeSequence_CodeMeaning": ["Erect"] * 2}), "mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv.gz")
    img = root / "mimic-cxr-jpg/files/p10/p10000032/s50414267"
    img.mkdir(parents=True)
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 2, (64, 1))).save(img / "abc-1.jpg")   # not blank
    w(pd.DataFrame({"note_id": ["10000032-RR-1", "10000032-RR-2"], "subject_id": [10000032] * 2,
                    "hadm_id": [22595853] * 2, "note_type": ["RR"] * 2, "note_seq": [1, 2],
                    "charttime": ["2180-05-07 11:00:00", "2180-05-12 11:00:00"], "storetime": [None] * 2,
                    "text": ["FINDINGS: no focal consolidation.", "later report"]}), "mimic-iv-note/note/radiology.csv.gz")
    return tmp_path


def test_mimic4mm_stays_tasks_ehr_cxr_notes(mimic_root):
    a = get_adapter(load_spec().dataset("mimic4mm"), mimic_root)
    assert a.ids() == ["30000001", "39553978", "39553979"]
    lab = a.labels()
    np.testing.assert_array_equal(lab["mortality"][:, 0], [1, 0, 0])
    np.testing.assert_array_equal(lab["los7"][:, 0], [1, 1, 0])
    r = lab["readmission30"][:, 0]
    assert np.isnan(r[0]) and r[1] == 1 and r[2] == 0           # died: unknown; readmitted after 21 days; last
    ehr = a.load("ehr", [0, 1, 2])
    s = ehr[1]["series"]
    hr = list(a.variables).index("HR")
    assert s.shape == (48, len(a.variables)) and s[0, hr] == 85 and s[5, hr] == 100 and np.isnan(s[1, hr])
    assert (s[:, hr][np.isfinite(s[:, hr])] != 120).all()     # charted after 48 h: excluded
    assert "HR: 100" in ehr[1]["text"] and "Creatinine: 1.2" in ehr[1]["text"]
    assert isinstance(ehr[2], Missing) and "Creatinine: 2.5" in ehr[0]["text"]
    front, lat = a.load("frontal", [1])[0], a.load("lateral", [1])[0]
    assert front["image"].get().shape == (1, 3, 64, 64) and isinstance(lat, Missing) and "not on disk" in lat.reason
    notes = a.load("note", [1, 2])
    assert notes[0]["text"] == "FINDINGS: no focal consolidation." and isinstance(notes[1], Missing)


def test_mimic3_layout_for_external_validation(tmp_path):
    root = tmp_path / "mimic-iii"
    root.mkdir()
    def w(df, name):
        df.to_csv(root / f"{name}.csv.gz", index=False, compression="gzip")
    w(pd.DataFrame({"ROW_ID": [1, 2], "SUBJECT_ID": [1, 2], "GENDER": ["M", "F"], "DOB": ["2100-01-01", "1800-01-01"],
                    "DOD": [None, None], "DOD_HOSP": [None, None], "DOD_SSN": [None, None], "EXPIRE_FLAG": [0, 0]}), "PATIENTS")
    w(pd.DataFrame({"ROW_ID": [1, 2], "SUBJECT_ID": [1, 2], "HADM_ID": [100, 200],
                    "ADMITTIME": ["2160-01-01 00:00:00", "2101-01-01 00:00:00"],
                    "DISCHTIME": ["2160-01-10 00:00:00", "2101-01-05 00:00:00"], "DEATHTIME": [None, "2101-01-05 00:00:00"],
                    "ADMISSION_TYPE": ["EMERGENCY"] * 2, "ADMISSION_LOCATION": ["ER"] * 2, "DISCHARGE_LOCATION": ["HOME"] * 2,
                    "INSURANCE": ["Medicare"] * 2, "LANGUAGE": ["ENGL"] * 2, "RELIGION": ["NONE"] * 2,
                    "MARITAL_STATUS": ["SINGLE"] * 2, "ETHNICITY": ["WHITE"] * 2, "EDREGTIME": [None] * 2,
                    "EDOUTTIME": [None] * 2, "DIAGNOSIS": ["SEPSIS"] * 2, "HOSPITAL_EXPIRE_FLAG": [0, 1],
                    "HAS_CHARTEVENTS_DATA": [1, 1]}), "ADMISSIONS")
    w(pd.DataFrame({"ROW_ID": [1, 2], "SUBJECT_ID": [1, 2], "HADM_ID": [100, 200], "ICUSTAY_ID": [1000, 2000],
                    "DBSOURCE": ["carevue", "metavision"], "FIRST_CAREUNIT": ["MICU"] * 2, "LAST_CAREUNIT": ["MICU"] * 2,
                    "FIRST_WARDID": [1, 1], "LAST_WARDID": [1, 1], "INTIME": ["2160-01-01 02:00:00", "2101-01-01 02:00:00"],
                    "OUTTIME": ["2160-01-09 02:00:00", "2101-01-04 02:00:00"], "LOS": [8.0, 3.0]}), "ICUSTAYS")
    w(pd.DataFrame({"ROW_ID": [1, 2], "SUBJECT_ID": [1, 2], "HADM_ID": [100, 200], "ICUSTAY_ID": [1000, 2000],
                    "ITEMID": [211, 220045], "CHARTTIME": ["2160-01-01 03:30:00", "2101-01-01 02:10:00"],
                    "STORETIME": [None, None], "CGID": [1, 1], "VALUE": ["77", "66"], "VALUENUM": [77, 66],
                    "VALUEUOM": ["bpm"] * 2, "WARNING": [0, 0], "ERROR": [0, 0], "RESULTSTATUS": [None, None],
                    "STOPPED": [None, None]}), "CHARTEVENTS")
    w(pd.DataFrame({"ROW_ID": [1], "SUBJECT_ID": [1], "HADM_ID": [100], "ITEMID": [50912],
                    "CHARTTIME": ["2160-01-01 05:00:00"], "VALUE": ["0.9"], "VALUENUM": [0.9], "VALUEUOM": ["mg/dL"],
                    "FLAG": [None]}), "LABEVENTS")
    w(pd.DataFrame({"ROW_ID": [1, 2], "SUBJECT_ID": [1, 1], "HADM_ID": [100, 100], "CHARTDATE": ["2160-01-01", "2160-01-02"],
                    "CHARTTIME": [None, "2160-01-02 01:00:00"], "STORETIME": [None, None],
                    "CATEGORY": ["Radiology", "Nursing"], "DESCRIPTION": ["CHEST (PORTABLE AP)", "note"], "CGID": [None, None],
                    "ISERROR": [None, None], "TEXT": ["IMPRESSION: no pneumothorax.", "nursing text"]}), "NOTEEVENTS")
    spec = load_spec()
    a = get_adapter(spec.dataset("mimic3"), tmp_path)
    assert a.ids() == ["1000", "2000"] and a.split() == ["test", "test"]
    np.testing.assert_array_equal(a.labels()["mortality"][:, 0], [0, 1])
    ehr = a.load("ehr", [0, 1])
    hr = list(a.variables).index("HR")
    assert ehr[0]["series"][1, hr] == 77 and ehr[1]["series"][0, hr] == 66     # CareVue 211 and MetaVision 220045
    assert ehr[0]["text"].startswith("Age: 60; Gender: M") and ehr[1]["text"].startswith("Age: 90")
    notes = a.load("note", [0, 1])
    assert notes[0]["text"] == "IMPRESSION: no pneumothorax." and isinstance(notes[1], Missing)
