"""Fit the experts that learn an encoding from data (``Encoder.needs_fit``: summary statistics, tabular fields)
before any unit runs.

The encoding is fitted on the TRAINING rows of the store only (never validation or test), or copied from another
store (``encoding_from``: an external cohort is encoded with its training cohort's encoding). It goes into the
expert's ``params["encoding"]``, so it is part of the config hash (a different training split is a different
group), of the provenance in the group's attributes, and of the options every worker rebuilds the encoder from.
"""
from __future__ import annotations

import dataclasses
import logging

from stores.store import Store, StoreError

from plugins.datasets.base import DatasetAdapter
from plugins.registry import Encoder, EncoderOptions
from stores.errors import InputError

log = logging.getLogger("medmix.extract")
FIT_CHUNK = 512          # training rows loaded per adapter call while fitting


def stored_encoding(store_path: str, modality: str, expert: str, model: str) -> dict:
    """The fitted encoding of (modality, expert) in another store (its latest group), checked to be ``model``'s."""
    try:
        group = Store(store_path).expert_group(modality, expert)
    except StoreError as exc:
        raise InputError(f"encoding_from {store_path}: {exc} (extract the training cohort first)") from None
    prov = group.attrs.get("provenance", {})
    if prov.get("model") != model or "encoding" not in prov:
        raise InputError(f"encoding_from {store_path}: {group.path} holds model {prov.get('model')!r} without a fitted "
                         f"encoding, expected {model!r}")
    return prov["encoding"]


def fit_on_rows(enc: Encoder, adapter: DatasetAdapter, modality: str, view: str, rows: list[int]) -> dict:
    """Fit ``enc`` on the ``view`` of the given (training) rows; rows without that input are left out."""
    items, skipped = [], 0
    for s in range(0, len(rows), FIT_CHUNK):
        for inp in adapter.load(modality, list(rows[s:s + FIT_CHUNK])):
            if isinstance(inp, dict) and view in inp:
                items.append(inp[view])
            else:
                skipped += 1
    if not items:
        raise InputError(f"dataset '{adapter.spec.adapter}', modality '{modality}': no training row has a '{view}' "
                         f"input to fit {enc.card.key} on ({len(rows)} training rows)")
    state = enc.fit(items)
    log.info("%s/%s: encoding fitted on %d training rows (%d without input)", modality, enc.card.key, len(items),
             skipped)
    return {**state, "n_train": len(items)}


def fitted_options(enc: Encoder, options: EncoderOptions, adapter: DatasetAdapter, modality: str, view: str,
                   expert: str, train_rows: list[int], encoding_from: str | None = None) -> EncoderOptions:
    """``options`` with ``params["encoding"]`` set: given, copied from ``encoding_from``, or fitted on train rows."""
    params = dict(options.params)
    if params.get("encoding"):
        return options
    source = params.get("encoding_from") or encoding_from
    if source:
        params["encoding"] = stored_encoding(str(source), modality, expert, enc.card.key)
        params["encoding_from"] = str(source)
    else:
        if not train_rows:
            raise InputError(f"dataset '{adapter.spec.adapter}': expert '{expert}' ({enc.card.key}) is fitted on the "
                             "training split, which is empty here (an external cohort?): pass --encoding-from "
                             "<the training cohort's store>")
        params["encoding"] = fit_on_rows(enc, adapter, modality, view, train_rows)
    return dataclasses.replace(options, params=params)
