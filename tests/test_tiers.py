"""The test tiers (tests/conftest.py): plain pytest runs the fast tier, `-m slow` or MEDMIX_TEST_ALL=1 adds the slow
one, a slow test named by node id runs, and a test needing the real data skips with the reason when it is absent."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SAMPLE = '''
import pytest


def test_fast():
    pass


@pytest.mark.slow
def test_slow():
    pass


def test_needs_data(data_root):
    pass
'''


@pytest.fixture
def suite(tmp_path):
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow: end to end\n")
    (tmp_path / "nodata").mkdir()
    return tmp_path


def _outcomes(suite: Path, *args: str, all_tiers: bool = False) -> dict[str, str]:
    env = {**os.environ, "MEDMIX_DATA_ROOT": str(suite / "nodata")}
    env.pop("MEDMIX_TEST_ALL", None)
    if all_tiers:
        env["MEDMIX_TEST_ALL"] = "1"
    out = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", *args], cwd=suite, env=env,
                         capture_output=True, text=True, timeout=300).stdout
    rows = [line.split() for line in out.splitlines() if line.startswith("test_sample.py::")]
    return {r[0].split("::")[1]: r[1] for r in rows if len(r) > 1}


def test_plain_pytest_runs_the_fast_tier_and_skips_what_needs_absent_data(suite):
    got = _outcomes(suite)
    assert got == {"test_fast": "PASSED", "test_needs_data": "SKIPPED"}


def test_slow_tier_on_demand(suite):
    assert _outcomes(suite, "-m", "slow") == {"test_slow": "PASSED"}
    assert _outcomes(suite, all_tiers=True) == {"test_fast": "PASSED", "test_slow": "PASSED",
                                                "test_needs_data": "SKIPPED"}
    assert _outcomes(suite, "test_sample.py::test_slow") == {"test_slow": "PASSED"}
