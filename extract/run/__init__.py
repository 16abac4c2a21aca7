"""The extract runner: plan units of work, run them in-process or on Dask, commit them to the store.

In parts: ``plan`` (identity, jobs), ``context`` (per-process caches, isolated encoding), ``units`` (one unit of
work), ``slides`` (tile batches), ``executors`` (in-process, Dask); import each name from its module.

A unit is (modality, row chunk): the adapter loads the chunk's inputs once, then every pending expert and the
teacher of that modality embed them, and each writes its chunk and then its marker. Raw volumes are decoded a few
rows at a time (each view once for all experts that read it) and slides a tile batch at a time, so memory stays
bounded whatever the chunk size. Units never share a chunk, so any number of workers write concurrently without a
lock; a rerun skips units whose marker is set; a duplicate or retried unit rewrites the same bytes. Workers load
each model once per process (``_ENCODERS``), and nothing heavier than a small picklable ``Job`` travels through the
scheduler.
"""
