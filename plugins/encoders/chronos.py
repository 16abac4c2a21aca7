"""Chronos time-series encoders (chronos-forecasting ``embed``): Chronos-S expert, Chronos-L teacher."""
from __future__ import annotations

import numpy as np
import torch

from ..registry import register
from .series_base import SeriesEncoder


class ChronosEncoder(SeriesEncoder):
    batch_size = 256
    pooling = "mean"

    def _build(self):
        from chronos import BaseChronosPipeline
        pipe = BaseChronosPipeline.from_pretrained(self.resolved.location, device_map=str(self.device),
                                                   dtype=torch.float32, revision=self.options.revision)
        return pipe, None, self.gpu_precision()

    def _series_batch(self, series: list[np.ndarray]) -> np.ndarray:
        ctx = [torch.as_tensor(s, dtype=torch.float32) for s in series]
        emb, _ = self.model.embed(ctx)                         # (B, T', D); left padding is masked as NaN input
        emb = emb.float()
        return emb.mean(1).cpu().numpy() if self.pooling == "mean" else emb[:, -1].cpu().numpy()

    def _probe_dim(self) -> int:
        self.load()
        inner = getattr(self.model, "inner_model", None) or self.model.model
        return int(inner.config.d_model)


@register("chronos_small", modality="series", role="general", dim=512, licence="Apache-2.0",
          source="amazon/chronos-t5-small")
class ChronosSmall(ChronosEncoder):
    """Chronos-T5-Small: general EHR expert."""


@register("chronos_large", modality="series", role="teacher", dim=1024, licence="Apache-2.0",
          source="amazon/chronos-t5-large")
class ChronosLarge(ChronosEncoder):
    """Chronos-T5-Large: EHR teacher."""
    batch_size = 64
