"""Data reaches the model's device at the one entry point (Data.to): model, batch and outputs share a device."""
import pytest
import torch

from train.evaluation import evaluate_split, val_thresholds
from train.efficiency import efficiency
from train.trainer import Recipe, train_one

from test_train import synthetic

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["medmix", "adacomed", "m3care"])
def test_training_and_evaluation_run_on_the_chosen_device(device, method):
    data = synthetic()                                     # CPU tensors, as the loader builds them
    seen = []

    def hook(module, args, output):
        xs, masks = args
        seen.extend([x.device.type for v in xs.values() for x in v] + [m.device.type for m in masks.values()])
        seen.append(output.logits.device.type)

    recipe = Recipe(lr=1e-3, warmup_epochs=1, max_epochs=2, patience=5, hidden=8)
    model, info = train_one(method, data, recipe, seed=0, device=device)
    assert info["epochs_run"] == 2
    assert {p.device.type for p in model.parameters()} == {device}
    model.register_forward_hook(hook)
    moved = data.to(device)
    res = evaluate_split(model, moved, "test", val_thresholds(model, moved))
    assert 0.0 <= res["mean"]["auroc"] <= 1.0
    eff = efficiency(model, data)                          # CPU data in: moved to the model's device inside
    assert eff["device"].startswith(device) and eff["params"] > 0
    assert seen and set(seen) == {device}


def test_data_to_is_identity_on_the_same_device_and_moves_everything():
    data = synthetic()
    assert data.to("cpu") is data
    if torch.cuda.is_available():
        moved = data.to("cuda")
        tensors = [moved.y, *moved.masks.values(), *moved.teachers.values(), *moved.teacher_masks.values(),
                   *[x for xs in moved.xs.values() for x in xs]]
        assert {t.device.type for t in tensors} == {"cuda"}
        assert moved.rows("train").device.type == "cuda"


def test_cpu_peak_memory_is_measured_not_summed():
    data = synthetic()
    model, _ = train_one("meanavg", data, Recipe(lr=1e-3, warmup_epochs=1, max_epochs=1, hidden=8), seed=0)
    eff = efficiency(model, data)
    assert eff["memory_measure"] in ("peak RSS increase (VmHWM)", "cuda max_memory_allocated")
    assert eff["peak_memory_mb"] is None or eff["peak_memory_mb"] >= 0
    assert eff["params"] == sum(p.numel() for p in model.parameters())   # no training-only parts in meanavg


def test_parameter_count_excludes_the_teacher_projection():
    from train.efficiency import inference_parameters
    from train.trainer import build_model
    data = synthetic()
    model = build_model("medmix", data, Recipe(hidden=8))
    proj = sum(p.numel() for p in model.teacher_proj.parameters())
    assert proj > 0
    assert inference_parameters(model) == sum(p.numel() for p in model.parameters()) - proj
