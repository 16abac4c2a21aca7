"""Your own cohort with no code: the manifest adapter (one table + files), `extract init`, a config holding only its
datasets (the packaged profiles apply), `--limit` as a label-stratified sample, and adapters from other packages."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from plugins.datasets.base import Failed, Missing, get_adapter
from stores.spec import SpecError, load_spec

EVENTS_HHMM = "Time,Parameter,Value\n00:00,HR,80\n00:30,HR,90\n01:15,HR,100\n02:00,Temp,37.5\n"
EVENTS_HOURS = "time,variable,value\n0,HR,80\n0.5,HR,90\n1.25,HR,100\n2,Temp,37.5\n"
EVENTS_STAMPS = ("time,variable,value\n2024-03-01 08:00,HR,80\n2024-03-01 08:30,HR,90\n2024-03-01 09:15,HR,100\n"
                 "2024-03-01T10:00,Temp,37.5\n")


def _write(folder: Path, rows: list[dict], name: str = "cohort.csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t" if name.endswith(".tsv") else ",")
        w.writeheader()
        w.writerows(rows)
    return folder / name


def _config(tmp_path: Path, table: Path, modalities: dict, options: dict | None = None, tasks=None,
            split=None) -> Path:
    """A user's config: only the dataset (the packaged profiles apply)."""
    block = {"adapter": "manifest", "path": str(table), "tasks": tasks or {"outcome": {"type": "binary"}},
             "split": split or {"method": "official", "val_fraction": 0.3, "seed": 0, "stratify": "outcome"},
             "modalities": modalities, "options": {"split_column": "split", **(options or {})}}
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump({"defaults": {"store_root": str(tmp_path / "stores")},
                                    "datasets": {"cohort": block}}))
    return path


def _adapter(config: Path, data_root: Path, options: dict | None = None):
    spec = load_spec(config)
    return get_adapter(spec.dataset("cohort"), data_root, options)


@pytest.fixture
def cohort(tmp_path, data_root):
    folder = tmp_path / "cohort"
    (folder / "ehr").mkdir(parents=True)
    (folder / "notes").mkdir()
    (folder / "ehr" / "a.csv").write_text(EVENTS_HHMM)
    (folder / "ehr" / "b.csv").write_text(EVENTS_HOURS)
    (folder / "ehr" / "c.csv").write_text(EVENTS_STAMPS)
    (folder / "ehr" / "bad.csv").write_text("time,variable,value\n00:00,HR,80\n00:30,HR,abc\n")
    (folder / "notes" / "d.txt").write_text("no acute cardiopulmonary process")
    (folder / "xray.png").symlink_to(data_root / "openi" / "CXR3_IM-1384-1001.png")
    (tmp_path / "outside.txt").write_text("a file outside the manifest's folder")
    rows = [
        {"id": "p1", "split": "train", "outcome": "yes", "note": "mild cardiomegaly, no effusion", "ehr": "ehr/a.csv",
         "cxr": "xray.png", "age": "61", "sex": "F"},
        {"id": "p2", "split": "train", "outcome": "no", "note": "", "ehr": "ehr/b.csv", "cxr": "", "age": "",
         "sex": ""},
        {"id": "p3", "split": "val", "outcome": "1", "note": "notes/d.txt", "ehr": "ehr/c.csv", "cxr": "gone.png",
         "age": "70", "sex": ""},
        {"id": "p4", "split": "test", "outcome": "0", "note": "../outside.txt", "ehr": "ehr/bad.csv",
         "cxr": "/etc/hostname.png", "age": "45", "sex": "M"},
        {"id": "p5", "split": "Test", "outcome": "", "note": "clear lungs", "ehr": "", "cxr": "", "age": "50",
         "sex": "M"},
    ]
    table = _write(folder, rows)
    mods = {"note": {"kind": "note"}, "ehr": {"kind": "ehr", "preprocess": {"hours": 4}}, "cxr": {"kind": "cxr"},
            "clinical": {"kind": "tabular",
                         "experts": {"offline": {"tabular": {"model": "tabular", "role": "classical", "view": "fields"}}}}}
    opts = {"fields": {"clinical": {"numeric": ["age"], "categorical": ["sex"]}}}
    return _config(tmp_path, table, mods, opts), table


