"""OpenI / IU X-ray: 3,955 reports (reports_ori.json), frontal + lateral CXR, 14 machine labels (file2label.json).

Images live in ``options.image_dir`` as ``<image id>.png`` (e.g. CXR3_IM-1384-1001.png) or under the projection
CSV's file name; images absent on disk are MISSING (mask 0), not errors. Labels are CheXpert-style MACHINE labels;
reports without labels have NaN labels (unknown) and are used only where labels are not needed.
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
from functools import cached_property
from pathlib import Path

import numpy as np

from ..readers.lazy import LazyView
from .base import AdapterOptions, DatasetAdapter, Failed, Missing, adapter


def _report_number(key: str) -> int:
    m = re.search(r"(\d+)\.xml$", key)
    return int(m.group(1)) if m else 10**9


class OpenIOptions(AdapterOptions):
    image_dir: str | None = None          # where <image id>.png files live, relative to the dataset folder
    report_sections: list[str] = ["FINDINGS", "IMPRESSION"]     # the report sections that make the note


@adapter("openi")
class OpenI(DatasetAdapter):
    Options = OpenIOptions

    @cached_property
    def _reports(self) -> dict:
        path = self.root / "reports_ori.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: OpenI reports not found")
        data = json.loads(path.read_text())
        return dict(sorted(data.items(), key=lambda kv: _report_number(kv[0])))

    @cached_property
    def _projections(self) -> dict[str, str]:
        """image id (CXR<uid>_IM-...) -> Frontal | Lateral, from indiana_projections.csv when present."""
        path = self.root / "indiana_projections.csv"
        out = {}
        if path.exists():
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    out["CXR" + row["filename"].replace(".dcm.png", "")] = row["projection"]
        return out

    def ids(self) -> list[str]:
        return [k.split("/")[-1].replace(".xml", "") for k in self._reports]

    def labels(self) -> dict[str, np.ndarray]:
        path = self.root / "file2label.json"
        lab = json.loads(path.read_text()) if path.exists() else {}
        n_labels = len(self.spec.tasks["findings"].labels)
        y = np.full((len(self._reports), n_labels), np.nan, dtype=np.float32)
        for i, key in enumerate(self._reports):
            if key in lab:
                y[i] = lab[key]
        return {"findings": y}

    def where(self, modality: str, row: int) -> str:
        return f"reports_ori.json:{list(self._reports)[row]}"

    def fingerprint(self, modality: str, row: int) -> str:
        key = list(self._reports)[row]
        if modality == "note":
            return hashlib.sha256(json.dumps(self._reports[key], sort_keys=True, default=str).encode()).hexdigest()[:32]
        img_id, path = self._image_for(key, modality)
        return self.stat_fingerprint(path) if path is not None else f"{img_id}:absent"

    def note(self, key: str) -> str:
        rep = self._reports[key].get("report")
        if not isinstance(rep, dict):
            raise ValueError(f"reports_ori.json:{key}: 'report' is {'null' if rep is None else type(rep).__name__}, "
                             "not an object of sections")
        parts = []
        for sec in self.options.get("report_sections", ["FINDINGS", "IMPRESSION"]):
            txt = rep.get(sec) or ""
            txt = (txt if isinstance(txt, str) else str(txt)).strip()
            if txt and txt.lower() not in ("none", "none."):
                parts.append(f"{sec.lower()}: {txt}")
        return "\n".join(parts)

    def _image_for(self, key: str, projection: str) -> tuple[str | None, Path | None]:
        image_dir = self.path_option("image_dir") if self.options.get("image_dir") else None
        for img_id in self._reports[key].get("image", []):
            proj = self._projections.get(img_id)
            if proj is None:      # no projection table row: the first image counts as frontal, the second lateral
                order = self._reports[key]["image"].index(img_id)
                proj = "Frontal" if order == 0 else "Lateral"
            if proj.lower() != projection:
                continue
            if image_dir is not None:
                for name in (f"{img_id}.png", f"{img_id[3:]}.dcm.png", f"{img_id}.jpg"):
                    path = self.under(image_dir, name, f"reports_ori.json:{key}: image id")
                    if path.exists():
                        return img_id, path
            return img_id, None
        return None, None

    def load(self, modality: str, rows: list[int]):
        keys = list(self._reports)
        out = []
        for r in rows:
            key = keys[r]
            if modality == "note":
                try:
                    text = self.note(key)
                except ValueError as exc:
                    out.append(Failed(str(exc)))
                    continue
                out.append({"text": text} if text.strip() else Missing("report has no text"))
                continue
            try:
                img_id, path = self._image_for(key, modality)
            except ValueError as exc:       # an id leading outside the image folder
                out.append(Failed(str(exc)))
                continue
            if img_id is None:
                out.append(Missing(f"no {modality} image listed"))
            elif path is None:
                out.append(Missing(f"{img_id}: image file not on disk"))
            else:        # decoded by the runner a few rows at a time, downscaled to what the encoder needs
                out.append({"image": LazyView("image", path, dict(self.spec.modalities[modality].preprocess)),
                            "file": str(path)})
        return out
