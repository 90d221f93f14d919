"""The reconstructed forecasting head (compress.finetune.heads) on tiny patch backbones."""
import pytest
import torch

import compress
from compress.data import from_array, synthetic
from compress.finetune.heads import (ReconstructedHead, attach_reconstructed_head, head_param_counts,
                                     supports_reconstructed_head)

FAMILIES = ["patchtst", "moment", "ttm"]


def tiny(family, **kw):
    torch.manual_seed(0)
    return compress.models.load(family, size="tiny", **kw)


def new_head(model):
    return [m for m in model.modules() if isinstance(m, ReconstructedHead)]


@pytest.mark.parametrize("family", FAMILIES)
def test_native_and_longer_horizons_give_that_many_steps(family):
    for factor in (1, 3):
        m = tiny(family)
        x = torch.randn(2, m.context_length, 3)
        h = m.horizon * factor
        assert attach_reconstructed_head(m, horizon=None if factor == 1 else h, inplace=True) is m
        assert m.horizon == h and m(x).shape == (2, h, 3)
        assert len(new_head(m)) == 1 and new_head(m)[0] in list(m.head_modules()[0].modules())


def test_head_is_far_smaller_than_the_linear_head_it_replaces():
    m = tiny("patchtst", d_model=128, num_attention_heads=2)  # d_model / patch_length = 16
    old = sum(p.numel() for p in m.model.head.parameters())
    before = head_param_counts(m, horizon=24)
    m = attach_reconstructed_head(m, horizon=24)
    after = head_param_counts(m)
    new = sum(p.numel() for p in new_head(m)[0].parameters())
    assert after["reconstructed"] == new == before["reconstructed"] and after["attached"]
    assert after["linear"] == before["linear"] == 4 * 128 * 24 + 24
    assert old == 4 * 128 * 8 + 8  # the native 8-step head, counted the same way
    assert new < 0.25 * after["linear"]  # 2,336 vs 12,312 (d_model*k + d_model*p of the conv is most of it here)


@pytest.mark.parametrize("family", FAMILIES)
def test_only_the_head_changes_it_trains_and_gradients_reach_the_backbone(family):
    m = tiny(family)
    for p in m.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    attach_reconstructed_head(m, horizon=2 * m.horizon, inplace=True)
    head = new_head(m)[0]
    head_ids = {id(p) for p in head.parameters()}
    after = m.state_dict()
    name = next(n for n, mod in m.named_modules() if mod is head)
    kept = [k for k in after if not k.startswith(name + ".")]
    assert len(kept) < len(after)
    assert set(kept) <= set(before) and all(torch.equal(after[k], before[k]) for k in kept)
    assert all(p.requires_grad for p in head.parameters())
    assert not any(p.requires_grad for p in m.parameters() if id(p) not in head_ids)
    for p in m.parameters():
        p.requires_grad_(True)
    m.train()
    m(torch.randn(2, m.context_length, 3)).pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    emb = m.protected_modules()[0]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in emb.parameters())


def test_works_after_structured_and_after_layer_pruning():
    m = tiny("patchtst", d_model=32, num_attention_heads=4, ffn_dim=64, num_hidden_layers=3)
    x = torch.randn(8, m.context_length, 3)
    small = compress.prune(m, "magnitude", ratio=0.5, example_inputs=x)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in m.parameters())
    small = attach_reconstructed_head(small, horizon=20)
    assert small(x).shape == (8, 20, 3)
    assert new_head(small)[0].d_model == small.model.head.projection.d_model
    cal = [(x, m(x).detach())]
    shallow = compress.prune(m, compress.criteria.get("dominance"), ratio=1 / 3, strategy="layers", calibration=cal)
    assert len(shallow.model.model.encoder.layers) == 2
    shallow = attach_reconstructed_head(shallow, horizon=12)
    assert shallow(x).shape == (8, 12, 3)


@pytest.mark.parametrize("family", FAMILIES)
def test_saves_and_loads_bit_exactly(family, tmp_path):
    m = tiny(family)
    m = attach_reconstructed_head(m, horizon=3 * m.horizon, rank=4)
    x = torch.randn(2, m.context_length, 3)
    m.save(tmp_path / "s")
    again = compress.models.load(str(tmp_path / "s"))
    assert again.horizon == m.horizon and len(new_head(again)) == 1
    a, b = m.state_dict(), again.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(again(x), m.eval()(x))


def test_unsupported_family_is_a_clear_error():
    m = compress.models.load("transformer", size="tiny")
    assert not supports_reconstructed_head(m)
    assert supports_reconstructed_head(tiny("patchtst"))
    with pytest.raises(ValueError, match="no patch-based flatten-linear head.*supported families: moment, patchtst, ttm"):
        attach_reconstructed_head(m)
    with pytest.raises(ValueError, match="no patch-based"):
        attach_reconstructed_head(torch.nn.Linear(2, 2))


def test_short_training_reduces_loss_on_a_synthetic_series():
    m = tiny("patchtst")
    m = attach_reconstructed_head(m, horizon=24, seed=0)
    arr = synthetic(length=1200, n_channels=2, seed=3, seasonalities=(12,), noise=0.05)
    train, val = (from_array(arr, m.context_length, m.horizon, split=s) for s in ("train", "val"))
    before = compress.evaluate(m, val)["mse"]
    tuned = compress.finetune(m, train, val, epochs=2, lr=3e-3, batch_size=16, max_train_batches=20, progress=False)
    assert isinstance(tuned.model.head.projection, ReconstructedHead) and tuned.horizon == 24
    assert compress.evaluate(tuned, val)["mse"] < 0.8 * before


@pytest.mark.parametrize("family", FAMILIES)
def test_when_not_inplace_then_the_input_model_is_untouched(family):
    m = tiny(family)
    x = torch.randn(2, m.context_length, 3)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    horizon, y = m.horizon, m.eval()(x)
    config = m.model.config.to_dict() if hasattr(m.model.config, "to_dict") else dict(vars(m.model.config))
    new = attach_reconstructed_head(m, horizon=2 * horizon, seed=0)
    assert new is not m and new.horizon == 2 * horizon and len(new_head(new)) == 1
    assert new.eval()(x).shape == (2, 2 * horizon, 3)
    assert not new_head(m) and m.horizon == horizon
    after = m.state_dict()
    assert set(after) == set(state) and all(torch.equal(after[k], state[k]) for k in state)
    assert (m.model.config.to_dict() if hasattr(m.model.config, "to_dict") else dict(vars(m.model.config))) == config
    assert torch.equal(m(x), y)
    assert not any(p is q for p in m.parameters() for q in new.parameters())


def test_when_inplace_then_the_model_itself_gets_the_head():
    m = tiny("patchtst")
    assert attach_reconstructed_head(m, horizon=20, inplace=True) is m
    assert m.horizon == 20 and len(new_head(m)) == 1


def test_finetune_head_options_cannot_override_inplace():
    m = tiny("patchtst")
    data = from_array(synthetic(length=400, n_channels=3, seed=0), m.context_length, m.horizon)
    with pytest.raises(ValueError, match="head_options cannot set 'inplace'"):
        compress.finetune(m, data, data, method="lora", head="reconstructed", head_options={"inplace": False})
