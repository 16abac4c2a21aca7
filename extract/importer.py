"""`python -m extract import`: precomputed features (one .npz/.npy per sample, or members of a tar) -> an expert.

    python -m extract import --dataset mmist --modality wsi --expert owners_wsi --from features/WSI/ --model-name owners
    python -m extract import --dataset openi --modality frontal --expert mine --from feats.tar.gz --pattern '{id}.npy'

Files are matched to samples by name (``--pattern``, default ``{id}.npz``); arrays are read with pickle disabled
(``--key`` picks the array inside an .npz; default its first). Samples without a file are MISSING; unreadable or
wrongly-shaped files are FAILED with the reason. Provenance records the folder, pattern and a hash of the files read.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import re
import tarfile
from pathlib import Path

import numpy as np

from plugins.dataset_options import add_dataset_options, dataset_options
from plugins.datasets.archives import ARCHIVE_ERRORS, member_id, unreadable
from plugins.datasets.base import DatasetAdapter
from stores.errors import InputError
from stores.spec import canonical_hash, load_spec
from stores.store import FAILED, MISSING, OK, Store

ABSURD = 1e10           # no embedding comes near it; beyond = corrupt (a float32 bit flip, a unit error)


def _read_array(blob: bytes, name: str, key: str | None) -> np.ndarray:
    with io.BytesIO(blob) as f:
        if name.endswith(".npy"):
            return np.load(f, allow_pickle=False)
        with np.load(f, allow_pickle=False) as z:
            return z[key or z.files[0]]


def _inside(source: Path, names: set[str]) -> tuple[set[str], dict[str, str]]:
    """The file names that stay inside ``source``, and why the others are refused (an id like ../../etc/passwd)."""
    ok, refused = set(), {}
    for n in names:
        try:
            DatasetAdapter.under(source, n, "file name")
            ok.add(n)
        except ValueError as exc:
            refused[n] = str(exc)
    return ok, refused


def _files(source: Path, names: set[str]) -> dict[str, bytes]:
    """name -> bytes, for the wanted file names, from a folder or a tar archive (members matched by exact name:
    traversal and absolute members refuse the archive, two members of one name are refused naming both)."""
    if source.is_dir():
        return {n: (source / n).read_bytes() for n in names if (source / n).is_file()}
    out, where = {}, {}
    try:
        with tarfile.open(source, "r:*") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                member_id(m.name, _ANY, source)
                base = m.name.rsplit("/", 1)[-1]
                if base in names:
                    if base in where:
                        raise InputError(f"{source}: members {where[base]!r} and {m.name!r} both give {base}: refused")
                    where[base] = m.name
                    out[base] = tar.extractfile(m).read()
    except ARCHIVE_ERRORS as exc:
        raise unreadable(source, exc) from None
    return out


_ANY = re.compile(r"(.*)")


def import_features(store_path: str, modality: str, expert: str, source: Path, pattern: str = "{id}.npz",
                    key: str | None = None, role: str = "imported", model_name: str = "imported") -> dict:
    st = Store(store_path, mode="a")
    ids = st.ids()
    wanted = {pattern.format(id=i): r for r, i in enumerate(ids)}
    inside, refused = _inside(source, set(wanted))
    blobs = _files(source, inside)
    arrays, reasons = {}, {wanted[n]: why for n, why in refused.items()}
    for name, blob in blobs.items():
        try:
            a = np.asarray(_read_array(blob, name, key), dtype=np.float64).reshape(-1)
            if not np.isfinite(a).all():
                raise ValueError("NaN/inf values")
            if np.abs(a).max(initial=0) > ABSURD:
                raise InputError(f"absurd magnitude (max |x| {np.abs(a).max():.3g} > {ABSURD:g})")
            a = a.astype(np.float32)
            arrays[wanted[name]] = a
        except Exception as exc:  # noqa: BLE001
            reasons[wanted[name]] = f"{name}: {exc}"[:300]
    if not arrays:
        raise InputError(f"{source}: no readable file matches {pattern!r} for any of the {len(ids)} samples")
    dims = {a.size for a in arrays.values()}
    dim = max(dims, key=lambda d: sum(a.size == d for a in arrays.values()))
    for r, a in list(arrays.items()):
        if a.size != dim:
            reasons[r] = f"{pattern.format(id=ids[r])}: {a.size} values, the others have {dim}"
            del arrays[r]
    digest = hashlib.sha256(b"".join(hashlib.sha256(blobs[n]).digest() for n in sorted(blobs))).hexdigest()
    config = {"import": str(source.resolve()), "pattern": pattern, "key": key, "files_sha256": digest}
    g = st.require_expert_group(modality, expert, canonical_hash(config), dim,
                                {"model": model_name, "role": role, "family": "imported", "config": config,
                                 "source": str(source.resolve())})
    counts = {"ok": 0, "missing": 0, "failed": 0}
    for u in g.units():
        n = u.stop - u.start
        vec = np.zeros((n, dim), np.float32)
        valid = np.full(n, MISSING, np.uint8)
        why = ["no file"] * n
        for j, r in enumerate(range(u.start, u.stop)):
            if r in arrays:
                vec[j], valid[j], why[j] = arrays[r], OK, ""
            elif r in reasons:
                valid[j], why[j] = FAILED, reasons[r]
        g.write_unit(u, vec, valid, why)
        for code, k in ((OK, "ok"), (MISSING, "missing"), (FAILED, "failed")):
            counts[k] += int((valid == code).sum())
    return counts


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--store", help="default: the dataset's store (stores/paths.py); create it first with `python -m extract`")
    ap.add_argument("--modality", required=True)
    ap.add_argument("--expert", required=True, help="the expert name in the store")
    ap.add_argument("--from", dest="source", required=True, help="a folder or a .tar/.tar.gz of .npz/.npy files")
    ap.add_argument("--pattern", default="{id}.npz")
    ap.add_argument("--key", help="array name inside each .npz (default: the first)")
    ap.add_argument("--model-name", default="imported")
    ap.add_argument("--role", default="imported")
    ap.add_argument("--config", help="your own pipelines.yaml")
    add_dataset_options(ap)                       # --set etc.: the store `extract --set` wrote


def run(args) -> int:
    from stores.paths import PathError, resolve, store_path
    options = dataset_options(args, args.dataset, args.config)
    store = str(store_path(load_spec(args.config), args.dataset, options, cli=args.store))
    source = resolve(args.source, Path.cwd())
    if not source.exists():
        raise PathError(f"--from {source} does not exist")
    counts = import_features(store, args.modality, args.expert, source, args.pattern, args.key, args.role,
                             args.model_name)
    print(f"{store}: {args.modality}/{args.expert}: {counts}")
    return 0
