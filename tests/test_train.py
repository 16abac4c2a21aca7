"""MedMIX and the baselines: exact masking, formulas, losses, metrics, thresholds, early stopping, determinism."""
import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score

from train.data import Data
from train.evaluation import evaluate_split, val_thresholds
from train.losses import rkd_distance
from train.metrics import task_metrics, tune_thresholds
from train.models.medmix import adapter_rank
from train.protocols import Protocol, drop_modalities
from train.trainer import Recipe, build_model, evaluate_loss, train_one


def synthetic(n=120, seed=0, dims=(("a", (6, 4)), ("b", (5,))), teacher=True):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n, 1), generator=g).float()
    layout, xs, masks = {}, {}, {}
    for m, ds in dims:
        layout[m] = [f"e{k}" for k in range(len(ds))]
        xs[m] = [torch.randn(n, d, generator=g) + y * 0.8 for d in ds]
        masks[m] = torch.rand(n, len(ds), generator=g) > 0.25
    teachers = {"a": torch.randn(n, 7, generator=g) + y} if teacher else {}
    tmasks = {"a": torch.rand(n, generator=g) > 0.1} if teacher else {}
    split = np.array(["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4))
    codes = np.array([{"train": 0, "val": 1, "test": 2}[s] for s in split], np.int8)
    tasks = [{"name": "t", "type": "binary", "labels": ["t"], "cols": slice(0, 1), "out": slice(0, 1)}]
    return Data(layout, xs, masks, y, tasks, teachers, tmasks, codes)


def test_adapter_rank_formula():
    assert [adapter_rank(d) for d in (64, 384, 512, 768, 1024, 1280, 2048, 4096)] == [32, 32, 32, 48, 64, 80, 128, 128]


@pytest.mark.parametrize("method", ["medmix", "meanavg", "concat", "max", "attention", "m3care", "adacomed"])
def test_missing_values_have_no_effect(method):
    data = synthetic()
    model = build_model(method, data, Recipe(hidden=16)).eval()
    idx = torch.arange(40)
    xs, masks = data.batch(idx)
    out1 = model(xs, masks).logits
    poisoned = {m: [torch.where(masks[m][:, k:k + 1], x, torch.full_like(x, float("nan")) if k % 2 else x * 1e6 + 7)
                    for k, x in enumerate(v)] for m, v in xs.items()}
    out2 = model(poisoned, masks).logits
    assert torch.isfinite(out2).all()
    torch.testing.assert_close(out1, out2, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["medmix", "meanavg", "concat", "max", "attention", "m3care", "adacomed"])
def test_sample_with_everything_missing_is_defined(method):
    data = synthetic()
    model = build_model(method, data, Recipe(hidden=16)).eval()
    xs, masks = data.batch(torch.arange(8))
    masks = {m: torch.zeros_like(v) for m, v in masks.items()}
    out = model(xs, masks)
    assert torch.isfinite(out.logits).all()
    if out.fusion is not None:
        assert torch.isfinite(out.fusion).all()


def test_medmix_router_and_fusion_give_zero_weight_to_missing():
    data = synthetic()
    model = build_model("medmix", data, Recipe(hidden=16)).eval()
    xs, masks = data.batch(torch.arange(40))
    out = model(xs, masks)
    for m, g in out.router.items():
        avail = masks[m].any(1)
        assert (g[avail][~masks[m][avail]] == 0).all()
        torch.testing.assert_close(g[avail].sum(1), torch.ones(int(avail.sum())))
    assert (out.fusion[~out.available] == 0).all()


def test_rkd_matches_a_direct_reference():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 4, generator=g), torch.randn(6, 9, generator=g)
    ref = 0.0
    def nd(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return d / d[~np.eye(len(x), dtype=bool)].mean()
    ds, dt = nd(s.numpy()), nd(t.numpy())
    diffs = (ds - dt)[~np.eye(6, dtype=bool)]
    ref = np.mean(np.where(np.abs(diffs) < 1, 0.5 * diffs ** 2, np.abs(diffs) - 0.5))
    assert abs(float(rkd_distance(s, t)) - ref) < 1e-5


def test_metrics_equal_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (200, 3)).astype(float)
    logits = rng.normal(size=(200, 3)) + y
    y[:5, 2] = np.nan
    task = {"type": "multilabel", "labels": ["x", "y", "z"]}
    th = np.array([0.4, 0.5, 0.6])
    got = task_metrics(task, logits, y, th)
    p = 1 / (1 + np.exp(-logits))
    per = []
    for j in range(3):
        k = ~np.isnan(y[:, j])
        per.append([roc_auc_score(y[k, j], p[k, j]), average_precision_score(y[k, j], p[k, j]),
                    f1_score(y[k, j], p[k, j] >= th[j]), accuracy_score(y[k, j], p[k, j] >= th[j])])
    ref = np.mean(per, 0)
    assert np.allclose([got["auroc"], got["auprc"], got["macro_f1"], got["accuracy"]], ref)


def test_a_label_without_both_classes_is_skipped_and_named():
    y = np.array([[0, 1], [1, 1], [0, 1], [1, 1]], float)
    got = task_metrics({"type": "multilabel", "labels": ["ok", "all-positive"]}, np.zeros((4, 2)), y, None)
    assert got["skipped_labels"] == ["all-positive"]


def test_thresholds_come_from_validation_not_test():
    data = synthetic(n=200)
    torch.manual_seed(0)
    model = build_model("meanavg", data, Recipe(hidden=8)).eval()
    th = val_thresholds(model, data)["t"]
    val = data.rows("val")
    from train.trainer import predict
    p_val = torch.sigmoid(predict(model, data, val).logits).numpy()
    np.testing.assert_allclose(th, tune_thresholds(p_val, data.y[val].numpy()))
    test = data.rows("test")
    p_test = torch.sigmoid(predict(model, data, test).logits).numpy()
    data.y[test] = 1 - data.y[test]                      # test labels change: thresholds must not
    np.testing.assert_array_equal(val_thresholds(model, data)["t"], th)
    data.y[test] = 1 - data.y[test]
    res = evaluate_split(model, data, "test", {"t": th})
    y = data.y[test].numpy()[:, 0]
    # a probability within float noise of the cut may fall either side between two forward passes (thread
    # scheduling under load changes reduction order): those rows may disagree, no other row may
    near = np.abs(p_test[:, 0] - th[0]) < 1e-6
    assert abs(res["t"]["accuracy"] - accuracy_score(y, p_test[:, 0] >= th[0])) <= near.sum() / len(y) + 1e-12


def test_early_stopping_returns_the_best_validation_checkpoint():
    data = synthetic()
    recipe = Recipe(lr=3e-3, warmup_epochs=1, max_epochs=60, patience=5, hidden=16)
    model, info = train_one("medmix", data, recipe, seed=0)
    best = min(h["val_loss"] for h in info["history"])
    assert info["history"][info["best_epoch"]]["val_loss"] == best
    assert abs(evaluate_loss(model, data, data.rows("val")) - best) < 1e-6
    assert info["epochs_run"] <= info["best_epoch"] + 1 + recipe.patience


def test_training_is_deterministic_on_cpu_for_a_seed():
    data = synthetic()
    recipe = Recipe(lr=1e-3, warmup_epochs=2, max_epochs=5, hidden=16)
    a, _ = train_one("medmix", data, recipe, seed=3)
    b, _ = train_one("medmix", data, recipe, seed=3)
    c, _ = train_one("medmix", data, recipe, seed=4)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=0, atol=0)
    assert any(not torch.equal(va, vc) for va, vc in zip(a.state_dict().values(), c.state_dict().values()))


