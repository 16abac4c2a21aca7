"""What every `python -m <stage>` shares: known errors as one line and exit status 2, tables, and the exit-status rule.

Known errors are bad input the user can fix (a config key, a path, a store, a checkpoint, a missing optional
package): one line naming the problem, exit 2, never a traceback. ``MEDMIX_DEBUG=1`` shows the traceback anyway.
Exit statuses, the same for every stage: 0 done (rows that failed are listed in the summary), 1 done but ``--strict``
and some rows failed (or `stores verify` found a problem), 2 bad input.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

from .paths import PathError
from .spec import SpecError
from .store import StoreError
from .table import format_table  # noqa: F401  (re-exported: the CLIs' table printer)

INSTALL_HINTS = {
    "faiss": "pip install 'medmix[faiss-cpu]' (or 'medmix[gpu]' for faiss-gpu)",
    "openslide": "pip install openslide-python openslide-bin",
    "pydicom": "pip install 'medmix[dicom]'",
    "chronos": "pip install 'medmix[timeseries]'",
    "uni2ts": "pip install 'medmix[moirai]'",
    "dask_jobqueue": "pip install 'medmix[slurm]'",
    "dask_cuda": "pip install 'medmix[gpu]'",
}
KNOWN_ERRORS = (SpecError, PathError, StoreError, FileNotFoundError, NotADirectoryError, PermissionError, ValueError,
                KeyError)


class CliError(Exception):
    """Raised by a CLI for a known bad input; printed as one line."""


def one_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(text.split()) or type(exc).__name__


def guarded(main: Callable[[list[str]], int], argv: list[str]) -> int:
    """Run a CLI's main; known errors -> 'error: ...' on stderr and exit 2."""
    try:
        return main(argv)
    except ModuleNotFoundError as exc:
        if os.environ.get("MEDMIX_DEBUG"):
            raise
        name = (exc.name or "").split(".")[0]
        hint = INSTALL_HINTS.get(name, f"pip install {name}")
        print(f"error: the optional package '{name}' is not installed: {hint}", file=sys.stderr)
        return 2
    except (CliError, *KNOWN_ERRORS) as exc:
        if os.environ.get("MEDMIX_DEBUG"):
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2


def exit_status(failed_rows: int, strict: bool) -> int:
    """0 with the summary; 1 when --strict and any row failed."""
    return 1 if strict and failed_rows else 0
