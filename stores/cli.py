"""What every `python -m <stage>` (and `medmix <stage>`) shares: the parser, logging, known errors as one line and
exit status 2, Ctrl-C as one line and 130, and the exit-status rule.

Known errors are bad input the user can fix (a config key, a path, a store, a checkpoint, a device, a missing
optional package, an unreachable scheduler): one line naming the problem, exit 2, never a traceback. Anything else is
an internal error: Python's traceback and exit 1 (a plain ValueError or KeyError is a bug, not bad input; code that
means "bad input" raises ``stores.errors.InputError``). ``MEDMIX_DEBUG=1`` shows the traceback of known errors too.
Exit statuses, the same for every stage: 0 done (rows that failed are listed in the summary), 1 done but ``--strict``
and some rows failed (or `stores verify` found a problem), or an internal error; 2 bad input; 130 interrupted.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from typing import Callable

from .errors import InputError, UnknownName  # noqa: F401  (re-exported)
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
# OSError: files, permissions, network (an unreachable --scheduler times out as OSError), missing weights offline
KNOWN_ERRORS = (InputError, SpecError, PathError, StoreError, OSError)
# errors third-party code raises as RuntimeError/AssertionError that mean the machine lacks what was asked for
KNOWN_MESSAGES = [
    (re.compile(r"Torch not compiled with CUDA|No CUDA GPUs are available|Found no NVIDIA driver|CUDA driver",
                re.I), "a CUDA device was asked for (--device cuda / --gpus) but this machine has no usable CUDA GPU "
                       "(torch.cuda.is_available() is False): use --device cpu"),
    (re.compile(r"needs dask-cuda"), None),             # the message itself is the one line
]
STAGES = ("extract", "rag", "train", "stores")


class _Version(argparse.Action):
    """``--version``, computed when asked (the code version runs git)."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit(0)


class Parser(argparse.ArgumentParser):
    """argparse with ``allow_abbrev=False`` (``--seed 3`` must never be read as ``--seeds 3``); subparsers made by
    ``add_subparsers`` are of this class too, so every level refuses abbreviations."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        if self.add_help:                  # every CLI and command: `--version` (package and code versions)
            self.add_argument("--version", action=_Version, nargs=0, help="print the package and code versions")

    def error(self, message: str):
        """A usage error in one line (the convention of every known error), exit 2."""
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


CliError = InputError   # a CLI's refusal with a one-line reason (exit status 2)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C with a note on what was kept (e.g. how to resume): one line, exit 130."""


def one_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(text.split()) or type(exc).__name__


def _known_message(exc: BaseException) -> str | None:
    if not isinstance(exc, (RuntimeError, AssertionError)):
        return None
    for pattern, text in KNOWN_MESSAGES:
        if pattern.search(str(exc)):
            return text or one_line(exc)
    return None


