"""Behaviour of compress.prune on tiny models (structured and unstructured)."""
import io
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compress
from compress.graph import GraphBuildError
from tiny import (BrokenForecaster, ConvFFNForecaster, Slow, TinyForecaster, TorchEncoderForecaster,
                  batches, zero_heads)

X = torch.randn(4, 16, 3)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def state_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, "half", True])
def test_when_ratio_is_out_of_range_then_value_error_names_it(ratio):
    with pytest.raises(ValueError, match=re.escape(f"ratio={ratio!r}")):
        compress.prune(TinyForecaster(), "magnitude", ratio=ratio, example_inputs=X)


def test_when_criterion_is_unknown_then_error_lists_available():
    with pytest.raises(ValueError, match="available: activation, dominance, magnitude, random, taylor"):
        compress.prune(TinyForecaster(), "entropy", ratio=0.5, example_inputs=X)


def test_when_strategy_is_unknown_then_error_lists_available():
    with pytest.raises(ValueError, match="structured"):
        compress.prune(TinyForecaster(), "magnitude", ratio=0.5, strategy="diagonal", example_inputs=X)


@pytest.mark.parametrize("crit", ["taylor", "activation"])
def test_when_data_driven_criterion_has_no_calibration_then_error_says_so(crit):
    with pytest.raises(ValueError, match="data-driven: pass calibration"):
        compress.prune(TinyForecaster(), crit, ratio=0.5, example_inputs=X)


def test_when_calibration_is_empty_or_has_nans_then_error():
    with pytest.raises(ValueError, match="calibration is empty"):
        compress.prune(TinyForecaster(), "taylor", ratio=0.5, example_inputs=X, calibration=[])
    bad = batches(None)
    bad[1][0][0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="batch 1 contains NaN"):
        compress.prune(TinyForecaster(), "taylor", ratio=0.5, example_inputs=X, calibration=bad)


@pytest.mark.parametrize("strategy", ["structured", "unstructured"])
@pytest.mark.parametrize("crit", ["magnitude", "taylor", "activation", "random"])
def test_when_not_inplace_then_input_model_is_bit_for_bit_untouched(strategy, crit):
    model = TinyForecaster()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    repr_before = repr(model)
    small = compress.prune(model, crit, ratio=0.5, strategy=strategy, example_inputs=X, calibration=batches(model))
    assert small is not model
    assert repr(model) == repr_before
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_when_inplace_then_the_model_itself_is_pruned():
    model = TinyForecaster()
    out = compress.prune(model, "magnitude", ratio=0.5, example_inputs=X, inplace=True)
    assert out is model and model.blocks[0].fc1.out_features == 16


@pytest.mark.parametrize("factory", [TinyForecaster, TorchEncoderForecaster, ConvFFNForecaster])
@pytest.mark.parametrize("strategy", ["structured", "unstructured"])
def test_when_ratio_is_zero_then_outputs_are_unchanged(factory, strategy):
    model = factory().eval()
    small = compress.prune(model, "magnitude", ratio=0.0, strategy=strategy, example_inputs=X).eval()
    assert torch.equal(small(X), model(X))


@pytest.mark.parametrize("crit", ["magnitude", "taylor", "activation", "random"])
def test_structured_halves_ffn_and_heads_and_keeps_width(crit):
    model = TinyForecaster(d=16, h=4, f=32).eval()
    small = compress.prune(model, crit, ratio=0.5, example_inputs=X, calibration=batches(model)).eval()
    for b in small.blocks:
        assert b.fc1.out_features == 16 and b.fc2.in_features == 16
        assert b.attn.n_heads == 2
        assert b.attn.q_proj.out_features == 8 and b.attn.out_proj.in_features == 8
        assert b.attn.q_proj.in_features == 16 and b.attn.out_proj.out_features == 16  # d_model kept
    assert small.embed.weight.shape == model.embed.weight.shape
    assert small.head.weight.shape == model.head.weight.shape
    assert n_params(small) < 0.8 * n_params(model)
    y = small(X)
    assert y.shape == (4, 4, 3) and torch.isfinite(y).all()


