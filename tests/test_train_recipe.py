"""Issue 14: normalisation fitted on train only and reused, the one-class guard, macro-F1 thresholds, ablations that
remove one component each, the diagnostic probe, modality dropout."""
import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from train.data import Data
from train.data_checks import class_guard
from train.metrics import tune_thresholds
from train.normalise import apply_stats, fit_stats
from train.trainer import Recipe, build_model, modality_dropout, train_one

from test_train import synthetic
from test_train_store import FAST, make_store


def test_normalisation_stats_come_from_train_rows_only():
    data = synthetic()
    stats = fit_stats(data)
    tr = data.rows("train")
    x, ok = data.xs["a"][0], data.masks["a"][:, 0]
    rows = x[tr][ok[tr]].double()
    np.testing.assert_allclose(stats["experts"]["a/e0"]["mean"], rows.mean(0).numpy(), rtol=1e-5, atol=1e-6)
    other = synthetic()
    for m in other.layout:
        for k in range(len(other.xs[m])):
            rest = torch.cat([other.rows("val"), other.rows("test")])
            other.xs[m][k][rest] = torch.randn(len(rest), other.xs[m][k].shape[1]) * 50 + 9
    other.teachers["a"][other.rows("test")] = 1e3
    assert fit_stats(other) == stats


def test_normalised_missing_rows_stay_exactly_zero_and_valid_rows_are_standardised():
    data = synthetic()
    out = apply_stats(data, fit_stats(data))
    for m in data.layout:
        for k, x in enumerate(out.xs[m]):
            miss = ~data.masks[m][:, k]
            assert torch.equal(x[miss], torch.zeros_like(x[miss]))          # bit-identical zeros
            tr = data.rows("train")
            v = x[tr][data.masks[m][tr, k]]
            assert torch.allclose(v.mean(0), torch.zeros(v.shape[1]), atol=1e-5)
    assert torch.equal(out.y, data.y)


def test_evaluate_reuses_the_checkpoints_normalisation(tmp_path):
    from train.__main__ import main
    from train.checkpoint import data_for as _data_for
    make_store(tmp_path / "s.zarr")
    out = tmp_path / "run"
    assert main(["--dataset", "toy", "--store", str(tmp_path / "s.zarr"), "--out", str(out), *FAST,
                 "--normalise", "standard"]) == 0
    meta = json.loads((out / "checkpoints" / "medmix.json").read_text())
    assert meta["normalisation"]["kind"] == "standard"
    got = _data_for(meta, str(tmp_path / "s.zarr"))
    raw, _ = Data.from_store(str(tmp_path / "s.zarr"), teachers=False)
    want = apply_stats(raw, meta["normalisation"])
    for m in want.layout:
        torch.testing.assert_close(got.xs[m][0], want.xs[m][0], rtol=0, atol=0)


def _one_class_data():
    data = synthetic(n=120)
    tr = data.rows("train")
    has_b = data.masks["b"][tr].any(1)
    data.y[tr[has_b]] = 1.0                     # every training row that has b is positive
    data.y[tr[~has_b]] = 0.0
    return data


def test_class_guard_leaves_a_one_class_modality_out_unless_kept():
    data = _one_class_data()
    out, notes = class_guard(data)
    assert list(out.layout) == ["a"] and len(notes) == 1 and "'b'" in notes[0] and "left out" in notes[0]
    kept, notes = class_guard(data, keep={"b"})
    assert list(kept.layout) == ["a", "b"] and "KEPT" in notes[0]
    fine, notes = class_guard(synthetic(n=120))
    assert list(fine.layout) == ["a", "b"] and notes == []


def test_threshold_maximises_macro_f1_not_positive_class_f1():
    # positives are the majority; cutting at the lowest score (everything positive) maximises the positive F1
    y = np.array([[1]] * 8 + [[0]] * 2, float)
    p = np.array([[0.9], [0.8], [0.7], [0.6], [0.5], [0.25], [0.2], [0.15], [0.3], [0.35]])
    grid = np.unique(np.quantile(p[:, 0], np.linspace(0.01, 0.99, 99)))
    pos = max(grid, key=lambda c: f1_score(y[:, 0], p[:, 0] >= c))
    assert f1_score(y[:, 0], p[:, 0] >= pos, average="macro") < 0.6        # the positive-F1 cut: poor macro-F1
    th = tune_thresholds(p, y)[0]
    best = max(f1_score(y[:, 0], p[:, 0] >= c, average="macro") for c in grid)
    assert f1_score(y[:, 0], p[:, 0] >= th, average="macro") == pytest.approx(best)
    assert best > f1_score(y[:, 0], p[:, 0] >= pos, average="macro")


