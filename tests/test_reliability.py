"""Hostile-but-realistic inputs to `compress.prune`: nothing silently wrong, nothing left behind."""
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compress
from compress.criteria.base import Criterion
from tiny import TinyForecaster, TorchEncoderForecaster, batches


def x_in(L=16, C=3, B=4, seed=1):
    return torch.randn(B, L, C, generator=torch.Generator().manual_seed(seed))


def tiny_transformer():
    return compress.models.load("transformer", size="tiny")


# --- tied and frozen parameters --------------------------------------------------------
class SharedFFN(TinyForecaster):
    """Block 1's up projection is block 0's (one Parameter in two modules)."""

    def __init__(self):
        super().__init__()
        self.blocks[1].fc1.weight = self.blocks[0].fc1.weight


def test_when_a_parameter_is_shared_by_two_modules_then_it_stays_shared_after_pruning():
    torch.manual_seed(0)
    model = SharedFFN()
    small = compress.prune(model, "magnitude", 0.5, example_inputs=x_in())
    assert small.blocks[1].fc1.weight is small.blocks[0].fc1.weight
    assert small.blocks[0].attn.n_heads == 2  # the rest of the model is still pruned
    small(x_in())


def test_when_parameters_are_frozen_then_they_stay_frozen_after_the_cut():
    torch.manual_seed(0)
    model = TinyForecaster()
    for b in model.blocks:
        b.fc1.requires_grad_(False)
        b.attn.q_proj.requires_grad_(False)
    small = compress.prune(model, "magnitude", 0.5, example_inputs=x_in())
    for b in small.blocks:
        assert b.fc1.out_features == 16 and b.attn.n_heads == 2
        assert not b.fc1.weight.requires_grad and not b.fc1.bias.requires_grad
        assert not b.attn.q_proj.weight.requires_grad
        assert b.fc2.weight.requires_grad and b.attn.k_proj.weight.requires_grad


def test_when_a_torch_attention_is_frozen_then_its_prunable_replacement_is_frozen_too():
    torch.manual_seed(0)
    model = TorchEncoderForecaster()
    for layer in model.encoder.layers:
        layer.self_attn.requires_grad_(False)
    small = compress.prune(model, "magnitude", 0.5, example_inputs=x_in())
    attn = small.encoder.layers[0].self_attn
    assert type(attn) is not nn.MultiheadAttention
    assert not any(p.requires_grad for p in attn.parameters())


# --- numbers, dtypes and devices -------------------------------------------------------
@pytest.mark.parametrize("ratio", [np.float32(0.5), np.float64(0.5), torch.tensor(0.5), np.array(0.5)])
def test_when_ratio_is_a_numpy_scalar_or_0d_tensor_then_it_is_accepted(ratio):
    torch.manual_seed(0)
    model = TinyForecaster()
    ref = compress.prune(model, "magnitude", 0.5, example_inputs=x_in())
    small = compress.prune(model, "magnitude", ratio, example_inputs=x_in())
    assert small.blocks[0].fc1.out_features == ref.blocks[0].fc1.out_features == 16


def test_when_ratio_is_a_vector_then_it_is_a_clear_error():
    with pytest.raises(ValueError, match="ratio"):
        compress.prune(TinyForecaster(), "magnitude", torch.tensor([0.5, 0.2]), example_inputs=x_in())


def test_when_calibration_is_float64_or_integer_then_it_is_converted_to_the_model_dtype():
    model = tiny_transformer()
    L, H = model.context_length, model.horizon
    g = torch.Generator().manual_seed(0)
    cal = [(torch.randn(4, L, 3, generator=g), torch.randn(4, H, 3, generator=g)) for _ in range(2)]
    ref = compress.prune(model, "taylor", 0.5, calibration=cal)
    doubled = compress.prune(model, "taylor", 0.5, calibration=[(a.double(), b.double()) for a, b in cal])
    assert all(torch.equal(p, q) for p, q in zip(ref.state_dict().values(), doubled.state_dict().values()))
    ints = [((a * 10).long(), (b * 10).long()) for a, b in cal]
    small = compress.prune(model, "activation", 0.5, calibration=ints)
    assert small(x_in(L)).dtype == torch.float32


def test_when_calibration_is_on_another_device_then_the_error_says_so():
    model = tiny_transformer()
    cal = [(torch.empty(4, model.context_length, 3, device="meta"), torch.empty(4, model.horizon, 3, device="meta"))]
    with pytest.raises(ValueError, match="calibration batch 0 is on meta but the model is on cpu"):
        compress.prune(model, "taylor", 0.5, calibration=cal)


