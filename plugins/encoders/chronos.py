"""Chronos time-series encoders (chronos-forecasting's T5 encoder): Chronos-S expert, Chronos-L teacher.

The embedding is the mean of the encoder's outputs over OBSERVED hours only. Chronos turns a NaN hour (and the left
padding that aligns series of a batch) into its PAD token with attention mask 0, and appends an EOS token; a sparse
hourly EHR series is mostly NaN, so a mean over every position would be a mean of pad outputs. We run the same
steps as ``ChronosPipeline.embed`` (left-pad, ``tokenizer.context_input_transform``, ``model.encode``) to keep the
mask, then average where it is 1, EOS excluded. ``pooling: eos`` takes the EOS position instead.
"""
from __future__ import annotations

import numpy as np
import torch

from ..registry import register
from .series_base import SeriesEncoder

from stores.errors import InputError

POOLINGS = ("mean", "eos")


class ChronosEncoder(SeriesEncoder):
    batch_size = 256
    pooling = "mean"
    weights_in_precision = True
    version = "2"             # 2: mean over observed positions only (pad/NaN hours and EOS excluded)

    def _build(self):
        from chronos import BaseChronosPipeline, ChronosPipeline
        if self.pooling not in POOLINGS:
            raise InputError(f"{self.card.key}: pooling must be one of {POOLINGS}, not {self.pooling!r}")
        pipe = BaseChronosPipeline.from_pretrained(self.resolved.location, device_map=str(self.device),
                                                   dtype=self.gpu_precision(), revision=self.options.revision)
        if not isinstance(pipe, ChronosPipeline):
            raise InputError(f"{self.card.key}: {self.resolved.location} is a {type(pipe).__name__}; this encoder "
                             "reads the Chronos T5 encoder (ChronosPipeline)")
        return pipe, None, self.gpu_precision()

    @torch.inference_mode()
    def hidden_and_mask(self, series: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(B, T', D) encoder outputs, the (B, T') attention mask Chronos built, and whether the last column is EOS:
        ``ChronosPipeline.embed`` step by step."""
        from chronos.utils import left_pad_and_stack_1D
        pipe = self.model
        context = left_pad_and_stack_1D([torch.as_tensor(s, dtype=torch.float32) for s in series])
        ids, mask, _ = pipe.tokenizer.context_input_transform(context)
        hidden = pipe.model.encode(input_ids=ids.to(pipe.model.device), attention_mask=mask.to(pipe.model.device))
        cfg = pipe.tokenizer.config
        return hidden.float().cpu(), mask.cpu(), bool(cfg.use_eos_token and cfg.model_type == "seq2seq")

    def _series_batch(self, series: list[np.ndarray]) -> np.ndarray:
        hidden, mask, eos = self.hidden_and_mask(series)
        if self.pooling == "eos":
            if not eos:
                raise InputError(f"{self.card.key}: pooling 'eos' needs a model that appends EOS (use_eos_token)")
            return hidden[:, -1].numpy()
        keep = mask.clone()
        if eos:
            keep[:, -1] = False
        m = keep.unsqueeze(-1).to(hidden.dtype)
        return ((hidden * m).sum(1) / m.sum(1).clamp(min=1)).numpy()

    def _probe_dim(self) -> int:
        self.load()
        inner = getattr(self.model, "inner_model", None) or self.model.model
        return int(inner.config.d_model)


@register("chronos_small", modality="series", role="general", dim=512, licence="Apache-2.0",
          source="amazon/chronos-t5-small", params_m=46,
          licence_url="https://huggingface.co/amazon/chronos-t5-small")
class ChronosSmall(ChronosEncoder):
    """Chronos-T5-Small: general EHR expert."""


@register("chronos_large", modality="series", role="teacher", dim=1024, licence="Apache-2.0",
          source="amazon/chronos-t5-large", params_m=710,
          licence_url="https://huggingface.co/amazon/chronos-t5-large")
class ChronosLarge(ChronosEncoder):
    """Chronos-T5-Large: EHR teacher."""
    batch_size = 64
