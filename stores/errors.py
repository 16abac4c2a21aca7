"""The one error class for bad input a user can fix (a flag, a key, a name): every CLI prints it as one line and
exits 2. Plain ValueError/KeyError are NOT bad input: they are internal errors and keep their traceback (exit 1).
A separate module so that every layer can raise it without importing the CLI helpers."""
from __future__ import annotations


class InputError(ValueError):
    """Bad input named in the message (the flag, config key, file, sample or store): one line, exit 2."""


class UnknownName(InputError, KeyError):
    """A name looked up in a registry or a table that has no such entry (still a KeyError for callers)."""

    def __str__(self) -> str:                      # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
