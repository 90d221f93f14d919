"""compress.finetune / compress.evaluate on tiny models and synthetic data."""
import subprocess
import sys

import pytest
import torch

import compress
from compress.data import from_array, synthetic
from tiny import TinyForecaster


def splits(L=16, H=4):
    arr = synthetic(length=1200, n_channels=3, seed=1, seasonalities=(12,), noise=0.05)
    return [from_array(arr, L, H, split=s) for s in ("train", "val", "test")]


def test_evaluate_matches_a_hand_computed_mse_and_mae():
    train, val, test = splits()
    model = TinyForecaster().eval()
    r = compress.evaluate(model, test, batch_size=50)
    preds, ys = [], []
    with torch.no_grad():
        for i in range(len(test)):
            x, y = test[i]
            preds.append(model(x[None])[0])
            ys.append(y)
    err = torch.stack(preds) - torch.stack(ys)
    assert r["n_windows"] == len(test)
    assert r["mse"] == pytest.approx(float(err.pow(2).mean()), rel=1e-5)
    assert r["mae"] == pytest.approx(float(err.abs().mean()), rel=1e-5)


class Zeros(torch.nn.Module):
    def forward(self, x):
        return torch.zeros(x.shape[0], 4, x.shape[2])


def test_a_capped_evaluation_samples_the_whole_split_not_its_first_windows():
    arr = torch.zeros(1000, 2)
    arr[900:] = 1.0  # only the second half of the test split is non-zero
    test = from_array(arr, 16, 4, split="test", scale=False)
    first = test.batches(4, limit=2)
    assert all(float(y.abs().sum()) == 0 for _, y in first)  # the first windows alone would read MSE 0
    a = compress.evaluate(Zeros(), test, batch_size=4, limit=2)
    b = compress.evaluate(Zeros(), test, batch_size=4, limit=2)
    assert a["n_windows"] == 8 and a["mse"] > 0
    assert a == b  # the same fixed sample every time
    assert compress.evaluate(Zeros(), test, batch_size=4)["n_windows"] == len(test)


def test_finetune_lowers_validation_loss_and_leaves_the_input_alone():
    train, val, test = splits()
    model = TinyForecaster()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = compress.finetune(model, train, val, epochs=3, lr=3e-3, batch_size=32, max_train_batches=15,
                              progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    h = tuned.finetune_history
    assert min(e["val"] for e in h[1:]) < h[0]["val"]
    assert compress.evaluate(tuned, test)["mse"] < compress.evaluate(model, test)["mse"]


def test_finetune_is_deterministic():
    train, val, _ = splits()
    m = TinyForecaster()
    x = compress.finetune(m, train, val, epochs=1, lr=1e-3, max_train_batches=5, progress=False)
    y = compress.finetune(m, train, val, epochs=1, lr=1e-3, max_train_batches=5, progress=False)
    assert all(torch.equal(x.state_dict()[k], y.state_dict()[k]) for k in x.state_dict())
    assert not all(torch.equal(x.state_dict()[k], m.state_dict()[k]) for k in x.state_dict())


def test_finetune_keeps_unstructured_zeros():
    train, val, _ = splits()
    small = compress.prune(TinyForecaster(), "magnitude", ratio=0.6, strategy="unstructured",
                           example_inputs=torch.randn(2, 16, 3))
    zeros = {n: (p == 0) for n, p in small.named_parameters() if p.dim() == 2 and (p == 0).any()}
    tuned = compress.finetune(small, train, val, epochs=1, lr=1e-2, max_train_batches=5, progress=False)
    params = dict(tuned.named_parameters())
    assert all(bool((params[n][m] == 0).all()) for n, m in zeros.items())


def test_bad_settings_and_empty_data_are_rejected():
    train, val, _ = splits()
    with pytest.raises(ValueError, match="lr"):
        compress.finetune(TinyForecaster(), train, val, lr=-1)
    with pytest.raises(ValueError, match="epochs"):
        compress.finetune(TinyForecaster(), train, val, epochs=0)
    with pytest.raises(ValueError, match="empty"):
        compress.finetune(TinyForecaster(), train, [], epochs=1)
    with pytest.raises(ValueError, match="targets"):
        compress.evaluate(TinyForecaster(H=5), val)


def test_import_compress_stays_light():
    code = ("import sys, compress; heavy = [m for m in ('transformers', 'tsfm_public', 'chronos', 'momentfm', "
            "'uni2ts', 'timesfm', 'matplotlib', 'pandas') if m in sys.modules]; print(heavy); assert not heavy")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_compress_measure_stays_the_function_after_importing_the_submodule():
    code = ("import compress, torch; from compress.measure import measure; import compress.measure; "
            "m = compress.measure(torch.nn.Linear(2, 2), torch.randn(1, 2), latency=False, memory=False); "
            "assert m.flops == 8, m.flops")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


class Flat(torch.nn.Module):
    """Its forecast does not depend on its one weight: the validation loss never improves."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return torch.zeros(x.shape[0], 4, x.shape[2]) + 0.0 * self.w


@pytest.mark.parametrize("patience", [1, 2, 3])
def test_when_validation_loss_never_improves_then_training_stops_after_patience_epochs(patience):
    train, val, _ = splits()
    tuned = compress.finetune(Flat(), train, val, epochs=10, patience=patience, max_train_batches=1, progress=False)
    # epoch 0 is the check before training; then `patience` epochs without a better loss
    assert [h["epoch"] for h in tuned.finetune_history] == list(range(patience + 1))


def test_patience_must_be_positive():
    train, val, _ = splits()
    with pytest.raises(ValueError, match="patience=0"):
        compress.finetune(Flat(), train, val, patience=0, progress=False)
