"""Experts that another stage computes (the RAG expert: rag/embed.py) plug into `python -m extract` here.

They register as entry points of the group ``medmix.expert_stages`` (pyproject.toml), keyed by the expert role they
produce, so the extract stage runs them after its own experts without importing the stage that provides them.
Each is called as ``fn(request, summary=...)`` with the run's ``ExtractRequest`` whole (plugins/request.py: paths
resolved, dataset options, modalities, progress) and writes its expert groups into the store like any other expert.
"""
from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Callable

log = logging.getLogger("medmix.extract")
GROUP = "medmix.expert_stages"


def expert_stages() -> dict[str, Callable]:
    """role -> the callable that writes that role's experts (loaded lazily, only when asked for)."""
    return {ep.name: ep.load() for ep in entry_points(group=GROUP)}


def run_expert_stages(roles: set[str], request, summary=None) -> None:
    """Run the stages for the planned roles; a role with no installed stage is said, never silently skipped."""
    stages = expert_stages()
    for role in sorted(roles):
        if role not in stages:
            log.warning("experts of role '%s' are planned but no stage provides them (entry point group %s: "
                        "reinstall the package, `pip install -e .`)", role, GROUP)
            continue
        stages[role](request, summary=summary)
