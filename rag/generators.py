"""Report generators: the bridge from an image to text for the RAG expert (METHOD section 4).

One backend drives any Hugging Face image-text-to-text model (LLaVA-class: MAIRA-2 for chest X-rays is a LLaVA
with a Vicuna LM and a RAD-DINO tower, loaded with ``trust_remote_code`` only when the profile's model override asks
for it). When the processor offers MAIRA-2's ``format_and_preprocess_reporting_input`` it is used (findings
generation from the frontal image); otherwise the prompt template with the processor's image token. Greedy
decoding, so a report is reproducible; the generator's identity goes into the RAG expert's config hash.

Merlin's CT report generator (3-D volume -> organ-by-organ findings) is rag/merlin_report.py. Not written: HistGen
(WSI): its report-generation weights are not published, so WSI RAG experts are recorded missing unless a bridge
view is set.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from plugins.sources import resolve_source
from stores.registry import Registry

GENERATORS: Registry[dict] = Registry(
    "report generator", group="medmix.generators",
    row=lambda k, g: {"generator": k, "kinds": ",".join(g["kinds"]), "source": g["source"] or "(config)",
                      "licence": g["licence"], "description": g["description"]})
GENERATORS.add("maira2", {"source": "microsoft/maira-2", "kinds": ["cxr"], "licence": "MSRLA (research only)",
                          "description": "MAIRA-2 grounded CXR report generation (LLaVA-class, trust_remote_code)"})
GENERATORS.add("llava", {"source": "", "kinds": ["cxr", "ct", "wsi"], "licence": "per model",
                         "description": "any image-text-to-text checkpoint with a LLaVA-style processor (local dir or hub id)"})
GENERATORS.add("merlin", {"source": "stanfordmimi/Merlin", "kinds": ["ct"], "licence": "MIT (code), see model card",
                          "backend": "rag.merlin_report:MerlinReportGenerator",
                          "description": "Merlin: I3ResNet-152 + adapter + RadLLaMA-7b (LoRA), organ-by-organ CT findings"})


def build_generator(key: str, **kw) -> "ReportGenerator":
    """The generator class its entry names (LLaVA-class by default), built lazily (weights load on first use)."""
    if key not in GENERATORS:
        raise KeyError(f"no report generator {key!r} (have: {', '.join(GENERATORS)})")
    backend = GENERATORS[key].get("backend")
    if not backend:
        return ReportGenerator(key, **kw)
    import importlib
    mod, cls = backend.split(":")
    return getattr(importlib.import_module(mod), cls)(key, **kw)


@dataclass
class ReportGenerator:
    view = "image"                 # the input view it reads (class attribute: not a field)
    key: str
    source: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    max_new_tokens: int = 128
    prompt: str = "<image>\nProvide a description of the findings in the radiology image."
    params: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"

    def __post_init__(self):
        if self.key not in GENERATORS:
            raise KeyError(f"no report generator {self.key!r} (have: {', '.join(GENERATORS)})")
        self.source = self.source or GENERATORS[self.key]["source"]
        if not self.source:
            raise ValueError(f"report generator {self.key!r} needs a source (a local directory or a hub id)")
        self.model = self.processor = None

    def load(self) -> "ReportGenerator":
        if self.model is None:
            from transformers import AutoModelForImageTextToText, AutoProcessor
            loc = resolve_source(self.source).location
            kw = {"trust_remote_code": self.trust_remote_code, "revision": self.revision}
            self.processor = AutoProcessor.from_pretrained(loc, **kw)
            dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
            self.model = AutoModelForImageTextToText.from_pretrained(loc, dtype=dtype, **kw).to(self.device).eval()
        return self

    def identity(self) -> dict:
        return {"generator": self.key, "source": self.source, "revision": self.revision,
                "max_new_tokens": self.max_new_tokens, "prompt": self.prompt, "decoding": "greedy"}

    @staticmethod
    def to_pil(image) -> Image.Image:
        """(n, 3, H, W) / (3, H, W) float in [0, 1] (the image readers' output) or a PIL image -> first image, RGB."""
        if isinstance(image, Image.Image):
            return image.convert("RGB")
        a = np.asarray(image, dtype=np.float32)
        a = a[0] if a.ndim == 4 else a
        if a.ndim != 3 or a.shape[0] != 3:
            raise ValueError(f"expected (n, 3, H, W) images in [0, 1], got {a.shape}")
        return Image.fromarray((np.clip(a, 0, 1).transpose(1, 2, 0) * 255).round().astype(np.uint8))

    @torch.inference_mode()
    def generate(self, images: list) -> list[str]:
        self.load()
        out = []
        for img in images:                       # one at a time: prompts differ in length; reports are short
            pil = self.to_pil(img)
            proc = self.processor
            if hasattr(proc, "format_and_preprocess_reporting_input"):            # MAIRA-2's own API
                inputs = proc.format_and_preprocess_reporting_input(
                    current_frontal=pil, current_lateral=None, prior_frontal=None, indication=None,
                    technique=None, comparison=None, prior_report=None, return_tensors="pt", get_grounding=False)
            else:
                inputs = proc(images=pil, text=self.prompt, return_tensors="pt")
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            new = ids[0, inputs["input_ids"].shape[1]:]
            text = proc.decode(new, skip_special_tokens=True).strip()
            if not text:
                raise ValueError("the report generator produced an empty report")
            out.append(text)
        return out
