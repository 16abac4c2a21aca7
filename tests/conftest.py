"""Shared fixtures: the real data folder, tiny random models of the real classes, small pipeline specs."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
DATA = Path(os.environ.get("MEDMIX_DATA_ROOT", ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA / "openi").exists():
        pytest.fail(f"real data not found at {DATA}: set MEDMIX_DATA_ROOT")
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
                           model_cache=str(Path(os.environ.get("MEDMIX_MODEL_CACHE", ROOT / "cache" / "models")).resolve()))
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
