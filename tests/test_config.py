"""Config that does what it says: typed at every depth, every key read, one resolver for every path."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from stores import paths
from stores.preprocess import PREPROCESS
from stores.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parent.parent
CONSUMERS = [ROOT / d for d in ("plugins/datasets", "plugins/readers", "plugins/encoders", "rag")]


# ---- typos at any depth fail, naming the key path -------------------------------------------------------------
@pytest.mark.parametrize("edit, fragment", [
    (lambda r: r["datasets"]["mmist"]["modalities"]["ct"]["preprocess"].__setitem__("interpolation", "bicubic"),
     "datasets.mmist.modalities.ct.preprocess.interpolation"),
    (lambda r: r["datasets"]["physionet2012"]["modalities"]["ehr"]["preprocess"].__setitem__("bin_hours", 1),
     "datasets.physionet2012.modalities.ehr.preprocess.bin_hours"),
    (lambda r: r["datasets"]["mmist"]["modalities"]["wsi"]["preprocess"].__setitem__("store_tiles", "yes"),
     "datasets.mmist.modalities.wsi.preprocess.store_tiles"),
    (lambda r: r["datasets"]["openi"]["modalities"]["frontal"].__setitem__("preprocess", {"resize": 224}),
     "datasets.openi.modalities.frontal.preprocess.resize"),
    (lambda r: r["profiles"]["paper"]["rag"]["generators"]["cxr"].__setitem__("trust_remote_code", "yes"),
     "profiles.paper.rag.generators.cxr.trust_remote_code"),
    (lambda r: r["profiles"]["offline"].setdefault("models", {}).__setitem__("minilm", {"trust_remote_code": 1}),
     "profiles.offline.models.minilm.trust_remote_code"),
])
def test_typos_and_loose_types_inside_sections_are_errors(spec_writer, edit, fragment):
    path = spec_writer(edit)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert fragment in str(err.value) and str(path) in str(err.value)


def test_adapter_options_are_closed(data_root):
    from plugins.datasets.base import get_adapter
    spec = load_spec()
    with pytest.raises(SpecError, match=r"options\.sett: unknown option .*valid: rag_bridge, set"):
        get_adapter(spec.dataset("physionet2012"), data_root, {"sett": "b"})
    with pytest.raises(SpecError, match=r"options\.set"):
        get_adapter(spec.dataset("physionet2012"), data_root, {"set": "../x"})


def test_encoder_params_are_closed():
    from plugins.registry import EncoderOptions, build_encoder, check_params
    with pytest.raises(ValueError, match=r"params\.layuot: unknown key for fracast0"):
        build_encoder("fracast0", EncoderOptions(params={"layuot": "per_variable"}))
    with pytest.raises(ValueError, match=r"params\.layout"):
        check_params("fracast0", {"layout": "diagonal"})
    check_params("fracast0", {"layout": "per_variable"})
    with pytest.raises(ValueError, match=r"profiles\.x\.params\.variant"):
        check_params("efficientnet_lite0", {"variant": "b"}, "profiles.x.params")


def _yaml_keys(section: str) -> set[tuple[str, str]]:
    """(owner, key) for every key written under ``section`` in the repository's pipelines.yaml."""
    raw = yaml.safe_load((ROOT / "pipelines.yaml").read_text())
    out = set()
    for dname, ds in raw["datasets"].items():
        if section == "options":
            out |= {(ds["adapter"], k) for k in ds.get("options") or {}}
        if section == "preprocess":
            for m in ds["modalities"].values():
                out |= {(m["kind"], k) for k in m.get("preprocess") or {}}
    for prof in raw["profiles"].values():
        for kind in prof["kinds"].values():
            for e in [*kind.get("experts", {}).values(), kind.get("teacher") or {}]:
                if section == "params":
                    out |= {(e["model"], k) for k in e.get("params") or {}}
    return out


