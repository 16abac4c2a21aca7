"""Precomputed features imported as an expert (e.g. the MMIST-ccRCC owners' CT/MRI/WSI features).

The dataset adapter supplies the vector per sample (``features`` view), read from npz/npy with pickle disabled;
this encoder only flattens and checks it, so imported vectors get the same store contract and provenance.
"""
from __future__ import annotations

import numpy as np

from ..registry import Encoder, register
from ..sources import Resolved


class ImportedFeatures(Encoder):
    batch_size = 1024

    def load(self):
        if self.model is None:
            self.resolved = Resolved("local", self.options.source or self.card.source, self.card.source)
            self.model, self.preprocess, self.precision = self._build()
        return self

    def _build(self):
        return "passthrough", None, None

    def _forward(self, items: list) -> np.ndarray:
        out = []
        for i, x in enumerate(items):
            v = np.asarray(x, dtype=np.float32).reshape(-1)
            if self.card.dim and v.size != self.card.dim:
                raise ValueError(f"imported feature has {v.size} values, expected {self.card.dim}")
            if not np.isfinite(v).all():
                raise ValueError("imported feature holds NaN/inf")
            out.append(v)
        return np.stack(out)

    def _probe_dim(self) -> int:
        return int(self.card.dim)

    def provenance(self) -> dict:
        return {"model": self.card.key, "family": "imported", "class": type(self).__name__,
                "encoder_version": self.version, "licence": self.card.licence, "source": self.card.source,
                "description": self.card.description, "precision": "float32"}


@register("mmist_owner_ct", modality="features", role="imported", dim=512, licence="MMIST-ccRCC terms (Mota et al. 2024)",
          source="mmist_features.tar.gz:CT Features", description="MMIST-ccRCC owners' CT features (512-d)")
class MMISTOwnerCT(ImportedFeatures):
    pass


@register("mmist_owner_mri", modality="features", role="imported", dim=512, licence="MMIST-ccRCC terms (Mota et al. 2024)",
          source="mmist_features.tar.gz:MRI Features", description="MMIST-ccRCC owners' MRI features (512-d)")
class MMISTOwnerMRI(ImportedFeatures):
    pass


@register("mmist_owner_wsi", modality="features", role="imported", dim=1024, licence="MMIST-ccRCC terms (Mota et al. 2024)",
          source="mmist_features.tar.gz:WSI Features", description="MMIST-ccRCC owners' WSI features (1024-d)")
class MMISTOwnerWSI(ImportedFeatures):
    pass
