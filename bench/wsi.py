"""bench/wsi: tiles/s of the project's tile reader vs a bare openslide read_region loop over the same grid with the
same thread count; then end-to-end tiles/s through the offline image model (EfficientNet-Lite0).

    python bench/wsi.py [--slide PATH] [--threads 4] [--repeat 5]
"""
from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openslide
import torch
from _common import report, timed

from plugins.readers.wsi import open_slide, plan_grid, read_tiles
from plugins.registry import build_encoder
from stores.paths import data_root
from stores.spec import load_spec


def bare(path, grid, threads):
    slide = openslide.OpenSlide(str(path))

    def one(xy):
        return np.asarray(slide.read_region((int(xy[0]), int(xy[1])), grid.level, (grid.level_tile, grid.level_tile)).convert("RGB"))
    with ThreadPoolExecutor(threads) as pool:
        out = list(pool.map(one, grid.coords))
    slide.close()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--slide", default=None)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    path = args.slide or data_root(load_spec()) / "wsi" / "CMU-1-Small-Region.svs"
    slide = open_slide(path)
    grid = plan_grid(slide, tissue_threshold=0.0)            # every tile of the grid: more work to time
    n = len(grid.coords) * args.repeat
    t_ours = sum(timed(read_tiles, slide, grid, 224, args.threads)[1] for _ in range(args.repeat))
    t_bare = sum(timed(bare, path, grid, args.threads)[1] for _ in range(args.repeat))
    print(f"{path.name}: {len(grid.coords)} tiles x {args.repeat}, level {grid.level}, {args.threads} threads")
    report("tile reading tiles/s (ours: + stacking into one uint8 array)", n / t_ours, n / t_bare, "tiles/s", ">= 0.9")
    enc = build_encoder("efficientnet_lite0", device=args.device).load()
    tiles = read_tiles(slide, grid, 224, args.threads)
    enc.encode([tiles[:8]])                                   # warm-up
    _, t_e2e = timed(lambda: enc.encode([read_tiles(slide, grid, 224, args.threads)]))
    print(f"end to end (read + EfficientNet-Lite0 on {args.device}): {len(grid.coords) / t_e2e:,.1f} tiles/s")


if __name__ == "__main__":
    main()
