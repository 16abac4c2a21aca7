"""Issue 14: the validation search. A small validation split (few rows of the rarer class) is replaced by stratified
k-fold cross-validation over train + validation; test rows never take part; every method sees the same folds."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from train.data import Data
from train.trainer import Recipe
from train.tuning import CV_FOLDS, cv_splits, minority_count, resolve_folds, tune

from test_train import synthetic
from test_train_store import FAST, make_store

TR, VA, TE = 0, 1, 2
QUICK = Recipe(lr=1e-3, max_epochs=3, warmup_steps=1, batch_size=32, hidden=16, patience=3)


def test_minority_count_is_the_rarer_class_in_validation():
    data = synthetic(n=200)
    y = data.y[data.rows("val"), 0].numpy()
    assert minority_count(data, "val") == int(min((y == 1).sum(), (y == 0).sum()))
    ml = synthetic(n=400)                          # 100 validation rows
    i = torch.arange(400)
    cols = torch.stack([(i % 2 == 0), (i % 4 == 0), (i % 10 == 0)], 1).float()
    ml = dataclasses.replace(ml, y=cols, tasks=[{"name": "f", "type": "multilabel", "labels": ["x", "y", "z"],
                                                 "cols": slice(0, 3), "out": slice(0, 3)}])
    counts = sorted(int(min(c.sum(), len(c) - c.sum())) for c in cols[ml.rows("val")].T)
    assert len(set(counts)) == 3
    assert minority_count(ml, "val") == counts[1]          # the median label, not the rarest nor the commonest


def test_folds_leave_test_rows_alone_and_hold_out_every_pooled_row_once():
    data = synthetic(n=200)
    splits = cv_splits(data, 5, seed=0)
    assert len(splits) == 5
    test = data.split == TE
    held = np.zeros(len(data.split), int)
    y = data.y[:, 0].numpy()
    for s in splits:
        assert np.array_equal(s == TE, test)
        assert set(np.unique(s[~test])) == {TR, VA}
        held += s == VA
        pooled_rate = y[~test].mean()
        assert abs(y[s == VA].mean() - pooled_rate) < 0.06               # stratified
    assert np.array_equal(held[~test], np.ones((~test).sum(), int))
    assert all(np.array_equal(a, b) for a, b in zip(splits, cv_splits(data, 5, seed=0)))


def test_auto_uses_folds_only_when_validation_is_small():
    small = synthetic(n=120)                       # 30 validation rows: about 15 of each class
    k, rec = resolve_folds(small, None)
    assert k == CV_FOLDS and rec["val_minority"] < 30 and "cross-validation" in rec["scored_on"]
    big = synthetic(n=400)                         # 100 validation rows
    k, rec = resolve_folds(big, None)
    assert k == 0 and rec["val_minority"] >= 30 and rec["scored_on"] == "the validation split"
    assert resolve_folds(big, 3)[0] == 3 and resolve_folds(small, 0)[0] == 0
    with pytest.raises(ValueError, match="tune-folds"):
        resolve_folds(small, 1)


def test_fold_scores_never_look_at_test_rows():
    data = synthetic(n=160)
    folds = cv_splits(data, 3, seed=0)
    grid = {"lr": [1e-3, 3e-3]}
    _, info = tune("meanavg", data, QUICK, grid, seed=0, folds=folds)
    poisoned = synthetic(n=160)
    te = poisoned.rows("test")
    poisoned.y[te] = 1 - poisoned.y[te]
    for m in poisoned.layout:
        for x in poisoned.xs[m]:
            x[te] = torch.randn(len(te), x.shape[1]) * 30
    _, info2 = tune("meanavg", poisoned, QUICK, grid, seed=0, folds=folds)
    assert [r["fold_auroc"] for r in info["table"]] == [r["fold_auroc"] for r in info2["table"]]
    assert all(len(r["fold_auroc"]) == 3 for r in info["table"])
    assert info["table"][0]["val_auroc"] == pytest.approx(np.mean(info["table"][0]["fold_auroc"]))
    assert "3 stratified folds" in info["scored_by"]


def test_a_run_scores_every_method_on_the_same_folds_and_records_it(tmp_path):
    from train.__main__ import main
    make_store(tmp_path / "s.zarr")
    out = tmp_path / "run"
    args = [a for a in FAST if a not in ("--tune", "none")]
    assert main(["--dataset", "toy", "--store", str(tmp_path / "s.zarr"), "--out", str(out), *args,
                 "--methods", "medmix,meanavg", "--tune", "lr=1e-3;normalise=none,standard"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["tune_validation"]["folds"] == CV_FOLDS         # 20 validation rows, 10 per class: auto -> folds
    for entry in res["methods"].values():
        assert "5 stratified folds" in entry["tuning"]["scored_by"]
        assert all(len(r["fold_auroc"]) == CV_FOLDS for r in entry["tuning"]["table"])
    assert "cross-validation" in (out / "results.md").read_text()
    out0 = tmp_path / "run0"
    assert main(["--dataset", "toy", "--store", str(tmp_path / "s.zarr"), "--out", str(out0), *args,
                 "--methods", "meanavg", "--tune", "lr=1e-3", "--tune-folds", "0"]) == 0
    res0 = json.loads((out0 / "results.json").read_text())
    assert res0["tune_validation"]["folds"] == 0 and res0["methods"]["meanavg"]["tuning"]["scored_by"] == \
        "validation AUROC"


def test_bad_tune_folds_is_a_usage_error(tmp_path, capsys):
    from train.__main__ import main
    with pytest.raises(SystemExit) as e:
        main(["--dataset", "toy", "--store", str(tmp_path / "s.zarr"), "--tune-folds", "1"])
    assert e.value.code == 2 and "--tune-folds" in capsys.readouterr().err


def test_fold_statistics_are_refitted_on_each_folds_training_rows(tmp_path, monkeypatch):
    """The standardised view of a fold is fitted on that fold's training rows, never on its held-out rows."""
    from stores.store import Store
    from train import normalise
    seen = []
    orig = normalise.fit_stats

    def spy(data: Data):
        seen.append(data.split.copy())
        return orig(data)
    from train import prepare
    monkeypatch.setattr(prepare, "fit_stats", spy)
    make_store(tmp_path / "s.zarr")
    from train.__main__ import main
    args = [a for a in FAST if a not in ("--tune", "none")]
    assert main(["--dataset", "toy", "--store", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "r"), *args,
                 "--methods", "meanavg", "--tune", "lr=1e-3;normalise=standard", "--tune-folds", "4"]) == 0
    official = Store(tmp_path / "s.zarr").split()
    fold_splits = [s for s in seen if not np.array_equal(s, official)]
    assert len(fold_splits) == 4
    held = np.zeros(len(official), int)
    for s in fold_splits:
        assert np.array_equal(s == TE, official == TE)
        held += s == VA
    assert np.array_equal(held[official != TE], np.ones((official != TE).sum(), int))


