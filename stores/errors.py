"""The text an exception becomes, the same in every stage: a row's failure reason, a unit error, a verify finding."""
from __future__ import annotations

REASON_CHARS = 500                 # a failure reason stored in the store's ``reason`` array is cut here


def describe(exc: BaseException) -> str:
    """'Type: message', never empty (some exceptions carry no message)."""
    msg = str(exc).strip()
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def reason(exc: BaseException, context: str = "", limit: int = REASON_CHARS) -> str:
    """The failure reason recorded for an exception: '[context: ]Type: message', cut to ``limit`` characters."""
    return ((f"{context}: " if context else "") + describe(exc))[:limit]
