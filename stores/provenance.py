"""What produced a result: the code version and the package versions, recorded in every store group and results file.

Shared by every stage (it sits below them), so that no stage imports another for its provenance.
"""
from __future__ import annotations

import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("medmix", "torch", "transformers", "timm", "open_clip_torch", "zarr", "numpy", "dask", "faiss-cpu",
            "scikit-learn")


def package_versions() -> dict:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            pass
    return out


@lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of the code (short hash, "+dirty" when uncommitted changes exist), else the package version."""
    here = Path(__file__).parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here,
                              timeout=5).stdout.strip()
        if head:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                   text=True, cwd=here, timeout=5).stdout.strip()
            return head + ("+dirty" if dirty else "")
    except Exception:  # noqa: BLE001  (no git, or not a checkout: fall back to the installed version)
        pass
    try:
        return f"medmix {version('medmix')}"
    except PackageNotFoundError:
        return "unknown"


def group_provenance(record: dict, role: str, config: dict, profile: str | None) -> dict:
    """The provenance an expert group records, whichever stage writes it: what the model says of itself
    (``record``), the expert's role, the config its hash names, the profile, the package and code versions."""
    return {**record, "role": role, "config": config, "profile": profile, "packages": package_versions(),
            "code_version": code_version()}
