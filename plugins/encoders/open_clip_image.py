"""open_clip image towers: BiomedCLIP (CXR, WSI tiles). Image embedding = the CLIP image projection."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..registry import register
from .image_base import ImageEncoder


RESIZE_MODES = {"shortest": "center", "squash": "squash", "longest": "border"}
OPEN_CLIP_FILES = ("open_clip_config.json", "open_clip_*model*")     # the config and its weights (.bin / .safetensors)


class OpenClipImageEncoder(ImageEncoder):
    def _build(self):
        import open_clip

        from ..sources import hub_snapshot
        r = self.resolved
        folder = Path(r.location)
        if r.kind == "hub":          # open_clip's hf-hub: takes no revision; a cached snapshot folder does
            folder = hub_snapshot(r.location, self.options.revision, list(OPEN_CLIP_FILES))
        if not all(any(folder.glob(p)) for p in OPEN_CLIP_FILES):    # open_clip would only warn, then run random
            raise FileNotFoundError(f"{folder}: an open_clip folder needs {' and '.join(OPEN_CLIP_FILES)}")
        model = open_clip.create_model(f"local-dir:{folder}", load_weights=True)
        model = model.to(self.device).eval()
        cfg = open_clip.get_model_preprocess_cfg(model)
        self.mean, self.std = tuple(cfg.get("mean", self.mean)), tuple(cfg.get("std", self.std))
        size = cfg.get("size", self.input_size)
        self.input_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        # open_clip's eval preprocess, as a timm data config (resize_mode shortest = resize + centre crop)
        self.data_config = {"interpolation": cfg.get("interpolation", "bicubic"), "crop_pct": 1.0,
                            "crop_mode": RESIZE_MODES[cfg.get("resize_mode", "shortest")]}
        return model, None, self.gpu_precision()

    def hub_files(self) -> list[str]:
        return list(OPEN_CLIP_FILES)

    def companions(self, snapshot: Path) -> list[tuple[str, list[str] | None]]:
        """An HF text tower's config is read from the hub by name (open_clip's HFTextEncoder: AutoConfig), so it
        is fetched too (BiomedCLIP: its BiomedBERT)."""
        cfg_file = Path(snapshot) / "open_clip_config.json"
        if not cfg_file.is_file():
            return []
        text = json.loads(cfg_file.read_text()).get("model_cfg", {}).get("text_cfg", {})
        names = {text.get("hf_model_name"), text.get("hf_tokenizer_name")} - {None, ""}
        return [(n, ["*.json", "*.txt"]) for n in sorted(names) if not Path(n).exists()]

    def _embed_images(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x)

    def _probe_dim(self) -> int:
        self.load()
        with torch.inference_mode():
            return int(self.model.encode_image(torch.zeros(1, 3, self.input_size, self.input_size,
                                                           device=self.device)).shape[-1])


@register("biomedclip", modality="image", role="biomedical", dim=512, licence="MIT",
          source="microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", params_m=86.2,
          licence_url="https://huggingface.co/microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")
class BiomedCLIP(OpenClipImageEncoder):
    """BiomedCLIP ViT-B/16 image tower (PMC-15M), 512-d projected embedding."""
