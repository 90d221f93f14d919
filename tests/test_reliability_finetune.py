"""Hostile-but-realistic inputs to `compress.finetune` / `compress.prune_then_finetune`:
a diverging loss, one-shot iterables and misspelt options fail clearly, never silently."""
import math

import pytest
import torch

import compress
import compress.api
from compress.data import from_array, synthetic
from tiny import TinyForecaster


def splits(L=16, H=4):
    arr = synthetic(length=800, n_channels=3, seed=1, seasonalities=(12,), noise=0.05)
    return [from_array(arr, L, H, split=s) for s in ("train", "val")]


def as_list(ds, n=4, batch_size=16):
    return ds.batches(batch_size, limit=n)


# --- NaN / Inf losses -------------------------------------------------------------------
class NaNAfterTraining(TinyForecaster):
    """Trains with finite losses, then predicts NaN in eval mode (a diverged model)."""

    trained = 0

    def forward(self, x):
        y = super().forward(x)
        if self.training:
            self.trained += 1
        elif self.trained:
            y = y * float("nan")
        return y


class NaNOnThirdBatch(TinyForecaster):
    seen = 0

    def forward(self, x):
        y = super().forward(x)
        if self.training:
            self.seen += 1
            if self.seen == 3:
                y = y * float("inf")
        return y


def test_when_the_validation_loss_becomes_nan_then_finetune_stops_naming_epoch_and_lr():
    train, val = splits()
    with pytest.raises(FloatingPointError, match=r"validation loss is nan after epoch 1 \(lr=0.003\).*epoch 0"):
        compress.finetune(NaNAfterTraining(), train, val, epochs=3, lr=3e-3, max_train_batches=2, progress=False)


def test_when_the_validation_loss_is_nan_before_training_then_it_is_an_error_not_the_initial_weights():
    train, _ = splits()
    past, future = as_list(train, n=1)[0]
    bad_val = [(past, future * float("nan"))]
    with pytest.raises(FloatingPointError, match="before training.*non-finite values"):
        compress.finetune(TinyForecaster(), train, bad_val, epochs=2, max_train_batches=2, progress=False)


def test_when_the_training_loss_becomes_inf_then_the_error_names_batch_epoch_and_lr():
    train, val = splits()
    with pytest.raises(FloatingPointError, match=r"training loss is inf at batch 2 \(0-based\) of epoch 1 \(lr=0.001\)"):
        compress.finetune(NaNOnThirdBatch(), train, val, epochs=2, lr=1e-3, max_train_batches=5, progress=False)


def test_when_a_custom_loss_is_nan_on_validation_then_finetune_stops():
    train, val = splits()

    def loss(pred, y):  # finite on training batches, NaN on validation ones
        return torch.nn.functional.mse_loss(pred, y) * (float("nan") if not torch.is_grad_enabled() else 1.0)

    with pytest.raises(FloatingPointError, match="validation loss is nan before training"):
        compress.finetune(TinyForecaster(), train, val, epochs=2, max_train_batches=2, loss_fn=loss, progress=False)


# --- one-shot iterables -----------------------------------------------------------------
@pytest.mark.parametrize("which", ["train", "val"])
def test_when_train_or_val_is_a_generator_then_finetune_refuses_it_clearly(which):
    train, val = splits()
    data = {"train": as_list(train), "val": as_list(val)}
    data[which] = (b for b in data[which])
    with pytest.raises(ValueError, match=f"{which} data is a one-shot iterator.*list"):
        compress.finetune(TinyForecaster(), data["train"], data["val"], epochs=2, progress=False)


class OncePerLife:
    """An iterable that yields its batches on the first pass only (a stream already read)."""

    def __init__(self, items):
        self.items, self.used = list(items), False

    def __iter__(self):
        if self.used:
            return iter(())
        self.used = True
        return iter(self.items)


def test_when_an_epoch_gets_no_training_batches_then_it_is_an_error_not_a_loss_of_zero():
    train, val = splits()
    with pytest.raises(ValueError, match="epoch 2 saw no training windows"):
        compress.finetune(TinyForecaster(), OncePerLife(as_list(train)), as_list(val), epochs=3, patience=5,
                          progress=False)


def test_when_evaluate_gets_a_generator_then_it_reads_it_once():
    _, val = splits()
    batches = as_list(val)
    model = TinyForecaster().eval()
    a = compress.evaluate(model, (b for b in batches))
    b = compress.evaluate(model, batches)
    assert a["n_windows"] == b["n_windows"] == sum(p.shape[0] for p, _ in batches)
    assert math.isclose(a["mse"], b["mse"])


# --- prune_then_finetune options -------------------------------------------------------
@pytest.fixture
def no_pruning(monkeypatch):
    """Any pruning search started by the test fails the test: the checks must come first."""

    def prune(*a, **k):
        raise AssertionError("the pruning search started before the options were checked")

    monkeypatch.setattr(compress.api, "prune", prune)


@pytest.mark.parametrize("kw, words", [
    (dict(max_step=3), r"unknown option 'max_step' \(did you mean 'max_steps'\?\)"),
    (dict(weight_decai=0.1), r"did you mean 'weight_decay'"),
    (dict(epochs=2), r"epochs= is set by prune_then_finetune itself; pass finetune_epochs="),
    (dict(max_steps=0), r"max_steps=0 must be a positive integer"),
    (dict(finetune_epochs=0), r"epochs=0 must be a positive integer"),
])
def test_when_a_finetune_option_of_prune_then_finetune_is_wrong_then_it_fails_before_pruning(no_pruning, kw, words):
    train, val = splits()
    with pytest.raises(ValueError, match=words):
        compress.prune_then_finetune(TinyForecaster(), train, val, progress=False, **kw)


def test_when_prune_then_finetune_gets_a_generator_then_it_refuses_before_pruning(no_pruning):
    train, val = splits()
    with pytest.raises(ValueError, match="train data is a one-shot iterator"):
        compress.prune_then_finetune(TinyForecaster(), (b for b in as_list(train)), val, progress=False)
