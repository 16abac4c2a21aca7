"""One registry class for every kind of plugin (encoders, dataset adapters, fusion methods, report generators).

Plugins register themselves: importing every module of a package is how a registry finds the built-in ones, and an
entry-point group (``[project.entry-points."medmix.encoders"]`` in another installed package's pyproject) is how it
finds a third party's, so adding one touches its own file only, never a list. A key registered twice is an error
naming both; a renamed key keeps working through an alias; the registry prints as a table.
"""
from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Iterator, Mapping
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, TypeVar

from .errors import UnknownName

log = logging.getLogger("medmix")
T = TypeVar("T")


def import_all(package: str) -> None:
    """Import every module directly inside ``package`` (each registers what it defines on import)."""
    for mod in pkgutil.iter_modules(importlib.import_module(package).__path__):
        importlib.import_module(f"{package}.{mod.name}")


class Registry(Mapping, Generic[T]):
    """key -> plugin. ``package``: built-ins found by importing its modules; ``group``: an entry-point group whose
    entries are imported (an entry naming a module registers by import; one naming an object is registered under the
    entry's name). Lookups load both once, lazily."""

    def __init__(self, what: str, package: str | None = None, group: str | None = None,
                 row: Callable[[str, T], dict] | None = None, on_entry_point: Callable[[str, T], None] | None = None):
        self.what, self.package, self.group, self._row = what, package, group, row
        self._on_entry_point = on_entry_point          # e.g. give an object named by an entry point its key
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}
        self._loaded = False

    def add(self, key: str, obj: T, aliases: tuple[str, ...] = ()) -> T:
        if key in self._items or key in self._aliases:
            raise ValueError(f"{self.what} {key!r} registered twice ({_name(self._items.get(key))}, {_name(obj)})")
        self._items[key] = obj
        for a in aliases:
            if a in self._items or a in self._aliases:
                raise ValueError(f"{self.what} alias {a!r} of {key!r} is already taken")
            self._aliases[a] = key
        return obj

    def register(self, key: str, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator form of ``add``."""
        return lambda obj: self.add(key, obj, aliases)

    def remove(self, key: str) -> None:
        self._items.pop(key, None)
        self._aliases = {a: k for a, k in self._aliases.items() if k != key}

    def load(self) -> "Registry[T]":
        if not self._loaded:
            self._loaded = True
            if self.package:
                import_all(self.package)
            if self.group:
                for ep in entry_points(group=self.group):
                    try:
                        obj = ep.load()
                    except Exception as exc:        # a broken third-party plugin must not hide the built-ins
                        log.warning("%s plugin %r (entry point %s) failed to load: %s", self.what, ep.name, ep.value, exc)
                        continue
                    if ep.attr and ep.name not in self._items and ep.name not in self._aliases:
                        if self._on_entry_point:
                            self._on_entry_point(ep.name, obj)
                        self.add(ep.name, obj)
        return self

    def canonical(self, key: str) -> str:
        self.load()
        return self._aliases.get(key, key)

    def get(self, key: str, default: Any = None) -> T:         # noqa: D401 - Mapping.get semantics kept
        self.load()
        return self._items.get(self._aliases.get(key, key), default)

    def __getitem__(self, key: str) -> T:
        self.load()
        key = self._aliases.get(key, key)
        if key not in self._items:
            raise UnknownName(f"no {self.what} registered as {key!r} (have: {', '.join(sorted(self._items))})")
        return self._items[key]

    def __contains__(self, key: object) -> bool:
        self.load()
        return key in self._items or key in self._aliases

    def __iter__(self) -> Iterator[str]:
        self.load()
        return iter(list(self._items))            # registration order (built-ins: module order, deterministic)

    def __len__(self) -> int:
        self.load()
        return len(self._items)

    def table(self) -> list[dict]:
        """One row per key (the ``row`` function given at construction, else key + object name)."""
        row = self._row or (lambda k, obj: {"key": k, "name": _name(obj)})
        return [row(k, self[k]) for k in self]


def _name(obj: Any) -> str:
    return getattr(obj, "__name__", None) or getattr(obj, "name", None) or type(obj).__name__
