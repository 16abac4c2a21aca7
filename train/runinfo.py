"""What a run folder records about how it was made: the command line, the resolved configuration (every option
after defaults, the store, the device, the seeds, the recipe in effect), package and code versions (``run.json``),
and a log file with timestamps (``run.log``; each run appends, so a resumed run's log follows the interrupted one)."""
from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from stores.cli import add_log_file, version_text
from stores.errors import InputError
from stores.provenance import code_version, package_versions


def start_run(out_dir: Path, argv: list[str], resolved: dict) -> logging.Handler:
    """Write ``run.json`` and start ``run.log`` in ``out_dir``; returns the log handler (``end_run`` removes it)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "run.log"
    handler = add_log_file(log_path)
    prog = "medmix train" if sys.argv and Path(sys.argv[0]).name == "medmix" else "python -m train"
    info = {"command": f"{prog} {shlex.join(argv)}",
            "argv": list(argv), "cwd": os.getcwd(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "resolved": resolved, "version": version_text(), "code_version": code_version(),
            "python": platform.python_version(), "platform": platform.platform(), "packages": package_versions()}
    (out_dir / "run.json").write_text(json.dumps(info, indent=2, default=str))
    logging.getLogger("medmix.train").info("run folder %s: command `%s`; resolved config in run.json", out_dir,
                                           info["command"])
    return handler


def end_run(handler: logging.Handler) -> None:
    logging.getLogger().removeHandler(handler)
    handler.close()


def kept_timings(path: Path, reused_key: str | None, key: str, measured: dict) -> dict:
    """Wall times kept in ``path`` under ``key``: when this run reused the work of ``reused_key`` (its config hash)
    and the kept times are that config's, they are returned with this run's total as ``rerun_s``; otherwise this
    run's times are the cold ones and are kept."""
    old = json.loads(path.read_text()) if path.exists() else {}
    if reused_key is not None and old.get("config_hash") == reused_key:
        return {**{k: old[k] for k in measured}, "rerun_s": round(sum(measured.values()), 1)}
    path.write_text(json.dumps({"config_hash": key, **measured}))
    return dict(measured)


def seeds_count(text: str) -> int:
    """``--seeds``: how many seeds (>= 1); ``--seed`` is the first."""
    if not text.isdigit() or int(text) < 1:
        raise InputError(f"--seeds {text}: expected a number of seeds >= 1 (the count; --seed sets the first seed)")
    return int(text)