def test_removing_heads_that_contribute_nothing_leaves_outputs_unchanged():
    model = TinyForecaster(h=4).eval()
    for i, b in enumerate(model.blocks):
        zero_heads(b.attn, [i, 3], 4)  # different dead heads per layer
    small = compress.prune(model, "magnitude", ratio=0.5, units=("heads",), example_inputs=X).eval()
    assert [b.attn.n_heads for b in small.blocks] == [2, 2]
    torch.testing.assert_close(small(X), model(X), rtol=0, atol=1e-6)


def test_removing_dead_heads_of_torch_transformer_layers_leaves_outputs_unchanged():
    model = TorchEncoderForecaster(h=4).eval()
    for layer in model.encoder.layers:
        with torch.no_grad():
            d, dh = 16, 4
            for sec in range(3):  # q, k, v rows of heads 1 and 2
                layer.self_attn.in_proj_weight[sec * d + dh: sec * d + 3 * dh] = 0
                layer.self_attn.in_proj_bias[sec * d + dh: sec * d + 3 * dh] = 0
            layer.self_attn.out_proj.weight[:, dh:3 * dh] = 0
    small = compress.prune(model, "magnitude", ratio=0.5, units=("heads",), example_inputs=X).eval()
    for layer in small.encoder.layers:
        assert layer.self_attn.num_heads == 2 and layer.self_attn.q_proj.out_features == 8
    with torch.no_grad():
        torch.testing.assert_close(small(X), model(X), rtol=0, atol=1e-5)


def test_removing_dead_ffn_channels_leaves_outputs_unchanged():
    model = TinyForecaster(f=32, act=F.relu).eval()
    with torch.no_grad():
        for b in model.blocks:
            b.fc1.weight[::2] = 0
            b.fc1.bias[::2] = -1.0  # relu(-1) = 0: these channels never fire
    small = compress.prune(model, "activation", ratio=0.5, units=("ffn",), example_inputs=X,
                           calibration=batches(model)).eval()
    assert all(b.fc1.out_features == 16 for b in small.blocks)
    torch.testing.assert_close(small(X), model(X), rtol=0, atol=1e-6)


def test_conv1d_ffn_is_pruned():
    model = ConvFFNForecaster(f=32).eval()
    small = compress.prune(model, "magnitude", ratio=0.25, example_inputs=X)
    assert small.conv1.out_channels == 24 and small.conv2.in_channels == 24
    assert torch.isfinite(small(X)).all()


def test_head_count_given_through_heads_argument():
    model = TinyForecaster(h=4, head_attr="groups_of_heads")
    with pytest.raises(GraphBuildError, match="heads="):  # unknown attribute: no heads found
        compress.prune(model, "magnitude", ratio=0.5, units=("heads",), example_inputs=X)
    small = compress.prune(model, "magnitude", ratio=0.5, units=("heads",), example_inputs=X,
                           heads={"blocks.0.attn": "groups_of_heads", model.blocks[1].attn: "groups_of_heads"})
    assert [b.attn.groups_of_heads for b in small.blocks] == [2, 2]
    assert torch.isfinite(small(X)).all()


def test_global_scope_ranks_across_layers():
    model = TinyForecaster(f=32).eval()
    with torch.no_grad():  # layer 0's FFN is much weaker than layer 1's
        model.blocks[0].fc1.weight.mul_(0.01)
        model.blocks[0].fc2.weight.mul_(0.01)
    small = compress.prune(model, "magnitude", ratio=0.5, units=("ffn",), scope="global", example_inputs=X)
    widths = [b.fc1.out_features for b in small.blocks]
    assert sum(widths) == 32 and widths[0] < widths[1]
    assert min(widths) >= 1