def test_when_the_forecaster_is_float64_then_its_default_example_input_follows():
    model = tiny_transformer().double()
    assert model.example_inputs().dtype == torch.float64
    small = compress.prune(model, "magnitude", 0.5)
    assert small(torch.randn(2, model.context_length, 3, dtype=torch.float64)).dtype == torch.float64


# --- criterion ties: dead units always go first ----------------------------------------
class DeadAndNegativeFFN(nn.Module):
    """One GELU FFN: channels 0-3 never fire positive but output small negative values
    (live: they move the output); channels 12-15 are dead (all their weights zero)."""

    def __init__(self, d=8, f=16):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.head = nn.Linear(3, d), nn.Linear(16 * d, 4 * 3)
        self.fc1, self.fc2 = nn.Linear(d, f), nn.Linear(f, d)
        with torch.no_grad():
            self.fc1.weight[:4] *= 0.01
            self.fc1.bias[:4] = -2.0  # GELU(-2) ~ -0.045: never > 0, never 0
            self.fc1.weight[12:] = 0
            self.fc1.bias[12:] = 0
            self.fc2.weight[:, 12:] = 0

    def forward(self, x):
        z = self.embed(x)
        z = z + self.fc2(F.gelu(self.fc1(z)))
        return self.head(z.flatten(1)).view(x.shape[0], 4, 3)


@pytest.mark.parametrize("criterion", [n for n in compress.criteria.available()
                                       if "ffn" in compress.criteria.get(n).kinds])  # block criteria: test_layers.py
def test_for_every_criterion_dead_units_are_cut_before_live_ones(criterion):
    model = DeadAndNegativeFFN().eval()
    x = x_in()
    cal = batches(model, n=2)
    small = compress.prune(model, criterion, ratio=0.25, units=("ffn",), example_inputs=x, calibration=cal,
                           validation=cal).eval()
    assert small.fc1.out_features == 12
    with torch.no_grad():  # only the dead channels went: the outputs are exactly as before
        torch.testing.assert_close(small(x), model(x), rtol=0, atol=1e-6)


# --- copies, rollback, names -----------------------------------------------------------
class Uncopyable(TinyForecaster):
    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()


def test_when_the_model_cannot_be_deep_copied_then_the_error_suggests_inplace():
    with pytest.raises(TypeError, match="cannot be deep-copied.*inplace=True"):
        compress.prune(Uncopyable(), "magnitude", 0.5, example_inputs=x_in())
    small = compress.prune(Uncopyable(), "magnitude", 0.5, example_inputs=x_in(), inplace=True)
    assert small.blocks[0].fc1.out_features == 16


class Explodes(Criterion):
    """Scores fine once, then fails (as a bug or a Ctrl-C would, mid-prune)."""

    name = "explodes"

    def __init__(self, error):
        self.error, self.calls = error, 0

    def score(self, group):
        self.calls += 1
        if self.calls > 1:
            raise self.error
        return torch.arange(group.n, dtype=torch.float32)


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.mark.parametrize("error", [RuntimeError("bug"), KeyboardInterrupt()])
@pytest.mark.parametrize("strategy", ["structured", "progressive", "unstructured"])
def test_when_an_inplace_prune_fails_then_the_model_is_as_it_was(strategy, error):
    torch.manual_seed(0)
    model = TorchEncoderForecaster().eval()
    x = x_in()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        y = model(x)
    cal = batches(model, n=2)
    with pytest.raises(type(error)):
        compress.prune(model, Explodes(error), 0.5, strategy=strategy, example_inputs=x, inplace=True,
                       calibration=cal, validation=cal, steps=2)
    assert type(model.encoder.layers[0].self_attn) is nn.MultiheadAttention
    assert _hooks(model) == 0 and not hasattr(model, "compress_pruning")
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model(x), y)


@pytest.mark.parametrize("kw", [dict(ignore=["blocks.0.fc9"]), dict(heads={"blocks.0.atn": 4})])
def test_when_ignore_or_heads_names_an_unknown_module_then_it_is_a_value_error(kw):
    with pytest.raises(ValueError, match="not in the model.*did you mean"):
        compress.prune(TinyForecaster(), "magnitude", 0.5, example_inputs=x_in(), **kw)
