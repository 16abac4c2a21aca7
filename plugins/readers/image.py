"""2-D images (CXR PNG/JPEG) -> (1, 3, H, W) float32 in [0, 1], decoded no larger than the encoder needs.

Memory is bounded whatever the file: the header is checked against a pixel budget before any pixel is decoded
(decompression bombs included), JPEGs are decoded at a reduced scale (``draft``) and every image is box-reduced by
an integer factor while it is still 8/16-bit, keeping the short side >= 2 x ``size`` (the encoder's final resize
then works from at least twice its input). Images smaller than ``min_side`` or with every pixel equal carry no
information and are rejected with the reason.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from stores.preprocess import CxrPreprocess

# defaults of the cxr preprocess settings (stores/preprocess.py, the one place they are declared):
MAX_PIXELS = CxrPreprocess.model_fields["max_pixels"].default    # 50 Mpx: > 3x the largest MIMIC-CXR image
MIN_SIDE = CxrPreprocess.model_fields["min_side"].default        # px; 1x1 "images" and icons are not radiographs


class ImageRejected(ValueError):
    """The file is a readable image that must not be embedded (too large, too small, blank)."""


def reduce_factor(w: int, h: int, size: int | None) -> int:
    return max(1, min(w, h) // (2 * size)) if size else 1


def read_image(path: str | Path, size: int | None = None, max_pixels: int | None = None,
               min_side: int = 1) -> np.ndarray:
    """The image at ``path``; ``size`` = the encoder input side it will be resized to (None: full resolution)."""
    path = Path(path)
    with warnings.catch_warnings():
        if max_pixels:          # our own budget applies below; PIL's warning would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return _read(path, size, max_pixels, min_side)


def _read(path: Path, size: int | None, max_pixels: int | None, min_side: int) -> np.ndarray:
    with Image.open(path) as im:
        w, h = im.size
        if max_pixels and w * h > max_pixels:
            raise ImageRejected(f"{path.name}: {w}x{h} px ({w * h / 1e6:.1f} Mpx) exceeds the pixel budget of "
                                f"{max_pixels / 1e6:.1f} Mpx (preprocess.max_pixels); not decoded")
        if min(w, h) < min_side:
            raise ImageRejected(f"{path.name}: {w}x{h} px is below the minimum of {min_side} px per side "
                                "(preprocess.min_side)")
        factor = reduce_factor(w, h, size)
        if factor > 1 and im.format == "JPEG":
            im.draft("RGB" if im.mode not in ("L", "RGB") else im.mode, (w // factor, h // factor))
        im.load()
        if im.mode == "I;16" or im.mode.startswith("I;16"):
            im = im.convert("I")
        elif im.mode not in ("I", "F", "L", "RGB", "RGBA", "LA"):
            im = im.convert("RGB")
        f = reduce_factor(*im.size, size)
        if f > 1:
            im = im.reduce(f)
        if im.mode in ("I", "F"):
            a = np.asarray(im, dtype=np.float32)
            _check_not_blank(a, path)
            lo, hi = np.percentile(a, [0.5, 99.5])
            a = np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1)
            a = np.repeat(a[None], 3, 0)
        else:
            rgb = np.asarray(im.convert("RGB"))
            _check_not_blank(rgb, path)
            a = rgb.astype(np.float32).transpose(2, 0, 1) / 255.0
    return a[None]


def _check_not_blank(a: np.ndarray, path: Path) -> None:
    if a.size and a.max() == a.min():
        raise ImageRejected(f"{path.name}: blank image (every pixel is {a.reshape(-1)[0]})")