def test_steps_reach_the_same_size_as_one_step():
    model = TinyForecaster()
    one = compress.prune(model, "taylor", ratio=0.5, example_inputs=X, calibration=batches(model))
    three = compress.prune(model, "taylor", ratio=0.5, steps=3, example_inputs=X, calibration=batches(model))
    assert [b.fc1.out_features for b in three.blocks] == [b.fc1.out_features for b in one.blocks]
    assert [b.attn.n_heads for b in three.blocks] == [b.attn.n_heads for b in one.blocks]
    assert len(three.compress_pruning) == 1 and three.compress_pruning[0]["steps"] == 3


@pytest.mark.parametrize("crit", ["magnitude", "taylor", "activation", "random"])
def test_unstructured_leaves_exact_zeros_and_keeps_embedding_and_head_dense(crit):
    model = TinyForecaster()
    small = compress.prune(model, crit, ratio=0.6, strategy="unstructured", example_inputs=X,
                           calibration=batches(model))
    prunable = [m for n, m in small.named_modules() if isinstance(m, nn.Linear) and n not in ("embed", "head")]
    zeros = sum(int((m.weight == 0).sum()) for m in prunable)
    total = sum(m.weight.numel() for m in prunable)
    assert zeros == round(0.6 * total)
    assert (small.embed.weight != 0).all() and (small.head.weight != 0).all()
    assert n_params(small) == n_params(model)
    assert torch.isfinite(small(X)).all()


def test_unstructured_steps_keep_earlier_zeros():
    model = TinyForecaster()
    small = compress.prune(model, "magnitude", ratio=0.5, steps=2, strategy="unstructured", example_inputs=X)
    once = compress.prune(model, "magnitude", ratio=0.5, strategy="unstructured", example_inputs=X)
    assert state_equal(small, once)  # magnitude ranking is stable across steps


@pytest.mark.parametrize("strategy", ["structured", "unstructured"])
def test_pruned_model_round_trips_through_torch_save(strategy):
    model = TorchEncoderForecaster()
    small = compress.prune(model, "taylor", ratio=0.5, strategy=strategy, example_inputs=X,
                           calibration=batches(model)).eval()
    buf = io.BytesIO()
    torch.save(small, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False).eval()
    with torch.no_grad():
        assert torch.equal(again(X), small(X))


def test_sparse_state_dict_round_trip():
    from compress.strategies import load_sparse_state_dict, sparse_state_dict

    small = compress.prune(TinyForecaster(), "magnitude", ratio=0.7, strategy="unstructured", example_inputs=X)
    sd = sparse_state_dict(small)
    assert any(v.is_sparse for v in sd.values())
    again = load_sparse_state_dict(TinyForecaster(), sd)
    assert state_equal(again, small)


def test_untraceable_model_error_names_module_and_fix():
    with pytest.raises(GraphBuildError, match=r"module 'bad'.*frobnicate.*ignore="):
        compress.prune(BrokenForecaster(), "magnitude", ratio=0.5, example_inputs=torch.randn(2, 5, 3))


def test_graph_building_past_time_limit_is_an_error():
    model = nn.Sequential(nn.Linear(3, 3), Slow())
    with pytest.raises(GraphBuildError, match="longer than 1s"):
        compress.prune(model, "magnitude", ratio=0.5, example_inputs=torch.randn(2, 3), time_limit_s=1)


def test_model_without_prunable_units_gets_a_clear_error():
    with pytest.raises(GraphBuildError, match="no prunable"):
        compress.prune(nn.Sequential(nn.Linear(3, 4)), "magnitude", ratio=0.5, example_inputs=torch.randn(2, 3))


def test_ignore_keeps_a_layer_unpruned():
    model = TinyForecaster()
    small = compress.prune(model, "magnitude", ratio=0.5, example_inputs=X, ignore=["blocks.0.fc1", "blocks.1.attn"])
    assert small.blocks[0].fc1.out_features == 32 and small.blocks[1].fc1.out_features == 16
    assert small.blocks[1].attn.n_heads == 4 and small.blocks[0].attn.n_heads == 2
