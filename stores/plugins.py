"""Plugins register themselves: importing every module of a package is how a registry finds them (encoders,
dataset adapters, fusion methods), so adding one touches its own file only, never a list."""
from __future__ import annotations

import importlib
import pkgutil


def import_all(package: str) -> None:
    """Import every module directly inside ``package`` (each registers what it defines on import)."""
    for mod in pkgutil.iter_modules(importlib.import_module(package).__path__):
        importlib.import_module(f"{package}.{mod.name}")
