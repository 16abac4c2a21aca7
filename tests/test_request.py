"""One request object and dataset options declared once: `--set b` means the same store and the same adapter options
in extract, rag embed, train run and train evaluate; one failure-isolation helper for extract and rag."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from plugins.datasets.base import get_adapter
from plugins.inputs import run_isolated
from plugins.request import ExtractRequest
from stores import paths
from stores.spec import SpecError, load_spec
from stores.store import StoreError


class Reached(Exception):
    """Raised where a CLI hands its store on: the test reads what it was given."""


def _same_cohort(request: ExtractRequest, data_root) -> tuple:
    spec = load_spec(request.config)
    store = paths.store_path(spec, request.dataset, request.options, request.limit, request.store)
    adapter = get_adapter(spec.dataset(request.dataset), data_root, request.options)
    return store, adapter.opts


def test_extract_set_b_names_the_set_b_store_and_adapter(data_root):
    from extract.__main__ import build_parser
    req = ExtractRequest.from_args(build_parser().parse_args(["run", "--dataset", "physionet2012", "--set", "b"]))
    store, opts = _same_cohort(req, data_root)
    default_store, default_opts = _same_cohort(dataclasses.replace(req, options=None), data_root)
    assert req.options == {"set": "b"} and opts.set == "b" and default_opts.set == "a"         # a: the config's
    assert store != default_store and store == paths.store_path(load_spec(), "physionet2012", {"set": "b"})


def test_rag_embed_takes_the_same_set_as_extract(data_root):
    from extract.__main__ import build_parser
    from rag.__main__ import _parser
    rag = ExtractRequest.from_args(_parser().parse_args(["embed", "--dataset", "physionet2012", "--set", "b"]))
    ext = ExtractRequest.from_args(build_parser().parse_args(["run", "--dataset", "physionet2012", "--set", "b"]))
    assert rag.options == ext.options == {"set": "b"}
    assert _same_cohort(rag, data_root) == _same_cohort(ext, data_root)


def _opens_the_set_b_store(call) -> None:
    """``call`` reaches the set-b store extract writes: the mocked reader gets its path, or opening it fails naming it."""
    expected = str(paths.store_path(load_spec(), "physionet2012", {"set": "b"}))
    try:
        call()
    except Reached as got:
        assert got.args[0] == expected
    except StoreError as got:
        assert str(got).startswith(f"{expected}: ")
    else:
        raise AssertionError("the CLI neither opened nor named the store")


def test_train_run_opens_the_store_extract_set_b_wrote(monkeypatch):
    import train.__main__ as cli
    import train.experiment

    def reached(store, *a, **kw):
        raise Reached(store)
    monkeypatch.setattr(train.experiment, "run_experiment", reached)
    # the run opens that store first (refused when absent, naming it)
    _opens_the_set_b_store(lambda: cli._train(["--dataset", "physionet2012", "--set", "b", "--methods", "meanavg",
                                                "--seeds", "1"]))


def test_train_evaluate_opens_the_store_extract_set_b_wrote(monkeypatch):
    import train.__main__ as cli

    def reached(meta, store, *a, **kw):
        raise Reached(store)
    import train.checkpoint
    monkeypatch.setattr(train.checkpoint, "load_checkpoint", lambda path: ({}, {}, None))
    monkeypatch.setattr(train.checkpoint, "data_for", reached)
    # evaluate opens that store (its split is checked first: absent, refused naming it)
    _opens_the_set_b_store(lambda: cli._evaluate(["--checkpoint", "x.pt", "--dataset", "physionet2012", "--set", "b"]))


def test_extract_import_writes_into_the_set_b_store(tmp_path, monkeypatch):
    import extract.importer as importer
    from extract.__main__ import build_parser
    seen = []
    monkeypatch.setattr(importer, "import_features", lambda store, *a: seen.append(store) or {})
    args = build_parser().parse_args(["import", "--dataset", "physionet2012", "--set", "b", "--modality", "ehr",
                                      "--expert", "x", "--from", str(tmp_path)])
    assert importer.run(args) == 0
    assert seen == [str(paths.store_path(load_spec(), "physionet2012", {"set": "b"}))]


@pytest.mark.parametrize("cli", ["extract", "rag", "train", "evaluate"])
def test_a_dataset_option_the_dataset_lacks_fails_the_same_everywhere(cli, monkeypatch):
    import train.__main__ as train_cli
    from extract.__main__ import build_parser
    from rag.__main__ import _parser
    import train.checkpoint
    monkeypatch.setattr(train.checkpoint, "load_checkpoint", lambda path: ({}, {}, None))
    run = {"extract": lambda: ExtractRequest.from_args(build_parser().parse_args(["run", "--dataset", "mmist",
                                                                                  "--set", "b"])),
           "rag": lambda: ExtractRequest.from_args(_parser().parse_args(["embed", "--dataset", "mmist", "--set", "b"])),
           "train": lambda: train_cli._train(["--dataset", "mmist", "--set", "b"]),
           "evaluate": lambda: train_cli._evaluate(["--checkpoint", "x.pt", "--dataset", "mmist", "--set", "b"])}
    with pytest.raises(SpecError, match=r"options\.set: unknown option for dataset adapter 'mmist'"):
        run[cli]()


def test_extract_flags_are_the_request_fields():
    """Every flag-bearing field of the request is a flag of `extract run`, and a bare command line asks for the
    request's defaults (no option is re-stated between the CLI and the request)."""
    from extract.__main__ import build_parser
    args = build_parser().parse_args(["run", "--dataset", "openi"])
    assert ExtractRequest.from_args(args) == ExtractRequest("openi")
    given = build_parser().parse_args(["run", "--dataset", "openi", "--modality", "note", "--only-expert", "bert",
                                       "--limit", "5", "--workers", "2", "--no-rag", "--quiet", "--retry-failed"])
    req = ExtractRequest.from_args(given)
    assert (req.modalities, req.experts, req.limit, req.workers) == (["note"], ["bert"], 5, 2)
    assert (req.rag, req.progress, req.retry_failed, req.replace_split) == (False, False, True, False)


