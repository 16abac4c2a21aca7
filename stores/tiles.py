"""Per-tile embeddings of whole-slide images: ragged (each slide has its own tile count), resumable within a slide.

    <store>/tiles/<modality>/<expert>/<hash12>/<row>/      attrs: sample id, tile grid (level, mpp, source, ...)
        coords      (T, 2) int64     level-0 (x, y) of each tissue tile
        embeddings  (T, D) float32   one chunk per tile batch ("sub-unit"), NaN until written
        done        (B,)   uint8     one marker per tile batch, chunk size 1, written LAST

A slide belongs to exactly one row unit, so each per-slide group has one writer. A large slide is several tile
batches: a killed run re-reads only the batches without a marker. The slide's row in ``embeddings/`` (the mean
over its tiles) is written by the row unit once every batch is done.
"""
from __future__ import annotations

import numpy as np
import zarr

from .store import INTEGRITY, array_digest, json_safe, seal


class SlideTiles:
    def __init__(self, group: zarr.Group):
        self.group = group

    @property
    def n_tiles(self) -> int:
        return int(self.group["coords"].shape[0])

    @property
    def batch(self) -> int:
        return int(self.group["embeddings"].chunks[0])

    def done(self) -> np.ndarray:
        return self.group["done"][:].astype(bool)

    def batch_rows(self, b: int) -> slice:
        return slice(b * self.batch, min((b + 1) * self.batch, self.n_tiles))

    def write_batch(self, b: int, emb: np.ndarray) -> None:
        rows = self.batch_rows(b)
        if emb.shape[0] != rows.stop - rows.start or not np.isfinite(emb).all():
            raise ValueError(f"{self.group.path}: tile batch {b} has {emb.shape[0]} rows or non-finite values")
        emb = emb.astype(np.float32)
        self.group["embeddings"][rows] = emb
        if "checksum" in set(self.group.array_keys()):
            self.group["checksum"][b] = self.batch_checksum(b, emb)
        self.group["done"][b] = 1                                   # marker last

    def batch_checksum(self, b: int, emb: np.ndarray) -> str:
        """A tile batch's digest bound to its batch index, tile rows and slide (a batch swapped between slides
        fails)."""
        rows = self.batch_rows(b)
        return (f"batch={b},rows={rows.start}-{rows.stop},sample={self.group.attrs.get('sample_id')},"
                f"embeddings={array_digest('embeddings', np.asarray(emb, np.float32))}")

    def mean(self) -> np.ndarray:
        if not self.done().all():
            raise RuntimeError(f"{self.group.path}: tile batches still pending")
        return self.group["embeddings"][:].astype(np.float64).mean(0).astype(np.float32)


def tiles_path(modality: str, expert: str, config_hash: str, row: int) -> str:
    return f"tiles/{modality}/{expert}/{config_hash[:12]}/{row}"


def require_slide_tiles(root: zarr.Group, modality: str, expert: str, config_hash: str, row: int, sample_id: str,
                        coords: np.ndarray, dim: int, batch: int, info: dict) -> SlideTiles:
    """Open the slide's tile group, or create it; a group whose grid differs (other tiling) is replaced."""
    path = tiles_path(modality, expert, config_hash, row)
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    if path in root:
        g = root[path]
        same = (g.attrs.get("sample_id") == sample_id and g["coords"].shape == coords.shape
                and g["embeddings"].shape[1] == dim and int(g["embeddings"].chunks[0]) == batch
                and np.array_equal(g["coords"][:], coords))
        if same:
            return SlideTiles(g)
        del root[path]
    g = root.require_group(path)
    n, b = len(coords), max(1, batch)
    g.create_array("coords", shape=coords.shape, chunks=(max(1, n), 2), dtype="int64",
                   dimension_names=["tile", "xy"])[:] = coords
    g.create_array("embeddings", shape=(n, dim), chunks=(b, dim), dtype="float32", fill_value=float("nan"),
                   dimension_names=["tile", "feature"])
    g.create_array("done", shape=(max(1, -(-n // b)),), chunks=(1,), dtype="uint8", fill_value=0,
                   dimension_names=["tile_batch"])
    g.create_array("checksum", shape=(max(1, -(-n // b)),), chunks=(1,), dtype=str, dimension_names=["tile_batch"])
    attrs = json_safe({"sample_id": sample_id, "row": int(row), "grid": info, "integrity": INTEGRITY,
                       "coords_sha256": array_digest("coords", coords)})
    g.attrs.update(attrs)
    g.attrs["seal"] = seal(dict(g.attrs))
    return SlideTiles(g)


def open_slide_tiles(root: zarr.Group, modality: str, expert: str, config_hash: str, row: int) -> SlideTiles:
    """Read side: a slide's tile embeddings and coordinates (e.g. for attention-MIL or heat maps)."""
    return SlideTiles(root[tiles_path(modality, expert, config_hash, row)])
