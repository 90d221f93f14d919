"""Conformance suite every registered criterion passes, plus each criterion's own maths."""
import pytest
import torch
import torch.nn.functional as F

import compress
from compress import graph as G
from compress.criteria import WeightGroup
from compress.strategies.unstructured import prunable_weights
from tiny import TinyForecaster, batches, zero_heads

X = torch.randn(4, 16, 3)
# the conformance suite on channel / head / weight units; block criteria (dominance) have
# their own in test_layers.py
ALL = [n for n in compress.criteria.available() if "ffn" in compress.criteria.get(n).kinds]


def traced(model):
    return G.build(model, X)


def calibrated(name, model, groups, **kw):
    crit = compress.criteria.get(name, **kw)
    return crit.calibrate(model, batches(model) if crit.requires_data else None, groups=groups)


def test_registry_lists_the_criteria():
    assert compress.criteria.available() == ["activation", "dominance", "magnitude", "random", "taylor"]
    assert ALL == ["activation", "magnitude", "random", "taylor"]


@pytest.mark.parametrize("name", ALL)
def test_scores_are_one_finite_value_per_unit(name):
    model = TinyForecaster().eval()
    pg = traced(model)
    weights = prunable_weights(model, pg.protected, ())
    groups = pg.groups + weights
    crit = calibrated(name, model, groups)
    assert {g.kind for g in pg.groups} == {"ffn", "heads"}
    for g in groups:
        s = crit.score(g)
        assert s.dim() == 1 and s.numel() == g.n and torch.isfinite(s).all(), g.name


@pytest.mark.parametrize("name", ALL)
def test_scores_are_deterministic(name):
    model = TinyForecaster().eval()
    pg = traced(model)
    a = calibrated(name, model, pg.groups)
    sa = [a.score(g) for g in pg.groups]
    b = calibrated(name, model, pg.groups)
    sb = [b.score(g) for g in pg.groups]
    assert all(torch.equal(x, y) for x, y in zip(sa, sb))


@pytest.mark.parametrize("name", ALL)
def test_calibration_does_not_change_the_model(name):
    model = TinyForecaster().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pg = traced(model)
    calibrated(name, model, pg.groups + prunable_weights(model, pg.protected, ()))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert not model.training


@pytest.mark.parametrize("name", [n for n in ALL if compress.criteria.get(n).requires_data])
def test_data_driven_criteria_refuse_to_score_without_data(name):
    crit = compress.criteria.get(name)
    with pytest.raises(ValueError, match="data-driven"):
        crit.calibrate(TinyForecaster(), None, groups=[])


@pytest.mark.parametrize("name", [n for n in ALL if n != "random"])
def test_dead_units_score_lowest(name):
    model = TinyForecaster(act=F.relu).eval()
    with torch.no_grad():
        for b in model.blocks:
            b.fc1.weight[5] = 0
            b.fc1.bias[5] = 0.0
            b.fc2.weight[:, 5] = 0
            zero_heads(b.attn, [2], 4)
    pg = traced(model)
    crit = calibrated(name, model, pg.groups, **({"order": 1} if name == "taylor" else {}))
    for g in pg.groups:
        s = crit.score(g)
        dead = 5 if g.kind == "ffn" else 2
        assert s[dead] == s.min(), (name, g.name, s)


def test_magnitude_is_the_lp_norm_over_the_whole_group():
    model = TinyForecaster().eval()
    pg = traced(model)
    g = next(g for g in pg.groups if g.name == "blocks.0.fc1.ffn")
    b = model.blocks[0]
    for p in (1, 2):
        s = compress.criteria.get("magnitude", p=p).score(g)
        j = 7
        parts = torch.cat([b.fc1.weight[j], b.fc1.bias[j:j + 1], b.fc2.weight[:, j]])
        torch.testing.assert_close(s[j], parts.norm(p=p).detach())
    h = next(g for g in pg.groups if g.name == "blocks.1.attn.heads")
    a = model.blocks[1].attn
    s = compress.criteria.get("magnitude", p=1).score(h)
    sl = slice(4, 8)  # head 1, head_dim 4
    ref = sum(lin.weight[sl].abs().sum() + lin.bias[sl].abs().sum() for lin in (a.q_proj, a.k_proj, a.v_proj))
    ref = ref + a.out_proj.weight[:, sl].abs().sum()
    torch.testing.assert_close(s[1], ref.detach())


