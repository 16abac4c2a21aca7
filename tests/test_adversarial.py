"""Issue 24: planted cases on the real layouts (copies of small real files), each recorded with its reason or refused
with one line, never a crash and never silently accepted. Findings 1 (rag embed), 3 (isolation), 4 (plausibility)."""
from __future__ import annotations

import io
import json
import logging
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from plugins.request import ExtractRequest

from extract.pipeline import create_store
from plugins.datasets.base import Failed, get_adapter
from stores.spec import load_spec
from stores.store import StoreError
from test_reliability import _real_records, write_set

MMIST = Path("/work/shared/data/mmist_ccrcc")


def _physio(tmp_path, data_root, records=None, name="a", n=12):
    folder = tmp_path / "physionet2012"
    write_set(folder, records if records is not None else _real_records(data_root, n), name)
    return get_adapter(load_spec().dataset("physionet2012"), tmp_path, {"set": name})


def _add_member(tar_path: Path, name: str, data: bytes = b"Time,Parameter,Value\n00:00,Age,60\n") -> None:
    with tarfile.open(tar_path, "r:gz") as t:
        members = [(m, t.extractfile(m).read()) for m in t]
    with tarfile.open(tar_path, "w:gz") as t:
        for m, b in [*members, (tarfile.TarInfo(name), data)]:
            m.size = len(b)
            t.addfile(m, io.BytesIO(b))


# ---- finding 1: rag embed never writes one cohort's rows on another's store ---------------------------------------
def test_rag_embed_refuses_a_store_of_another_set(tmp_path, data_root):
    from rag.embed import embed_dataset
    recs = _real_records(data_root, 24)
    _physio(tmp_path, data_root, recs[:12], "a")
    b = _physio(tmp_path, data_root, recs[12:], "b")
    create_store(load_spec(), "physionet2012", b, tmp_path / "b.zarr", None)
    with pytest.raises(StoreError, match=r"created with dataset options \{'set': 'b'\}.*differ in set"):
        embed_dataset(ExtractRequest("physionet2012", data_root=str(tmp_path), store=str(tmp_path / "b.zarr"),
                                     progress=False))
    a = _physio(tmp_path, data_root, recs[:12], "a")
    from stores.store import Store
    with pytest.raises(StoreError, match="the dataset's ids differ from the store's .row 0"):
        Store(tmp_path / "b.zarr").check_rows("physionet2012", a.ids(), {"set": "b"})


# ---- finding 3: isolation ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("member, outcome", [
    ("set-a/abc.txt", "ignored"), ("../../../x.txt", "traversal"), ("/tmp/x.txt", "traversal"),
    ("set-a/132539.txt", "both name id 132539")])
def test_physionet_tar_members_follow_exact_rules(tmp_path, data_root, caplog, member, outcome):
    a = _physio(tmp_path, data_root)
    _add_member(tmp_path / "physionet2012" / "set-a.tar.gz", member)
    a = get_adapter(load_spec().dataset("physionet2012"), tmp_path, {"set": "a"})
    if outcome == "ignored":
        with caplog.at_level(logging.WARNING, "medmix.datasets"):
            assert len(a.ids()) == 12 and "abc" not in a.ids()
        assert "not named <RecordID>.txt ignored" in caplog.text and "set-a/abc.txt" in caplog.text
    else:
        with pytest.raises(ValueError, match=outcome):
            a.ids()


