"""Decoder LMs (Qwen2) as text encoders: pooled hidden states; also the RAG expert's soft-prompt LM."""
from __future__ import annotations

from ..registry import register
from .hf_text import HFTextEncoder


class HFDecoderEncoder(HFTextEncoder):
    """AutoModel gives the bare decoder (Qwen2Model); pooling over non-padding tokens (mean by default)."""
    pooling = "mean"
    max_length = 1024
    batch_size = 8

    def window(self) -> int:
        return max(8, (self.max_length or 1024) - sum(len(s) for s in self._specials()))


@register("qwen2_0_5b", modality="text", role="general", dim=896, licence="Apache-2.0", source="Qwen/Qwen2-0.5B",
          params_m=494, licence_url="https://huggingface.co/Qwen/Qwen2-0.5B/blob/main/LICENSE")
class Qwen2_0_5B(HFDecoderEncoder):
    """Qwen2-0.5B: general text expert and the RAG soft-prompt LM in the paper profile."""


@register("qwen2_7b", modality="text", role="teacher", dim=3584, licence="Apache-2.0", source="Qwen/Qwen2-7B",
          params_m=7616, licence_url="https://huggingface.co/Qwen/Qwen2-7B/blob/main/LICENSE")
class Qwen2_7B(HFDecoderEncoder):
    """Qwen2-7B: the note teacher (training-time only)."""
    batch_size = 2