def test_activation_probability_is_the_share_of_positive_tokens():
    model = TinyForecaster(act=F.relu).eval()
    pg = traced(model)
    g = next(g for g in pg.groups if g.name == "blocks.0.fc1.ffn")
    cal = batches(model)
    crit = compress.criteria.get("activation").calibrate(model, cal, groups=[g])
    seen = []
    h = model.blocks[0].fc2.register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, 32)))
    with torch.no_grad():
        for x, _ in cal:
            model(x)
    h.remove()
    tokens = torch.cat(seen)
    ref = (tokens > 0).float().mean(0)
    # plus the tie-break term: mean |activation| squashed into [0, 1/(2T)), T tokens
    extra = crit.score(g) - ref
    mag = tokens.abs().mean(0)
    torch.testing.assert_close(extra, 0.5 / tokens.shape[0] * mag / (1 + mag))


def _brute_force_taylor(model, g, cal, first_only=False, loss_fn=F.mse_loss):
    """Σ_samples (-g_s + g_s²/2) with g_s from one backward per sample through a unit mask at the site."""
    ref = torch.zeros(g.n)
    site = g.site
    cdim = 1 if isinstance(site, torch.nn.Conv1d) else -1
    for x, y in cal:
        for i in range(x.shape[0]):
            m = torch.ones(g.n, requires_grad=True)

            def hook(mod, a):
                full = m.repeat_interleave(g.width)
                shape = [1] * a[0].dim()
                shape[cdim] = -1
                return (a[0] * full.view(shape),) + tuple(a[1:])

            h = site.register_forward_pre_hook(hook)
            try:
                out = model(x[i:i + 1])
                out = out if isinstance(out, torch.Tensor) else G._first_tensor(out)
                loss = loss_fn(out, y[i:i + 1])
            finally:
                h.remove()
            (gm,) = torch.autograd.grad(loss, m)
            ref += -gm if first_only else -gm + gm.pow(2) / 2
    return ref


def test_taylor_second_order_matches_per_sample_brute_force():
    model = TinyForecaster().eval()
    pg = traced(model)
    g = next(g for g in pg.groups if g.name == "blocks.1.fc1.ffn")
    cal = batches(model, n=2, B=3)
    crit = compress.criteria.get("taylor", order=2).calibrate(model, cal, groups=[g])
    # brute force: one backward per sample through a per-channel mask on fc2's input
    ref = torch.zeros(32)
    fc2 = model.blocks[1].fc2
    for x, y in cal:
        for i in range(x.shape[0]):
            m = torch.ones(32, requires_grad=True)
            h = fc2.register_forward_pre_hook(lambda mod, a: (a[0] * m,))
            loss = F.mse_loss(model(x[i:i + 1]), y[i:i + 1])
            h.remove()
            (gm,) = torch.autograd.grad(loss, m)
            ref += -gm + gm.pow(2) / 2
    torch.testing.assert_close(crit.score(g), ref, rtol=1e-4, atol=1e-7)


def test_taylor_first_order_is_abs_sum_of_grad_times_weight():
    model = TinyForecaster().eval()
    pg = traced(model)
    g = next(g for g in pg.groups if g.name == "blocks.0.fc1.ffn")
    cal = batches(model, n=2)
    crit = compress.criteria.get("taylor").calibrate(model, cal, groups=[g])
    b = model.blocks[0]
    total = torch.zeros(32)
    for x, y in cal:
        model.zero_grad()
        F.mse_loss(model(x), y).backward()
        total += (b.fc1.weight.grad * b.fc1.weight).sum(1) + b.fc1.bias.grad * b.fc1.bias
        total += (b.fc2.weight.grad * b.fc2.weight).sum(0)
    model.zero_grad(set_to_none=True)
    torch.testing.assert_close(crit.score(g), total.abs().detach(), rtol=1e-4, atol=1e-8)


def test_taylor_ema_is_bias_corrected_and_weights_the_newest_batch_most():
    model = TinyForecaster().eval()
    g = traced(model).groups[0]
    cal = batches(model, n=3)
    single = [compress.criteria.get("taylor", order=2).calibrate(model, [b], groups=[g]).score(g) for b in cal]
    beta = 0.75
    ema = compress.criteria.get("taylor", order=2, ema=beta).calibrate(model, cal, groups=[g]).score(g)
    w = [(1 - beta) * beta ** (2 - i) / (1 - beta ** 3) for i in range(3)]
    assert w[2] > w[1] > w[0] and abs(sum(w) - 1) < 1e-9
    torch.testing.assert_close(ema, sum(wi * si for wi, si in zip(w, single)))
    total = compress.criteria.get("taylor", order=2).calibrate(model, cal, groups=[g]).score(g)
    torch.testing.assert_close(total, sum(single))


