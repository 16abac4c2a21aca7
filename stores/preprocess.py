"""Preprocessing settings per modality kind (``datasets.<d>.modalities.<m>.preprocess``), typed and closed.

Every field here is read by a reader or an adapter; an unknown key or a wrong type is an error naming its path, so a
typo never silently changes nothing while entering the config hash.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoPreprocess(_Closed):
    """Kinds whose inputs reach the encoder as they are (precomputed features, structured fields)."""


class TextPreprocess(_Closed):
    """Any text view (notes, reports, serialized stays): plugins/inputs.py's rules."""
    max_note_words: int = Field(20_000, gt=0)          # longer texts are cut (85x the longest OpenI report)


class CxrPreprocess(_Closed):
    """Chest X-rays: decoded downscaled (plugins/readers/image.py); the encoder's own transform resizes and crops."""
    size: int = Field(224, gt=0)                       # decode target: short side kept >= 2 x size
    max_pixels: int = Field(50_000_000, gt=0)          # larger images (decompression bombs) are refused unread
    min_side: int = Field(32, gt=0)                    # smaller images fail


class EhrPreprocess(TextPreprocess):
    hours: int = Field(48, gt=0)                       # observation window from admission (hours)


class CtReaderSettings(_Closed):
    layout: Literal["auto", "DHW", "HWD"] = "auto"     # axis order of .npy/.npz volumes
    spacing: tuple[float, float, float] | None = None   # mm per axis where the file does not say (arrays)


class CtPreprocess(_Closed):
    slices: int = Field(48, gt=0)                      # 2.5D: slices sampled evenly through the volume
    hu: tuple[float, float] = (-1000.0, 1000.0)        # HU window before scaling to [0, 1]
    size: int = Field(224, gt=0)                       # 2.5D: each slice resized to size x size
    reader: CtReaderSettings = CtReaderSettings()


class MriPreprocess(_Closed):
    """MRI volumes through the same readers and 2.5D slicing as CT; intensities have no physical unit, so each volume
    is windowed at its own intensity percentiles (not HU) before scaling to [0, 1]."""
    slices: int = Field(48, gt=0)
    percentiles: tuple[float, float] = (0.5, 99.5)     # per-volume window: these percentiles of its voxels
    size: int = Field(224, gt=0)
    reader: CtReaderSettings = CtReaderSettings()

    @field_validator("percentiles")
    @classmethod
    def _ordered(cls, v):
        if not 0 <= v[0] < v[1] <= 100:
            raise ValueError(f"percentiles {list(v)}: expected 0 <= low < high <= 100")
        return v


class WsiPreprocess(_Closed):
    mpp: float = Field(0.5, gt=0)                      # microns per pixel of the tiles
    tile: int = Field(224, gt=0)
    tissue_threshold: float = Field(0.5, ge=0, le=1)
    max_tiles: int | None = Field(None, gt=0)
    fallback_mpp: float | None = Field(None, gt=0)     # when the slide does not record its resolution
    threads: int = Field(4, gt=0)
    tile_batch: int = Field(1024, gt=0)
    store_tiles: StrictBool = True


# the modality kinds (stores/spec.py's ``Kind`` is this list) and each kind's settings; tabular: a structured record
PREPROCESS: dict[str, type[_Closed]] = {"cxr": CxrPreprocess, "note": TextPreprocess, "ehr": EhrPreprocess,
                                        "ct": CtPreprocess, "wsi": WsiPreprocess, "mri": MriPreprocess,
                                        "tabular": NoPreprocess}
