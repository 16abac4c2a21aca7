"""The method registry: a new fusion method is one registration; the trainer needs no special case for it."""
import pytest
import torch
import torch.nn as nn

from train import methods
from train.models.medmix import Output
from train.trainer import METHODS, Recipe, build_model, train_one

from test_train import synthetic


class FirstExpert(nn.Module):
    """Toy method: the first expert of the first modality, linearly."""

    def __init__(self, dims, n_out):
        super().__init__()
        self.m = next(iter(dims))
        self.lin = nn.Linear(dims[self.m][0], n_out)

    def forward(self, xs, masks):
        return Output(logits=self.lin(torch.where(masks[self.m][:, :1], xs[self.m][0], torch.zeros(()))))


@pytest.fixture
def toy_method():
    calls = []

    def extra(model, out, batch, recipe):
        calls.append(batch.y.shape[0])
        return out.logits.new_zeros(())
    methods.register(methods.Method("first_expert", lambda dims, n_out, tdims, r, lm=None: FirstExpert(dims, n_out),
                                    extra_loss=extra, main=False))
    yield calls
    methods.REGISTRY.remove("first_expert")


def test_a_registered_method_trains_without_trainer_changes(toy_method):
    data = synthetic()
    model, info = train_one("first_expert", data, Recipe(lr=1e-2, warmup_epochs=1, max_epochs=2, hidden=8), seed=0)
    assert isinstance(model, FirstExpert) and info["epochs_run"] == 2
    assert toy_method and all(n > 0 for n in toy_method)          # its declared extra loss ran every step


def test_registry_declares_what_each_method_needs():
    assert METHODS == ["medmix", "meanavg", "concat", "max", "attention", "m3care", "adacomed"]
    assert methods.get("medmix").distill and not methods.get("medmix_nodistill").distill
    assert methods.get("adacomed").extra_loss is not None and methods.get("large").input == "teacher"
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        build_model("nope", synthetic(), Recipe())
    with pytest.raises(ValueError, match="registered twice"):
        methods.register(methods.get("medmix"))
