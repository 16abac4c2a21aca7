"""Whole-slide images: tissue detection on a thumbnail, a tile grid at a target resolution, threaded tile reads.

Ours (METHOD section 2 gives no tiling parameters): Otsu on the thumbnail's saturation (HSV) finds tissue; tiles of
224 px at ``mpp`` um/px (default 0.5, ~20x) on a level-0 grid; each tile is read from the best pyramid level (the
coarsest whose resolution is at least as fine as the target) and resized to 224; a tile is kept when its tissue
fraction on the thumbnail reaches ``tissue_threshold``. When the slide has no MPP metadata the configured
``fallback_mpp`` is used and said so in the returned info.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from stores.errors import InputError


@dataclass
class TileGrid:
    level: int
    level_tile: int                  # tile side in pixels at the read level
    step0: float                     # tile side in level-0 pixels
    coords: np.ndarray               # (T, 2) level-0 (x, y) of each kept tile
    mpp0: float
    mpp_source: str
    info: dict = field(default_factory=dict)


def open_slide(path: str | Path):
    import openslide
    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideError as exc:
        raise ValueError(f"{path}: unreadable slide ({exc})") from exc


def slide_mpp(slide, fallback_mpp: float | None) -> tuple[float, str]:
    import openslide
    v = slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
    if v:
        return float(v), "metadata"
    res, unit = slide.properties.get("tiff.XResolution"), slide.properties.get("tiff.ResolutionUnit")
    if res and unit in ("centimeter", "CENTIMETER"):
        return 1e4 / float(res), "tiff resolution"
    if fallback_mpp:
        return float(fallback_mpp), "configured fallback (no MPP in the slide)"
    raise ValueError("slide has no MPP metadata and no fallback_mpp is configured")


def tissue_mask(thumb: np.ndarray) -> np.ndarray:
    """Otsu on saturation; near-white and near-black (background, pen, scanner edges) excluded."""
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu
    hsv = rgb2hsv(thumb[..., :3])
    sat, val = hsv[..., 1], hsv[..., 2]
    if np.ptp(sat) < 1e-3:
        return np.zeros(sat.shape, bool)
    return (sat > threshold_otsu(sat)) & (val > 0.1)


MAX_SLIDE_PIXELS = 10**11      # 316k x 316k at level 0: several times the largest scanned slides


def plan_grid(slide, mpp: float = 0.5, tile: int = 224, tissue_threshold: float = 0.5,
              fallback_mpp: float | None = None, thumb_size: int = 1024) -> TileGrid:
    mpp0, source = slide_mpp(slide, fallback_mpp)
    w0, h0 = slide.dimensions
    if w0 * h0 > MAX_SLIDE_PIXELS or min(w0, h0) < 1:
        raise InputError(f"slide header declares {w0}x{h0} px at level 0 (allowed: 1 to {MAX_SLIDE_PIXELS:.0e} px): "
                         "refused before planning tiles")
    want = mpp / mpp0                                   # target downsample relative to level 0
    level = max([i for i, d in enumerate(slide.level_downsamples) if d <= want * 1.0001] or [0])
    down = slide.level_downsamples[level]
    step0 = tile * want
    level_tile = int(round(step0 / down))
    thumb = np.asarray(slide.get_thumbnail((thumb_size, thumb_size)).convert("RGB"))
    mask = tissue_mask(thumb)
    sx, sy = mask.shape[1] / w0, mask.shape[0] / h0
    coords = []
    for y in np.arange(0, h0 - step0 + 1, step0):
        for x in np.arange(0, w0 - step0 + 1, step0):
            x0, x1 = int(x * sx), max(int(x * sx) + 1, int((x + step0) * sx))
            y0, y1 = int(y * sy), max(int(y * sy) + 1, int((y + step0) * sy))
            if mask[y0:y1, x0:x1].mean() >= tissue_threshold:
                coords.append((int(round(x)), int(round(y))))
    return TileGrid(level, level_tile, step0, np.asarray(coords, dtype=np.int64).reshape(-1, 2), mpp0, source,
                    {"target_mpp": mpp, "tile": tile, "level_downsample": down, "tissue_threshold": tissue_threshold})


def read_tiles(slide, grid: TileGrid, size: int = 224, threads: int = 4) -> np.ndarray:
    """(T, 3, size, size) uint8 (a channels-first view; image encoders scale to [0, 1] per batch, so a large slide
    is never held as float32); tiles read by several threads (openslide releases the GIL)."""
    def one(xy):
        region = slide.read_region((int(xy[0]), int(xy[1])), grid.level, (grid.level_tile, grid.level_tile)).convert("RGB")
        if region.size != (size, size):
            region = region.resize((size, size), Image.BICUBIC)
        return np.asarray(region)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        tiles = list(pool.map(one, grid.coords))
    if not tiles:
        return np.zeros((0, 3, size, size), np.uint8)
    return np.stack(tiles).transpose(0, 3, 1, 2)


@dataclass
class TiledSlide:
    """A slide planned into tile batches; the runner reads batch by batch (memory stays bounded), feeds each batch
    to every pending expert (one read, many encoders) and stores per-tile embeddings (stores/tiles.py)."""
    path: Path
    grid: TileGrid
    size: int = 224
    threads: int = 4
    batch: int = 1024
    keep_tiles: bool = True
    _slide: object = None

    @property
    def coords(self) -> np.ndarray:
        return self.grid.coords

    @property
    def n_batches(self) -> int:
        return max(1, -(-len(self.grid.coords) // self.batch))

    @property
    def info(self) -> dict:
        g = self.grid
        return {"level": g.level, "level_tile": g.level_tile, "step0": g.step0, "mpp0": g.mpp0,
                "mpp_source": g.mpp_source, **g.info, "file": self.path.name}

    def read(self, b: int) -> np.ndarray:
        if self._slide is None:
            self._slide = open_slide(self.path)
        sub = replace(self.grid, coords=self.grid.coords[b * self.batch:(b + 1) * self.batch])
        return read_tiles(self._slide, sub, self.size, self.threads)

    def close(self) -> None:
        if self._slide is not None:
            self._slide.close()
            self._slide = None


def plan_slide(path: str | Path, mpp: float = 0.5, tile: int = 224, tissue_threshold: float = 0.5,
               max_tiles: int | None = None, fallback_mpp: float | None = None, threads: int = 4,
               tile_batch: int = 1024, store_tiles: bool = True) -> TiledSlide:
    """Plan a slide's tissue tiles without reading them; no tissue or an unreadable file is an error (-> failed)."""
    slide = open_slide(path)
    try:
        grid = _tissue_grid(slide, path, mpp, tile, tissue_threshold, max_tiles, fallback_mpp)
    finally:
        slide.close()
    return TiledSlide(Path(path), grid, tile, threads, int(tile_batch), bool(store_tiles))


def _tissue_grid(slide, path, mpp, tile, tissue_threshold, max_tiles, fallback_mpp) -> TileGrid:
    grid = plan_grid(slide, mpp, tile, tissue_threshold, fallback_mpp)
    if len(grid.coords) == 0:
        raise ValueError(f"{Path(path).name}: no tissue tiles at {mpp} um/px (threshold {tissue_threshold})")
    if max_tiles and len(grid.coords) > max_tiles:
        keep = np.random.default_rng(0).choice(len(grid.coords), max_tiles, replace=False)
        grid.coords = grid.coords[np.sort(keep)]
    return grid


def slide_tiles(path: str | Path, mpp: float = 0.5, tile: int = 224, tissue_threshold: float = 0.5,
                max_tiles: int | None = None, fallback_mpp: float | None = None, threads: int = 4) -> np.ndarray:
    """The tissue tiles of a slide, ready for an image encoder; a slide without tissue is an error (-> failed)."""
    slide = open_slide(path)
    try:
        return read_tiles(slide, _tissue_grid(slide, path, mpp, tile, tissue_threshold, max_tiles, fallback_mpp),
                          tile, threads)
    finally:
        slide.close()
