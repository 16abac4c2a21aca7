"""2-D images (CXR PNG/JPEG) -> (1, 3, H, W) float32 in [0, 1]."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def read_image(path: str | Path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I", "F"):
            a = np.asarray(im, dtype=np.float32)
            lo, hi = np.percentile(a, [0.5, 99.5])
            a = np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1)
            a = np.repeat(a[None], 3, 0)
        else:
            a = np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
    return a[None]
