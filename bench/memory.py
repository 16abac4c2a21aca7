"""bench/memory: peak RSS of extracting N = 2, 16, 64 large CXRs (3000 x 2500 PNG, written here) through
`python -m extract` (EfficientNet-Lite0, real weights; one unit holds all N rows, the worst case), plus one
valid 12000 x 12000 PNG (about 140 KB on disk). Peak RSS should stay flat in N.

    python bench/memory.py [--sizes 2,16,64] [--repo /path/to/another/checkout]   # --repo: that code (e.g. before)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from _common import ROOT
from PIL import Image

sys.path.insert(0, str(ROOT / "tests"))
from tiny_models import png_of_zeros  # noqa: E402  (the test fixtures' writer of a 12000 px PNG of zeros)

SIZES = (2, 16, 64)


def write_cxr(path: Path, w: int = 3000, h: int = 2500) -> None:
    """A smooth radiograph-like 8-bit image (gradient + disc + mild noise): compresses like a real CXR."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 60 + 120 * (x / w) + 50 * (((x - w / 2) ** 2 + (y - h / 2) ** 2) < (0.3 * h) ** 2)
    img += np.random.default_rng(0).normal(0, 4, size=(h, w))
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)


def write_dataset(root: Path, n: int, image: Path, pad: int = 8) -> None:
    """An OpenI-layout folder: n reports, each with one frontal image (hard links to one file: no disk cost),
    plus ``pad`` reports without images (the split needs a few samples; they are missing, never decoded)."""
    root.mkdir(parents=True)
    reports = {}
    for i in range(1, n + pad + 1):
        images = []
        if i <= n:
            os.link(image, root / f"CXR{i}_IM-0-1001.png")
            images = [f"CXR{i}_IM-0-1001"]
        reports[f"ecgen-radiology/{i}.xml"] = {"image": images, "report": {"FINDINGS": "lungs clear."}}
    (root / "reports_ori.json").write_text(json.dumps(reports))


def write_spec(folder: Path, chunk_rows: int) -> Path:
    raw = yaml.safe_load((ROOT / "pipelines.yaml").read_text())
    raw["defaults"]["chunk_rows"] = chunk_rows
    ds = raw["datasets"]["openi"]
    ds["modalities"] = {"frontal": {"kind": "cxr", "preprocess": {"size": 224}}}
    ds["split"] = {"method": "random", "fractions": {"train": 0.5, "val": 0.25, "test": 0.25}, "seed": 0}
    path = folder / "pipelines.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def peak_rss_mb(cmd: list[str], cwd: Path) -> tuple[float, int]:
    """Peak resident memory (MB) of a child process and its exit code (os.wait4: the child's own rusage)."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), "PYTHONPATH": str(cwd)}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print(err[-2000:], file=sys.stderr)
    return usage.ru_maxrss / 1024, code


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", default=str(ROOT), help="checkout whose code runs the extraction")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="numbers of CXRs (default 2,16,64)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    repo = Path(args.repo).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_cxr(tmp / "cxr.png")
        png_of_zeros(tmp / "huge.png")
        spec = write_spec(tmp, chunk_rows=64)
        rows = []
        cases = [(f"{n} CXRs 3000x2500", n, tmp / "cxr.png") for n in sizes]
        cases.append(("1 PNG 12000x12000 (140 KB)", 1, tmp / "huge.png"))
        for name, n, image in cases:
            data = tmp / f"data-{name.split()[0]}-{image.stem}"
            write_dataset(data / "openi", n, image)
            cmd = [sys.executable, "-m", "extract", "--dataset", "openi", "--config", str(spec), "--data-root",
                   str(data), "--store", str(tmp / f"{data.name}.zarr"), "--no-rag", "--quiet"]
            mb, code = peak_rss_mb(cmd, repo)
            rows.append((name, n, mb, code))
            print(f"{name:28s} peak RSS {mb:8.0f} MB   exit {code}", flush=True)
        base = rows[0][2]
        print(f"\ncode: {repo}")
        print(f"peak RSS relative to N={sizes[0]}: "
              + ", ".join(f"N={n}: {mb / base:.2f}x" for _, n, mb, _ in rows[:len(sizes)]))
        print(f"12000x12000 PNG vs N={sizes[0]}: {rows[-1][2] / base:.2f}x")


if __name__ == "__main__":
    main()
