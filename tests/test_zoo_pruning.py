"""Every model family x criterion x strategy on size="tiny": the model-zoo test matrix."""
import copy
import warnings

import pytest
import torch

import compress
from compress import graph as G

FAMILIES = compress.models.available()
STRUCTURED_CRITERIA = ["magnitude", "taylor", "activation"]
# families whose package is missing are skipped with the import error as the reason
_cache = {}


def tiny(name):
    if name not in _cache:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _cache[name] = compress.models.load(name, size="tiny")
        except ImportError as e:  # pragma: no cover - depends on the install
            _cache[name] = e
    if isinstance(_cache[name], ImportError):
        pytest.skip(f"{name}: model package not installed ({_cache[name]})")
    return copy.deepcopy(_cache[name]).eval()


def data(model, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = model.example_inputs(4, 3)
    x = torch.randn(x.shape, generator=g)
    with torch.no_grad():
        y = model(x)
    return x, [(torch.randn(x.shape, generator=g), torch.randn(y.shape, generator=g)) for _ in range(n)]


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("crit", STRUCTURED_CRITERIA)
@pytest.mark.parametrize("name", FAMILIES)
def test_structured_half_forecasts_with_fewer_parameters(name, crit):
    model = tiny(name)
    x, cal = data(model)
    with torch.no_grad():
        y0 = model(x)
    small = compress.prune(model, crit, ratio=0.5, example_inputs=x, calibration=cal).eval()
    with torch.no_grad():
        y = small(x)
    assert y.shape == y0.shape and torch.isfinite(y).all()
    assert n_params(small) < 0.9 * n_params(model)
    kinds = {g["kind"] for g in small.compress_pruning[-1]["groups"].values()}
    assert "ffn" in kinds
    assert all(g["after"] < g["before"] for g in small.compress_pruning[-1]["groups"].values() if g["before"] > 1)


@pytest.mark.parametrize("strategy", ["structured", "unstructured"])
@pytest.mark.parametrize("name", FAMILIES)
def test_ratio_zero_leaves_outputs_unchanged(name, strategy):
    model = tiny(name)
    x, _ = data(model)
    small = compress.prune(model, "magnitude", ratio=0.0, strategy=strategy, example_inputs=x).eval()
    with torch.no_grad():
        assert torch.equal(small(x), model(x))


@pytest.mark.parametrize("name", FAMILIES)
def test_unstructured_zeroes_weights_and_keeps_shape(name):
    model = tiny(name)
    x, cal = data(model)
    small = compress.prune(model, "taylor", ratio=0.5, strategy="unstructured", example_inputs=x,
                           calibration=cal).eval()
    assert n_params(small) == n_params(model)
    layers = small.compress_pruning[-1]["layers"]
    assert layers and sum(layers.values()) / len(layers) > 0.2
    with torch.no_grad():
        assert torch.isfinite(small(x)).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_cutting_heads_that_contribute_nothing_leaves_outputs_unchanged(name):
    model = tiny(name)
    x, _ = data(model)
    if hasattr(model, "prepare_for_pruning"):
        model.prepare_for_pruning()
    pg = G.build(model, x)
    heads = pg.of_kind("heads")
    if not heads:
        pytest.skip(f"{name} has no attention heads")
    n = {g.n for g in heads}
    if len(n) != 1 or n == {1}:
        pytest.skip(f"{name}: head counts differ across layers ({sorted(n)})")
    n = n.pop()
    with torch.no_grad():  # head 0 of every attention module contributes nothing
        for g in heads:
            for p, dim, width in g.slices():
                p.narrow(dim, 0, width).zero_()
    small = compress.prune(model, "magnitude", ratio=1.0 / n, units=("heads",), example_inputs=x).eval()
    assert all(g["after"] == n - 1 for g in small.compress_pruning[-1]["groups"].values())
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_pruned_forecaster_saves_and_loads_identically(name, tmp_path):
    model = tiny(name)
    x, cal = data(model)
    small = compress.prune(model, "taylor", ratio=0.5, example_inputs=x, calibration=cal).eval()
    small.save(tmp_path / "m")
    again = compress.models.load(str(tmp_path / "m"))
    with torch.no_grad():
        assert torch.equal(again(x), small(x))