def test_rows_are_ok_missing_or_failed_with_the_file_named(cohort, data_root):
    config, table = cohort
    ad = _adapter(config, data_root)
    assert ad.ids() == ["p1", "p2", "p3", "p4", "p5"]
    notes = ad.load("note", range(5))
    assert notes[0] == {"text": "mild cardiomegaly, no effusion"}
    assert isinstance(notes[1], Missing)
    assert notes[2] == {"text": "no acute cardiopulmonary process"}                 # a .txt cell is read
    assert isinstance(notes[3], Failed) and "points outside" in notes[3].reason     # ../ refused, never read
    cxr = ad.load("cxr", range(5))
    assert cxr[0]["image"].get().shape[:2] == (1, 3) and isinstance(cxr[1], Missing)
    assert isinstance(cxr[2], Failed) and "cohort.csv: sample p3: cxr gone.png: file not found" in cxr[2].reason
    assert isinstance(cxr[3], Failed) and "points outside" in cxr[3].reason          # an absolute path is refused
    fields = ad.load("clinical", range(5))
    assert fields[0] == {"fields": {"numeric": {"age": 61.0}, "categorical": {"sex": "F"}}}
    assert isinstance(fields[1], Missing) and fields[2]["fields"]["categorical"] == {"sex": None}


def test_events_tables_in_three_time_formats_give_the_same_views(cohort, data_root):
    ad = _adapter(cohort[0], data_root)
    a, b, c, bad, empty = ad.load("ehr", range(5))
    assert ad._variables("ehr") == ["HR", "Temp"]              # every variable in the column's files
    for other in (b, c):
        np.testing.assert_array_equal(a["series"], other["series"])
        assert a["text"] == other["text"] == "HR: 100; Temp: 37.5"
    assert a["series"].shape == (4, 2) and a["series"][0, 0] == 85 and np.isnan(a["series"][3]).all()
    np.testing.assert_allclose(a["events"]["variables"]["HR"][0], [0, 0.5, 1.25])
    assert isinstance(bad, Failed) and bad.reason.startswith("cohort.csv: sample p4: ehr ehr/bad.csv: line 3: HR")
    assert isinstance(empty, Missing)


def test_labels_split_column_and_bad_cells(cohort, data_root, tmp_path):
    ad = _adapter(cohort[0], data_root)
    y = ad.labels()["outcome"][:, 0]
    assert y[:4].tolist() == [1, 0, 1, 0] and np.isnan(y[4])
    assert ad.split() == ["train", "train", "val", "test", "test"]      # as written (case-insensitive)
    rows = [{"id": f"s{i}", "split": "train" if i < 8 else "test", "grade": "G1 G2 G3".split()[i % 3]}
            for i in range(10)]
    table = _write(tmp_path / "mc", rows)
    cfg = _config(tmp_path, table, {}, tasks={"grade": {"type": "multiclass", "labels": ["G1", "G2", "G3"]}},
                  split={"method": "official", "val_fraction": 0.25, "seed": 0})
    ad = _adapter(cfg, data_root)
    assert ad.labels()["grade"][:3].tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    split = ad.split()                                 # no validation rows: carved from train (val_fraction)
    assert split.count("val") == 2 and split.count("train") == 6 and split[8:] == ["test", "test"]
    ml = [{"id": f"m{i}", "split": "train", "effusion": ["1", "0", ""][i % 3], "edema": ["no", "yes", "yes"][i % 3]}
          for i in range(3)]
    cfg_ml = _config(tmp_path / "ml", _write(tmp_path / "ml", ml), {}, split={"method": "official", "val_fraction": 0.3},
                     tasks={"findings": {"type": "multilabel", "labels": ["effusion", "edema"]}})
    y = _adapter(cfg_ml, data_root).labels()["findings"]          # multilabel: one 0/1 column per label
    assert y[:2].tolist() == [[1, 0], [0, 1]] and np.isnan(y[2, 0]) and y[2, 1] == 1
    rows[4]["grade"] = "G9"
    _write(tmp_path / "mc", rows)
    with pytest.raises(ValueError, match=r"cohort.csv: sample s4: grade 'G9' is not one of"):
        _adapter(cfg, data_root).labels()
    rows[4]["id"] = "s3"
    _write(tmp_path / "mc", rows)
    with pytest.raises(ValueError, match="id 's3' appears more than once"):
        _adapter(cfg, data_root).ids()


