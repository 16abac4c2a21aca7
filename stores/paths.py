"""One resolver for every path a stage needs: command line > environment > config > working directory.

Relative paths written in a config resolve against the folder of that config file (never the package folder, never
the working directory), so a run from any directory, on any Dask worker, from an installed or an editable package,
finds the same data, store, weights and corpus. Every stage calls these functions; none resolves a path itself.

| what         | command line   | environment          | config                         |
|--------------|----------------|----------------------|--------------------------------|
| the spec     | --config       | MEDMIX_CONFIG        | ./pipelines.yaml, then the source checkout's |
| data root    | --data-root    | MEDMIX_DATA_ROOT     | defaults.data_root             |
| store root   | --store (file) | MEDMIX_STORE_ROOT    | defaults.store_root            |
| model cache  |                | MEDMIX_MODEL_CACHE   | defaults.model_cache           |
| RAG corpus   |                | MEDMIX_CORPUS        | <profile>.rag.corpus           |
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:                                   # spec.py imports this module: no import cycle at run time
    from .spec import PipelineSpec, RagSpec

SPEC_NAME = "pipelines.yaml"
# the packaged spec: in a source checkout a link to the top-level pipelines.yaml, in an installed wheel a copy
CHECKOUT_SPEC = Path(__file__).resolve().parent / SPEC_NAME


def spec_base(spec_file: Path) -> Path:
    """Where a spec's relative paths start: its folder; for the packaged spec of an installed wheel (a copy inside
    the package, no checkout around it) the working directory, so that ``runs/stores`` and ``cache/models`` land
    where the user runs, never inside site-packages."""
    folder = Path(spec_file).resolve().parent
    packaged = Path(spec_file).absolute() == CHECKOUT_SPEC.absolute() or folder == CHECKOUT_SPEC.parent
    return Path.cwd() if packaged and not (folder / "pyproject.toml").is_file() else folder


class PathError(FileNotFoundError):
    """A path that a config, an option or the environment names does not exist (the message says which)."""


def find_config(cli: str | os.PathLike | None = None) -> Path:
    """The pipeline spec to read: --config, MEDMIX_CONFIG, ./pipelines.yaml, then the source checkout's."""
    for value, what in ((cli, "--config"), (os.environ.get("MEDMIX_CONFIG"), "MEDMIX_CONFIG")):
        if value:
            p = Path(os.path.expanduser(str(value))).resolve()
            if not p.is_file():
                raise PathError(f"{what}: pipeline spec {p} not found")
            return p
    for p in (Path.cwd() / SPEC_NAME, CHECKOUT_SPEC):
        if p.is_file():
            return p.resolve()
    raise PathError(f"no {SPEC_NAME} found: pass --config, set MEDMIX_CONFIG, or run from a folder that holds one")


def resolve(value: str | os.PathLike, base: Path, must_exist: bool = False, what: str = "path") -> Path:
    """A path as written (absolute, ~, or relative to ``base``), resolved; checked to exist where asked."""
    p = Path(os.path.expanduser(str(value)))
    p = (p if p.is_absolute() else base / p).resolve()
    if must_exist and not p.exists():
        raise PathError(f"{what} does not exist: {p}")
    return p


def config_dir(spec: "PipelineSpec") -> Path:
    """Relative paths in a config are relative to the folder holding it."""
    return spec_base(Path(spec.source_file)) if spec.source_file else Path.cwd()


def _pick(cli, env: str, configured: str, spec: "PipelineSpec", what: str, must_exist: bool = False) -> Path:
    if cli:
        return resolve(cli, Path.cwd(), must_exist, what)          # a command-line path is relative to where you are
    if os.environ.get(env):
        return resolve(os.environ[env], Path.cwd(), must_exist, what)
    return resolve(configured, config_dir(spec), must_exist, what)


def data_root(spec: "PipelineSpec", cli: str | os.PathLike | None = None) -> Path:
    return _pick(cli, "MEDMIX_DATA_ROOT", spec.defaults.data_root, spec, "data root")


def store_root(spec: "PipelineSpec") -> Path:
    return _pick(None, "MEDMIX_STORE_ROOT", spec.defaults.store_root, spec, "store root")


def model_cache(spec: "PipelineSpec") -> Path:
    """Where weight packages are installed: MEDMIX_MODEL_CACHE, else the config's ``defaults.model_cache``."""
    return _pick(None, "MEDMIX_MODEL_CACHE", spec.defaults.model_cache, spec, "model cache")


def rag_root(spec: "PipelineSpec") -> Path:
    """Retrieval indexes live beside the model cache: built once per corpus and encoder, reused by every stage."""
    return model_cache(spec).parent / "rag"


def store_name(dataset: str, options: dict | None = None, limit: int | None = None) -> str:
    """A store's folder name says what it holds: the dataset, its non-default options, a sample limit (``--limit N``:
    a label-stratified sample of N, so ``extract --limit N`` and ``train --limit N`` meet at ``<dataset>-limitN``)."""
    suffix = "".join(f"-{k}{v}" for k, v in sorted((options or {}).items()) if v is not None and k != "limit")
    return f"{dataset}{suffix}{f'-limit{limit}' if limit else ''}.zarr"


def store_path(spec: "PipelineSpec", dataset: str, options: dict | None = None, limit: int | None = None,
               cli: str | os.PathLike | None = None) -> Path:
    """The one answer to "where is this dataset's store": --store, else <store root>/<store_name>."""
    if cli:
        return resolve(cli, Path.cwd())
    spec.dataset(dataset)                                  # an unknown dataset fails here, naming the choices
    return store_root(spec) / store_name(dataset, options, limit)


def corpus_path(spec: "PipelineSpec", rag: "RagSpec", data_root_cli: str | os.PathLike | None = None) -> Path:
    """The RAG knowledge base: MEDMIX_CORPUS, else ``rag.corpus`` (absolute, or looked up under the run's data root,
    then the configured data root), so a cohort folder without medlineplus/ still finds it."""
    if os.environ.get("MEDMIX_CORPUS"):
        return resolve(os.environ["MEDMIX_CORPUS"], Path.cwd(), True, "MEDMIX_CORPUS")
    p = Path(os.path.expanduser(rag.corpus))
    if p.is_absolute():
        return resolve(p, Path.cwd(), True, "rag.corpus")
    roots = [data_root(spec, data_root_cli), resolve(spec.defaults.data_root, config_dir(spec))]
    for root in roots:
        if (root / p).is_file():
            return (root / p).resolve()
    raise PathError(f"rag.corpus {rag.corpus!r} not found under " + " or ".join(str(r) for r in dict.fromkeys(roots))
                    + " (set rag.corpus to an absolute path or MEDMIX_CORPUS)")
