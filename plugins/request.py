"""What one extract run is asked to do, as one object: the CLI flags are generated from it, and the workers and the
stages that write experts for the extract stage (the RAG expert) receive it whole.

Adding an option means adding one field here (its flag comes from the field's metadata); nothing re-writes it
between the CLI, the pipeline, the workers and the RAG stage. Dataset options (PhysioNet's ``set``) are not fields of
their own: each adapter declares them in its ``Options`` class (``plugins/dataset_options.py``).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields, replace


def _flag(*names: str, **kw) -> dict:
    """Field metadata: the flag(s) and the argparse keywords of the CLI option the field is generated as."""
    return {"flags": names, **kw}


@dataclass(frozen=True)
class ExtractRequest:
    """One extract run (picklable: a Dask worker receives it whole)."""
    dataset: str = field(metadata=_flag("--dataset", required=True,
                                        help="a dataset of pipelines.yaml (openi, physionet2012, mmist, ...)"))
    profile: str = field(default="offline", metadata=_flag("--profile", help="paper | offline (default: offline)"))
    config: str | None = field(default=None, metadata=_flag(
        "--config", help="your own pipelines.yaml (default: ./pipelines.yaml, else the checkout's)"))
    data_root: str | None = field(default=None, metadata=_flag(
        "--data-root", help="folder holding the raw data (default: MEDMIX_DATA_ROOT, else the config's)"))
    store: str | None = field(default=None, metadata=_flag(
        "--store", help="store directory (default: <store root>/<dataset>[-options].zarr)"))
    options: dict | None = None          # dataset options given on the command line (plugins/dataset_options.py)
    modalities: list[str] | None = field(default=None, metadata=_flag(
        "--modality", action="append", metavar="M", help="only this modality (repeatable)"))
    experts: list[str] | None = field(default=None, metadata=_flag(
        "--only-expert", action="append", metavar="E", help="only this expert name (repeatable; 'teacher' too)"))
    limit: int | None = field(default=None, metadata=_flag(
        "--limit", type=int, help="a label-stratified sample of N that keeps every split non-empty (smoke runs; the "
                                  "store says so; `train --limit N` finds it)"))
    encoding_from: str | None = field(default=None, metadata=_flag(
        "--encoding-from", help="store of the training cohort whose fitted encodings (summary statistics, tabular "
                                "fields) this cohort reuses: external validation"))
    scheduler: str | None = field(default=None, metadata=_flag("--scheduler", help="address of an existing Dask "
                                                                                   "scheduler"))
    workers: int = field(default=0, metadata=_flag(
        "--workers", type=int, help="0 = in-process (default); N = Dask LocalCluster of N"))
    gpus: int = field(default=0, metadata=_flag("--gpus", type=int, help="one Dask worker per GPU (dask-cuda)"))
    device: str | None = field(default=None, metadata=_flag(
        "--device", help="torch device for in-process runs (default: cuda if present, else cpu)"))
    rag: bool = field(default=True, metadata=_flag(
        "--no-rag", action="store_false", help="skip the RAG experts (run `python -m rag embed` later)"))
    retry_failed: bool = field(default=False, metadata=_flag(
        "--retry-failed", action="store_true",
        help="run committed units again where rows failed (rows whose input changed are retried anyway)"))
    replace_split: bool = field(default=False, metadata=_flag(
        "--replace-split", action="store_true",
        help="rewrite an existing store's split when the dataset's split changed (default: refuse)"))
    progress: bool = field(default=True, metadata=_flag("--quiet", action="store_false", help="no progress bars"))

    def resolved(self, **changes) -> "ExtractRequest":
        """A copy with paths pinned (the spec file, data root and store a run resolved), for workers and stages."""
        return replace(self, **changes)

    @classmethod
    def add_arguments(cls, ap: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
        """The request's fields as CLI flags (``only``: a subset, for a CLI that takes fewer)."""
        from .dataset_options import add_dataset_options
        for f in fields(cls):
            meta = dict(f.metadata)
            if "flags" not in meta or (only is not None and f.name not in only):
                continue
            names = meta.pop("flags")
            if meta.get("action") not in ("store_true", "store_false") and not meta.get("required"):
                meta.setdefault("default", f.default)
            ap.add_argument(*names, dest=f.name, **meta)
        add_dataset_options(ap)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ExtractRequest":
        """The request a parsed command line asks for; dataset options are checked against the dataset's adapter."""
        from .dataset_options import dataset_options
        given = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name) and f.name != "options"}
        return cls(**given, options=dataset_options(args, given["dataset"], given.get("config")))