def test_a_missing_column_and_parquet_without_pyarrow_are_one_line_errors(cohort, data_root, tmp_path, monkeypatch):
    config, table = cohort
    raw = yaml.safe_load(config.read_text())
    raw["datasets"]["cohort"]["modalities"]["ct"] = {"kind": "ct"}
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=r"cohort.csv: no column 'ct' \(columns: id, split"):
        _adapter(config, data_root).ids()
    pq = tmp_path / "cohort.parquet"
    pq.write_bytes(b"PAR1")
    import importlib.util
    from plugins.datasets import manifest
    real = importlib.util.find_spec
    monkeypatch.setattr(manifest.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("pyarrow", "fastparquet") else real(name, *a))
    with pytest.raises(ValueError, match="reading Parquet needs the package pyarrow"):
        manifest.read_table(pq)


def test_a_parquet_manifest_reads_as_its_csv(cohort, data_root, tmp_path):
    """The same cohort saved as Parquet (typed columns: integers with empty cells, strings with nulls) gives the
    same ids, split, labels and rows; a damaged Parquet file is one line naming it."""
    pytest.importorskip("pyarrow")
    import pandas as pd
    from plugins.datasets.manifest import read_table
    config, table = cohort
    frame = pd.read_csv(table, dtype=str, keep_default_na=False)
    frame["age"] = pd.array([int(a) if a else None for a in frame["age"]], dtype="Int64")
    frame = frame.replace("", None)
    pq = table.with_suffix(".parquet")
    frame.to_parquet(pq)
    assert read_table(pq).to_dict("records") == read_table(table).to_dict("records")
    raw = yaml.safe_load(config.read_text())
    raw["datasets"]["cohort"]["path"] = str(pq)
    (tmp_path / "pq.yaml").write_text(yaml.safe_dump(raw))
    a, b = _adapter(config, data_root), _adapter(tmp_path / "pq.yaml", data_root)
    assert a.ids() == b.ids() and a.split() == b.split()
    np.testing.assert_array_equal(a.labels()["outcome"], b.labels()["outcome"])
    for m in ("note", "ehr", "cxr"):
        assert [type(x).__name__ for x in a.load(m, range(5))] == [type(x).__name__ for x in b.load(m, range(5))]
    pq.write_bytes(b"PAR1 not a table")
    with pytest.raises(ValueError, match=r"cohort.parquet: not a readable Parquet table"):
        read_table(pq)
    pd.DataFrame({"id": ["a"], "scans": [["x.nii", "y.nii"]]}).to_parquet(pq)
    with pytest.raises(ValueError, match=r"column 'scans' holds lists or records; a manifest cell is one value"):
        read_table(pq)
    pd.DataFrame({"id": pd.Series([], dtype="string")}).to_parquet(pq)
    assert read_table(pq).empty                                            # as an empty CSV: no rows, no crash