def _read_in_code(key: str) -> bool:
    pattern = re.compile(rf"""["']{re.escape(key)}["']|\.{re.escape(key)}\b""")
    for folder in CONSUMERS:
        for f in folder.rglob("*.py"):
            text = "\n".join(line for line in f.read_text().splitlines()
                             if not re.match(rf"\s*{re.escape(key)}\s*:", line))     # not the field's declaration
            if pattern.search(text):
                return True
    return False


@pytest.mark.parametrize("section", ["preprocess", "options", "params"])
def test_every_key_in_the_spec_is_declared_and_read_by_code(section):
    keys = _yaml_keys(section)
    if section == "preprocess":
        for kind, key in keys:
            assert key in PREPROCESS[kind].model_fields, f"preprocess.{key} is not a setting of kind {kind}"
    unread = sorted(f"{owner}: {key}" for owner, key in keys if not _read_in_code(key))
    assert not unread, f"keys in pipelines.yaml that no code reads: {unread}"


def test_the_key_check_can_fail():
    assert not _read_in_code("bin_hours") and not _read_in_code("sett")
    assert _read_in_code("tissue_threshold")


# ---- one resolver ---------------------------------------------------------------------------------------------
def test_config_paths_resolve_against_the_config_folder_from_any_working_directory(tmp_path, monkeypatch):
    for var in ("MEDMIX_CONFIG", "MEDMIX_DATA_ROOT", "MEDMIX_STORE_ROOT", "MEDMIX_MODEL_CACHE", "MEDMIX_CORPUS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)                              # no pipelines.yaml here: the checkout's is found
    spec = load_spec()
    assert Path(spec.source_file) == ROOT / "pipelines.yaml"
    assert paths.store_root(spec) == ROOT / "runs" / "stores"
    assert paths.model_cache(spec) == ROOT / "cache" / "models"
    own = tmp_path / "cohort" / "pipelines.yaml"
    own.parent.mkdir()
    raw = yaml.safe_load((ROOT / "pipelines.yaml").read_text())
    own.write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(own.parent)                            # ./pipelines.yaml beats the checkout's
    spec = load_spec()
    assert Path(spec.source_file) == own
    assert paths.store_root(spec) == own.parent / "runs" / "stores"
    monkeypatch.setenv("MEDMIX_STORE_ROOT", str(tmp_path / "elsewhere"))
    assert paths.store_root(spec) == tmp_path / "elsewhere"  # environment beats config
    with pytest.raises(SpecError, match="--config"):
        load_spec(tmp_path / "missing.yaml")


def test_extract_and_train_agree_on_the_store_of_a_set(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDMIX_STORE_ROOT", str(tmp_path))
    from train.__main__ import _default_store
    spec = load_spec()
    written = paths.store_path(spec, "physionet2012", {"set": "b"})
    assert written == tmp_path / "physionet2012-setb.zarr"
    assert Path(_default_store("physionet2012", None, {"set": "b"})) == written
    with pytest.raises(SpecError, match="datasets.nope"):
        paths.store_path(spec, "nope")


def test_the_corpus_is_found_for_a_cohort_folder_without_medlineplus(tmp_path, data_root, monkeypatch):
    monkeypatch.delenv("MEDMIX_CORPUS", raising=False)
    monkeypatch.setenv("MEDMIX_DATA_ROOT", str(data_root))
    spec = load_spec()
    rag = spec.profile("offline").rag
    cohort = tmp_path / "my_cohort"
    cohort.mkdir()
    assert paths.corpus_path(spec, rag, cohort) == data_root / "medlineplus" / "health_topics.json"
    monkeypatch.setenv("MEDMIX_DATA_ROOT", str(cohort))
    with pytest.raises(paths.PathError, match="rag.corpus"):
        paths.corpus_path(spec, rag.model_copy(update={"corpus": "nowhere/topics.json"}), cohort)


# ---- command lines say what is wrong in one line, exit 2 -------------------------------------------------------
@pytest.mark.parametrize("args, fragment", [
    (["--dataset", "physionet2012", "--only-expert", "fracsat"], "--only-expert fracsat: no such expert"),
    (["--dataset", "physionet2012", "--modality", "ehrr"], "--modality ehrr: not a modality of physionet2012"),
    (["--dataset", "physionet2012", "--set", "../b"], "options.set"),
    (["--dataset", "nope"], "datasets.nope"),
])
def test_extract_cli_bad_input_is_one_line_and_exit_2(args, fragment, data_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDMIX_STORE_ROOT", str(tmp_path))
    monkeypatch.setenv("MEDMIX_DATA_ROOT", str(data_root))
    code, line = _cli("extract", [*args, "--quiet"], capsys)
    assert code == 2 and line.startswith("error:") and fragment in line, line
    assert not list(tmp_path.iterdir())                  # nothing was written


def _cli(module: str, argv: list[str], capsys) -> tuple[int, str]:
    """Run `python -m <module> argv` in this process (the entry point itself: tests/test_spec.py): its exit status
    and its one stderr line (the test fails when there is not exactly one)."""
    import importlib
    code = importlib.import_module(f"{module}.__main__").main(argv)
    lines = [ln for ln in capsys.readouterr().err.splitlines()
             if ln.strip() and not ln.startswith(("INFO", "WARNING"))]
    assert len(lines) == 1, lines
    return code, lines[0]


@pytest.mark.parametrize("module, args, fragment", [
    ("train", ["--dataset", "nope"], "datasets.nope"),
    ("train", ["run", "--dataset", "physionet2012", "--store", "/nonexistent/p.zarr"], "no store here"),
    ("train", ["evaluate", "--checkpoint", "/nonexistent/m.pt", "--dataset", "mmist"], "/nonexistent/m"),
    ("train", ["predict", "--checkpoint", "/nonexistent/m.pt", "--store", "/nonexistent/s.zarr"], "/nonexistent/m"),
    ("rag", ["search", "fever", "--profile", "nope"], "profiles.nope"),
    ("rag", ["--profile", "nope", "build-index"], "profiles.nope"),
    ("stores", ["verify", "/nonexistent/s.zarr"], "no store here"),
])
def test_every_cli_says_bad_input_in_one_line_with_exit_2(module, args, fragment, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDMIX_STORE_ROOT", str(tmp_path))
    code, line = _cli(module, args, capsys)
    assert code == 2 and line.startswith("error:") and fragment in line, line


def test_the_packaged_spec_serves_a_datasets_only_config_also_from_an_installed_wheel(tmp_path, monkeypatch):
    """stores/pipelines.yaml (a link to the top-level file here, a copy in a wheel) is package data; outside a
    checkout its relative defaults start at the working directory, never inside site-packages."""
    import shutil
    import tomllib
    import stores.spec as spec_module
    assert (ROOT / "stores" / "pipelines.yaml").resolve() == (ROOT / "pipelines.yaml").resolve()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "pipelines.yaml" in pyproject["tool"]["setuptools"]["package-data"]["stores"]
    wheel = tmp_path / "site-packages" / "stores"
    wheel.mkdir(parents=True)
    shutil.copy(ROOT / "pipelines.yaml", wheel / "pipelines.yaml")
    monkeypatch.setattr(paths, "CHECKOUT_SPEC", wheel / "pipelines.yaml")
    monkeypatch.setattr(spec_module, "CHECKOUT_SPEC", wheel / "pipelines.yaml")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "my.yaml").write_text(yaml.safe_dump({"datasets": {"mine": {
        "adapter": "manifest", "path": "cohort.csv", "tasks": {"death": {"type": "binary"}},
        "split": {"method": "official", "val_fraction": 0.2}, "modalities": {"note": {"kind": "note"}}}}}))
    spec = load_spec(work / "my.yaml")
    assert {"offline", "paper"} <= set(spec.profiles) and "mine" in spec.datasets and "openi" in spec.datasets
    assert spec.defaults.store_root == str(work / "runs" / "stores")
    assert spec.defaults.model_cache == str(work / "cache" / "models")
