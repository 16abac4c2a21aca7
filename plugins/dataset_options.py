"""Dataset options on the command line, declared once by each adapter's ``Options`` class.

An adapter marks an option it wants on the command line with ``cli_option(default, help)`` (PhysioNet's ``set``);
every CLI that opens a dataset or its store (``extract``, ``rag embed``, ``train run``, ``train evaluate``) adds
the flags with ``add_dataset_options`` and reads them back with ``dataset_options``, so ``--set b`` names the same
store and the same adapter options everywhere, and an option the dataset lacks fails the same way everywhere.
"""
from __future__ import annotations

import argparse
from typing import Any, get_args

from pydantic import Field

PREFIX = "dataset_option_"          # argparse dest of each flag: never collides with a CLI's own options
SCALARS = (str, int, float)


def cli_option(default: Any, help: str, **kw) -> Any:
    """A pydantic field of an adapter's ``Options`` that is also a command-line flag of every dataset CLI."""
    return Field(default, description=help, json_schema_extra={"cli": True}, **kw)


def declared() -> dict[str, tuple[type, list[str]]]:
    """option name -> (its scalar type, '<adapter>: <help>' of each adapter declaring it), over every adapter."""
    from .datasets.base import load_adapters
    out: dict[str, tuple[type, list[str]]] = {}
    for name, cls in load_adapters().items():
        for key, info in cls.Options.model_fields.items():
            if not (isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("cli")):
                continue
            kind = next((t for t in (info.annotation, *get_args(info.annotation)) if t in SCALARS), str)
            out.setdefault(key, (kind, []))[1].append(f"{name}: {info.description or key}")
    return out


def add_dataset_options(ap: argparse.ArgumentParser) -> None:
    """One flag per declared dataset option (``--set``); left out, the dataset's configured value stands."""
    for key, (kind, helps) in sorted(declared().items()):
        ap.add_argument(f"--{key.replace('_', '-')}", dest=PREFIX + key, type=kind, default=None, metavar=key.upper(),
                        help="; ".join(helps) + " (dataset option; default: the config's)")


def given_options(args: argparse.Namespace) -> dict | None:
    """The dataset options a parsed command line sets (None when it sets none)."""
    out = {k[len(PREFIX):]: v for k, v in sorted(vars(args).items()) if k.startswith(PREFIX) and v is not None}
    return out or None


def dataset_options(args: argparse.Namespace, dataset: str, config: str | None = None) -> dict | None:
    """The command line's dataset options, checked against the dataset's adapter (``--set`` on a dataset without
    a ``set`` option is an error naming the valid ones), without opening the data."""
    options = given_options(args)
    if options:
        from stores.spec import load_spec
        from .datasets.base import load_adapters
        ds = load_spec(config).dataset(dataset)
        adapters = load_adapters()
        if ds.adapter in adapters:
            adapters[ds.adapter].check_options({**ds.options, **options})
    return options