def test_dicom_radiograph_is_read_under_the_image_rules(cohort, data_root, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    from plugins.datasets.manifest import dicom_image
    meta = FileMetaDataset()
    meta.TransferSyntaxUID, meta.MediaStorageSOPClassUID = ExplicitVRLittleEndian, generate_uid()
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset(str(tmp_path / "x.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    img = (np.arange(600 * 500) % 4096).reshape(600, 500).astype(np.uint16)
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 600, 500, 16, 12, 11
    ds.SamplesPerPixel, ds.PixelRepresentation, ds.PhotometricInterpretation = 1, 0, "MONOCHROME2"
    ds.PixelData = img.tobytes()
    ds.save_as(str(tmp_path / "x.dcm"), enforce_file_format=True)
    x = dicom_image(tmp_path / "x.dcm", {"size": 100})
    assert x.shape == (1, 3, 300, 250) and 0 <= x.min() < x.max() <= 1     # box-reduced by 2, short side >= 200
    ds.PixelData = np.zeros_like(img).tobytes()
    ds.save_as(str(tmp_path / "x.dcm"), enforce_file_format=True)
    with pytest.raises(ValueError, match="blank image"):
        dicom_image(tmp_path / "x.dcm", {})
    assert pydicom


def test_init_guesses_kinds_tasks_split_and_fields(tmp_path, data_root, capsys):
    from extract.__main__ import main
    folder = tmp_path / "c"
    (folder / "ehr").mkdir(parents=True)
    (folder / "ehr" / "a.csv").write_text(EVENTS_HHMM)
    (folder / "vol").mkdir()                             # a DICOM-series folder
    (folder / "slide.svs").symlink_to(data_root / "wsi" / "CMU-1-Small-Region.svs")
    rows = [{"patient": f"p{i}", "fold": ["train", "train", "val", "test"][i % 4], "stage": "I II III".split()[i % 3],
             "dead": "yes" if i % 2 else "no", "report": "small nodule in the right lower lobe" if i else "",
             "vitals": "ehr/a.csv", "ct": "vol" if i == 1 else "", "slide": "slide.svs" if i == 2 else "",
             "brain_t1": "vol" if i == 3 else "", "age": str(40 + i), "site": "A" if i % 2 else "B", "scanner": ""}
            for i in range(8)]
    table = _write(folder, rows, "cohort.tsv")
    out = tmp_path / "my.yaml"
    argv = ["init", "--manifest", str(table), "--dataset", "mine", "--labels", "dead,stage", "--id-column",
            "patient", "--kind", "site=ignore", "--out", str(out)]
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "label dead: binary (values no, yes)" in said and "label stage: multiclass (3 classes: I, II, III)" in said
    assert "column report: note (free text inline" in said and "column scanner: ignore (every cell is empty)" in said
    ds = load_spec(out).dataset("mine")
    assert "column brain_t1: mri (" in said and "the column name 'brain_t1' says MRI" in said
    assert {m: s.kind for m, s in ds.modalities.items()} == {"report": "note", "vitals": "ehr", "ct": "ct",
                                                             "slide": "wsi", "brain_t1": "mri", "clinical": "tabular"}
    assert ds.options["split_column"] == "fold" and ds.options["variables"] == {"vitals": ["HR", "Temp"]}
    assert ds.options["fields"] == {"clinical": {"numeric": ["age"], "categorical": []}}
    assert ds.tasks["stage"].labels == ["I", "II", "III"] and ds.split.stratify == "dead"
    assert main(argv) == 2 and "exists (pass --force" in capsys.readouterr().err
    assert main([*argv[:-2], "--kind", "age=xray", "--out", str(tmp_path / "b.yaml")]) == 2


def test_a_config_with_only_datasets_takes_the_packaged_profiles(cohort, tmp_path):
    config, _ = cohort
    packaged = load_spec(Path(__file__).resolve().parent.parent / "pipelines.yaml")
    spec = load_spec(config)
    assert spec.profiles == packaged.profiles and "openi" in spec.datasets and "cohort" in spec.datasets
    assert Path(spec.defaults.model_cache).is_absolute() and spec.defaults.store_root == str(tmp_path / "stores")
    raw = yaml.safe_load(config.read_text())       # profile overrides are laid over the packaged profile, key by key
    raw["profiles"] = {"offline": {"models": {"minilm": {"batch_size": 4}},
                                   "kinds": {"ct": {"experts": {"astra": {"params": {"width": 8}}}}}}}
    config.write_text(yaml.safe_dump(raw))
    spec = load_spec(config)
    assert spec.profiles["offline"].models["minilm"].batch_size == 4
    ct = spec.profiles["offline"].kinds["ct"].experts
    assert ct["astra"].params == {"width": 8} and ct["astra"].model == "astra_ct" and "effnet" in ct
    assert spec.profiles["paper"] == packaged.profiles["paper"]
    raw["profiles"]["offline"]["kinds"]["ct"]["experts"]["astra"]["modle"] = "x"
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match=r"my.yaml: profiles.offline.kinds.ct.experts.astra.modle: unknown key"):
        load_spec(config)


def test_limit_is_a_label_stratified_sample_that_train_finds(spec_writer, data_root, tmp_path):
    """--limit 40 on PhysioNet: every split non-empty with both classes, recorded in the store; `train --limit 40`
    reads that store."""
    from extract.pipeline import extract_dataset
    from plugins.datasets.base import sample_rows
    from stores.store import Store
    from train.__main__ import _default_store
    with pytest.raises(ValueError, match="at least 3 samples are needed to keep every split"):
        sample_rows(["train", "val", "test", "train"], np.zeros(4, int), 2)
    config = spec_writer(lambda raw: raw["defaults"].update(chunk_rows=16))
    extract_dataset("physionet2012", config=str(config), data_root=str(data_root), modalities=["ehr"],
                    experts=["stats"], limit=40, rag=False, progress=False)
    path = Path(_default_store("physionet2012", None, None, str(config), 40))
    assert path.name == "physionet2012-limit40.zarr" and path.exists()
    st = Store(path)
    split = np.asarray(st.split())
    y = st.labels()["mortality"][0][:, 0]
    assert st.n == 40 and st.meta["limit"] == 40
    for code in np.unique(split):
        assert set(y[split == code].tolist()) == {0.0, 1.0}          # both classes in train, val and test
    assert len(np.unique(split)) == 3
    assert st.meta["adapter"]["sample"]["per_split"] == {"train": 28, "val": 6, "test": 6}
    full = get_adapter(load_spec(config).dataset("physionet2012"), data_root)
    rows = [full.ids().index(i) for i in st.ids()]
    assert np.array_equal(full.labels()["mortality"][rows, 0], y)      # each stored label is its sample's own
    assert st.expert_group("ehr", "stats").group["valid"][:].sum() > 30


def test_an_adapter_from_another_installed_package_is_found_by_entry_point(tmp_path, monkeypatch, data_root):
    """A third-party package (a module + a dist-info with a `medmix.datasets` entry point) on sys.path."""
    from plugin_package import install_plugin
    from plugins.datasets.base import ADAPTERS
    install_plugin(tmp_path, monkeypatch, "acme_cohorts",
                   "import numpy as np\nfrom plugins.datasets.base import DatasetAdapter\n\n"
                   "class Registry(DatasetAdapter):\n"
                   "    '''ACME's registry export'''\n"
                   "    def ids(self):\n        return ['a', 'b']\n"
                   "    def labels(self):\n        return {'outcome': np.array([[0.0], [1.0]], np.float32)}\n"
                   "    def load(self, modality, rows):\n        return [{'text': f'patient {r}'} for r in rows]\n",
                   "medmix.datasets", "acme = acme_cohorts:Registry", ADAPTERS)
    try:
        assert "acme" in ADAPTERS and ADAPTERS["acme"].__module__ == "acme_cohorts"
        assert ADAPTERS["acme"].name == "acme"              # known by its entry point's name (reasons, provenance)
        rows = [{"id": "x"}]
        table = _write(tmp_path / "d", rows)
        cfg = _config(tmp_path, table, {"note": {"kind": "note"}}, options={})
        raw = yaml.safe_load(cfg.read_text())
        raw["datasets"]["cohort"].update(adapter="acme", options={}, path=str(tmp_path / "d"))
        cfg.write_text(yaml.safe_dump(raw))
        ad = _adapter(cfg, data_root)
        assert ad.ids() == ["a", "b"] and ad.load("note", [1]) == [{"text": "patient 1"}]
    finally:
        ADAPTERS.remove("acme")
        sys.modules.pop("acme_cohorts", None)


def test_an_mri_column_is_sliced_at_its_own_intensity_percentiles(tmp_path, data_root):
    """MRI has no physical unit: the HU window would saturate it, so each volume is windowed at its own intensity
    percentiles (preprocess.percentiles), through the same 2.5D path as CT; the offline profile embeds it."""
    import nibabel as nib
    from plugins.readers.ct import ct_slices_25d
    from stores.spec import load_spec as spec_of
    rng = np.random.default_rng(0)
    vol = np.zeros((40, 48, 48), np.float32)
    vol[5:35, 8:40, 8:40] = rng.gamma(4.0, 400.0, size=(30, 32, 32))            # T1-like: 0 .. ~5000, no unit
    folder = tmp_path / "mr"
    folder.mkdir()
    nib.save(nib.Nifti1Image(np.transpose(vol, (2, 1, 0)), np.eye(4)), folder / "brain.nii.gz")
    rows = [{"id": f"m{i}", "split": ["train", "val", "test"][i % 3], "outcome": str(i % 2),
             "brain_t1": "brain.nii.gz" if i == 0 else ""} for i in range(6)]
    config = _config(tmp_path, _write(folder, rows), {"brain_t1": {"kind": "mri"}})
    spec = spec_of(config)
    assert "effnet" in spec.experts_for("cohort", "brain_t1", "offline")
    x = _adapter(config, data_root).load("brain_t1", [0])[0]["image"].get()
    assert x.shape == (48, 3, 224, 224) and 0 <= x.min() and x.max() <= 1
    middle = x[20, 0]
    assert (middle >= 0.999).mean() < 0.05 < (middle > 0.2).mean()         # spread over [0, 1], not saturated
    assert (ct_slices_25d(vol)[20, 0] >= 0.999).mean() > 0.15                # what the HU window would have done
