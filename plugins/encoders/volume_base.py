"""Shared 3-D path: one CT volume view ({'hu': [X, Y, Z] RAS, 'spacing': mm}) per item, one forward per volume
(3-D models take the whole volume; a batch of volumes would multiply activation memory for no gain on CPU)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..registry import Encoder, NoParams


class VolumeParams(NoParams):
    filename: str | None = None              # the weight file inside a hub repo


class VolumeEncoder(Encoder):
    Params = VolumeParams
    batch_size = 1
    default_filename = ""          # the weight file inside a hub repo (params.filename overrides)

    def weight_location(self) -> Path:
        """The configured weights: a local file/folder as resolved, or the hub repo's file (downloaded)."""
        if self.resolved.kind != "hub":
            return Path(self.resolved.location)
        from huggingface_hub import hf_hub_download
        return Path(hf_hub_download(self.resolved.location, self.params.get("filename", self.default_filename),
                                    revision=self.options.revision))

    def hub_files(self) -> list[str]:
        return [self.params.get("filename", self.default_filename)]

    def _embed_volume(self, volume: dict) -> torch.Tensor:
        """One volume view -> [1, D]."""
        raise NotImplementedError

    def _forward(self, items: list) -> np.ndarray:
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "hu" not in item:
                raise ValueError(f"item {i}: expected a CT volume view {{'hu', 'spacing'}}, got {type(item).__name__}")
            out.append(self._embed_volume(item).float().cpu().numpy()[0])
        return np.stack(out)