def test_distillation_is_skipped_cleanly_without_teachers():
    data = synthetic(teacher=False)
    model, info = train_one("medmix", data, Recipe(lr=1e-3, warmup_epochs=1, max_epochs=3, hidden=8), seed=0)
    assert len(model.teacher_proj) == 0 and np.isfinite(info["best_val_loss"])


def test_distillation_changes_training_when_teachers_exist():
    data = synthetic()
    r = Recipe(lr=1e-3, warmup_epochs=1, max_epochs=4, hidden=8, distill_ramp_epochs=1)
    with_d, _ = train_one("medmix", data, r, seed=0)
    without, _ = train_one("medmix_nodistill", data, r, seed=0)
    a = with_d.state_dict()["heads.a.weight"]
    b = without.state_dict()["heads.a.weight"]
    assert not torch.allclose(a, b)


def test_protocols_only_remove_modalities():
    gen = torch.Generator().manual_seed(0)
    avail = torch.rand(500, 3, generator=gen) > 0.3
    for kind, rate in (("multi", 0.5), ("drop_one", 0.7), ("drop_one", 1.0)):
        keep = drop_modalities(avail, kind, rate, gen)
        assert not (keep & ~avail).any()
    keep = drop_modalities(avail, "drop_one", 1.0, gen)
    assert ((avail.sum(1) - keep.sum(1))[avail.any(1)] == 1).all()
    assert torch.equal(drop_modalities(avail, "multi", 0.0, gen), avail)
    assert Protocol.parse("test_multi@0.3") == Protocol("test_multi@0.3", "test", "multi", 0.3)
    with pytest.raises(ValueError, match="expected none"):
        Protocol.parse("random")


