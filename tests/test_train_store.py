"""`python -m train` on a store: explicit expert-group selection (recorded), evaluate/predict pinned to the
checkpoint's config hashes (refusal, --allow-other-features), samples without any modality, empty stores."""
import json

import numpy as np
import pytest

from stores.store import OK, Store
from train.__main__ import main

FAST = ["--seeds", "1", "--max-epochs", "3", "--warmup-steps", "1", "--tune", "none", "--no-probes",
        "--methods", "medmix,meanavg"]


def _write(st, mod, expert, h, x, valid, model="m"):
    g = st.require_expert_group(mod, expert, h.ljust(64, "0"), x.shape[1], {"model": model, "role": "general"})
    for u in g.units():
        g.write_unit(u, x[u.rows], valid[u.rows], [""] * (u.stop - u.start))
    return g


def make_store(path, n=80, seed=0, empty_rows=0, valid_rows=None):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(np.float32)[:, None]
    split = ["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4)
    st = Store.create(path, "toy", [f"s{i}" for i in range(n)], split,
                      {"y": (y, {"type": "binary", "labels": ["y"]})}, chunk_rows=32)
    for mod, d in (("a", 6), ("b", 4)):
        valid = np.full(n, OK, np.uint8)
        if empty_rows:
            valid[:empty_rows] = 0
        if valid_rows is not None:
            valid[:] = 0
            valid[:valid_rows] = OK
        _write(st, mod, "e0", f"{mod}1", (rng.normal(size=(n, d)) + y).astype(np.float32), valid)
    return st


def test_train_records_the_selected_groups_and_evaluate_uses_the_checkpoints(tmp_path, capsys):
    st = make_store(tmp_path / "s.zarr")
    out = tmp_path / "run"
    assert main(["--dataset", "toy", "--store", str(tmp_path / "s.zarr"), "--out", str(out), *FAST]) == 0
    res = json.loads((out / "results.json").read_text())
    sel = res["store_config_hashes"]
    assert sel["a/e0"]["config_hash"].startswith("a1") and sel["a/e0"]["chosen"] == "latest"
    assert res["recipe_name"] == "robust"
    # a newer group of the same expert (another config) becomes "latest": evaluate must still use the checkpoint's
    rng = np.random.default_rng(5)
    _write(st, "a", "e0", "a2", rng.normal(size=(st.n, 6)).astype(np.float32) * 100, np.full(st.n, OK, np.uint8))
    ck = str(out / "checkpoints" / "medmix.pt")
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", ck, "--dataset", "toy", "--store", str(tmp_path / "s.zarr"),
                 "--split", "test"]) == 0
    text = capsys.readouterr().out
    assert "OTHER" not in text and "scored" in text
    meta = json.loads((out / "checkpoints" / "medmix.json").read_text())
    assert meta["store_config_hashes"]["a/e0"]["config_hash"].startswith("a1")


def test_evaluate_refuses_a_store_without_the_checkpoints_features(tmp_path, capsys):
    make_store(tmp_path / "s.zarr")
    out = tmp_path / "run"
    assert main(["--dataset", "toy", "--store", str(tmp_path / "s.zarr"), "--out", str(out), *FAST]) == 0
    other = Store.create(tmp_path / "o.zarr", "toy", [f"s{i}" for i in range(40)], ["test"] * 40,
                         {"y": ((np.arange(40) % 2).astype(np.float32)[:, None], {"type": "binary", "labels": ["y"]})},
                         chunk_rows=32)
    rng = np.random.default_rng(1)
    for mod, d in (("a", 6), ("b", 4)):
        _write(other, mod, "e0", f"{mod}9", rng.normal(size=(40, d)).astype(np.float32), np.full(40, OK, np.uint8))
    ck = str(out / "checkpoints" / "medmix.pt")
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", ck, "--dataset", "toy", "--store", str(tmp_path / "o.zarr")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none of the 2 expert groups" in err[0] and "--allow-other-features" in err[0]
    assert main(["evaluate", "--checkpoint", ck, "--dataset", "toy", "--store", str(tmp_path / "o.zarr"),
                 "--allow-other-features"]) == 0
    assert "OTHER features" in capsys.readouterr().out


