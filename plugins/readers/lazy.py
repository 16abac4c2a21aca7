"""A raw input decoded only when an expert asks for it (once per unit: the runner caches the result)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class LazyView:
    kind: str          # image (2-D, downscaled at decode) | ct (2.5D slice stack) | ct_volume (3-D) | wsi
    path: Path
    preprocess: dict

    def get(self):
        if self.kind == "image":
            from .image import MAX_PIXELS, MIN_SIDE, read_image
            p = self.preprocess
            return read_image(self.path, size=p.get("size", 224), max_pixels=p.get("max_pixels", MAX_PIXELS),
                              min_side=p.get("min_side", MIN_SIDE))
        if self.kind == "ct":
            from .ct import ct_slices_25d, read_volume
            reader = {k: v for k, v in self.preprocess.get("reader", {}).items() if k != "spacing"}
            return ct_slices_25d(read_volume(self.path, **reader), **{
                k: v for k, v in self.preprocess.items() if k in ("slices", "hu", "size", "percentiles")})
        if self.kind == "ct_volume":
            from .ct import read_volume_ras
            return read_volume_ras(self.path, **self.preprocess.get("reader", {}))
        if self.kind == "wsi":
            from .wsi import plan_slide
            return plan_slide(self.path, **{k: v for k, v in self.preprocess.items()
                                            if k in ("mpp", "tile", "tissue_threshold", "max_tiles", "fallback_mpp",
                                                     "threads", "tile_batch", "store_tiles")})
        raise ValueError(f"unknown lazy input kind {self.kind!r}")
