"""The five classic long-horizon forecasters (transformer, informer, autoformer, fedformer,
crossformer): shapes, determinism, trainability, and the head-removal contract the
pruning engine relies on."""
import copy
import json
import signal
import time
import warnings

import pytest
import torch
from torch import nn

from compress.models import base as models_base
from compress.models._blocks import AttentionLayer, circular_pad

FAMILIES = ["transformer", "informer", "autoformer", "fedformer", "crossformer"]


def build(name, size="tiny", **config):
    torch.manual_seed(0)
    return models_base.load(name, size=size, **config)


def batch(model, batch_size=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, model.context_length, model.n_channels, generator=g)


def attention_layers(model):
    return [m for m in model.modules() if isinstance(m, AttentionLayer)]


def _keep(size, n_heads, head):
    per = size // n_heads
    return torch.tensor([i for i in range(size) if i // per != head])


def zero_head(layer, head):
    per = layer.out_projection.in_features // layer.n_heads
    with torch.no_grad():
        layer.out_projection.weight[:, head * per:(head + 1) * per] = 0.0


def remove_head(layer, head):
    """Remove one whole head by hand: rows of q/k/v, columns of out, per-head blocks."""
    H = layer.n_heads
    for lin in layer.in_projections():
        keep = _keep(lin.out_features, H, head)
        lin.weight = nn.Parameter(lin.weight.detach()[keep].clone())
        if lin.bias is not None:
            lin.bias = nn.Parameter(lin.bias.detach()[keep].clone())
        lin.out_features = len(keep)
    out = layer.out_projection
    keep = _keep(out.in_features, H, head)
    out.weight = nn.Parameter(out.weight.detach()[:, keep].clone())
    out.in_features = len(keep)
    for owner, name, dim in layer.per_head_parameters():
        p = getattr(owner, name)
        assert p.shape[dim] % H == 0
        setattr(owner, name, nn.Parameter(p.detach().index_select(dim, _keep(p.shape[dim], H, head)).clone()))
    layer.n_heads = H - 1


@pytest.mark.parametrize("name", FAMILIES)
def test_when_tiny_model_forecasts_then_shape_is_batch_horizon_channels_and_finite(name):
    model = build(name).eval()
    assert (model.context_length, model.horizon, model.n_channels) == (32, 8, 3)
    y = model(batch(model))
    assert y.shape == (4, 8, 3)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_when_horizon_and_channels_are_overridden_then_output_follows(name):
    model = build(name, horizon=12, n_channels=5).eval()
    assert model.config["horizon"] == 12 and model.config["n_channels"] == 5
    assert model(batch(model, 2)).shape == (2, 12, 5)
    assert build(name, pred_len=12).horizon == 12  # reference-code alias


@pytest.mark.parametrize("name", FAMILIES)
def test_when_in_eval_mode_then_forecasts_are_deterministic(name):
    model = build(name).eval()
    x = batch(model)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", FAMILIES)
def test_when_trained_on_a_fixed_batch_then_mse_goes_down_and_every_parameter_gets_a_gradient(name):
    model = build(name).eval()  # eval: no dropout, so the loss is a fixed function of the weights
    x = batch(model, 8)
    target = torch.randn(8, model.horizon, model.n_channels, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for step in range(5):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), target)
        loss.backward()
        if step == 0:
            unused = {f"{n}.{proj}.{w}" for n, m in model.named_modules() if isinstance(m, AttentionLayer)
                      for proj in m.unused_projections for w in ("weight", "bias")}
            no_grad = {n for n, p in model.named_parameters() if p.grad is None}
            assert no_grad == unused, f"parameters no gradient reaches: {sorted(no_grad - unused)}"
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = nn.functional.mse_loss(model(x), target).item()
    assert final < losses[0]


VARIANTS = [(name, {}, 0) for name in FAMILIES] + [
    ("transformer", dict(n_heads=4), 2),
    ("informer", dict(n_heads=4), 3),
    ("informer", dict(attn="full", distil=False), 0),
    ("autoformer", dict(n_heads=4, positional=True), 1),
    ("fedformer", dict(n_heads=4, mode_select="low", cross_activation="softmax"), 2),
    ("crossformer", dict(n_heads=4, context_length=36, horizon=10, e_layers=3), 1),  # padded input and merging
]


@pytest.mark.parametrize("name,config,head", VARIANTS)
def test_when_a_head_is_removed_everywhere_then_outputs_equal_the_model_with_those_heads_zeroed(name, config, head):
    model = build(name, **config).eval()
    x = batch(model)
    layers = attention_layers(model)
    assert layers, "every family has AttentionLayers"
    n_heads = layers[0].n_heads
    with torch.no_grad():
        before = model(x)
    assert before.shape == (4, model.horizon, model.n_channels)
    zeroed = copy.deepcopy(model)
    for layer in attention_layers(zeroed):
        zero_head(layer, head)
    pruned = copy.deepcopy(zeroed)
    for layer in attention_layers(pruned):
        remove_head(layer, head)
    with torch.no_grad():
        expected, got = zeroed(x), pruned(x)
    assert all(layer.n_heads == n_heads - 1 for layer in attention_layers(pruned))
    assert not torch.allclose(before, expected, atol=1e-4)  # the removed heads did matter
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def test_when_fedformer_is_built_then_its_fourier_weights_have_one_real_block_per_head():
    model = build("fedformer", n_heads=4)
    blocks = [layer.per_head_parameters() for layer in attention_layers(model)]
    assert blocks and all(blocks)
    for entries in blocks:
        for owner, attr, dim in entries:
            p = getattr(owner, attr)
            assert not p.is_complex() and p.shape[-1] == 2
            assert p.shape[dim] == 4
    # Fourier self-attention reads only the queries, cross-attention no values: declared unused
    enc = model.model.encoder.attn_layers[0].attention
    assert enc.unused_projections == ("key_projection", "value_projection")
    assert model.model.decoder.layers[0].cross_attention.unused_projections == ("value_projection",)
    assert all(not layer.unused_projections for name in FAMILIES if name != "fedformer"
               for layer in attention_layers(build(name)))


@pytest.mark.parametrize("name", FAMILIES)
def test_when_asked_for_protected_modules_then_embeddings_and_heads_are_named(name):
    model = build(name)
    protected = model.protected_modules()
    owned = {id(m) for m in model.modules()}
    assert len(protected) >= 2 and all(id(m) in owned for m in protected)
    assert all(isinstance(m, (nn.Linear, nn.Conv1d)) for m in protected)
    out_dims = {m.out_features if isinstance(m, nn.Linear) else m.out_channels for m in protected}
    assert out_dims & {model.n_channels, model.config.get("seg_len")}  # a forecasting head
    json.dumps(model.config)


@pytest.mark.parametrize("name", FAMILIES)
def test_when_built_from_a_saved_state_dict_then_forecasts_match(name, tmp_path):
    model = build(name).eval()
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    torch.manual_seed(123)
    again = models_base.load(name, pretrained=str(path), size="tiny").eval()
    x = batch(model)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


@pytest.mark.parametrize("name", FAMILIES)
def test_when_in_training_mode_then_forecasts_are_finite(name):
    model = build(name).train()  # ProbSparse sampling and Auto-Correlation take their training paths
    y = model(batch(model))
    assert y.shape == (4, 8, 3) and torch.isfinite(y).all()


def test_circular_pad_equals_torch_circular_padding():
    x = torch.randn(2, 5, 7)
    torch.testing.assert_close(circular_pad(x, 1), nn.functional.pad(x, (1, 1), mode="circular"))
    torch.testing.assert_close(circular_pad(x, 3), nn.functional.pad(x, (3, 3), mode="circular"))


@pytest.mark.parametrize("name", FAMILIES)
def test_when_torch_pruning_groups_the_model_then_it_finishes_in_seconds(name):
    tp = pytest.importorskip("torch_pruning")
    model = build(name).eval()

    def timeout(*_):
        raise TimeoutError(f"torch-pruning grouping of {name} did not finish")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(20)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=model.example_inputs(2))
            groups = list(graph.get_all_groups(ignored_layers=model.protected_modules()))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert groups


def test_when_size_or_field_is_unknown_then_build_fails_clearly():
    with pytest.raises(ValueError):
        models_base.load("informer", size="huge")
    with pytest.raises(ValueError):
        models_base.load("informer", size="tiny", not_a_field=1)
    with pytest.raises(ValueError):
        models_base.load("transformer", size="tiny", d_model=15)


def test_classic_families_are_registered():
    assert set(FAMILIES) <= set(models_base.available())


@pytest.mark.parametrize("name", FAMILIES)
def test_small_reference_config_builds_and_forecasts_in_seconds(name):
    start = time.perf_counter()
    model = build(name, size="small").eval()
    with torch.no_grad():
        y = model(torch.randn(2, model.context_length, model.n_channels))
    elapsed = time.perf_counter() - start
    assert y.shape == (2, model.horizon, model.n_channels) and torch.isfinite(y).all()
    assert elapsed < 10.0, f"{name} small took {elapsed:.1f}s"
    n_small = sum(p.numel() for p in model.parameters())
    n_tiny = sum(p.numel() for p in build(name).parameters())
    print(f"\n{name}: small {n_small:,d} params, tiny {n_tiny:,d} params, small build+forward {elapsed:.2f}s")
    assert n_small > 0 and n_tiny > 0
