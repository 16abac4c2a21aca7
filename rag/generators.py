"""Report generators: the bridge from an image to text for the RAG expert (METHOD section 4).

One backend drives any Hugging Face image-text-to-text model (LLaVA-class, loaded with ``trust_remote_code`` only
when the profile's generator entry asks for it): the prompt template with the processor's image token, greedy
decoding, so a report is reproducible; the generator's identity goes into the RAG expert's config hash. A generator
that cannot load fails the run once (``GeneratorLoadError``), never every row.

MAIRA-2 (CXR) is not run in-process: its model card loads it with ``AutoModelForCausalLM`` and
``trust_remote_code``, and that remote code does not run on the transformers this project requires (>= 4.56; it
is reported broken from 4.52). Its supported path is a separate environment with ``transformers==4.51.3`` running
the card's code, writing one JSON line per image, ``{"file": "<image file name>", "report": "..."}``,
which the ``reports`` generator reads (docs/rag.md).

Merlin's CT report generator (3-D volume -> organ-by-organ findings) is rag/merlin_report.py. Not written: HistGen
(WSI): its report-generation weights are not published, so WSI RAG experts are recorded missing unless a bridge
view is set.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from plugins.sources import resolve_source
from stores.errors import InputError
from stores.registry import Registry

GENERATORS: Registry[dict] = Registry(
    "report generator", group="medmix.generators",
    row=lambda k, g: {"generator": k, "kinds": ",".join(g["kinds"]), "source": g["source"] or "(config)",
                      "licence": g["licence"], "description": g["description"]})
MAIRA2_PATH = ("produce its reports in a separate environment running its model card's code (transformers==4.51.3, "
               "AutoModelForCausalLM, trust_remote_code) as JSON lines {\"file\": <image file name>, \"report\": ...}, "
               "then set `generators: {cxr: {model: reports, source: maira2_reports.jsonl}}` (docs/rag.md)")
GENERATORS.add("maira2", {"source": "microsoft/maira-2", "kinds": ["cxr"], "licence": "MSRLA (research only), gated",
                          "unsupported": "MAIRA-2's remote code does not run on transformers >= 4.52 (this project "
                                         "needs >= 4.56): " + MAIRA2_PATH,
                          "description": "MAIRA-2 CXR findings: not in-process (remote code); import its reports"})
GENERATORS.add("reports", {"source": "", "kinds": ["cxr", "ct", "wsi"], "licence": "per producing model",
                           "backend": "rag.generators:ImportedReports",
                           "description": "reports produced elsewhere (e.g. MAIRA-2 in its pinned environment): "
                                          "JSON lines {file, report}, found beside the images or above them"})
GENERATORS.add("llava", {"source": "", "kinds": ["cxr", "ct", "wsi"], "licence": "per model",
                         "description": "any image-text-to-text checkpoint with a LLaVA-style processor (local dir or hub id)"})
GENERATORS.add("merlin", {"source": "stanfordmimi/Merlin", "kinds": ["ct"], "licence": "MIT (code), see model card",
                          "backend": "rag.merlin_report:MerlinReportGenerator",
                          "description": "Merlin: I3ResNet-152 + adapter + RadLLaMA-7b (LoRA), organ-by-organ CT findings"})


class GeneratorLoadError(ValueError):
    """A report generator that cannot load: the run stops once with this line instead of failing every row."""


def build_generator(key: str, **kw) -> "ReportGenerator":
    """The generator class its entry names (LLaVA-class by default), built lazily (weights load on first use)."""
    if key not in GENERATORS:
        raise KeyError(f"no report generator {key!r} (have: {', '.join(GENERATORS)})")
    if GENERATORS[key].get("unsupported"):
        raise GeneratorLoadError(f"report generator {key!r}: {GENERATORS[key]['unsupported']}")
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
        """Load once; a failure is a GeneratorLoadError naming the generator and its source (raised again, without
        retrying, on every later call)."""
        if getattr(self, "_load_error", None):
            raise GeneratorLoadError(self._load_error)
        if self.model is None:
            try:
                self._load()
            except Exception as exc:  # noqa: BLE001  (any loader failure: missing files, no network, bad config)
                self._load_error = (f"report generator {self.key!r} ({self.source}) could not load: "
                                    f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}")
                raise GeneratorLoadError(self._load_error) from exc
        return self

    def _load(self) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor
        loc = resolve_source(self.source).location
        kw = {"trust_remote_code": self.trust_remote_code, "revision": self.revision}
        self.processor = AutoProcessor.from_pretrained(loc, **kw)
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.model = AutoModelForImageTextToText.from_pretrained(loc, dtype=dtype, **kw).to(self.device).eval()

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
            inputs = proc(images=pil, text=self.prompt, return_tensors="pt")
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            new = ids[0, inputs["input_ids"].shape[1]:]
            text = proc.decode(new, skip_special_tokens=True).strip()
            if not text:
                raise ValueError("the report generator produced an empty report")
            out.append(text)
        return out


class ImportedReports(ReportGenerator):
    """Reports another environment wrote (MAIRA-2 pinned to its card): JSON lines ``{"file": <image file name>,
    "report": <text>}``. ``source``: an absolute file, or a file name looked up beside each image and then in the
    folders above it (the nearest wins), so one file per dataset folder serves every image under it."""

    view = "file"

    def __post_init__(self):
        if not self.source:
            raise InputError("report generator 'reports' needs a source: the JSON-lines file of reports")
        self.model, self._tables = True, {}

    def _load(self) -> None:
        pass

    def identity(self) -> dict:
        return {"generator": self.key, "source": self.source, "format": "jsonl {file, report}"}

    def reports_file(self, image: Path) -> Path:
        src = Path(self.source).expanduser()
        if src.is_absolute():
            if not src.is_file():
                raise GeneratorLoadError(f"report generator 'reports': {src} does not exist")
            return src
        for folder in [image.parent, *image.parent.parents]:
            if (folder / src).is_file():
                return folder / src
        raise GeneratorLoadError(f"report generator 'reports': no {src} beside {image} or in a folder above it")

    def table(self, path: Path) -> dict[str, str]:
        if path not in self._tables:
            reports = {}
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    reports[Path(str(row["file"])).name] = str(row["report"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise GeneratorLoadError(f"{path}:{n}: not a JSON line with 'file' and 'report' ({exc})") from None
            self._tables[path] = reports
        return self._tables[path]

    def generate(self, files: list) -> list[str]:
        out = []
        for f in files:
            image = Path(str(f))
            path = self.reports_file(image)
            report = self.table(path).get(image.name, "").strip()
            if not report:
                raise InputError(f"{path}: no report for {image.name}")
            out.append(report)
        return out
