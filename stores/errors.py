"""Errors and their text, the same in every stage.

``InputError`` is the one error class for bad input a user can fix (a flag, a key, a name): every CLI prints it as
one line and exits 2. Plain ValueError/KeyError are NOT bad input: they are internal errors and keep their traceback
(exit 1). ``describe``/``reason`` are the text an exception becomes: a row's failure reason, a unit error, a verify
finding. A separate module so that every layer can use them without importing the CLI helpers."""
from __future__ import annotations

REASON_CHARS = 500                 # a failure reason stored in the store's ``reason`` array is cut here


class InputError(ValueError):
    """Bad input named in the message (the flag, config key, file, sample or store): one line, exit 2."""


class UnknownName(InputError, KeyError):
    """A name looked up in a registry or a table that has no such entry (still a KeyError for callers)."""

    def __str__(self) -> str:                      # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def describe(exc: BaseException) -> str:
    """'Type: message', never empty (some exceptions carry no message)."""
    msg = str(exc).strip()
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def reason(exc: BaseException, context: str = "", limit: int = REASON_CHARS) -> str:
    """The failure reason recorded for an exception: '[context: ]Type: message', cut to ``limit`` characters."""
    return ((f"{context}: " if context else "") + describe(exc))[:limit]
