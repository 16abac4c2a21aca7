"""Dataset adapters on the REAL public data in ../shared/data."""
import numpy as np
import pytest

from plugins.datasets.base import Failed, Missing, get_adapter
from stores.spec import load_spec


@pytest.fixture(scope="module")
def spec():
    return load_spec()


def test_openi_reports_labels_images(spec, data_root):
    a = get_adapter(spec.dataset("openi"), data_root)
    ids = a.ids()
    assert len(ids) == 3955 and ids[:3] == ["1", "2", "3"]
    y = a.labels()["findings"]
    assert y.shape == (3955, 14) and int((~np.isnan(y).any(1)).sum()) == 3337
    row3 = ids.index("3")
    front, lat = a.load("frontal", [row3])[0], a.load("lateral", [row3])[0]
    img = front["image"].get()                              # decoded lazily by the runner, a few rows at a time
    assert img.shape == (1, 3, 512, 512) and 0 <= img.min() and img.max() <= 1
    assert isinstance(lat, Missing) and "not on disk" in lat.reason          # absent image: MISSING, not an error
    notes = a.load("note", list(range(50)))
    assert all(isinstance(n, Missing) or n["text"].strip() for n in notes)
    split = a.split()
    counts = {s: split.count(s) for s in ("train", "val", "test")}
    assert abs(counts["train"] / 3955 - 0.65) < 0.01 and abs(counts["test"] / 3955 - 0.20) < 0.01
    assert split == a.split()                                                  # seeded


def test_physionet2012_reads_the_tar_directly(spec, data_root):
    a = get_adapter(spec.dataset("physionet2012"), data_root)
    ids = a.ids()
    assert len(ids) == 4000
    lab = a.labels()
    assert int(np.nansum(lab["mortality"])) == 554
    assert int(np.nansum(lab["los7"])) == 2869
    x = a.load("ehr", [0])[0]
    assert x["series"].shape == (48, 36) and np.isfinite(x["series"]).any()
    text = x["text"]
    assert text.startswith("Age: 54; Gender: female") and text.count(";") == 40 and "HR: " in text
    strat = np.array(a.split())
    y = lab["mortality"][:, 0]
    for part in ("train", "val", "test"):
        assert abs(np.nanmean(y[strat == part]) - 0.1385) < 0.02                # stratified by mortality


def test_physionet2012_demographics_is_the_admission_record(spec, data_root, tmp_path):
    """The tabular modality reads the 5 descriptors as fields (-1 = not recorded -> missing), also for a stay whose
    chart is empty (its ehr row fails); a record with no descriptor at all is Missing, a corrupt one Failed."""
    from test_reliability import write_set
    assert spec.dataset("physionet2012").modalities["demographics"].kind == "tabular"
    a = get_adapter(spec.dataset("physionet2012"), data_root)
    f = a.load("demographics", [0])[0]["fields"]
    assert f["categorical"] == {"Gender": "female", "ICUType": "surgical ICU"} and f["numeric"]["Age"] == 54
    assert np.isnan(f["numeric"]["Height"])                                   # recorded as -1 in record 132539
    recs = [("1", b"Time,Parameter,Value\n00:00,Age,70\n00:00,Height,-1\n"),          # no chart, a descriptor
            ("2", b"Time,Parameter,Value\n00:00,Age,-1\n00:05,HR,80\n"),              # chart, no descriptor
            ("3", b"Time,Parameter,Value\n00:00,Age,x\n"),                             # corrupt
            ("4", b"Time,Parameter,Value\n00:00,Gender,2\n00:00,ICUType,9\n")]        # unknown codes only
    write_set(tmp_path / "physionet2012", recs, "t")
    t = get_adapter(spec.dataset("physionet2012"), tmp_path, {"set": "t"})
    demo, ehr = t.load("demographics", [0, 1, 2, 3]), t.load("ehr", [0, 1, 2])
    assert demo[0]["fields"]["numeric"]["Age"] == 70 and np.isnan(demo[0]["fields"]["numeric"]["Height"])
    assert isinstance(ehr[0], Failed) and "all series are empty" in ehr[0].reason
    assert isinstance(demo[1], Missing) and "no descriptor" in demo[1].reason and "series" in ehr[1]
    assert isinstance(demo[2], Failed) and "'x' is not a number" in demo[2].reason
    assert isinstance(demo[3], Missing)


def test_physionet2012_set_is_chosen_by_name(spec, data_root):
    a = get_adapter(spec.dataset("physionet2012"), data_root, {"set": "b"})
    with pytest.raises(FileNotFoundError, match="set-b.tar.gz"):
        a.ids()


def test_mmist_official_split_note_and_owner_features(spec, data_root):
    a = get_adapter(spec.dataset("mmist"), data_root)
    ids = a.ids()
    assert len(ids) == 618
    split = a.split()
    official = a.official_split()
    assert sum(s == "test" for s in split) == 121 == sum(s == "test" for s in official)
    assert all(o == "train" for s, o in zip(split, official) if s == "val")   # val carved from train only
    assert 60 <= sum(s == "val" for s in split) <= 90
    notes = a.load("note", list(range(618)))
    assert all("vital" not in n["text"].lower() and "train" not in n["text"] for n in notes)
    ct = a.load("ct", list(range(618)))
    have_ct = [c for c in ct if not isinstance(c, (Missing, Failed))]
    assert len(have_ct) == 239 and have_ct[0]["features"].shape == (512,)
    wsi = a.load("wsi", list(range(618)))
    assert sum(not isinstance(w, (Missing, Failed)) for w in wsi) == 618
    mri = a.load("mri", list(range(618)))
    assert sum(not isinstance(m, (Missing, Failed)) for m in mri) == 52


def test_missing_data_folder_is_named(spec, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        get_adapter(spec.dataset("openi"), tmp_path)
