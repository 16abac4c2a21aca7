"""CT volumes -> Hounsfield units in [D, H, W] (D = axial), and the 2.5D slice stack for 2-D models.

Readers: NIfTI (nibabel; the axial axis is found from the affine's orientation codes, not guessed), .npy/.npz in
[D,H,W] or [H,W,D] (``layout``; ``auto`` takes the last axis as depth only when the first two are equal and the last
is smaller, the usual 512x512xD export), DICOM series (pydicom; sorted by ImagePositionPatient, rescaled).
2.5D (METHOD section 2): N = 48 indices floor((D-1)/(N-1)*j), clip to [-1000, 1000] HU, rescale to [0, 1],
3 channels, 224x224 bicubic; the encoder embeds each slice and mean-pools.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stores.errors import InputError
from stores.cli import INSTALL_HINTS


MAX_VOXELS = 1 << 30            # 1024^3: 4 GiB as float32; larger headers are refused before anything is allocated
GZIP_MAX_RATIO = 1100           # deflate cannot compress more than ~1032:1: a header declaring more is a lie
ABSURD_HU = 1e5                 # CT numbers live in about -1024..31000 (extended scale); beyond = not a CT volume


def check_volume(vol: np.ndarray, where) -> np.ndarray:
    """A degenerate volume fails with a reason: fewer than 2 slices, non-finite, constant, absurd HU."""
    if vol.ndim != 3 or min(vol.shape) < 2:
        raise InputError(f"{where}: degenerate volume of shape {vol.shape} (needs >= 2 voxels on every axis)")
    if not np.isfinite(vol).all():
        raise InputError(f"{where}: {int((~np.isfinite(vol)).sum())} non-finite voxels")
    lo, hi = float(vol.min()), float(vol.max())
    if lo == hi:
        raise InputError(f"{where}: constant volume ({lo:g} everywhere)")
    if max(abs(lo), abs(hi)) > ABSURD_HU:
        raise InputError(f"{where}: values {lo:.3g}..{hi:.3g} are not Hounsfield units (|HU| > {ABSURD_HU:g})")
    return vol


def check_declared(path: Path, shape, itemsize: int) -> None:
    """Refuse, from the header alone, a volume too large to allocate or larger than its file could hold."""
    n = int(np.prod([int(s) for s in shape], dtype=np.float64))
    if n > MAX_VOXELS:
        raise InputError(f"{path}: header declares {tuple(int(s) for s in shape)} = {n:,} voxels (> {MAX_VOXELS:,}): "
                         "refused before reading")
    size = path.stat().st_size
    limit = size * (GZIP_MAX_RATIO if path.name.lower().endswith(".gz") else 1)
    if n * itemsize > limit + 352:
        raise InputError(f"{path}: header declares {n * itemsize:,} bytes of voxels, the file ({size:,} bytes) "
                         "cannot hold them: truncated or forged")


def slice_indices(depth: int, n: int = 48) -> np.ndarray:
    """i_j = floor((D-1)/(N-1) * j), j = 0..N-1 (repeats when D < N)."""
    if depth < 1:
        raise ValueError("empty volume")
    if n == 1:
        return np.zeros(1, dtype=int)
    return np.floor((depth - 1) / (n - 1) * np.arange(n)).astype(int)


def read_volume(path: str | Path, layout: str = "auto") -> np.ndarray:
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return check_volume(_read_nifti(path), path)
    if name.endswith((".npy", ".npz")):
        if name.endswith(".npy"):
            head = np.load(path, mmap_mode="r", allow_pickle=False)        # the header only
            check_declared(path, head.shape, head.dtype.itemsize)
            vol = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as z:
                vol = z[z.files[0]]
        return check_volume(to_dhw(np.asarray(vol, dtype=np.float32), layout, str(path)), path)
    if path.is_dir():
        return check_volume(_read_dicom_series(path), path)
    raise ValueError(f"{path}: unsupported CT format (.nii/.nii.gz, .npy/.npz, DICOM folder)")


def read_volume_ras(path: str | Path, layout: str = "auto", spacing=None) -> dict:
    """For 3-D models: {'hu': [X, Y, Z] array in (closest) RAS orientation, 'spacing': mm per axis or None}.

    NIfTI is reoriented with nibabel and its voxel sizes are used. Arrays and DICOM are read as [D, H, W] (axial
    first, inferior to superior) and transposed to [W, H, D]; their spacing comes from ``spacing`` (x, y, z mm) in
    the modality's reader options, else the volume is used at its own grid (no resampling; recorded as None).
    """
    path = Path(path)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        import nibabel as nib
        img = nib.as_closest_canonical(nib_load(path))
        hu = np.asarray(img.get_fdata(dtype=np.float32))
        if hu.ndim != 3:
            raise ValueError(f"{path}: expected a 3-D volume, got shape {hu.shape}")
        return {"hu": check_volume(hu, path), "spacing": tuple(float(z) for z in img.header.get_zooms()[:3])}
    vol = read_volume(path, layout)
    return {"hu": np.ascontiguousarray(np.transpose(vol, (2, 1, 0))),
            "spacing": tuple(float(s) for s in spacing) if spacing else None}


def to_dhw(vol: np.ndarray, layout: str = "auto", where: str = "volume") -> np.ndarray:
    vol = np.squeeze(vol)
    if vol.ndim != 3:
        raise ValueError(f"{where}: expected a 3-D volume, got shape {vol.shape}")
    if layout == "DHW":
        return vol
    if layout == "HWD":
        return np.moveaxis(vol, -1, 0)
    if layout != "auto":
        raise ValueError(f"{where}: layout must be auto, DHW or HWD (got {layout!r})")
    h, w, d = vol.shape
    return np.moveaxis(vol, -1, 0) if (h == w and d < h) else vol


def nib_load(path: Path):
    """nibabel's image, its header checked against the bounds before any voxel is read."""
    import nibabel as nib
    try:
        img = nib.load(str(path))
    except Exception as exc:  # noqa: BLE001  (nibabel raises many kinds on a bad header)
        raise InputError(f"{path}: unreadable NIfTI header ({type(exc).__name__}: {exc})"[:300]) from None
    check_declared(path, img.header.get_data_shape(), img.header.get_data_dtype().itemsize)
    return img