@pytest.mark.parametrize("damage", ["truncated", "empty", "not gzip"])
def test_a_damaged_archive_is_one_line_naming_it(tmp_path, data_root, damage):
    a = _physio(tmp_path, data_root)
    tar = tmp_path / "physionet2012" / "set-a.tar.gz"
    data = tar.read_bytes()
    tar.write_bytes({"truncated": data[:len(data) // 2], "empty": b"", "not gzip": b"Time,Parameter\n" * 50}[damage])
    with pytest.raises(ValueError, match=r"set-a.tar.gz: (unreadable|empty file)") as e:
        a.ids()
    assert "\n" not in str(e.value)


def test_the_cli_exits_2_with_one_line_on_a_truncated_archive(tmp_path, data_root, capsys):
    from extract.__main__ import main as extract_main
    _physio(tmp_path, data_root)
    tar = tmp_path / "physionet2012" / "set-a.tar.gz"
    tar.write_bytes(tar.read_bytes()[:300])
    code = extract_main(["--dataset", "physionet2012", "--data-root", str(tmp_path), "--store",
                         str(tmp_path / "s.zarr"), "--no-rag", "--modality", "demographics"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "set-a.tar.gz: unreadable" in err


def test_outcome_cells_and_rows_are_isolated(tmp_path, data_root, caplog):
    a = _physio(tmp_path, data_root)
    ids = a.ids()
    out = tmp_path / "physionet2012" / "Outcomes-a.txt"
    lines = out.read_text().splitlines()
    lines[1] = lines[1].rsplit(",", 1)[0] + ",abc"                        # a non-numeric label cell
    lines[2] = lines[2].rsplit(",", 1)[0] + ",2"                          # a label outside the classes
    lines[3] = lines[3].split(",")[0] + ",1"                              # a short row
    lines.append(lines[4].rsplit(",", 1)[0] + ("," + str(1 - int(lines[4][-1]))))    # a conflicting duplicate
    out.write_text("\ufeff" + "\n".join(lines) + "\n")                    # with a UTF-8 BOM
    a = get_adapter(load_spec().dataset("physionet2012"), tmp_path, {"set": "a"})
    with caplog.at_level(logging.WARNING, "medmix.datasets"):
        y = a.labels()["mortality"][:, 0]
    assert np.isnan(y[:4]).all() and not np.isnan(y[4:]).any() and len(y) == len(ids)
    assert "not a class of the task" in caplog.text and "conflicting duplicate rows" in caplog.text
    out.write_bytes(b"")
    with pytest.raises(ValueError, match="Outcomes-a.txt: empty table"):
        get_adapter(load_spec().dataset("physionet2012"), tmp_path, {"set": "a"}).labels()


def _mmist_copy(tmp_path, edit) -> Path:
    root = tmp_path / "mmist_ccrcc"
    shutil.copytree(MMIST, root, ignore=shutil.ignore_patterns("gdc_manifest*"))
    for p in root.iterdir():
        p.chmod(0o644)
    csv_path = root / "clinical+genomic_split.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(edit(lines)) + "\n")
    return root


def _cell(line: str, header: str, col: str, value: str) -> str:
    cells = line.split(",")
    cells[header.split(",").index(col)] = value
    return ",".join(cells)


def test_mmist_bad_rows_fail_or_leave_alone_with_reasons(tmp_path, caplog):
    def edit(lines):
        h = lines[0]
        lines[1] = _cell(lines[1], h, "Split", "foo")                     # no split: left out, named
        lines[2] = _cell(lines[2], h, "vital_status_12", "abc")           # label unknown, named
        lines[3] = _cell(lines[3], h, "age_diag", "old")                  # the row's note fails
        lines[4] = lines[4] + ",extra"                                    # a row of the wrong length: its note fails
        lines[5] = _cell(lines[5], h, "grade", "x" * 300_000)             # a 300 KB cell
        return ["\ufeff" + lines[0], *lines[1:]]
    _mmist_copy(tmp_path, edit)
    a = get_adapter(load_spec().dataset("mmist"), tmp_path)
    with caplog.at_level(logging.WARNING, "medmix.datasets"):
        assert len(a.ids()) == 617
        y = a.labels()["vital_status_12"]
    assert np.isnan(y[0, 0]) and "left out" in caplog.text and "not a class" in caplog.text
    notes = a.load("note", [0, 1, 2, 3, 4])
    assert isinstance(notes[1], Failed) and "age_diag 'old' is not a number" in notes[1].reason
    assert isinstance(notes[2], Failed) and "fields, header has" in notes[2].reason
    assert isinstance(notes[3], dict) and isinstance(notes[4], dict)
    from extract.fitting import fit_on_rows
    from plugins.registry import build_encoder, model_options
    enc = build_encoder("tabular", model_options(load_spec().profile("offline"), "tabular", {}, None), device="cpu")
    assert fit_on_rows(enc, a, "note", "fields", list(range(40)))["n_train"] == 38


def test_openi_structure_and_label_rows(tmp_path, caplog):
    root = tmp_path / "openi"
    root.mkdir()
    src = Path("/work/shared/data/openi")
    reports = json.loads((src / "reports_ori.json").read_text())
    keys = list(reports)[:10]
    sub = {k: reports[k] for k in keys}
    sub[keys[0]]["report"]["FINDINGS"] = ["a", "list"]                   # a section that is not text
    (root / "reports_ori.json").write_text(json.dumps(sub))
    labels = json.loads((src / "file2label.json").read_text())
    lab = {k: labels[k] for k in keys if k in labels}
    lab[keys[1]] = [0, 1]                                                 # wrong length
    lab[keys[2]] = [2] * 14                                               # not 0/1
    (root / "file2label.json").write_text(json.dumps(lab))
    a = get_adapter(load_spec().dataset("openi"), tmp_path)
    with caplog.at_level(logging.WARNING, "medmix.datasets"):
        y = a.labels()["findings"]
    row = {k: a.ids().index(k.split("/")[-1].replace(".xml", "")) for k in keys}
    assert np.isnan(y[row[keys[1]]]).all() and np.isnan(y[row[keys[2]]]).all()
    assert "not 14 labels of 0/1" in caplog.text and (~np.isnan(y)).any()
    note = a.load("note", [row[keys[0]]])[0]
    assert isinstance(note, Failed) and "section FINDINGS is a list" in note.reason
    (root / "reports_ori.json").write_text(json.dumps(list(sub.values())))
    with pytest.raises(ValueError, match="reports_ori.json: expected an object"):
        get_adapter(load_spec().dataset("openi"), tmp_path).ids()


# ---- finding 4: plausibility ----------------------------------------------------------------------------------------
def test_implausible_physionet_values_are_dropped_and_counted(tmp_path, data_root, caplog):
    recs = _real_records(data_root, 6)
    rid, body = recs[0]
    body = body.replace(b"00:00,Gender,", b"00:00,Gender,7\n00:00,Ignored,", 1)
    recs[0] = (rid, body + b"01:00,HR,999999\n00:00,Age,250\n00:00,ICUType,9\n")
    a = _physio(tmp_path, data_root, recs)
    with caplog.at_level(logging.WARNING, "medmix.datasets"):
        row = a.load("demographics", [0])[0]
        ehr = a.load("ehr", [0])[0]
    assert a.dropped["HR"] == 1 and a.dropped["Gender"] == 1 and a.dropped["ICUType"] == 1
    assert row["fields"]["categorical"]["Gender"] is None
    assert np.nanmax(ehr["series"][:, 14]) < 1000 and "HR 999999 outside the plausible range 0..350" in caplog.text
    assert a.version.startswith("3+")
    caplog.clear()                                 # a warning once per modality; the next units' counts at INFO
    with caplog.at_level(logging.INFO, "medmix.datasets"):
        a.load("ehr", [0])
    assert [r.levelname for r in caplog.records if "implausible" in r.getMessage()] == ["INFO"]


def test_plausibility_rules_are_validated_in_the_spec(tmp_path):
    from conftest import write_spec
    from stores.spec import SpecError
    spec = write_spec(tmp_path, lambda raw: raw["datasets"]["physionet2012"]["plausible"].update(
        {"HR": {"range": [10, 0]}}))
    with pytest.raises(SpecError, match=r"datasets.physionet2012.plausible.HR.*low > high"):
        load_spec(spec)


# ---- finding 5: bounded resources, degenerate volumes ---------------------------------------------------------------
def _nifti(path: Path, vol: np.ndarray) -> Path:
    import nibabel as nib
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(path))
    return path


def test_a_tiny_nifti_declaring_a_huge_volume_is_refused_from_its_header(tmp_path):
    import gzip
    import nibabel as nib
    from plugins.readers.ct import read_volume, read_volume_ras
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((1024, 1024, 1024))
    hdr.set_data_dtype(np.int16)
    path = tmp_path / "forged.nii.gz"
    path.write_bytes(gzip.compress(hdr.binaryblock + b"\x00" * 4))
    assert path.stat().st_size < 200
    for read in (read_volume, read_volume_ras):
        with pytest.raises(ValueError, match="header declares .* (cannot hold them|refused before reading)"):
            read(path)


@pytest.mark.parametrize("vol, why", [
    (np.zeros((40, 40, 1), np.float32) + np.arange(40)[:, None, None], "degenerate volume"),
    (np.full((20, 20, 8), 40.0, np.float32), "constant volume"),
    (np.full((20, 20, 8), np.inf, np.float32), "non-finite voxels"),
    (np.linspace(0, 1e30, 3200, dtype=np.float32).reshape(20, 20, 8), "not Hounsfield units")])
def test_degenerate_ct_volumes_fail_with_a_reason(tmp_path, vol, why):
    from plugins.readers.ct import read_volume, read_volume_ras
    real = Path("/work/shared/data/ct/example_ct_sm.nii.gz")
    assert read_volume(real).shape[0] > 1                                 # the real volume passes
    path = _nifti(tmp_path / "v.nii.gz", vol)
    for read in (read_volume, read_volume_ras):
        with pytest.raises(ValueError, match=why):
            read(path)


def test_a_note_without_whitespace_is_capped_in_characters():
    from plugins.inputs import check_text
    assert len(check_text("x" * 300_000)) == 100
    assert len(check_text("word " * 100_000, max_words=1000)) <= 10_000


# ---- finding 6: caches bound to what made them ----------------------------------------------------------------------
def test_a_group_is_not_resumed_with_other_weights(tmp_path):
    from stores.store import Store
    st = Store.create(tmp_path / "s.zarr", "t", [f"s{i}" for i in range(8)], ["train"] * 8, {}, chunk_rows=4)
    st.require_expert_group("note", "e", "a" * 64, 3, {"model": "m", "weights_sha256": {"model.bin": "1" * 64}})
    st.require_expert_group("note", "e", "a" * 64, 3, {"model": "m", "weights_sha256": {"model.bin": "1" * 64}})
    with pytest.raises(StoreError, match=r"the weights changed since this group was started \(model.bin"):
        st.require_expert_group("note", "e", "a" * 64, 3, {"model": "m", "weights_sha256": {"model.bin": "2" * 64}})


def test_an_ok_row_whose_input_changed_is_embedded_again(ehr_spec, data_root, tmp_path):
    from test_reliability import _group_rows, _run
    recs = _real_records(data_root, 10)
    write_set(tmp_path / "physionet2012", recs, "d")
    _run(ehr_spec, tmp_path, tmp_path / "s.zarr", modalities=["ehr"])
    before = _group_rows(tmp_path / "s.zarr", "ehr", "fracast")[2][3].copy()
    rid, body = recs[3]
    recs[3] = (rid, body + b"00:30,HR,140\n00:40,HR,150\n")
    write_set(tmp_path / "physionet2012", recs, "d")
    again = _run(ehr_spec, tmp_path, tmp_path / "s.zarr", modalities=["ehr"])
    assert again.retried_units.get("ehr/fracast") == 1
    assert not np.array_equal(_group_rows(tmp_path / "s.zarr", "ehr", "fracast")[2][3], before)


class _Encoder:
    """A deterministic stand-in with the encoder contract the index uses (identity, card.key, encode)."""
    card = type("card", (), {"key": "stub"})

    def __init__(self, fail=False):
        self.fail = fail

    def identity(self):
        return {"model": "stub"}

    def article_input(self, title, text):              # the Encoder contract's default (plugins/registry.py)
        return f"{title}. {text}"

    def encode(self, docs):
        if self.fail:
            raise RuntimeError("killed mid-build")
        return np.stack([np.random.default_rng(len(d)).normal(size=8) for d in docs]).astype(np.float32)


def test_the_index_has_content_hashes_checked_at_open_and_failed_builds_leave_nothing(tmp_path):
    from rag.corpus import Passage
    from rag.index import CorruptIndex, build_index, load_index, open_index
    passages = [Passage(pid=i, topic_id=str(i), title=f"t{i}", url="", text=f"text {'x' * i}") for i in range(6)]
    idx_dir = tmp_path / "index"
    (tmp_path / ".index.tmp-999999").mkdir()                               # left by a killed build
    open_index(idx_dir, passages, _Encoder())
    assert not list(tmp_path.glob(".index.tmp-*"))
    f = idx_dir / "vectors.npy"
    data = bytearray(f.read_bytes())
    data[-4:] = b"\x00\x00\x80\x7f"                                       # same size, other content
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptIndex, match="vectors.npy: content does not match its sha256"):
        load_index(idx_dir)
    assert open_index(idx_dir, passages, _Encoder()).vectors.shape == (6, 8)     # rebuilt at open
    with pytest.raises(RuntimeError):
        build_index(tmp_path / "other", passages, _Encoder(fail=True))
    assert not list(tmp_path.glob(".other.tmp-*"))


def test_extract_import_keeps_ids_inside_the_folder(tmp_path):
    from extract.importer import import_features
    from stores.store import Store
    ids = ["../../../../etc/passwd", "ok", "huge"]
    Store.create(tmp_path / "s.zarr", "t", ids, ["train"] * 3, {}, chunk_rows=4)
    src = tmp_path / "feats"
    src.mkdir()
    np.save(src / "ok.npy", np.ones(4, np.float32))
    np.save(src / "huge.npy", np.full(4, 1e30, np.float32))
    counts = import_features(str(tmp_path / "s.zarr"), "note", "mine", src, pattern="{id}.npy")
    assert counts == {"ok": 1, "missing": 0, "failed": 2}
    g = Store(tmp_path / "s.zarr").expert_group("note", "mine")
    reasons = [str(r) for r in g.group["reason"][:]]
    assert "points outside" in reasons[0] and "absurd magnitude" in reasons[2]


# ---- finding 7: training inputs ------------------------------------------------------------------------------------
def test_training_refuses_bad_values_and_no_test_rows_and_predict_writes_json(tmp_path, capsys):
    from stores.store import OK, Store
    from test_train_store import FAST, _write, make_store
    from train.__main__ import main
    st = make_store(tmp_path / "s.zarr")
    out = tmp_path / "run"
    assert main(["--dataset", "toy", "--store", str(tmp_path / "s.zarr"), "--out", str(out), *FAST]) == 0
    ck = out / "checkpoints" / "medmix.pt"
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(ck), "--store", str(tmp_path / "s.zarr"), "--json"]) == 0
    for line in capsys.readouterr().out.splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))
    import torch
    state = torch.load(ck, weights_only=True)
    torch.save({k: v.float().fill_(float("nan")) if v.is_floating_point() else v for k, v in state.items()}, ck)
    assert main(["predict", "--checkpoint", str(ck), "--store", str(tmp_path / "s.zarr"), "--json"]) == 0  # NaN w.
    recs = [json.loads(line, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))
            for line in capsys.readouterr().out.splitlines()]
    assert recs[0]["y"]["y"] is None
    ck.write_bytes(ck.read_bytes()[:100])                                 # a truncated checkpoint
    assert main(["predict", "--checkpoint", str(ck), "--store", str(tmp_path / "s.zarr")]) == 2
    assert "unreadable checkpoint" in capsys.readouterr().err
    x = np.random.default_rng(0).normal(size=(st.n, 6)).astype(np.float32)
    x[5] = 3e38
    _write(st, "a", "e0", "a9", x, np.full(st.n, OK, np.uint8))          # committed with an absurd valid row
    assert main(["--dataset", "toy", "--store", str(tmp_path / "s.zarr"), "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a/e0: 1 valid row(s) hold NaN/inf or |x| > 1e+09" in err[0]
    n = 40
    y = (np.arange(n) % 2).astype(np.float32)[:, None]
    st2 = Store.create(tmp_path / "t.zarr", "toy", [f"s{i}" for i in range(n)], ["train"] * 30 + ["val"] * 10,
                       {"y": (y, {"type": "binary", "labels": ["y"]})}, chunk_rows=32)
    _write(st2, "a", "e0", "a1", np.random.default_rng(1).normal(size=(n, 6)).astype(np.float32),
           np.full(n, OK, np.uint8))
    assert main(["--dataset", "toy", "--store", str(tmp_path / "t.zarr"), "--out", str(tmp_path / "r2"), *FAST]) == 2
    assert "0 test samples" in capsys.readouterr().err


def test_mimic_events_outside_their_rule_or_non_finite_are_dropped(caplog):
    import pandas as pd
    from plugins.datasets.mimic4mm import plausible
    from stores.spec import PlausibleRule
    ev = pd.DataFrame({"stay_id": [1] * 5, "col": [0, 0, 1, 1, 1], "t": [0.5] * 5,
                       "valuenum": [80.0, 999999.0, 37.0, np.inf, 12.0]})
    with caplog.at_level(logging.WARNING, "medmix.datasets"):
        kept = plausible(ev, ["HR", "TempC"], {"HR": PlausibleRule(range=(0, 350)),
                                               "TempC": PlausibleRule(range=(15, 46))})
    assert kept["valuenum"].tolist() == [80.0, 37.0]
    assert "3 implausible or non-finite event(s) dropped: {'HR': 1, 'TempC': 2}" in caplog.text


def test_a_slide_header_declaring_absurd_dimensions_is_refused_before_tiling():
    from plugins.readers.wsi import plan_grid

    class Forged:                 # what openslide reports for a forged header (no pixels are ever read)
        dimensions = (10**7, 10**7)
        level_downsamples = [1.0]
        properties = {"openslide.mpp-x": "0.25", "openslide.mpp-y": "0.25"}

        def get_thumbnail(self, size):
            raise AssertionError("the thumbnail must not be read")
    with pytest.raises(ValueError, match="slide header declares 10000000x10000000 px .* refused before planning"):
        plan_grid(Forged())


def test_a_full_disk_at_creation_is_one_line_and_dead_stagings_are_removed(tmp_path, monkeypatch):
    from stores.store import Store
    dead = tmp_path / ".s.zarr.staging" / "999999-killed"                  # left by a killed run (no such pid)
    dead.mkdir(parents=True)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Store, "_build", staticmethod(full))
    with pytest.raises(StoreError, match=r"s.zarr: cannot write the store \(No space left on device\)"):
        Store.create(tmp_path / "s.zarr", "t", ["a", "b"], ["train", "test"], {})
    assert not dead.exists() and not (tmp_path / ".s.zarr.staging").exists() and not (tmp_path / "s.zarr").exists()


def test_owners_features_of_absurd_magnitude_fail_their_row():
    from plugins.datasets.mmist import _features_of
    buf = io.BytesIO()
    np.savez(buf, x=np.full(8, 1e30, np.float32))
    assert "beyond +-1e+06" in _features_of("CT Features/c-1.npz", buf.getvalue())
    buf = io.BytesIO()
    np.savez(buf, x=np.arange(8, dtype=np.float32))
    assert _features_of("CT Features/c-1.npz", buf.getvalue()).dtype == np.float32


def test_strict_counts_the_failed_rows_of_reused_units(ehr_spec, data_root, tmp_path, capsys):
    from extract.__main__ import main as extract_main
    recs = _real_records(data_root, 7)
    rid, body = recs[2]
    recs[2] = (rid, body + b"02:00,HR,abc\n")                              # one record fails
    write_set(tmp_path / "physionet2012", recs, "d")
    args = ["--config", str(ehr_spec), "--dataset", "physionet2012", "--data-root", str(tmp_path), "--set", "d",
            "--store", str(tmp_path / "s.zarr"), "--no-rag", "--modality", "demographics", "--quiet"]
    assert extract_main(args) == 0
    assert extract_main([*args, "--strict"]) == 1                           # every unit cached, the row still failed
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("demographics/tabular")][-1]
    assert row.split()[1:] == ["0", "0", "0", "1", "6", "0", "1", "0"]      # this run: nothing, 1 unit reused;
    # the store: 6 ok, 1 failed (the summary shows what the store holds, not only what this run did)
