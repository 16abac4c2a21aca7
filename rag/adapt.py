"""`python -m rag adapt`: fine-tune an offline text encoder on the corpus's own structure, offline.

Pairs come from the MedlinePlus topics themselves: a topic's title, its "also called" names, its MeSH headings and
sentences of its own text are queries; a passage of that topic is the positive (a sentence's positive is a passage
with that sentence removed, so it is not a copy). Loss: in-batch contrastive (multiple-negatives ranking, cosine
similarity x ``scale``), other topics' passages in the batch as negatives; same-topic passages in the batch are
masked out rather than counted as negatives. Only training topics give pairs: held-out topics (``split_topics``,
30% by id hash) are never seen, and `rag eval` reports the held-out-topic figures beside the full-corpus ones.
Related-topic links are not used as positives: they name another topic, which in-batch would teach the encoder to
confuse neighbours (Asthma -> COPD) and cost recall@1.

The result is saved like a sentence-transformers folder (weights, tokenizer, pooling files copied from the base)
plus ``medmix_adapted.json`` (base model, data hash, weights hash, recipe, held-out topics): `rag/adapted.py` loads
it through the registry as the base model's class with the folder as a local source.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from stores.cli import Progress

from .adapted import HELDOUT_FRACTION, PROVENANCE, SPLIT_SEED, adapted_root, split_topics
from .fusion import split_sentences

log = logging.getLogger("medmix.rag")
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling")


@dataclass
class Recipe:
    epochs: int = 1
    batch_size: int = 32
    lr: float = 5e-5
    warmup: float = 0.1                 # share of steps with a linear warm-up; then linear decay to 0
    scale: float = 20.0                 # cosine similarity x scale = logits (temperature 0.05)
    query_tokens: int = 64
    passage_tokens: int = 128
    sentences_per_topic: int = 2        # content sentences used as queries per topic and epoch
    heldout_fraction: float = HELDOUT_FRACTION
    split_seed: int = SPLIT_SEED
    seed: int = 0
    max_pairs: int = 2000               # a random 2,000 of the 3,612 pairs: 63 steps, CPU minutes; 0 = all


@dataclass
class Pair:
    query: str
    passage: str
    topic_id: str
    kind: str                           # title | synonym | mesh | sentence


def training_pairs(topics, passages, train_ids: set[str], recipe: Recipe) -> list[Pair]:
    """Query-passage pairs from the training topics only (deterministic for a recipe)."""
    rng = random.Random(recipe.seed)
    by_topic: dict[str, list] = {}
    for p in passages:
        by_topic.setdefault(p.topic_id, []).append(p)
    pairs = []
    for t in topics:
        if t.id not in train_ids or t.id not in by_topic:
            continue
        docs = by_topic[t.id]
        names = [(t.title, "title")] + [(s, "synonym") for s in t.synonyms] + [(m, "mesh") for m in t.mesh]
        for name, kind in names:
            if name.strip():
                pairs.append(Pair(name.strip(), rng.choice(docs).as_document(), t.id, kind))
        sents = [s for s in split_sentences(t.text) if 4 <= len(s.split()) <= 40]
        for s in rng.sample(sents, min(recipe.sentences_per_topic, len(sents))):
            others = [d for d in docs if s not in d.text]
            if others:
                positive = rng.choice(others).as_document()
            else:                                            # one passage: that passage without the sentence
                d = next(d for d in docs if s in d.text)
                rest = " ".join(d.text.replace(s, " ").split())
                if len(rest.split()) < 5:
                    continue
                positive = f"{d.title}. {rest}"
            pairs.append(Pair(s, positive, t.id, "sentence"))
    rng.shuffle(pairs)
    return pairs[: recipe.max_pairs] if recipe.max_pairs else pairs


def data_hash(pairs: list[Pair], heldout: set[str]) -> str:
    h = hashlib.sha256(json.dumps([asdict(p) for p in pairs], sort_keys=True).encode())
    h.update(json.dumps(sorted(heldout)).encode())
    return h.hexdigest()


def _pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    if how == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def _embed(model, tok, texts: list[str], max_len: int, pooling: str, device) -> torch.Tensor:
    enc = tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt").to(device)
    out = _pool(model(**enc).last_hidden_state, enc["attention_mask"], pooling)
    return torch.nn.functional.normalize(out, dim=-1)


def contrastive_loss(q: torch.Tensor, p: torch.Tensor, topic_ids: list[str], scale: float) -> torch.Tensor:
    """Multiple-negatives ranking loss (q_i's positive is p_i); other passages of q_i's topic are masked out."""
    logits = q @ p.T * scale
    same = torch.tensor([[a == b for b in topic_ids] for a in topic_ids], device=q.device)
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, float("-inf"))
    return torch.nn.functional.cross_entropy(logits, torch.arange(len(q), device=q.device))


def _batches(pairs: list[Pair], size: int) -> list[list[Pair]]:
    return [pairs[i:i + size] for i in range(0, len(pairs), size)]


@torch.no_grad()
def mean_loss(model, tok, batches, recipe: Recipe, pooling: str, device) -> float:
    model.eval()
    losses = [contrastive_loss(_embed(model, tok, [p.query for p in b], recipe.query_tokens, pooling, device),
                               _embed(model, tok, [p.passage for p in b], recipe.passage_tokens, pooling, device),
                               [p.topic_id for p in b], recipe.scale).item() for b in batches if len(b) > 1]
    return float(np.mean(losses))


def adapt_encoder(encoder, topics, passages, out: Path, recipe: Recipe | None = None, progress: bool = True) -> dict:
    """Fine-tune ``encoder`` (a loaded HF text encoder from the registry) on the training topics' pairs and save
    it at ``out`` (written to a temporary sibling, then renamed). Returns the provenance written beside it."""
    recipe = replace(recipe or Recipe())                   # a copy: token limits are capped to the model below
    torch.manual_seed(recipe.seed)
    train_ids, heldout = split_topics([t.id for t in topics], recipe.heldout_fraction, recipe.split_seed)
    pairs = training_pairs(topics, passages, train_ids, recipe)
    if len(pairs) < 2 * recipe.batch_size and len(pairs) < 4:
        raise ValueError(f"only {len(pairs)} training pairs: the corpus is too small to adapt on")
    model, tok, device = encoder.model, encoder.preprocess, encoder.device
    limit = getattr(model.config, "max_position_embeddings", 512) - 2        # MPNet/RoBERTa offset their positions
    recipe.query_tokens, recipe.passage_tokens = min(recipe.query_tokens, limit), min(recipe.passage_tokens, limit)
    probe = _batches(pairs[: min(len(pairs), 4 * recipe.batch_size)], recipe.batch_size)   # loss before / after
    before = mean_loss(model, tok, probe, recipe, encoder.pooling, device)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
    steps = recipe.epochs * len(_batches(pairs, recipe.batch_size))
    warm = max(1, int(recipe.warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))
    t0, rng = time.perf_counter(), random.Random(recipe.seed)
    with torch.enable_grad(), Progress(steps, f"adapt {encoder.card.key}", unit="batch", enabled=progress,
                                       logger="medmix.rag") as bar:
        for epoch in range(recipe.epochs):
            order = pairs[:]
            if epoch:
                rng.shuffle(order)
            model.train()
            for batch in _batches(order, recipe.batch_size):
                if len(batch) < 2:
                    continue
                q = _embed(model, tok, [p.query for p in batch], recipe.query_tokens, encoder.pooling, device)
                p = _embed(model, tok, [p.passage for p in batch], recipe.passage_tokens, encoder.pooling, device)
                loss = contrastive_loss(q, p, [x.topic_id for x in batch], recipe.scale)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update(1)
    model.eval()
    after = mean_loss(model, tok, probe, recipe, encoder.pooling, device)
    prov = {"base_model": encoder.card.key, "base_source": encoder.resolved.source if encoder.resolved else None,
            "base_location": encoder.resolved.location if encoder.resolved else None,
            "pooling": encoder.pooling, "recipe": asdict(recipe), "data_hash": data_hash(pairs, heldout),
            "n_pairs": len(pairs), "pair_kinds": {k: sum(p.kind == k for p in pairs) for k in
                                                   ("title", "synonym", "mesh", "sentence")},
            "n_train_topics": len(train_ids), "heldout_topics": sorted(heldout),
            "probe_loss_before": round(before, 4), "probe_loss_after": round(after, 4),
            "train_seconds": round(time.perf_counter() - t0, 1), "torch": torch.__version__}
    _save(model, tok, encoder, Path(out), prov)
    return prov


def _save(model, tok, encoder, out: Path, prov: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    base = Path(encoder.resolved.location) if encoder.resolved else None
    for name in ST_FILES:                        # keep it a sentence-transformers folder when the base is one
        src = base / name if base else None
        if src and src.is_dir():
            shutil.copytree(src, tmp / name)
        elif src and src.is_file():
            shutil.copy2(src, tmp / name)
    h = hashlib.sha256()
    for f in sorted(tmp.glob("*.safetensors")):
        h.update(f.read_bytes())
    prov["weights_hash"] = h.hexdigest()
    (tmp / PROVENANCE).write_text(json.dumps(prov, indent=1))
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


# ---- CLI ------------------------------------------------------------------------------------------------------
def add_adapt_arguments(ap) -> None:
    ap.add_argument("--base", default=None, help="registry key of the encoder to adapt (default: the profile's "
                                                 "rag.article_encoder)")
    ap.add_argument("--name", default=None, help="key the adapted encoder is known by (default: BASE_adapted)")
    ap.add_argument("--out", help="folder to write (default: <model cache>/adapted/NAME)")
    for f, default in asdict(Recipe()).items():
        ap.add_argument(f"--{f.replace('_', '-')}", type=type(default), default=default)


def run_adapt(args, spec, svc) -> dict:
    from stores.paths import model_cache
    base = args.base or svc.cfg.article_encoder
    name = args.name or f"{base}_adapted"
    out = Path(args.out) if args.out else adapted_root(model_cache(spec)) / name
    recipe = Recipe(**{f: getattr(args, f) for f in asdict(Recipe())})
    prov = adapt_encoder(svc.encoder(base, fresh=True), svc.topics, svc.passages, out, recipe)
    log.info("adapted %s -> %s (%s pairs, loss %.3f -> %.3f); use it as rag: {query_encoder: %s, article_encoder: %s}",
             base, out, prov["n_pairs"], prov["probe_loss_before"], prov["probe_loss_after"], name, name)
    return {"name": name, "folder": str(out), "base": base, "pairs": prov["n_pairs"],
            "train topics": prov["n_train_topics"], "held-out topics": len(prov["heldout_topics"]),
            "loss before": prov["probe_loss_before"], "loss after": prov["probe_loss_after"],
            "seconds": prov["train_seconds"], "data hash": prov["data_hash"][:12]}