def _read_nifti(path: Path) -> np.ndarray:
    import nibabel as nib
    img = nib_load(path)
    data = np.asarray(img.get_fdata(dtype=np.float32))          # scl_slope / scl_inter applied
    codes = nib.aff2axcodes(img.affine)
    axial = [i for i, c in enumerate(codes) if c in ("S", "I")]
    if len(axial) != 1 or data.ndim != 3:
        raise ValueError(f"{path}: cannot find the axial axis from the affine (codes {codes}, shape {data.shape})")
    vol = np.moveaxis(data, axial[0], 0)
    if codes[axial[0]] == "I":
        vol = vol[::-1]                      # inferior -> superior, as RAS readers expect
    return np.ascontiguousarray(vol)


def _read_dicom_series(folder: Path) -> np.ndarray:
    try:
        import pydicom
    except ImportError as exc:
        raise RuntimeError(f"DICOM needs pydicom ({INSTALL_HINTS['pydicom']})") from exc
    slices = []
    for f in sorted(folder.iterdir()):
        if f.is_file():
            try:
                ds = pydicom.dcmread(str(f))
            except Exception:  # noqa: BLE001  (non-DICOM files in the folder)
                continue
            if hasattr(ds, "PixelData"):
                voxels = int(getattr(ds, "Rows", 0)) * int(getattr(ds, "Columns", 0)) * (len(slices) + 1)
                if voxels > MAX_VOXELS:
                    raise InputError(f"{folder}: the series declares more than {MAX_VOXELS:,} voxels: refused")
                z = float(ds.ImagePositionPatient[2]) if hasattr(ds, "ImagePositionPatient") else float(ds.InstanceNumber)
                hu = ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
                slices.append((z, hu))
    if not slices:
        raise ValueError(f"{folder}: no DICOM slices with pixel data")
    slices.sort(key=lambda t: t[0])
    return np.stack([s for _, s in slices])


def crop_to_mask(vol: np.ndarray, mask: np.ndarray, labels: list[int], margin: int = 4) -> np.ndarray:
    """Crop a [D,H,W] volume to the bounding box of the given mask labels (plus a margin)."""
    if mask.shape != vol.shape:
        raise ValueError(f"mask shape {mask.shape} != volume shape {vol.shape}")
    where = np.argwhere(np.isin(mask, labels))
    if where.size == 0:
        raise ValueError(f"mask holds none of the labels {labels}")
    lo = np.maximum(where.min(0) - margin, 0)
    hi = np.minimum(where.max(0) + margin + 1, vol.shape)
    return vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]


def ct_slices_25d(vol: np.ndarray, slices: int = 48, hu=(-1000, 1000), size: int = 224,
                  percentiles: tuple[float, float] | None = None) -> np.ndarray:
    """[D,H,W] HU -> (N, 3, size, size) float32 in [0, 1]. With ``percentiles`` (MRI: no physical unit), the window
    is those percentiles of the volume's own voxels instead of the HU window."""
    idx = slice_indices(vol.shape[0], slices)
    if percentiles is not None:
        lo, hi = (float(v) for v in np.nanpercentile(vol, percentiles))     # NaN voxels (skull-stripped) ignored
        hi = hi if hi > lo else lo + 1.0
        vol = np.nan_to_num(vol, nan=lo)
    else:
        lo, hi = float(hu[0]), float(hu[1])
    x = torch.from_numpy(np.ascontiguousarray(vol[idx], dtype=np.float32))
    x = (x.clamp(lo, hi) - lo) / (hi - lo)
    x = F.interpolate(x.unsqueeze(1), size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    return x.expand(-1, 3, -1, -1).contiguous().numpy()
