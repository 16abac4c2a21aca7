"""Provenance shared by every stage: the code version (git) and the versions of the packages that compute results.
(The same helpers extract/runner.py defines; one place so train/ and rag/ need not import the extract stage.)"""
from __future__ import annotations

from pathlib import Path


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for p in ("medmix", "torch", "transformers", "timm", "open_clip_torch", "zarr", "numpy", "dask"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            pass
    return out


def code_version() -> str:
    import subprocess
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except Exception:  # noqa: BLE001
        return "unknown"
