"""Shared image path: stacks of [0,1] float (or uint8) images per item -> the encoder's own eval transform ->
batched forward -> mean.

The transform is the model's own (timm ``create_transform`` from its data config: resize keeping the aspect ratio,
centre crop, normalise — open_clip's preprocess settings mapped to the same), applied to tensors, so a non-square
X-ray is never squashed. One item may hold several images (2.5D CT slices, WSI tiles, one CXR): all images of a
batch of items run through the model together in fixed-size chunks, so memory stays bounded however many slices or
tiles an item has.
"""
from __future__ import annotations

import numpy as np
import torch

from ..registry import Encoder


class ImageEncoder(Encoder):
    batch_size = 64                       # images per forward
    version = "2"                         # 2: the model's own eval transform (aspect kept, centre crop)
    input_size: int = 224
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)
    data_config: dict | None = None       # timm data config (input_size, interpolation, mean, std, crop_pct, crop_mode)

    def _embed_images(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalized -> (B, D)."""
        raise NotImplementedError

    def eval_config(self) -> dict:
        """The model's eval preprocessing; families set ``data_config`` from the loaded model."""
        default = {"input_size": (3, self.input_size, self.input_size), "interpolation": "bicubic",
                   "crop_pct": 1.0, "crop_mode": "center"}
        return {**default, **(self.data_config or {}), "mean": tuple(self.mean), "std": tuple(self.std)}

    def _prepare(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> the model's input: timm's eval transform works on tensors as well as images."""
        if getattr(self, "_transform", None) is None:
            from timm.data import create_transform
            self._transform = create_transform(**self.eval_config(), is_training=False)
        return self._transform(imgs)

    def _forward(self, items: list) -> np.ndarray:
        stacks = []
        for i, it in enumerate(items):
            a = np.asarray(it)
            t = torch.from_numpy(a) if a.dtype == np.uint8 else torch.as_tensor(a, dtype=torch.float32)
            if t.ndim == 3:
                t = t.unsqueeze(0)
            if t.ndim != 4 or t.shape[1] != 3 or t.shape[0] == 0:
                raise ValueError(f"item {i}: expected (n, 3, H, W) images in [0, 1], got {tuple(t.shape)}")
            stacks.append(t)
        owner = torch.cat([torch.full((len(s),), i) for i, s in enumerate(stacks)])
        sums = torch.zeros(len(items), self.dim, dtype=torch.float64)
        flat = [img for s in stacks for img in s]
        for b in range(0, len(flat), self.batch_size):
            chunk = [f for f in flat[b:b + self.batch_size]]
            same = all(c.shape == chunk[0].shape for c in chunk)
            chunk = [c.float() / 255.0 if c.dtype == torch.uint8 else c for c in chunk]     # 8-bit tiles
            batch = torch.stack(chunk) if same else torch.cat([self._prepare(c[None].to(self.device)).cpu() for c in chunk])
            x = self._prepare(batch.to(self.device)) if same else batch.to(self.device)
            emb = self._embed_images(x).float().cpu().double()
            sums.index_add_(0, owner[b:b + self.batch_size], emb)
        counts = torch.bincount(owner, minlength=len(items)).double().unsqueeze(1)
        return (sums / counts).float().numpy()