def test_each_ablation_removes_exactly_one_component():
    data = synthetic()
    r = Recipe(lr=3e-3, warmup_epochs=1, max_epochs=3, hidden=8, distill_ramp_epochs=1)
    full = build_model("medmix", data, r)
    mean = build_model("medmix_mean", data, r)
    nod = build_model("medmix_nodistill", data, r)
    assert (full.intra, len(full.teacher_proj) > 0) == ("router", True)
    assert (mean.intra, len(mean.teacher_proj) > 0) == ("mean", True)       # routing removed, distillation kept
    assert (nod.intra, len(nod.teacher_proj) > 0) == ("router", False)      # distillation removed, routing kept
    torch.manual_seed(0)
    init = build_model("medmix_mean", data, r).teacher_proj["a"].weight.clone()
    trained, _ = train_one("medmix_mean", data, r, seed=0)
    assert not torch.allclose(trained.teacher_proj["a"].weight, init)         # the distillation loss trained it


def test_diagnostic_probe_equals_a_direct_scikit_learn_fit():
    from train.diagnostics import PROBE_C, probe_auroc
    data = synthetic(n=200)
    x, ok = data.xs["a"][0].numpy(), data.masks["a"][:, 0].numpy()
    y = data.y[:, 0].numpy().astype(int)
    got = probe_auroc(x, ok, data)["per_target"]["t"]
    parts = {p: data.rows(p).numpy() for p in ("train", "val", "test")}
    sel = {p: r[ok[r]] for p, r in parts.items()}
    val = {}
    for c in PROBE_C:
        m = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=500)).fit(x[sel["train"]], y[sel["train"]])
        val[c] = (roc_auc_score(y[sel["val"]], m.predict_proba(x[sel["val"]])[:, 1]), m)
    c = max(PROBE_C, key=lambda k: val[k][0])
    assert got["C"] == c
    assert got["test_auroc"] == pytest.approx(roc_auc_score(y[sel["test"]], val[c][1].predict_proba(x[sel["test"]])[:, 1]))


def test_modality_dropout_only_removes_and_keeps_one_per_sample():
    gen = torch.Generator().manual_seed(0)
    avail = torch.rand(400, 3, generator=gen) > 0.3
    keep = modality_dropout(avail, 0.9, gen)
    assert not (keep & ~avail).any()
    assert torch.equal(keep.any(1), avail.any(1))
    assert keep.sum() < avail.sum()


def test_fusion_weights_are_averaged_over_patients_who_have_the_modality():
    from train.diagnostics import mean_weights
    data = synthetic()
    model = build_model("medmix", data, Recipe(hidden=8)).eval()
    w = mean_weights(model, data)
    idx = data.rows("test")
    with torch.no_grad():
        out = model(*data.batch(idx))
    for i, m in enumerate(data.layout):
        a = data.masks[m][idx].any(1)
        assert w["fusion"][m] == pytest.approx(float(out.fusion[a, i].mean()))


def test_uniform_init_starts_with_equal_fusion_weights():
    data = synthetic()
    model = build_model("medmix", data, Recipe(hidden=8, fusion_init="uniform")).eval()
    with torch.no_grad():
        out = model(*data.batch(torch.arange(40)))
    both = out.available.all(1)
    torch.testing.assert_close(out.fusion[both], torch.full_like(out.fusion[both], 0.5))


def test_robust_and_paper_recipes_differ_only_in_recorded_fields():
    from train.trainer import RECIPES
    assert RECIPES["paper"] == Recipe()
    assert RECIPES["robust"] != RECIPES["paper"]
    assert isinstance(Data, type)


def test_the_validation_grid_chooses_normalisation_per_method_and_the_checkpoint_follows(tmp_path):
    from train.__main__ import main
    from train.checkpoint import data_for as _data_for
    make_store(tmp_path / "s.zarr")
    out = tmp_path / "run"
    args = [a for a in FAST if a not in ("--tune", "none")]
    assert main(["--dataset", "toy", "--store", str(tmp_path / "s.zarr"), "--out", str(out), *args,
                 "--tune", "lr=1e-3;normalise=none,standard"]) == 0
    res = json.loads((out / "results.json").read_text())
    raw, _ = Data.from_store(str(tmp_path / "s.zarr"), teachers=False)
    for name, entry in res["methods"].items():
        tried = {row["normalise"] for row in entry["tuning"]["table"]}
        assert tried == {"none", "standard"}
        chosen = entry["tuning"]["chosen"]["normalise"]
        assert entry["normalisation"] == chosen == entry["recipe"]["normalise"]
        meta = json.loads((out / "checkpoints" / f"{name}.json").read_text())
        got = _data_for(meta, str(tmp_path / "s.zarr"))
        want = apply_stats(raw, meta["normalisation"]) if chosen == "standard" else raw
        assert (meta["normalisation"] is None) == (chosen == "none")
        for m in want.layout:
            torch.testing.assert_close(got.xs[m][0], want.xs[m][0], rtol=0, atol=0)
