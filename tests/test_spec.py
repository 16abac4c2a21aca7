import pytest

from stores.spec import SpecError, canonical_hash, load_spec


def test_repository_spec_names_registered_adapters_and_typed_settings():
    """Every dataset of the shipped spec has an adapter, every modality's settings are typed for its kind (defaults
    filled in), every task declares its outputs, and every profile the datasets use exists."""
    from plugins.datasets.base import load_adapters
    from stores.preprocess import PREPROCESS
    spec = load_spec()
    adapters = load_adapters()
    for name, ds in spec.datasets.items():
        assert ds.adapter in adapters, name
        for mod in ds.modalities.values():
            assert isinstance(mod.pre, PREPROCESS[mod.kind])
        assert all(t.n_outputs >= 1 for t in ds.tasks.values()), name
        assert all(p in spec.profiles for m in ds.modalities.values() for p in m.experts), name


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


def test_models_used_follow_the_profile(spec_writer):
    """models_used is what `extract fetch` installs: every key it lists is a registered encoder, and it follows the
    profile (an expert put in adds its model, nothing else changes)."""
    from plugins.registry import load_all
    spec = load_spec()
    used = spec.models_used("offline")
    assert used and used <= set(load_all()) and spec.profile("offline").rag.lm in used
    assert "gatortron_base" not in used

    def edit(raw):
        raw["profiles"]["offline"]["kinds"]["note"]["experts"]["gatortron"] = {"model": "gatortron_base",
                                                                              "role": "biomedical"}
    assert load_spec(spec_writer(edit)).models_used("offline") == used | {"gatortron_base"}
