"""Adapted encoders (`python -m rag adapt`) as registry encoders: a saved folder is a plain sentence-transformers /
Hugging Face model folder plus ``medmix_adapted.json`` (base model key, base source, data hash, recipe, held-out
topics). It loads through extract's registry as the base model's class with the folder as a local source, so any
config key may name it:

- ``rag: {query_encoder: minilm_adapted}``: found at ``<model cache>/adapted/minilm_adapted/`` (where `rag adapt`
  writes), or
- ``models: {minilm_adapted: {source: /path/to/folder}}`` in the profile, for a folder elsewhere.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

PROVENANCE = "medmix_adapted.json"
HELDOUT_FRACTION, SPLIT_SEED = 0.3, 0


def split_topics(topic_ids, fraction: float = HELDOUT_FRACTION, seed: int = SPLIT_SEED) -> tuple[set[str], set[str]]:
    """(train, held-out) topic ids: a topic is held out when the hash of (seed, id) falls under ``fraction``, so the
    split depends on nothing but the id (a topic added to the corpus never moves another across)."""
    train, heldout = set(), set()
    for t in topic_ids:
        h = int.from_bytes(hashlib.sha256(f"{seed}:{t}".encode()).digest()[:8], "big") / 2 ** 64
        (heldout if h < fraction else train).add(str(t))
    return train, heldout


def adapted_root(cache: Path) -> Path:
    return Path(cache) / "adapted"


def read_provenance(folder: Path) -> dict | None:
    f = Path(folder) / PROVENANCE
    if not f.exists():
        return None
    try:
        prov = json.loads(f.read_text())
    except ValueError as exc:
        raise ValueError(f"{f}: unreadable adapted-encoder provenance ({exc})") from exc
    for key in ("base_model", "data_hash", "weights_hash", "recipe", "heldout_topics"):
        if key not in prov:
            raise ValueError(f"{f}: adapted-encoder provenance lacks {key!r}")
    return prov


def resolve_encoder(key: str, options, cache: Path, registered) -> tuple[str, object]:
    """A config key -> (registry key, EncoderOptions). Registered keys pass through; an adapted encoder's key becomes
    its base model with the folder as source, and its weights hash in ``params`` (so an index or store group built
    with other weights under the same name is stale). ``registered``: the registry's keys."""
    folder = Path(options.source) if options.source else adapted_root(cache) / key
    prov = read_provenance(folder) if folder.is_dir() else None
    if prov is None:
        if key in registered:
            return key, options
        raise KeyError(f"no encoder registered as {key!r} and no adapted encoder at {folder} "
                       f"(`python -m rag adapt --name {key}` writes one)")
    base = prov["base_model"]
    if base not in registered:
        raise KeyError(f"{folder / PROVENANCE}: base model {base!r} is not a registered encoder")
    params = {**options.params, "adapted": prov["weights_hash"]}
    return base, replace(options, source=str(folder.resolve()), params=params)


def attach(encoder, options):
    """Give a built encoder its adaptation provenance (``encoder.adapted``; None for a published one)."""
    encoder.adapted = read_provenance(Path(options.source)) if options.source and "adapted" in options.params else None
    return encoder