def test_select_recipe_scores_on_folds_when_validation_is_small(tmp_path):
    from train.select_recipe import score
    make_store(tmp_path / "s.zarr")
    recipe = dataclasses.replace(QUICK, normalise="standard")
    cv = score(str(tmp_path / "s.zarr"), recipe, ["meanavg"], [0, 1], "cpu", folds=None)["meanavg"]
    assert len(cv["values"]) == CV_FOLDS and "cross-validation" in cv["scored_on"]
    assert cv["val_auroc"] == pytest.approx(np.mean(cv["values"]))
    plain = score(str(tmp_path / "s.zarr"), recipe, ["meanavg"], [0, 1], "cpu", folds=0)["meanavg"]
    assert len(plain["values"]) == 2 and plain["scored_on"] == "the validation split"


def test_multilabel_folds_do_not_depend_on_test_labels():
    data = synthetic(n=200)
    i = torch.arange(200)
    cols = torch.stack([(i % 2 == 0), (i % 5 == 0), (i % 3 == 0)], 1).float()
    task = [{"name": "f", "type": "multilabel", "labels": ["x", "y", "z"], "cols": slice(0, 3), "out": slice(0, 3)}]
    a = dataclasses.replace(data, y=cols.clone(), tasks=task)
    b = dataclasses.replace(data, y=cols.clone(), tasks=task)
    te = b.rows("test")
    b.y[te] = torch.tensor([1.0, 1.0, 0.0]).expand(len(te), 3)    # test rows would make another label "balanced"
    assert all(np.array_equal(x, y) for x, y in zip(cv_splits(a, 5, 0), cv_splits(b, 5, 0)))


def test_more_folds_than_a_class_has_rows_is_a_clear_error():
    data = synthetic(n=120)
    data.y[:] = 0
    data.y[:3] = 1
    with pytest.raises(ValueError, match="only 3 rows"):
        cv_splits(data, 5, 0)


def test_a_misspelt_normalise_fails_on_the_fold_path_as_on_the_official_one(tmp_path):
    from train.data_checks import TrainDataError
    from train.prepare import prepare
    make_store(tmp_path / "s.zarr")
    prep = prepare(str(tmp_path / "s.zarr"), QUICK)
    split = cv_splits(prep.raw, 2, 0)[0]
    bad = dataclasses.replace(QUICK, normalise="zscore")
    for call in (lambda: prep.for_recipe(bad), lambda: prep.for_split(bad, split)):
        with pytest.raises(TrainDataError, match="zscore"):
            call()
    view = prep.for_split(dataclasses.replace(QUICK, normalise="none"), split)
    assert np.array_equal(view.split, split) and view.xs["a"][0] is prep.raw.xs["a"][0]     # re-split, no copy
