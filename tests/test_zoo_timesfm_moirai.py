"""Structured pruning of TimesFM 2.5 and Moirai: whole heads and FFN channels."""
import io

import pytest
import torch

import compress

PACKAGES = {"timesfm": "transformers.models.timesfm2_5", "moirai": "uni2ts"}
FAMILIES = sorted(PACKAGES)


def _load(family, **config):
    pytest.importorskip(PACKAGES[family])
    return compress.models.load(family, size="tiny", **config)


def _attention_layers(model, family):
    if family == "timesfm":
        from transformers.models.timesfm2_5.modeling_timesfm2_5 import TimesFm2_5Attention as cls
    else:
        from uni2ts.module.attention import GroupedQueryAttention as cls
    return [m for m in model.modules() if isinstance(m, cls)]


def _out_proj(attn):
    return attn.o_proj if hasattr(attn, "o_proj") else attn.out_proj


def _calibration(model, x, n=2):
    with torch.no_grad():
        y = model(x)
    return [(torch.randn_like(x), torch.randn_like(y)) for _ in range(n)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("criterion", ["magnitude", "taylor", "activation"])
def test_half_of_heads_and_ffn_go_and_the_forecast_stays_finite(family, criterion):
    m = _load(family)
    x = m.example_inputs(4, 3)
    with torch.no_grad():
        y0 = m(x)
    small = compress.prune(m, criterion, ratio=0.5, example_inputs=x, calibration=_calibration(m, x))
    with torch.no_grad():
        y = small.eval()(x)
    assert y.shape == y0.shape and torch.isfinite(y).all()
    n0, n1 = (sum(p.numel() for p in mm.parameters()) for mm in (m, small))
    assert n1 < 0.9 * n0
    groups = small.compress_pruning[-1]["groups"].values()
    kinds = {g["kind"] for g in groups}
    assert kinds == {"heads", "ffn"}
    for g in groups:
        assert g["after"] == max(1, round(g["before"] * 0.5))
    # the tracing hooks are gone and the pruned model pickles (Forecaster.save)
    assert not any(h.__name__ in ("_opaque_hook", "_opaque_output") for mod in small.modules() for h in mod._forward_hooks.values())
    torch.save(small, io.BytesIO())


@pytest.mark.parametrize("family", FAMILIES)
def test_ratio_zero_returns_the_same_forecast(family):
    m = _load(family)
    x = m.example_inputs(2, 3)
    same = compress.prune(m, "magnitude", ratio=0.0, example_inputs=x)
    with torch.no_grad():
        assert torch.equal(same(x), m(x))


@pytest.mark.parametrize("family,config,zero,ratio", [
    ("timesfm", {}, (1, 2), 0.5),                    # 4 heads of head_dim 8
    ("moirai", {}, (1,), 0.5),                        # d_model 128: 2 heads of 64
    ("moirai", {"d_model": 256}, (1, 2), 0.5),        # 4 heads, binary bias table per head
])
def test_pruning_zeroed_heads_matches_the_zeroed_model(family, config, zero, ratio):
    m = _load(family, **config)
    attn = _attention_layers(m, family)
    assert attn
    with torch.no_grad():
        for a in attn:
            n = a.q_proj.out_features // a.head_dim
            for h in zero:
                rows = slice(h * a.head_dim, (h + 1) * a.head_dim)
                for lin in (a.q_proj, a.k_proj, a.v_proj):
                    lin.weight[rows] = 0
                    if lin.bias is not None:
                        lin.bias[rows] = 0
                _out_proj(a).weight[:, rows] = 0
    x = m.example_inputs(2, 3)
    with torch.no_grad():
        y0 = m(x)
    small = compress.prune(m, "magnitude", ratio=ratio, example_inputs=x, units=("heads",))
    groups = small.compress_pruning[-1]["groups"].values()
    assert {g["kind"] for g in groups} == {"heads"} and len(groups) == len(attn)
    for a in _attention_layers(small, family):
        kept = n - len(zero)
        assert a.q_proj.out_features == a.k_proj.out_features == a.v_proj.out_features == kept * a.head_dim
        assert _out_proj(a).in_features == kept * a.head_dim
        assert a.num_heads == kept
        if family == "moirai":
            assert a.num_groups == kept and a.var_attn_bias.num_heads == kept
            assert a.var_attn_bias.emb.weight.shape == (2, kept)
    with torch.no_grad():
        y = small(x)
    assert torch.allclose(y, y0, atol=1e-5), (y - y0).abs().max()


def test_moirai_bias_columns_of_the_kept_heads_survive():
    m = _load("moirai", d_model=256)
    attn = _attention_layers(m, "moirai")
    with torch.no_grad():
        for a in attn:
            for h in (0, 3):
                rows = slice(h * a.head_dim, (h + 1) * a.head_dim)
                a.v_proj.weight[rows] = 0
                a.q_proj.weight[rows] = 0
                a.k_proj.weight[rows] = 0
                a.out_proj.weight[:, rows] = 0
    before = [a.var_attn_bias.emb.weight[:, [1, 2]].clone() for a in attn]
    x = m.example_inputs(2, 2)
    small = compress.prune(m, "magnitude", ratio=0.5, example_inputs=x, units=("heads",))
    after = [a.var_attn_bias.emb.weight for a in _attention_layers(small, "moirai")]
    for b, a in zip(before, after):
        assert torch.equal(a, b)


def test_timesfm_config_follows_uniform_head_counts():
    m = _load("timesfm")
    x = m.example_inputs(2, 3)
    small = compress.prune(m, "magnitude", ratio=0.5, example_inputs=x, units=("heads",))
    assert small.model.config.num_attention_heads == 2
    assert m.model.config.num_attention_heads == 4  # the original is untouched (prune copies)
    assert small.sizes()["model.model.layers.0.self_attn"] == {"heads": 2}
