"""The demo's raw-imaging section: the real CT volumes and the real slide through `python -m extract`, given as a
manifest (the path a user's own cohort takes, docs/datasets.md), with the slide's tissue tiles drawn on its thumbnail.

Rows: the two CT volumes of ../shared/data/ct (2.5D and the 3-D expert), the real slide (tissue detection, tiles,
per-tile store, slide embedding) and the same pixels saved as a TIFF that records no microns-per-pixel: with no
``fallback_mpp`` configured that row fails with the reason (saying how to give one) and the run goes on.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

SLIDE = "CMU-1-Small-Region.svs"
CTS = ("example_ct_sm.nii.gz", "example_seg.nii.gz")


def build_manifest(data_root: Path, folder: Path) -> Path:
    """folder/raw.csv naming the real files (linked into the folder: cells may not leave it)."""
    for sub in ("ct", "slides"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for name in CTS:
        _link(folder / "ct" / name, data_root / "ct" / name)
    _link(folder / "slides" / SLIDE, data_root / "wsi" / SLIDE)
    no_mpp = folder / "slides" / "no_mpp.tiff"
    if not no_mpp.exists():
        _without_mpp(data_root / "wsi" / SLIDE, no_mpp)
    rows = [{"id": "ct_abdomen", "split": "train", "ct": f"ct/{CTS[0]}", "wsi": ""},
            {"id": "ct_labelmap", "split": "train", "ct": f"ct/{CTS[1]}", "wsi": ""},
            {"id": "slide_he", "split": "test", "ct": "", "wsi": f"slides/{SLIDE}"},
            {"id": "slide_no_mpp", "split": "test", "ct": "", "wsi": "slides/no_mpp.tiff"}]
    path = folder / "raw.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _link(dst: Path, src: Path) -> None:
    if not dst.exists():
        dst.symlink_to(src.resolve())


def _without_mpp(src: Path, dst: Path) -> None:
    """The slide's level-0 pixels as a tiled TIFF without resolution tags (as some scanners' exports are)."""
    import openslide
    import tifffile
    with openslide.OpenSlide(str(src)) as s:
        rgb = np.asarray(s.read_region((0, 0), 0, s.dimensions).convert("RGB"))
    tifffile.imwrite(dst, rgb, tile=(256, 256), photometric="rgb", compression="zlib")


def write_config(manifest: Path, out: Path, store_root: Path) -> Path:
    """The dataset block `extract init` drafts for this table; no profiles: the packaged offline profile applies."""
    from extract.init import draft
    from plugins.datasets.manifest import read_table
    block, _ = draft(read_table(manifest), manifest, [], {}, "id")
    block["tasks"], block["split"] = {}, {"method": "official", "val_fraction": 0.5, "seed": 0}
    block["description"] = "the real CT volumes and slide of the data folder, given as a manifest"
    out.write_text(yaml.safe_dump({"defaults": {"store_root": str(store_root)},
                                   "datasets": {"raw_imaging": block}}, sort_keys=False))
    return out


def run(data_root: Path, out: Path, quiet: bool = True) -> dict:
    """Build, extract, verify, draw; returns the report section (Markdown) and the wall time."""
    t0 = time.perf_counter()
    folder = out / "raw_imaging"
    store_path = folder / "stores" / "raw_imaging.zarr"     # on the command line: MEDMIX_STORE_ROOT must not move it
    existed = store_path.exists()                           # else this run extracts cold, whatever timings were kept
    manifest = build_manifest(data_root, folder)
    config = write_config(manifest, folder / "raw.yaml", folder / "stores")
    env = {**os.environ, "MEDMIX_CONFIG": str(config)}
    cmd = [sys.executable, "-m", "extract", "--config", str(config), "--dataset", "raw_imaging", "--no-rag",
           "--store", str(store_path), *(["--quiet"] if quiet else [])]
    print("$ " + " ".join(cmd[1:]), flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    print(proc.stdout[-4000:], flush=True)
    if proc.returncode != 0:
        return {"text": f"## Raw imaging\n\n`python -m extract` exited {proc.returncode}: "
                        f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}\n", "seconds": 0}
    from stores.store import Store
    store = Store(store_path)
    png = thumbnail_overlay(store, folder / "slides" / SLIDE, out / "raw_imaging_tiles.png")
    from stores.spec import canonical_hash
    from .runinfo import kept_timings
    key = canonical_hash({"config": config.read_text(), "groups": sorted(
        f"{m}/{e}/{store.expert_group(m, e).attrs['config_hash']}" for m in store.root["embeddings"].group_keys()
        for e in store.root[f"embeddings/{m}"].group_keys())})
    kept = kept_timings(folder / "timings.json", key if existed else None, key,
                        {"seconds": round(time.perf_counter() - t0, 1)})
    return {"text": _section(store, png, kept["seconds"], out, kept.get("rerun_s")), **kept}


def thumbnail_overlay(store, slide_path: Path, png: Path) -> Path | None:
    """The slide's thumbnail with every stored tissue tile outlined (tile coordinates read back from the store)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import openslide
    from matplotlib.patches import Rectangle
    from stores.tiles import open_slide_tiles
    row = store.ids().index("slide_he")
    g = store.expert_group("wsi", "effnet")
    tiles = open_slide_tiles(store.root, "wsi", "effnet", g.attrs["config_hash"], row)
    grid = tiles.group.attrs["grid"]
    with openslide.OpenSlide(str(slide_path)) as s:
        thumb = s.get_thumbnail((800, 800))
        scale = thumb.size[0] / s.dimensions[0]
    fig, ax = plt.subplots(figsize=(6, 6 * thumb.size[1] / thumb.size[0]))
    ax.imshow(thumb)
    for x, y in tiles.group["coords"][:]:
        ax.add_patch(Rectangle((x * scale, y * scale), grid["step0"] * scale, grid["step0"] * scale, fill=False,
                               lw=0.8, ec="lime"))
    ax.set_title(f"{slide_path.name}: {tiles.n_tiles} tissue tiles of {grid['tile']} px at {grid['target_mpp']} um/px")
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def _section(store, png: Path | None, seconds: float, out: Path, rerun_s: float | None = None) -> str:
    from stores.verify import coverage, failure_reasons, verify
    from .report import md_table
    problems = verify(store)
    rows = [{k: c[k] for k in ("modality", "expert", "model", "dim", "ok", "missing", "failed")}
            for c in coverage(store) if c["latest"]]
    fails = failure_reasons(store)
    rerun = f"; this rerun, reusing it: {rerun_s} s" if rerun_s is not None else ""
    lines = ["## Raw imaging: real CT volumes and a real slide through `python -m extract`", "",
             "Given as a manifest (`raw_imaging/raw.csv`, config `raw_imaging/raw.yaml` drafted by `extract init`'s "
             "code): two CT volumes (2.5D EfficientNet-Lite0 over 48 slices; the 3-D Astra I3ResNet-152 on the RAS "
             "volume), the real H&E slide (tissue on the thumbnail, 224-px tiles at 0.5 um/px, one embedding per tile "
             "in the store, their mean the slide's), and the same slide saved without its microns-per-pixel. "
             f"Wall time {seconds} s (the first run's{rerun}). Store `{store.url}` ("
             + ("verify: consistent" if not problems else "verify: " + "; ".join(problems)) + ").", "",
             md_table(rows), ""]
    if fails:
        lines += ["Failures (the run went on): " + "; ".join(
            f"{g}: " + ", ".join(f"{r} (x{c})" for r, c in rs.items()) for g, rs in fails.items()), ""]
    if png is not None:
        lines += [f"![tissue tiles of the slide]({png.relative_to(out)})", ""]
    return "\n".join(lines)
