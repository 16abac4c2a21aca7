"""Plan units of work, run them in-process or on Dask, commit them to the store.

A unit is (modality, row chunk): the adapter loads the chunk's inputs once, then every pending expert and the
teacher of that modality embed them, and each writes its chunk and then its marker. Raw volumes are decoded a few
rows at a time (each view once for all experts that read it) and slides a tile batch at a time, so memory stays
bounded whatever the chunk size. Units never share a chunk,
so any number of workers write concurrently without a lock; a rerun skips units whose marker is set; a duplicate
or retried unit rewrites the same bytes. Workers load each model once per process (``_ENCODERS``), and nothing
heavier than a small picklable ``Job`` travels through the scheduler.
"""
from __future__ import annotations

# The runner lives in extract/run/ (plan, context, units, slides, executors); these names stay importable here.
from .run.context import (IMAGE_GROUP, LAZY_GROUP, Context, clear_caches, encode_isolated, lazy_group,  # noqa: F401
                          probe)
from .run.executors import DaskExecutor, LocalExecutor, Summary, retry_units, run  # noqa: F401
from .run.plan import TEACHER, Job, plan_jobs  # noqa: F401
from .run.slides import _embed_slides  # noqa: F401
from .run.units import run_unit, run_unit_task  # noqa: F401