def test_the_rag_stage_receives_the_request_whole(monkeypatch):
    """The extract stage hands its request (paths resolved) to the stages that write other experts."""
    import plugins.stages as stages
    seen = []
    monkeypatch.setattr(stages, "expert_stages", lambda: {"rag": lambda req, summary=None: seen.append(req)})
    req = ExtractRequest("physionet2012", options={"set": "b"}, store="/tmp/x.zarr")
    stages.run_expert_stages({"rag"}, req)
    assert seen == [req]


def _oom():
    return torch.cuda.OutOfMemoryError("CUDA out of memory")


def test_one_bad_item_fails_alone_with_its_reason():
    def call(xs):
        if "bad" in xs:
            raise ValueError("unreadable")
        return [len(x) for x in xs]
    out, why = run_isolated(call, ["ab", "bad", "abcd"])
    assert out == [2, None, 4] and why == [None, "ValueError: unreadable", None]


def test_out_of_memory_shrinks_the_batch_instead_of_failing_rows():
    state = {"batch": 8, "calls": 0}

    def call(xs):
        state["calls"] += 1
        if state["batch"] > 2:
            raise _oom()
        return [x * 2 for x in xs]

    def shrink():
        state["batch"] //= 2
        return state["batch"] >= 1
    out, why = run_isolated(call, [1, 2, 3], shrink)
    assert out == [2, 4, 6] and why == [None] * 3 and state["batch"] == 2
    with pytest.raises(torch.cuda.OutOfMemoryError):               # nothing left to shrink: an error, not bad rows
        run_isolated(lambda xs: (_ for _ in ()).throw(_oom()), [1], lambda: False)


def test_the_rag_expert_isolates_a_bad_text_and_backs_off_on_out_of_memory():
    from rag.embed import _embed_texts
    from stores.store import FAILED, MISSING, OK

    class Enc:
        batch_size, card = 4, type("Card", (), {"key": "tiny"})

    class Svc:
        cfg = type("Cfg", (), {"k": 2})
        query_encoder, lm = Enc(), Enc()

        def embed(self, texts):
            if self.lm.batch_size > 2:                   # this "GPU" holds batches of 2
                raise _oom()
            if any("\x00" in t for t in texts):
                raise ValueError("binary text")
            n = len(texts)
            return np.ones((n, 3), np.float32), np.zeros((n, 2), np.int32), np.ones((n, 2), np.float32)

    from plugins.datasets.base import Missing
    svc = Svc()
    texts = ["fever", "cough", "bad\x00", Missing("no note"), "rash", "pain", "ache"]
    vec, valid, reasons, extras = _embed_texts(texts, svc, 3)
    assert valid.tolist() == [OK, OK, FAILED, MISSING, OK, OK, OK]
    assert "binary text" in reasons[2] and reasons[3] == "no note" and svc.lm.batch_size == 2
    assert (vec[valid == OK] == 1).all() and (extras["retrieved_ids"][2] == -1).all()


def test_train_evaluate_takes_config_and_limit_as_extract_does(tmp_path, monkeypatch):
    """`train evaluate --config my.yaml --limit N` opens the store `extract --config my.yaml --limit N` wrote."""
    import yaml
    import train.__main__ as cli
    import train.checkpoint
    config = tmp_path / "my.yaml"
    config.write_text(yaml.safe_dump({"defaults": {"store_root": str(tmp_path / "elsewhere")}}))
    monkeypatch.setattr(train.checkpoint, "load_checkpoint", lambda path: ({}, {}, None))
    expected = str(paths.store_path(load_spec(config), "physionet2012", None, 40))
    assert expected.startswith(str(tmp_path / "elsewhere")) and "limit40" in expected
    with pytest.raises(StoreError) as got:
        cli._evaluate(["--checkpoint", "x.pt", "--dataset", "physionet2012", "--config", str(config), "--limit", "40"])
    assert str(got.value).startswith(f"{expected}: ")
