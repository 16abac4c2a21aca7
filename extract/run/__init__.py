"""The extract runner in parts: plan (identity), context (per-process caches, isolated encoding), units
(one unit of work), slides (tile batches), executors (in-process, Dask). ``extract.runner`` re-exports them."""
