"""Per-row isolation and the input rules every adapter's output goes through (docs/datasets.md, "Bad input").

The runner, not each adapter, guarantees that one bad record fails one row: ``load_rows`` loads a unit's rows in
one call and, when that raises, row by row, so the row that raises is recorded failed with a reason naming the
record and its file (``adapter.where``). ``check_input`` then applies the rules that make parsed-but-garbage
input fail with a reason instead of being embedded as ok:

- text: binary content (a NUL byte, or more than 10% control / non-printable characters) fails; control
  characters are removed; text with nothing printable left fails; a note longer than ``max_note_words``
  (modality preprocess, default 20,000 whitespace-separated words) is cut there (about 100 windows of 256 tokens);
  runs of more than 100 characters without whitespace are cut to 100, and a text to 10 characters per allowed word.
- series / features: +-inf anywhere fails (NaN means "not measured").
Images are checked when decoded (readers/image.py: pixel budget, minimum size, blank).
"""
from __future__ import annotations

import logging
import re
import sys
from itertools import islice
from typing import Callable, Sequence

import numpy as np

from stores.errors import reason
from stores.preprocess import TextPreprocess

from .datasets.base import DatasetAdapter, Failed, Missing

MAX_NOTE_WORDS = TextPreprocess.model_fields["max_note_words"].default     # stores/preprocess.py
BINARY_FRACTION = 0.10
log = logging.getLogger("medmix")
MAX_WORD_CHARS, CHARS_PER_WORD = 100, 10          # a "word" of 300 kB (no whitespace) is cut: bounded in characters
_LONG_WORD = re.compile(rf"\S{{{MAX_WORD_CHARS + 1},}}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_ODD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd\ud800-\udfff]")   # + replacement chars


def is_oom(exc: BaseException) -> bool:
    """CUDA out of memory (torch is looked up, not imported: without torch loaded there is no CUDA to run out of)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError)


def halve_batch(*encoders) -> bool:
    """Out of memory: halve each encoder's batch size (kept for the rest of the run); False when all are at 1."""
    if all(e.batch_size <= 1 for e in encoders):
        return False
    for e in encoders:
        e.batch_size = max(1, e.batch_size // 2)
        log.warning("%s: CUDA out of memory, batch size -> %d", e.card.key, e.batch_size)
    sys.modules["torch"].cuda.empty_cache()
    return True


def run_isolated(call: Callable[[list], Sequence], items: list,
                 shrink: Callable[[], bool] | None = None) -> tuple[list, list[str | None]]:
    """``call(items)`` -> one result per item, with failure isolation: when the batch raises, each item runs alone,
    so one bad item fails alone with its reason (results None there). CUDA out-of-memory is not bad input: it calls
    ``shrink()`` (a smaller batch) and retries, and raises once shrink says it cannot."""
    while True:
        try:
            out = list(call(items))
            return out, [None] * len(items)
        except Exception as exc:  # noqa: BLE001  (any bad input must not stop the run)
            if is_oom(exc):
                if shrink is not None and shrink():
                    continue
                raise
            if len(items) == 1:
                return [None], [reason(exc)]
            break
    results, reasons = [], []
    for item in items:
        r, why = run_isolated(call, [item], shrink)
        results.append(r[0])
        reasons.append(why[0])
    return results, reasons


def where(adapter: DatasetAdapter, modality: str, row: int) -> str:
    try:
        return adapter.where(modality, row)
    except Exception:  # noqa: BLE001
        return f"row {row}"


def load_rows(adapter: DatasetAdapter, modality: str, rows: list[int]) -> list:
    """The adapter's inputs for ``rows``; a row whose loading raises becomes Failed(reason naming the record)."""
    try:
        out = adapter.load(modality, rows)
        if len(out) == len(rows):
            return list(out)
    except Exception:  # noqa: BLE001  (find the bad row(s) one by one)
        pass
    out = []
    for r in rows:
        try:
            one = adapter.load(modality, [r])
            if len(one) != 1:
                raise RuntimeError(f"adapter returned {len(one)} inputs for 1 row")
            out.append(one[0])
        except Exception as exc:  # noqa: BLE001  (one bad record fails one row)
            out.append(Failed(reason(exc, where(adapter, modality, r))))
    return out


def check_text(text, max_words: int = MAX_NOTE_WORDS) -> str | Failed:
    if not isinstance(text, str):
        return Failed(f"text is {type(text).__name__}, not a string")
    if not text:
        return text
    odd = len(_ODD.findall(text))
    if "\x00" in text or odd > BINARY_FRACTION * len(text):
        return Failed(f"binary content ({odd} of {len(text)} characters are control / non-printable)")
    clean = _CONTROL.sub("", text)
    if not clean.strip():
        return Failed("no printable text (control characters only)")
    clean = _LONG_WORD.sub(lambda m: m[0][:MAX_WORD_CHARS], clean)      # cost bound: tokenizers [UNK] such runs
    clean = clean[:max_words * CHARS_PER_WORD] if max_words else clean   # and a character cap beside the word cap
    if max_words and len(clean.split()) > max_words:
        last = next(islice(re.finditer(r"\S+", clean), max_words - 1, None))
        clean = clean[:last.end()]
    return clean


def check_input(inp, preprocess: dict | None = None):
    """Apply the input rules to one row's views; the row becomes Failed(reason) when a view breaks one."""
    if isinstance(inp, (Missing, Failed)) or not isinstance(inp, dict):
        return inp if isinstance(inp, (Missing, Failed, dict)) else Failed(f"adapter returned {type(inp).__name__}")
    pre = preprocess or {}
    out = dict(inp)
    if "text" in out:
        t = check_text(out["text"], int(pre.get("max_note_words", MAX_NOTE_WORDS)))
        if isinstance(t, Failed):
            return t
        out["text"] = t
    for view in ("series", "features"):
        v = out.get(view)
        if isinstance(v, np.ndarray) and v.dtype.kind == "f" and np.isinf(v).any():
            return Failed(f"{view} holds {int(np.isinf(v).sum())} infinite value(s)")
    return out
