"""A third-party package as pip would install it, for entry-point tests: a module and a dist-info whose
entry_points.txt names it, put on sys.path (the registry then reloads its entry points)."""
from __future__ import annotations

import importlib
from pathlib import Path


def install_plugin(tmp_path: Path, monkeypatch, module: str, code: str, group: str, entry: str, registry) -> None:
    """``module`` (its ``__init__.py`` = ``code``) with ``[group] entry`` installed under ``tmp_path/site``."""
    site = tmp_path / "site"
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(code)
    info = site / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{entry}\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.setattr(registry, "_loaded", False)