def test_taylor_ema_state_is_carried_across_calibrate_calls_on_the_same_groups():
    model = TinyForecaster().eval()
    g = traced(model).groups[0]
    cal = batches(model, n=4)
    once = compress.criteria.get("taylor", order=2, ema=0.9).calibrate(model, cal, groups=[g]).score(g)
    crit = compress.criteria.get("taylor", order=2, ema=0.9)
    crit.calibrate(model, cal[:1], groups=[g])
    rounds = crit.calibrate(model, cal[1:], groups=[g]).score(g)  # round 2 continues round 1's average
    torch.testing.assert_close(rounds, once)
    fresh = crit.reset().calibrate(model, cal[1:], groups=[g]).score(g)
    alone = compress.criteria.get("taylor", order=2, ema=0.9).calibrate(model, cal[1:], groups=[g]).score(g)
    torch.testing.assert_close(fresh, alone)
    assert not torch.allclose(fresh, once)


@pytest.mark.parametrize("name", ["taylor", "activation"])
def test_scores_are_never_served_for_a_group_that_was_not_calibrated(name):
    model = TinyForecaster().eval()
    cal = batches(model)
    crit = compress.criteria.get(name)
    g = traced(model).groups[0]
    crit.calibrate(model, cal, groups=[g])
    old_id = id(g)
    del g
    for _ in range(1000):  # a new group object at the freed one's address
        g2 = traced(TinyForecaster()).groups[0] if _ == 0 else type(g2)(**{f: getattr(g2, f) for f in
                                                                        g2.__dataclass_fields__})
        if id(g2) == old_id:
            break
    with pytest.raises(RuntimeError, match="not calibrated"):
        crit.score(g2)


def test_taylor_second_order_with_the_authors_batch_mean_gradients():
    model = TinyForecaster().eval()
    g = next(g for g in traced(model).groups if g.kind == "ffn")
    cal = batches(model, n=1, B=4)
    ours = compress.criteria.get("taylor", order=2).calibrate(model, cal, groups=[g]).score(g)
    theirs = compress.criteria.get("taylor", order=2, grad_scale="batch_mean").calibrate(model, cal, groups=[g]).score(g)
    # per-sample gradients gs (of each sample's own loss): ours = Σ(-gs + gs²/2), theirs = Σ(-gs/B + gs²/(2B²))
    fo = _brute_force_taylor(model, g, cal, first_only=True)
    so = ours - fo
    torch.testing.assert_close(theirs, fo / 4 + so / 16, rtol=1e-4, atol=1e-7)


def test_activation_for_single_weights_is_weight_times_input_norm():
    model = TinyForecaster().eval()
    fc1 = model.blocks[0].fc1
    wg = WeightGroup("blocks.0.fc1", fc1)
    cal = batches(model)
    crit = compress.criteria.get("activation").calibrate(model, cal, groups=[wg])
    seen = []
    h = fc1.register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, 16)))
    with torch.no_grad():
        for x, _ in cal:
            model(x)
    h.remove()
    ref = fc1.weight.detach().abs() * torch.cat(seen).norm(dim=0)
    torch.testing.assert_close(crit.score(wg), ref.flatten(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kw", [{"p": 3}, {"order": 3}, {"ema": 1.0}])
def test_bad_hyper_parameters_are_rejected(kw):
    name = "magnitude" if "p" in kw else "taylor"
    with pytest.raises(ValueError):
        compress.criteria.get(name, **kw)


def test_random_is_reproducible_by_seed():
    g = WeightGroup("w", torch.nn.Linear(4, 4))
    a = compress.criteria.get("random", seed=1).calibrate(None).score(g)
    b = compress.criteria.get("random", seed=1).calibrate(None).score(g)
    c = compress.criteria.get("random", seed=2).calibrate(None).score(g)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("order", [1, 2])
def test_taylor_micro_batches_give_the_same_unit_scores(order):
    model = TinyForecaster().eval()
    pg = traced(model)
    cal = batches(model, n=2, B=4)
    whole = compress.criteria.get("taylor", order=order).calibrate(model, cal, groups=pg.groups)
    sliced = compress.criteria.get("taylor", order=order, micro_batch=1).calibrate(model, cal, groups=pg.groups)
    for g in pg.groups:
        torch.testing.assert_close(sliced.score(g), whole.score(g), rtol=1e-4, atol=1e-7)
