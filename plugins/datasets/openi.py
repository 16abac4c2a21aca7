"""OpenI / IU X-ray: 3,955 reports (reports_ori.json), frontal + lateral CXR, 14 machine labels (file2label.json).

Images live in ``options.image_dir`` as ``<image id>.png`` (e.g. CXR3_IM-1384-1001.png) or under the projection
CSV's file name; images absent on disk are MISSING (mask 0), not errors. Labels are CheXpert-style MACHINE labels;
reports without labels have NaN labels (unknown) and are used only where labels are not needed.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
from functools import cached_property
from pathlib import Path

import numpy as np

from ..readers.lazy import LazyView
from .base import AdapterOptions, DatasetAdapter, Failed, Missing, adapter

from stores.errors import InputError

log = logging.getLogger("medmix.datasets")


def _json(path: Path, what: str) -> dict:
    """A JSON object file, or one line naming the file (empty, not JSON, not an object)."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({' '.join(str(exc).split())[:120]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected an object of {what}, found a {type(data).__name__}")
    return data


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
        data = _json(path, "report key -> report")
        seen: dict[str, str] = {}
        for key in data:
            rid = key.split("/")[-1].replace(".xml", "")
            if rid in seen:
                raise InputError(f"{path}: reports {seen[rid]!r} and {key!r} both give id {rid}: refused")
            seen[rid] = key
        bad = [k for k, v in data.items() if not isinstance(v, dict)]
        if bad:
            raise InputError(f"{path}: report {bad[0]!r} is a {type(data[bad[0]]).__name__}, not an object "
                             f"({len(bad)} such)")
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
        lab = _json(path, "report key -> labels") if path.exists() else {}
        n_labels = len(self.spec.tasks["findings"].labels)
        y = np.full((len(self._reports), n_labels), np.nan, dtype=np.float32)
        bad = []
        for i, key in enumerate(self._reports):
            if key not in lab:
                continue
            v = lab[key]
            ok = isinstance(v, list) and len(v) == n_labels and all(x in (0, 1) and not isinstance(x, bool) for x in v)
            if ok:
                y[i] = v
            else:
                bad.append(key)
        if bad:
            log.warning("%s: %d row(s) not %d labels of 0/1 (unknown): %s", path.name, len(bad), n_labels, bad[:3])
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
            if not isinstance(txt, str):
                raise InputError(f"reports_ori.json:{key}: section {sec} is a {type(txt).__name__}, not text")
            txt = txt.strip()
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