def test_ablation_plan_covers_distillation_intra_fusion_roles_and_modalities():
    from train.plan import plan as _plan
    data = synthetic()
    roles = {"a/e0": "general", "a/e1": "rag", "b/e0": "general"}
    plan = _plan(["medmix"], data, True, roles)
    assert {"medmix w/o distillation", "medmix w/o intra-fusion (uniform mean)", "medmix w/o rag experts",
            "medmix w/o general experts", "medmix a only", "medmix b only"} <= set(plan)
    no_rag = plan["medmix w/o rag experts"][1](data)
    assert no_rag.layout == {"a": ["e0"], "b": ["e0"]}
    no_general = plan["medmix w/o general experts"][1](data)
    assert no_general.layout == {"a": ["e1"]}
    single = plan["medmix single expert 'e1' per modality"][1](data)
    assert single.layout == {"a": ["e1"], "b": ["e0"]}


def test_protocol_rows_are_per_task_with_cis_and_the_loss_to_the_harshest_multi_drop():
    from train.report import protocol_rows

    def cell(t1, t2):          # two tasks: never averaged, each its own table
        return {"tasks": {"t1": {"auroc": {"mean": t1, "std": 0.01}}, "t2": {"auroc": {"mean": t2, "std": 0.02}}}}
    results = {"protocols": ["none", "test_multi@0.3", "test_multi@0.7", "test_drop_one@0.5"],
               "methods": {"a": {"protocols": {"none": cell(0.80, 0.60), "test_multi@0.3": cell(0.75, 0.58),
                                               "test_multi@0.7": cell(0.60, 0.55), "test_drop_one@0.5": cell(0.78, 0.59)}},
                           "b": {"protocols": {"none": cell(0.90, 0.70)}}},
               "bootstrap": {"methods": {"a": {"t1": {"auroc": {"value": 0.81, "ci95": [0.7, 0.9]}}}},
                             "protocols": {"test_multi@0.7": {"a": {"t1": {"auroc": {"value": 0.6,
                                                                                      "ci95": [0.5, 0.7]}}}}}}}
    a, b = protocol_rows(results, "t1")
    assert a["none"] == "0.8000 ± 0.0100 [0.700, 0.900]" and a["test_multi@0.7"] == "0.6000 ± 0.0100 [0.500, 0.700]"
    assert a["loss to test_multi@0.7"] == "+0.2000" and a["test_drop_one@0.5"] == "0.7800 ± 0.0100"
    assert b["loss to test_multi@0.7"] == ""                      # a method without that protocol: no figure
    assert protocol_rows(results, "t2")[0]["loss to test_multi@0.7"] == "+0.0500"
    assert "loss to" not in protocol_rows({"protocols": ["none", "test_drop_one@0.5"],
                                           "methods": {"a": results["methods"]["a"]}}, "t1")[0]


