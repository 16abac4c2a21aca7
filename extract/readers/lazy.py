"""A raw input decoded only when an expert asks for it (once per unit: the runner caches the result)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class LazyView:
    kind: str          # ct | wsi
    path: Path
    preprocess: dict

    def get(self):
        if self.kind == "ct":
            from .ct import ct_slices_25d, read_volume
            return ct_slices_25d(read_volume(self.path, **self.preprocess.get("reader", {})), **{
                k: v for k, v in self.preprocess.items() if k in ("slices", "hu", "size")})
        if self.kind == "wsi":
            from .wsi import slide_tiles
            return slide_tiles(self.path, **{k: v for k, v in self.preprocess.items()
                                             if k in ("mpp", "tile", "tissue_threshold", "max_tiles")})
        raise ValueError(f"unknown lazy input kind {self.kind!r}")
