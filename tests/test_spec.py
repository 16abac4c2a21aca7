import pytest

from stores.spec import SpecError, canonical_hash, load_spec


def test_repository_spec_declares_the_five_datasets_and_two_profiles():
    spec = load_spec()
    assert set(spec.profiles) == {"paper", "offline"}
    assert {"openi", "physionet2012", "mmist", "mimic4mm", "mimic3"} <= set(spec.datasets)
    ct = spec.dataset("mmist").modalities["ct"].preprocess
    assert ct["slices"] == 48 and ct["hu"] == [-1000, 1000] and ct["size"] == 224
    assert spec.dataset("openi").tasks["findings"].n_outputs == 14


@pytest.mark.parametrize("edit, fragment", [
    (lambda r: r["datasets"]["openi"]["tasks"]["findings"].__setitem__("typ", "binary"),
     "datasets.openi.tasks.findings.typ: unknown key"),
    (lambda r: r["datasets"]["openi"]["tasks"]["findings"].__setitem__("type", "ordinal"),
     "datasets.openi.tasks.findings.type"),
    (lambda r: r["datasets"]["mmist"].pop("split"), "datasets.mmist.split: Field required"),
    (lambda r: r["defaults"].__setitem__("chunk_rows", "many"), "defaults.chunk_rows"),
    (lambda r: r["profiles"]["offline"]["kinds"]["note"]["experts"]["minilm"].pop("model"),
     "profiles.offline.kinds.note.experts.minilm"),
    (lambda r: r["datasets"]["physionet2012"]["split"].__setitem__("stratify", "death"), "not a task"),
    (lambda r: r["profiles"]["offline"].pop("rag"), "profiles.offline.rag: required"),
])
def test_malformed_spec_errors_name_file_and_key(spec_writer, edit, fragment):
    path = spec_writer(edit)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(path) in str(err.value)
    assert fragment in str(err.value)


def test_unknown_dataset_and_profile_are_named(spec_writer):
    spec = load_spec()
    with pytest.raises(SpecError, match="datasets.nope"):
        spec.dataset("nope")
    with pytest.raises(SpecError, match="profiles.nope"):
        spec.profile("nope")


def test_canonical_hash_ignores_key_order():
    assert canonical_hash({"a": 1, "b": [1, 2]}) == canonical_hash({"b": [1, 2], "a": 1})
    assert canonical_hash({"a": 1}) != canonical_hash({"a": 2})


def test_every_stage_has_help():
    import subprocess
    import sys
    for module in ("extract", "rag", "train", "stores"):
        out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "usage: python -m " + module in out.stdout


def test_cli_names_a_bad_config_key(spec_writer):
    import subprocess
    import sys
    path = spec_writer(lambda r: r["defaults"].__setitem__("chunk_row", 5))
    out = subprocess.run([sys.executable, "-m", "extract", "--dataset", "openi", "--config", str(path)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "defaults.chunk_row: unknown key" in out.stderr and str(path) in out.stderr


def test_models_used_by_the_offline_profile():
    used = load_spec().models_used("offline")
    assert {"minilm", "mpnet", "efficientnet_lite0", "fracast0", "mmist_owner_ct", "mmist_owner_wsi"} <= used
    assert "qwen2_0_5b" not in used
