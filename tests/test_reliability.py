"""Issue 13: one bad record fails one row (never a unit, a dataset or a rerun), garbage input is failed with a
reason, memory stays bounded whatever the images, and the store proves its integrity. Fixture files are written
here (real PhysioNet records copied into a new set, with corrupt ones planted); every path is the real one."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plugins.datasets.base import Failed, Missing, get_adapter
from plugins.inputs import check_input, check_text
from extract.pipeline import extract_dataset
from extract.run.context import clear_caches
from stores.__main__ import main as stores_main
from stores.spec import load_spec
from stores.store import FAILED, MISSING, OK, Store, StoreError
from stores.verify import check, verify
from tiny_models import png_of_zeros

ROOT = Path(__file__).resolve().parent.parent
REAL = Path("/work/shared/data") if Path("/work/shared/data/physionet2012").exists() else None


# ---- fixtures ---------------------------------------------------------------------------------------------------
def _real_records(data_root: Path, n: int) -> list[tuple[str, bytes]]:
    out = []
    with tarfile.open(data_root / "physionet2012" / "set-a.tar.gz", "r:gz") as tar:
        for m in tar:
            if m.isfile() and m.name.endswith(".txt"):
                out.append((m.name.rsplit("/", 1)[-1][:-4], tar.extractfile(m).read()))
                if len(out) == n:
                    break
    return out


def write_set(folder: Path, records: list[tuple[str, bytes]], name: str = "d") -> None:
    """set-<name>.tar.gz + Outcomes-<name>.txt in the challenge's layout."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / f"set-{name}.tar.gz", "w:gz") as tar:
        for rid, data in records:
            info = tarfile.TarInfo(f"set-{name}/{rid}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    lines = ["RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death"]
    lines += [f"{rid},1,1,{5 + k % 5},-1,{int(k % 7 == 0)}" for k, (rid, _) in enumerate(records)]
    (folder / f"Outcomes-{name}.txt").write_text("\n".join(lines) + "\n")


HEADER = b"Time,Parameter,Value\n00:00,RecordID,{rid}\n00:00,Age,60\n00:00,Gender,1\n"


def record(rid: str, body: bytes) -> tuple[str, bytes]:
    return rid, HEADER.replace(b"{rid}", rid.encode()) + b"00:07,HR,80\n01:10,HR,90\n" + body




def _group_rows(path, modality, expert):
    g = Store(path).expert_group(modality, expert)
    return g.group["valid"][:], [str(r) for r in g.group["reason"][:]], g.group["vectors"][:]


def _run(spec, root, store, **kw):
    clear_caches()
    return extract_dataset("physionet2012", config=str(spec), data_root=str(root), store=str(store),
                           options={"set": "d"}, rag=False, progress=False, **kw)


# ---- §1 one bad record ------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_one_corrupt_record_among_95_fails_one_row(ehr_spec, data_root, tmp_path, workers):
    records = _real_records(data_root, 94)
    bad = HEADER.replace(b"{rid}", b"900012") + b"00:10,HR,8" + b"\xff\xfe" + b"0\n"
    records.insert(40, ("900012", bad))
    write_set(tmp_path / "data" / "physionet2012", records)
    s = _run(ehr_spec, tmp_path / "data", tmp_path / "s.zarr", workers=workers)
    ok = {"ehr/fracast": 94, "ehr/bert": 94, "demographics/tabular": 94}      # the record fails in every modality
    assert s.done == ok and s.failed == dict.fromkeys(ok, 1)
    assert not s.unit_errors
    valid, reasons, vec = _group_rows(tmp_path / "s.zarr", "ehr", "fracast")
    row = Store(tmp_path / "s.zarr").ids().index("900012")
    assert valid[row] == FAILED
    want = f"set-d.tar.gz:900012.txt: invalid UTF-8 at byte {len(bad) - 4:,}"
    assert reasons[row] == want
    assert np.isfinite(vec[valid == OK]).all() and verify(Store(tmp_path / "s.zarr")) == []


GARBAGE = {
    "900001": (b"00:20,HR," + b"9" * 140_000 + b"\n", "field larger than field limit"),
    "900002": (b"-05:00,HR,75\n", "time '-05:00' is not HH:MM"),
    "900003": (b"99:99,HR,75\n", "time '99:99' is not HH:MM"),
    "900004": (b"02:00,HR,inf\n", "HR value inf is not finite"),
    "900005": (b"02:00,HR,1e308\n", "HR value 1e308 is not finite or beyond"),
    "900006": (b"02:00,HR,75,extra\n", "4 fields, expected 3"),
    "900007": (b"02:00,HR,abc\n", "HR value 'abc' is not a number"),
}


def test_garbage_ehr_is_failed_with_reasons_and_a_fixed_file_is_retried(ehr_spec, data_root, tmp_path):
    records = _real_records(data_root, 9) + [record(rid, body) for rid, (body, _) in GARBAGE.items()]
    records.append(record("900008", b"52:00,HR,75\n48:00,HR,70\n"))        # after the window: dropped
    root = tmp_path / "data"
    write_set(root / "physionet2012", records)
    s = _run(ehr_spec, root, tmp_path / "g.zarr")
    ids = Store(tmp_path / "g.zarr").ids()
    valid, reasons, vec = _group_rows(tmp_path / "g.zarr", "ehr", "fracast")
    for rid, (_, why) in GARBAGE.items():
        i = ids.index(rid)
        assert valid[i] == FAILED and why in reasons[i] and f"set-d.tar.gz:{rid}.txt: line" in reasons[i], rid
    assert s.failed["ehr/fracast"] == len(GARBAGE) and s.done["ehr/fracast"] == 10
    series = get_adapter(load_spec(ehr_spec).dataset("physionet2012"), root, {"set": "d"}).load(
        "ehr", [ids.index("900008")])[0]["series"]
    hr = 14
    assert series[47, hr] == 70 and np.nanmax(series[:, hr]) == 90      # 48:00 -> last bin; 52:00 dropped
    assert np.isfinite(vec[valid == OK]).all() and verify(Store(tmp_path / "g.zarr")) == []

    again = _run(ehr_spec, root, tmp_path / "g.zarr")                     # nothing changed: all cached
    assert again.done == {} and not again.retried_units
    fixed = [record(rid, b"02:00,HR,75\n") if rid == "900004" else (rid, data) for rid, data in records]
    write_set(root / "physionet2012", fixed)                              # the bad file is fixed
    s2 = _run(ehr_spec, root, tmp_path / "g.zarr")
    assert s2.retried_units["ehr/fracast"] == 1
    valid, reasons, _ = _group_rows(tmp_path / "g.zarr", "ehr", "fracast")
    assert valid[ids.index("900004")] == OK and valid[ids.index("900005")] == FAILED
    s3 = _run(ehr_spec, root, tmp_path / "g.zarr", retry_failed=True)     # --retry-failed reruns failed units
    assert s3.retried_units["ehr/fracast"] >= 1 and s3.failed["ehr/fracast"] == len(GARBAGE) - 1
    assert verify(Store(tmp_path / "g.zarr")) == []


def test_text_rules():
    assert isinstance(check_text("\x00\x01binary\x02"), Failed)
    assert "control characters only" in check_text("\x07\x08\x1b").reason or "binary" in check_text("\x07\x08\x1b").reason
    assert check_text("heart \x07normal") == "heart normal"
    assert check_text("a b c d e", max_words=3) == "a b c"
    assert check_text("a  b", max_words=3) == "a  b"
    out = check_input({"series": np.array([[1.0, np.inf]])})
    assert isinstance(out, Failed) and "infinite" in out.reason
    assert np.isnan(check_input({"series": np.array([[np.nan, 1.0]])})["series"][0, 0])   # NaN = not measured


# ---- OpenI: null report, binary text, bad images, traversal, bomb ----------------------------------------------
def write_openi(root: Path) -> dict:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    ok_img = (rng.random((96, 80, 3)) * 255).astype(np.uint8)
    reports, expect = {}, {}

    def add(i, report, images=(), note=None, frontal=None):
        key = f"ecgen-radiology/{i}.xml"
        reports[key] = {"image": list(images), "report": report}
        expect[str(i)] = (note, frontal)

    text = {"FINDINGS": "heart size normal. lungs clear.", "IMPRESSION": "no acute disease."}
    for i in range(1, 7):
        Image.fromarray(ok_img).save(root / f"CXR{i}_IM-0-1001.png")
        add(i, text, [f"CXR{i}_IM-0-1001"], "ok", "ok")
    add(7, None, note="'report' is null")
    add(8, {"FINDINGS": "\x00\x01\x02PK\x03\x04" + "\x00" * 20}, note="binary content")
    add(9, {"FINDINGS": "\x07\x08\x1b\x1b"}, note="binary content")
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(root / "CXR10_IM-0-1001.png")
    add(10, text, ["CXR10_IM-0-1001"], "ok", "below the minimum of 32 px")
    Image.fromarray(np.full((64, 64), 1000, np.uint16)).save(root / "CXR11_IM-0-1001.png")
    add(11, text, ["CXR11_IM-0-1001"], "ok", "blank image")
    add(12, text, ["../../outside"], "ok", "points outside")
    png_of_zeros(root / "CXR13_IM-0-1001.png")
    add(13, text, ["CXR13_IM-0-1001"], "ok", "exceeds the pixel budget")
    (root / "CXR14_IM-0-1001.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    add(14, text, ["CXR14_IM-0-1001"], "ok", "UnidentifiedImageError")
    add(15, text, ["CXR15_IM-0-1001"], "ok", "missing")
    (root / "reports_ori.json").write_text(json.dumps(reports))
    (root.parent / "outside.png").write_bytes((root / "CXR1_IM-0-1001.png").read_bytes())
    return expect


@pytest.fixture
def openi_spec(spec_writer, tiny_bert_dir, tiny_dir):
    from tiny_models import tiny_timm_vit
    vit, params = tiny_timm_vit(tiny_dir / "vit_rel", img_size=56)

    def edit(raw):
        raw["defaults"]["chunk_rows"] = 8
        prof = raw["profiles"]["offline"]
        prof["kinds"]["cxr"] = {"experts": {"vit": {"model": "dinov2_b", "role": "general", "params": params}}}
        prof["kinds"]["note"] = {"experts": {"bert": {"model": "medcpt_query", "role": "general"}}}
        prof["models"] = {"medcpt_query": {"source": str(tiny_bert_dir)}, "dinov2_b": {"source": str(vit)}}
        ds = raw["datasets"]["openi"]
        ds["modalities"] = {"frontal": {"kind": "cxr", "preprocess": {"size": 56}}, "note": {"kind": "note"}}
        ds["split"] = {"method": "random", "fractions": {"train": 0.6, "val": 0.2, "test": 0.2}, "seed": 0}
    return spec_writer(edit)


def test_openi_bad_reports_and_images_are_recorded_with_reasons(openi_spec, tmp_path):
    expect = write_openi(tmp_path / "data" / "openi")
    clear_caches()
    code = subprocess.run([sys.executable, "-m", "extract", "--dataset", "openi", "--config", str(openi_spec),
                           "--data-root", str(tmp_path / "data"), "--store", str(tmp_path / "o.zarr"), "--no-rag",
                           "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert code.returncode == 0, code.stderr[-3000:]
    st = Store(tmp_path / "o.zarr")
    ids = st.ids()
    for modality, expert, which in (("note", "bert", 0), ("frontal", "vit", 1)):
        valid, reasons, vec = _group_rows(tmp_path / "o.zarr", modality, expert)
        for sid, want in expect.items():
            w = want[which]
            i = ids.index(sid)
            if w == "ok":
                assert valid[i] == OK, (modality, sid, reasons[i])
            elif w == "missing" or w is None:
                assert valid[i] == MISSING, (modality, sid, reasons[i])
            else:
                assert valid[i] == FAILED and w in reasons[i], (modality, sid, reasons[i])
        assert np.isfinite(vec[valid == OK]).all()
    _, reasons, _ = _group_rows(tmp_path / "o.zarr", "note", "bert")
    assert reasons[ids.index("8")].startswith("reports_ori.json:ecgen-radiology/8.xml: binary content")
    _, reasons, _ = _group_rows(tmp_path / "o.zarr", "frontal", "vit")
    assert "CXR10_IM-0-1001.png: 1x1 px" in reasons[ids.index("10")]
    assert verify(st) == []


# ---- MMIST: a DICOM case folder, a traversal case id -------------------------------------------------------------
def _write_dicom_series(folder: Path, n: int = 4) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    folder.mkdir(parents=True)
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.Rows, ds.Columns = "CT", 32, 32
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.ImagePositionPatient, ds.InstanceNumber = [0, 0, float(n - k)], k + 1
        ds.PixelData = (np.arange(32 * 32, dtype=np.int16).reshape(32, 32) * (k + 1)).tobytes()
        ds.save_as(folder / f"slice{k}.dcm", enforce_file_format=True)


def test_mmist_dicom_case_folder_is_read_and_a_traversal_case_is_failed(tmp_path):
    root = tmp_path / "mmist_ccrcc"
    root.mkdir()
    cases = ["case-a", "case-b", "../escape"]
    (root / "clinical+genomic_split.csv").write_text(
        "case_id,vital_status_12,Split\n" + "".join(f"{c},0,train\n" for c in cases))
    for name in ("CT_patientfiles.csv", "MRI_patientfiles.csv", "WSI_patientfiles.csv"):
        (root / name).write_text("case_id,chosen_exam\n")
    for name in ("patients_with_labels_CT_final.csv", "patients_with_labels_MR_final.csv"):
        (root / name).write_text("case_id,File\n")
    with tarfile.open(root / "mmist_features.tar.gz", "w:gz"):
        pass
    _write_dicom_series(root / "ct" / "case-a")
    (tmp_path / "escape.npy").write_bytes(b"")
    spec = load_spec()
    a = get_adapter(spec.dataset("mmist"), tmp_path, {"ct_dir": "ct"})
    out = a.load("ct", [0, 1, 2])
    assert isinstance(out[1], Missing)
    assert isinstance(out[2], Failed) and "points outside" in out[2].reason
    vol = out[0]["volume"].get()["hu"]
    assert vol.shape == (32, 32, 4) and vol.min() == -1024
    assert out[0]["image"].get().shape == (48, 3, 224, 224)


# ---- §2 images are decoded small ---------------------------------------------------------------------------------
def test_large_image_is_decoded_downscaled_and_a_bomb_is_refused(tmp_path):
    from plugins.readers.image import ImageRejected, read_image
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((2500, 3000)) * 255).astype(np.uint8)).save(tmp_path / "big.png")
    a = read_image(tmp_path / "big.png", size=224)
    assert a.shape == (1, 3, 500, 600) and a.dtype == np.float32                   # reduced by 5 before float
    Image.fromarray((rng.random((2500, 3000)) * 255).astype(np.uint8)).save(tmp_path / "big.jpg", quality=90)
    assert read_image(tmp_path / "big.jpg", size=224).shape[-1] <= 750              # JPEG draft + reduce
    png_of_zeros(tmp_path / "bomb.png")
    with pytest.raises(ImageRejected, match="pixel budget"):
        read_image(tmp_path / "bomb.png", size=224, max_pixels=50_000_000)


# ---- §3 integrity -----------------------------------------------------------------------------------------------
def _small_store(path, n=24, chunk=8, dim=4):
    st = Store.create(path, "t", [f"s{i}" for i in range(n)], ["train"] * (n - 4) + ["test"] * 4, {}, chunk_rows=chunk)
    g = st.require_expert_group("note", "e", "a" * 64, dim, {"model": "x"})
    rng = np.random.default_rng(0)
    for u in g.units():
        k = u.stop - u.start
        g.write_unit(u, rng.normal(size=(k, dim)).astype(np.float32), np.ones(k, np.uint8), [""] * k,
                     sources=["src"] * k)
    return st, g


def _verify_cli(path, capsys):
    code = stores_main(["verify", str(path)])
    return code, capsys.readouterr().out


def test_verify_catches_changed_and_swapped_chunks(tmp_path, capsys):
    st, g = _small_store(tmp_path / "s.zarr")
    assert _verify_cli(tmp_path / "s.zarr", capsys)[0] == 0
    g.group["vectors"][9:10] = np.full((1, 4), 2.5e10, np.float32)          # finite garbage inside unit 1
    code, out = _verify_cli(tmp_path / "s.zarr", capsys)
    assert code == 1 and "FAIL embeddings/note/e/aaaaaaaaaaaa/vectors: unit 1 (rows 8-15): content hash mismatch" in out

    st, g = _small_store(tmp_path / "w.zarr")
    chunks = Path(tmp_path / "w.zarr" / g.path / "vectors" / "c")
    shutil.copyfile(chunks / "0" / "0", chunks / "2" / "0")                  # unit 2 holds unit 0's bytes
    code, out = _verify_cli(tmp_path / "w.zarr", capsys)
    assert code == 1 and "vectors: unit 2 (rows 16-23): content hash mismatch" in out and "unit 0" not in out

    st, g = _small_store(tmp_path / "f.zarr")
    f = chunks = Path(tmp_path / "f.zarr" / g.path / "vectors" / "c" / "1" / "0")
    data = bytearray(f.read_bytes())
    for k in range(16):
        data[len(data) // 2 + k] ^= 0xFF                                    # 16 flipped bytes on disk
    f.write_bytes(bytes(data))
    code, out = _verify_cli(tmp_path / "f.zarr", capsys)
    assert code == 1 and "vectors: unit 1" in out and "Traceback" not in out


def test_verify_reports_unreadable_metadata_pending_units_and_old_groups(tmp_path, capsys):
    st, g = _small_store(tmp_path / "s.zarr")
    meta = Path(tmp_path / "s.zarr" / g.path / "valid" / "zarr.json")
    meta.write_text(meta.read_text()[:40])                                  # truncated metadata
    code, out = _verify_cli(tmp_path / "s.zarr", capsys)
    assert code == 1 and "FAIL embeddings/note/e/aaaaaaaaaaaa/valid: unreadable array metadata" in out

    st, g = _small_store(tmp_path / "old.zarr")
    del g.group["checksum"]                                                 # integrity v2: a FAIL, not a note
    out = _verify_cli(tmp_path / "old.zarr", capsys)[1]
    assert "FAIL embeddings/note/e/aaaaaaaaaaaa/checksum: array missing" in out
    g.group.attrs.put({k: v for k, v in g.attrs.items() if k not in ("integrity", "arrays", "seal")})
    g.group["done"][2] = 0                                                  # as written before checksums
    rep = check(Store(tmp_path / "old.zarr"))
    assert rep.problems == []
    assert any("written before integrity v2; no content hash recorded" in n for n in rep.notes)
    assert any("1 of 3 units pending (no marker): [2]" in n for n in rep.notes)


def test_a_changed_split_is_refused_unless_replaced(tmp_path):
    ids = [f"s{i}" for i in range(10)]
    st = Store.create(tmp_path / "s.zarr", "t", ids, ["train"] * 8 + ["test"] * 2, {})
    h = st.split_hash()
    assert h == st.meta["split_hash"] and len(h) == 64
    assert Store.create(tmp_path / "s.zarr", "t", ids, ["train"] * 8 + ["test"] * 2, {}).split_hash() == h
    with pytest.raises(StoreError, match="split differs from the stored one in 4 of 10 rows"):
        Store.create(tmp_path / "s.zarr", "t", ids, ["test"] * 2 + ["train"] * 8, {})
    assert Store(tmp_path / "s.zarr").split_hash() == h
    st2 = Store.create(tmp_path / "s.zarr", "t", ids, ["test"] * 2 + ["train"] * 8, {}, replace_split=True)
    assert st2.split_hash() != h and Store(tmp_path / "s.zarr").meta["split_hash"] == st2.split_hash()
    assert Store(tmp_path / "s.zarr").meta["split_history"][0]["old"] == h
    assert verify(Store(tmp_path / "s.zarr")) == []


def _contents(path):
    out = {}
    for m, e, h, g in Store(path).iter_groups():
        out[f"{m}/{e}/{h}"] = (g.group["vectors"][:], g.group["valid"][:], [str(r) for r in g.group["reason"][:]],
                               g.done_units())
    return out


@pytest.mark.slow
def test_two_concurrent_runs_on_a_fresh_store_both_succeed(ehr_spec, data_root, tmp_path):
    write_set(tmp_path / "data" / "physionet2012", _real_records(data_root, 12))
    args = [sys.executable, "-m", "extract", "--dataset", "physionet2012", "--config", str(ehr_spec), "--set", "d",
            "--data-root", str(tmp_path / "data"), "--only-expert", "fracast", "--no-rag", "--quiet"]
    subprocess.run(args + ["--store", str(tmp_path / "single.zarr")], cwd=ROOT, check=True, capture_output=True)
    ref = _contents(tmp_path / "single.zarr")
    for trial in range(5):
        path = tmp_path / f"c{trial}.zarr"
        procs = [subprocess.Popen(args + ["--store", str(path)], cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-2000:]
        got = _contents(path)
        assert got.keys() == ref.keys()
        for k in ref:
            np.testing.assert_array_equal(got[k][0], ref[k][0])
            np.testing.assert_array_equal(got[k][1], ref[k][1])
            assert got[k][2] == ref[k][2] and (got[k][3] == ref[k][3]).all()
        assert verify(Store(path)) == []
        assert not list(tmp_path.glob(f".c{trial}.zarr.staging/*"))        # no leftovers


def test_a_unit_error_keeps_its_reason_through_pickling_and_the_run_goes_on(monkeypatch):
    import pickle

    from extract.run import executors, units
    from stores.store import Unit

    def boom(ctx, modality, unit, jobs, force=False):
        if unit.index == 1:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        return {f"{modality}/e": (unit.stop - unit.start, 0, 0, {})}

    monkeypatch.setattr(units, "run_unit", boom)
    with pytest.raises(RuntimeError) as err:
        units.run_unit_task(None, "ehr", Unit(1, 8, 16), [])
    back = pickle.loads(pickle.dumps(err.value))                      # what Dask sends back
    assert "ehr unit 1 (rows 8-15): UnicodeDecodeError" in str(back)

    monkeypatch.setattr(executors, "run_unit", boom)
    done, errors = [], []
    executors.LocalExecutor().run(None, [("ehr", Unit(k, 8 * k, 8 * k + 8), [], False) for k in range(3)],
                                  lambda m, u, j, c: done.append(u.index), lambda m, u, j, r: errors.append(r))
    assert done == [0, 2] and len(errors) == 1 and "UnicodeDecodeError" in errors[0] and "unit 1" in errors[0]
