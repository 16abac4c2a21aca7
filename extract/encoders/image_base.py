"""Shared image path: stacks of [0,1] float (or uint8) images per item -> resize + normalize -> batched forward -> mean.

One item may hold several images (2.5D CT slices, WSI tiles, one CXR): all images of a batch of items run through
the model together in fixed-size chunks, so memory stays bounded however many slices or tiles an item has.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..registry import Encoder


class ImageEncoder(Encoder):
    batch_size = 64                       # images per forward
    input_size: int = 224
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)

    def _embed_images(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalized -> (B, D)."""
        raise NotImplementedError

    def _prepare(self, imgs: torch.Tensor) -> torch.Tensor:
        if imgs.shape[-2:] != (self.input_size, self.input_size):
            imgs = F.interpolate(imgs, size=(self.input_size, self.input_size), mode="bicubic", align_corners=False)
            imgs = imgs.clamp(0, 1)
        mean = torch.tensor(self.mean, device=imgs.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=imgs.device).view(1, 3, 1, 1)
        return (imgs - mean) / std

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
