"""Shared fixtures: the real data folder, tiny random models of the real classes, small pipeline specs; the tiers.

Tiers: a plain ``pytest`` runs the fast tier (unit tests and small slices of the real data); tests marked
``@pytest.mark.slow`` (end to end, real weights, the whole corpus) run with ``pytest -m slow`` (only them),
``MEDMIX_TEST_ALL=1 pytest`` (every tier: `make test`, CI) or when named by node id. Tests that need the real data
skip with the reason when it is absent.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
DATA = Path(os.environ.get("MEDMIX_DATA_ROOT", ROOT.parent / "shared" / "data")).resolve()
ALL_TIERS = "MEDMIX_TEST_ALL"


def _run_slow(config) -> bool:
    return bool(config.getoption("markexpr")) or os.environ.get(ALL_TIERS, "") not in ("", "0")


def pytest_report_header(config):
    return "tiers: every tier" if _run_slow(config) else f"tiers: fast only (slow: -m slow or {ALL_TIERS}=1)"


def pytest_collection_modifyitems(config, items):
    """The fast tier by default: slow tests are deselected unless -m, MEDMIX_TEST_ALL=1 or their node id asks."""
    if _run_slow(config):
        return
    named = {a.rsplit("/", 1)[-1] for a in config.args if "::" in a}
    slow = [i for i in items if i.get_closest_marker("slow")
            and not {i.nodeid.rsplit("/", 1)[-1], i.nodeid.rsplit("/", 1)[-1].split("[")[0]} & named]
    if slow:
        config.hook.pytest_deselected(items=slow)
        gone = {id(i) for i in slow}
        items[:] = [i for i in items if id(i) not in gone]


MODEL_CACHE = Path(os.environ.get("MEDMIX_MODEL_CACHE", ROOT / "cache" / "models")).resolve()


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """A session model cache whose entries link to the real weights: retrieval indexes (built beside the model
    cache) land in the session folder, never in the real cache that other runs read."""
    cache = tmp_path_factory.mktemp("cache") / "models"
    cache.mkdir()
    for entry in MODEL_CACHE.iterdir() if MODEL_CACHE.is_dir() else ():
        (cache / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    return cache


@pytest.fixture(autouse=True)
def _no_writes_into_the_real_cache(session_cache, monkeypatch):
    monkeypatch.setenv("MEDMIX_MODEL_CACHE", str(session_cache))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real public data (../shared/data or MEDMIX_DATA_ROOT); tests that need it skip when it is absent."""
    if not (DATA / "openi").exists():
        pytest.skip(f"real data not found at {DATA} (set MEDMIX_DATA_ROOT)")
    return DATA


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_bert_dir(tiny_dir):
    from tiny_models import tiny_bert
    return tiny_bert(tiny_dir / "bert", "bert")


@pytest.fixture(scope="session")
def tiny_qwen_dir(tiny_dir):
    from tiny_models import tiny_qwen2
    return tiny_qwen2(tiny_dir / "qwen2")


def write_spec(tmp_path: Path, edit) -> Path:
    """A copy of the repository's pipelines.yaml, changed by ``edit(dict)``, written to tmp_path."""
    raw = yaml.safe_load((ROOT / "pipelines.yaml").read_text())
    # relative paths in a config resolve against its folder: pin the copy to the real data and the shared weights
    raw["defaults"].update(data_root=str(DATA), store_root=str(tmp_path / "runs" / "stores"),
                           model_cache=os.environ.get("MEDMIX_MODEL_CACHE", str(MODEL_CACHE)))
    edit(raw)
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def spec_writer(tmp_path):
    return lambda edit: write_spec(tmp_path, edit)


@pytest.fixture
def ehr_spec(spec_writer, tiny_bert_dir):
    """The repository's spec with 8-row units and a small EHR profile: Fracast-0 on the series, a tiny BERT on the
    serialized stay."""
    def edit(raw):
        raw["defaults"]["chunk_rows"] = 8
        prof = raw["profiles"]["offline"]
        prof["kinds"]["ehr"] = {"experts": {"fracast": {"model": "fracast0", "role": "general", "view": "series"},
                                            "bert": {"model": "medcpt_query", "role": "general", "view": "text"}}}
        prof["models"] = {"medcpt_query": {"source": str(tiny_bert_dir)}}
    return spec_writer(edit)