def test_samples_without_any_modality_are_counted_not_scored(tmp_path, capsys):
    make_store(tmp_path / "s.zarr", empty_rows=6)           # rows 0..5 (train) have nothing
    out = tmp_path / "run"
    assert main(["--dataset", "toy", "--store", str(tmp_path / "s.zarr"), "--out", str(out), *FAST]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["no_modality"] == {"train": 6, "val": 0, "test": 0}
    assert res["split_sizes"]["train"] == 40 - 6
    ck = str(out / "checkpoints" / "medmix.pt")
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", ck, "--dataset", "toy", "--store", str(tmp_path / "s.zarr"),
                 "--split", "all"]) == 0
    assert ": 74 samples" in (text := capsys.readouterr().out) and "6 with no modality not scored" in text
    assert main(["predict", "--checkpoint", ck, "--store", str(tmp_path / "s.zarr"), "--ids", "s0", "s10",
                 "--json"]) == 0
    cap = capsys.readouterr()
    recs = [json.loads(line) for line in cap.out.splitlines()]
    assert recs[0]["prediction"] is None and recs[0]["reason"] == "no modality available"
    assert "y" in recs[1] and "1 of 2 samples have no modality" in cap.err


@pytest.mark.parametrize("valid_rows", [0, 1])
def test_training_on_a_store_with_no_or_one_valid_row_is_a_clear_error(tmp_path, capsys, valid_rows):
    make_store(tmp_path / "s.zarr", valid_rows=valid_rows)
    assert main(["--dataset", "toy", "--store", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "r"), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and ("training" in err or "valid training row" in err)
    assert "stack expects" not in err


def test_profile_selects_groups_by_recorded_provenance(tmp_path):
    from stores.loader import read_experts
    from stores.store import StoreError
    from train.data import Data
    st = make_store(tmp_path / "s.zarr")
    g = st.require_expert_group("a", "e0", "a3".ljust(64, "0"), 6, {"model": "m", "role": "general",
                                                                     "profile": "paper"})
    for u in g.units():
        g.write_unit(u, np.ones((u.stop - u.start, 6), np.float32), np.full(u.stop - u.start, OK, np.uint8),
                     [""] * (u.stop - u.start))
    ex = read_experts(st, {"a": ["e0"]}, teachers=False, profile="paper")
    assert ex.provenance["a/e0"]["config_hash"].startswith("a3") and ex.provenance["a/e0"]["chosen"] == "profile paper"
    assert (ex.vectors["a"]["e0"] == 1).all()
    data, prov = Data.from_store(st, {"a": ["e0"]}, teachers=False, profile="paper")
    assert prov == ex.provenance and (data.xs["a"][0] == 1).all()
    with pytest.raises(StoreError, match="no group extracted with profile 'offline'"):
        read_experts(st, {"a": ["e0"]}, teachers=False, profile="offline")
    with pytest.raises(StoreError, match="no group extracted with profile 'offline'"):
        Data.from_store(st, {"a": ["e0"]}, teachers=False, profile="offline")


def test_a_group_an_extract_run_has_not_finished_is_refused_naming_it(tmp_path, capsys):
    st = make_store(tmp_path / "s.zarr")
    rng = np.random.default_rng(3)
    g = st.require_expert_group("b", "e0", "b2".ljust(64, "0"), 4, {"model": "m", "role": "general"})
    u = g.units()[0]                                 # the newest group of b/e0: one of its 3 units written
    g.write_unit(u, rng.normal(size=(u.stop - u.start, 4)).astype(np.float32), np.full(u.stop - u.start, OK, np.uint8),
                 [""] * (u.stop - u.start))
    assert main(["--dataset", "toy", "--store", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "run"), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "b/e0 (config b20000000000): 2 of 3 units pending" in err[0]
    assert "python -m extract --dataset toy" in err[0]


def test_missing_modality_protocols_are_not_run_on_one_modality_and_it_is_said(tmp_path):
    make_store(tmp_path / "s.zarr")
    out = tmp_path / "run"
    assert main(["--dataset", "toy", "--store", str(tmp_path / "s.zarr"), "--out", str(out), *FAST,
                 "--modalities", "a", "--protocol", "none,test_multi@0.5"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["protocols"] == ["none"] and set(res["methods"]["medmix"]["protocols"]) == {"none"}
    assert any("one modality (a): missing-modality protocols not run" in n and "test_multi@0.5" in n
               for n in res["notes"])
    # two modalities: the protocol runs
    assert main(["--dataset", "toy", "--store", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "two"), *FAST,
                 "--protocol", "none,test_multi@0.5"]) == 0
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert "test_multi@0.5" in two["methods"]["medmix"]["protocols"]
    assert "test_multi@0.5" in (tmp_path / "two" / "results.md").read_text()