def guarded(main: Callable, argv) -> int:
    """Run a CLI's main: known errors -> 'error: ...' on stderr and exit 2; Ctrl-C -> one line and 130; anything
    else propagates (traceback, exit 1)."""
    debug = bool(os.environ.get("MEDMIX_DEBUG"))
    try:
        return main(argv)
    except KeyboardInterrupt as exc:
        note = f": {one_line(exc)}" if isinstance(exc, Interrupted) and exc.args else ""
        print(f"interrupted{note}", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        if debug:
            raise
        name = (exc.name or "").split(".")[0]
        hint = INSTALL_HINTS.get(name, f"pip install {name}")
        print(f"error: the optional package '{name}' is not installed: {hint}", file=sys.stderr)
        return 2
    except ImportError as exc:                       # an optional backend that says what to install
        if debug:
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KNOWN_ERRORS as exc:
        if debug:
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except (RuntimeError, AssertionError) as exc:
        text = _known_message(exc)
        if text is None or debug:
            raise
        print(f"error: {text}", file=sys.stderr)
        return 2


def exit_status(failed_rows: int, strict: bool) -> int:
    """0 with the summary; 1 when --strict and any row failed."""
    return 1 if strict and failed_rows else 0


def is_terminal(stream=None) -> bool:
    """Progress bars only on a terminal: in a log file their carriage returns and cursor codes are noise."""
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


QUIET = {"on": False}      # set by setup_logging(quiet=True): the run's --quiet, for progress shown anywhere


class Progress:
    """Progress over ``total`` items: a tqdm bar (rate, ETA) on a terminal; elsewhere (a log file, CI) a timestamped
    log line every ``every`` seconds and at the end, so that a long run in a log is never silent. ``enabled=False``
    (--quiet) shows neither."""

    def __init__(self, total: int, desc: str, unit: str = "item", enabled: bool = True, every: float = 30.0,
                 logger: str = "medmix"):
        from tqdm.auto import tqdm
        self.total, self.desc, self.unit, self.every = int(total), desc, unit, every
        self.done, self.t0, self.postfix = 0, time.monotonic(), ""
        self.last = self.t0
        self.log = logging.getLogger(logger)
        enabled = enabled and not QUIET["on"]         # --quiet (setup_logging) silences every progress display
        self.bar = tqdm(total=total, desc=desc, unit=unit, leave=True) if enabled and is_terminal() else None
        self.lines = enabled and self.bar is None

    def update(self, n: int) -> None:
        self.done += int(n)
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if self.lines and (now - self.last >= self.every or self.done >= self.total):
            self.last = now
            spent = now - self.t0
            eta = spent / self.done * (self.total - self.done) if self.done else float("nan")
            self.log.info("%s: %d of %d %ss (%.0f%%), %.0f s elapsed, ETA %.0f s%s", self.desc, self.done, self.total,
                          self.unit, 100 * self.done / max(self.total, 1), spent, eta,
                          f"; {self.postfix}" if self.postfix else "")

    def set_postfix(self, **values) -> None:
        """Figures shown beside the count (e.g. a loss): on the bar, or at the end of the next line."""
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_DATE = "%Y-%m-%d %H:%M:%S"


def setup_logging(quiet: bool = False, level: int = logging.INFO) -> None:
    """Timestamped log lines on stderr; ``quiet`` also silences third-party bars and chatter (transformers' weight
    loading bar, Hugging Face downloads, bm25s DEBUG lines)."""
    logging.basicConfig(level=level, format=LOG_FORMAT, datefmt=LOG_DATE)   # a no-op where logging is set up
    QUIET["on"] = quiet
    logging.getLogger("medmix").setLevel(level)
    logging.getLogger("bm25s").setLevel(max(level, logging.INFO))    # it sets DEBUG on its own logger
    if quiet or not is_terminal():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")
    if quiet:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        for name in ("bm25s", "transformers", "huggingface_hub", "distributed", "urllib3", "filelock"):
            logging.getLogger(name).setLevel(logging.WARNING)


def add_log_file(path, level: int = logging.INFO) -> logging.Handler:
    """Also write the run's log lines, with timestamps, to ``path`` (the run folder's log); the caller removes the
    handler when the run ends (``logging.getLogger().removeHandler``)."""
    logging.getLogger("medmix").setLevel(min(level, logging.getLogger("medmix").getEffectiveLevel()))
    handler = logging.FileHandler(path)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATE))
    logging.getLogger().addHandler(handler)
    return handler


def version_text() -> str:
    """Package version and the code's commit (dirty flagged) for --version and run folders."""
    from importlib.metadata import PackageNotFoundError, version

    from .provenance import code_version
    try:
        pkg = version("medmix")
    except PackageNotFoundError:
        pkg = "unknown (not installed)"
    return f"medmix {pkg} (code {code_version()})"


def medmix(argv: list[str] | None = None) -> int:
    """The `medmix extract|rag|train|stores ...` console script: the same as `python -m <stage> ...`, and immune to a
    `train.py` in the working directory (a console script does not put the cwd first on sys.path)."""
    import importlib
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--version"], ["-V"]):
        print(version_text())
        return 0
    if not argv or argv[0] not in STAGES:
        usage = f"usage: medmix {{{','.join(STAGES)}}} ... | --version   (each stage has its own --help)"
        if argv[:1] in (["-h"], ["--help"]):
            print(usage)
            return 0
        print(usage, file=sys.stderr)
        print(f"error: unknown command {argv[0]!r}" if argv else "error: a command is required", file=sys.stderr)
        return 2
    stage = importlib.import_module(f"{argv[0]}.__main__")      # the stage's own entry (layers stay one-way)
    return int(stage.main(argv[1:]) or 0)
