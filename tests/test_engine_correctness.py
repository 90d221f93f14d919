"""The cuts are provably right (issue 9): structured pruning removes exactly the lowest-scored
units, and the pruned model computes what the original computes with those units zeroed in
place — for every criterion, both scopes, several steps, Conv1d and gated FFNs and every
model family. A mutation check runs the key checks against a wrong engine (ranking flipped,
wrong consumer columns cut) and requires them to fail."""
import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
import torch_pruning
from torch import nn

import compress
from compress import graph as G
from compress.graph import checks as checks_module
from compress.graph.kinds import FFN
from compress.strategies import structured as structured_module
from compress.strategies.base import checked_scores
from tiny import (ConcatFFNForecaster, ConvFFNForecaster, FusedGLUForecaster, GatedFFNForecaster, HandAttention,
                  TinyForecaster, TorchEncoderForecaster, batches, zero_heads)

X = torch.randn(4, 16, 3)
MODELS = [TinyForecaster, TorchEncoderForecaster, ConvFFNForecaster, GatedFFNForecaster]
CRITERIA = {"magnitude": {}, "taylor": {"order": 2}, "activation": {}, "random": {"seed": 3}}


def zeroed_in_place(model: nn.Module, record: dict) -> nn.Module:
    """A copy of the unpruned `model` whose removed units are zeroed where they are read:
    the input columns of every site (consumer / output projection) of each group."""
    ref = copy.deepcopy(model)
    mods = dict(ref.named_modules())
    with torch.no_grad():
        for g in record["groups"].values():
            cols = [u * g["width"] + j for u in g["removed"] for j in range(g["width"])]
            for site in g["sites"]:
                m = mods[site]
                assert isinstance(m, (nn.Linear, nn.Conv1d)), f"{site}: {type(m).__name__}"
                m.weight[:, cols] = 0
    return ref


def check_pruned_equals_zeroed(model, small, xs):
    rec = small.compress_pruning[-1]
    assert sum(len(g["removed"]) for g in rec["groups"].values()) > 0, rec["groups"]
    ref = zeroed_in_place(model, rec).eval()
    small.eval()
    with torch.no_grad():
        for x in xs:
            y, y_ref = small(x), ref(x)
            torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5 * float(y_ref.abs().max()) + 1e-6)


def independent_scores(model, name, kw, cal):
    """Scores of the unpruned model's groups by a fresh criterion (name -> [n])."""
    traced = copy.deepcopy(model)
    pg = G.build(traced, X)
    crit = compress.criteria.get(name, **kw)
    crit.calibrate(traced, cal, groups=pg.groups)
    return {g.name: checked_scores(crit, g) for g in pg.groups}


def check_removed_are_lowest(model, small, name, kw, cal, scope):
    rec = small.compress_pruning[-1]["groups"]
    scores = independent_scores(model, name, kw, cal)
    assert set(scores) == set(rec)
    if scope == "layer":
        for gname, g in rec.items():
            k = len(g["removed"])
            assert k > 0 or g["before"] == 1
            lowest = torch.argsort(scores[gname], stable=True)[:k].tolist()
            assert sorted(lowest) == g["removed"], gname
        return
    for kind in {g["kind"] for g in rec.values()}:
        pool = sorted((float(scores[n][i]), n, i) for n, g in rec.items() if g["kind"] == kind
                      for i in range(g["before"]))
        k = sum(len(g["removed"]) for g in rec.values() if g["kind"] == kind)
        assert k > 0
        left, lowest = {n: g["before"] for n, g in rec.items()}, set()
        for _, n, i in pool:  # the k lowest in one pool, skipping a layer's last unit (never emptied)
            if len(lowest) == k:
                break
            if left[n] > 1:
                lowest.add((n, i))
                left[n] -= 1
        got = {(n, i) for n, g in rec.items() if g["kind"] == kind for i in g["removed"]}
        assert got == lowest, kind


def prune(model, name, kw, cal, scope="layer", steps=1, ratio=0.5, **more):
    return compress.prune(model, compress.criteria.get(name, **kw), ratio=ratio, example_inputs=X,
                          calibration=cal, scope=scope, steps=steps, **more)


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("name", sorted(CRITERIA))
@pytest.mark.parametrize("Model", MODELS)
def test_structured_removes_exactly_the_lowest_scored_units(Model, name, scope):
    model = Model().eval()
    cal = batches(model, 2)
    small = prune(model, name, CRITERIA[name], cal, scope=scope)
    check_removed_are_lowest(model, small, name, CRITERIA[name], cal, scope)


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("name", sorted(CRITERIA))
@pytest.mark.parametrize("Model", MODELS)
def test_pruned_model_equals_the_original_with_its_removed_units_zeroed(Model, name, scope):
    model = Model().eval()
    cal = batches(model, 2)
    small = prune(model, name, CRITERIA[name], cal, scope=scope, steps=2, ratio=0.6)
    check_pruned_equals_zeroed(model, small, [x for x, _ in batches(model, 2, seed=5)])


FAMILIES = compress.models.available()


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_prunes_to_its_original_with_the_removed_units_zeroed(name):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = compress.models.load(name, size="tiny").eval()
    except ImportError as e:  # pragma: no cover - depends on the install
        pytest.skip(f"{name}: model package not installed ({e})")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(model.example_inputs(4, 3).shape, generator=g)
    with torch.no_grad():
        y = G._first_tensor(model(x))
    cal = [(torch.randn(x.shape, generator=g), torch.randn(y.shape, generator=g))]
    small = compress.prune(model, "taylor", ratio=0.5, example_inputs=x, calibration=cal, scope="global")
    check_pruned_equals_zeroed(model, small, [x])


# --- FFN channels that pass a concat or split (defect 1) --------------------------------

@pytest.mark.parametrize("Model", [ConcatFFNForecaster, FusedGLUForecaster])
def test_an_ffn_whose_channels_pass_a_concat_or_split_is_reported_not_prunable(Model):
    # cat([side, fc1(x)]) feeds fc2 24 + 16 columns; chunk(2) feeds it half of fc1's 48 rows:
    # cutting fc1's raw indices from fc2 would remove the wrong columns (or break the forward)
    model = Model().eval()
    pg = G.build(copy.deepcopy(model), X)
    assert not [g for g in pg.groups if g.kind == "ffn"]
    assert "not one FFN group" in pg.not_prunable["fc1"] and "concat" in pg.not_prunable["fc1"]
    with pytest.raises(G.GraphBuildError, match=r"cat\(\[side, fc1\(x\)\]\)"):
        prune(model, "magnitude", {}, batches(model, 2), units=("ffn",))


class ConcatBesidePlainFFN(nn.Module):
    """A plain FFN (prunable) after one whose consumer reads cat([side, act(fc1(x))])."""

    def __init__(self, L=16, H=4, C=3, d=16, f=24):
        super().__init__()
        self.H, self.C = H, C
        self.embed = nn.Linear(C, d)
        self.fc1, self.fc2 = nn.Linear(d, f), nn.Linear(d + f, d)
        self.up, self.down = nn.Linear(d, f), nn.Linear(f, d)
        self.head = nn.Linear(L * d, H * C)

    def forward(self, x):
        z = self.embed(x)
        z = z + self.fc2(torch.cat([z, F.gelu(self.fc1(z))], dim=-1))
        z = z + self.down(F.gelu(self.up(z)))
        return self.head(z.flatten(1)).view(x.shape[0], self.H, self.C)


@pytest.mark.parametrize("name", ["magnitude", "taylor"])
def test_beside_a_concat_ffn_the_plain_ffn_is_cut_right_and_the_concat_one_is_left_whole(name):
    model = ConcatBesidePlainFFN().eval()
    cal = batches(model, 2)
    small = prune(model, name, CRITERIA[name], cal, units=("ffn",))
    rec = small.compress_pruning[-1]
    assert set(rec["groups"]) == {"up.ffn"} and rec["groups"]["up.ffn"]["removed"]
    assert "fc1" in rec["not_prunable"]
    assert small.fc1.weight.shape == model.fc1.weight.shape and small.fc2.weight.shape == model.fc2.weight.shape
    torch.testing.assert_close(small.fc2.weight, model.fc2.weight, rtol=0, atol=0)
    check_pruned_equals_zeroed(model, small, [x for x, _ in batches(model, 2, seed=5)])


# --- ground truth, independent of any criterion's scores -------------------------------

DEAD_CHANNELS, DEAD_HEAD = [1, 4, 9, 14, 19, 22, 27, 30], 2  # 8 of 32 channels, 1 of 4 heads: ratio 0.25


def with_dead_units():
    """A TinyForecaster (ReLU) whose DEAD_CHANNELS never fire and whose DEAD_HEAD adds ~1e-3 of
    a head's output. Their weights are scaled by 1e-3, not zeroed (the engine removes all-zero
    units first whatever the scores say, which would hide a reversed criterion); the channels'
    fc1 bias is -0.05, far below what rows that small can reach. The live channels' bias is +0.3 so
    that none of them happens to be silent on the calibration batches."""
    model = TinyForecaster(act=F.relu).eval()
    with torch.no_grad():
        for b in model.blocks:
            b.fc1.bias.fill_(0.3)
            b.fc1.weight[DEAD_CHANNELS] *= 1e-3
            b.fc1.bias[DEAD_CHANNELS] = -0.05
            b.fc2.weight[:, DEAD_CHANNELS] *= 1e-3
            zero_heads(b.attn, [DEAD_HEAD], 4, scale=1e-3)
    return model


def check_dead_units_were_removed(model, small, cal):
    rec = small.compress_pruning[-1]["groups"]
    for gname, g in rec.items():
        assert g["removed"] == (DEAD_CHANNELS if g["kind"] == "ffn" else [DEAD_HEAD]), (gname, g["removed"])
    with torch.no_grad():  # the removed units were (nearly) dead, so (almost) nothing changes
        for x, _ in cal:
            y = model(x)
            torch.testing.assert_close(small(x), y, rtol=1e-2, atol=1e-2 * float(y.abs().max()))


# Taylor of order 1 (|g·m|): order 2's score is signed by design (a unit whose removal lowers the
# loss ranks below a dead one), so it has no such known answer.
GROUND_TRUTH = {"magnitude": {}, "taylor": {"order": 1}, "activation": {}}


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("name", sorted(GROUND_TRUTH))
def test_prune_removes_the_units_that_contribute_nothing(name, scope):
    # Known answer, not the criterion's own scores: a criterion whose ranking is reversed (or an
    # engine that removes the highest-scored units) keeps the dead units and fails here.
    model = with_dead_units()
    cal = batches(model, 2)
    small = prune(model, name, GROUND_TRUTH[name], cal, scope=scope, ratio=0.25)
    check_dead_units_were_removed(model, small, cal)


@pytest.mark.parametrize("name", sorted(GROUND_TRUTH))
def test_the_dead_unit_check_fails_when_a_criterion_ranks_in_reverse(monkeypatch, name):
    cls = type(compress.criteria.get(name, **GROUND_TRUTH[name]))
    original = cls.score
    monkeypatch.setattr(cls, "score", lambda self, g: -original(self, g))
    model = with_dead_units()
    cal = batches(model, 2)
    small = prune(model, name, GROUND_TRUTH[name], cal, ratio=0.25)
    with pytest.raises(AssertionError):
        check_dead_units_were_removed(model, small, cal)


# --- mutation check: the checks above must fail against a wrong engine -----------------

def test_the_checks_fail_when_the_engine_removes_the_highest_scored_units(monkeypatch):
    model = TinyForecaster().eval()
    cal = batches(model, 2)
    monkeypatch.setattr(structured_module, "checked_scores", lambda crit, g: -checked_scores(crit, g))
    for scope in ("layer", "global"):
        small = prune(model, "magnitude", {}, cal, scope=scope)
        with pytest.raises(AssertionError):
            check_removed_are_lowest(model, small, "magnitude", {}, cal, scope)


@pytest.mark.parametrize("Model", [TinyForecaster, ConvFFNForecaster])
def test_the_checks_fail_when_the_wrong_consumer_columns_are_cut(monkeypatch, Model):
    model = Model().eval()
    cal = batches(model, 2)
    original_cut = FFN.cut

    def wrong_cut(self, group, idxs):  # producers lose idxs, the consumer loses the mirrored columns
        n = group.n
        mirrored = sorted(n - 1 - i for i in idxs)
        keep_in = group.dg_in
        group.dg_in = []
        original_cut(self, group, idxs)
        group.dg_in = keep_in
        for m in keep_in:
            (torch_pruning.prune_linear_in_channels if isinstance(m, nn.Linear)
             else torch_pruning.prune_conv_in_channels)(m, mirrored)

    monkeypatch.setattr(FFN, "cut", wrong_cut)
    # the engine's own check after each cut catches it: the cut is undone (and named)
    with pytest.warns(UserWarning, match="not pruned"), pytest.raises(G.GraphBuildError, match="breaks the model"):
        prune(model, "magnitude", {}, cal, units=("ffn",))
    # without that check the wrong cut is returned, and the test's check must catch it
    monkeypatch.setattr(checks_module, "compare_outputs", lambda ref, out, rtol=1e-4: None)
    small = prune(model, "magnitude", {}, cal, units=("ffn",))
    with pytest.raises(AssertionError):
        check_pruned_equals_zeroed(model, small, [x for x, _ in cal])


# --- unstructured ---------------------------------------------------------------------

def test_unstructured_order_two_taylor_steps_zero_exactly_and_keep_earlier_zeros():
    model = TorchEncoderForecaster().eval()
    cal = batches(model, 2)
    crit = compress.criteria.get("taylor", order=2)
    snapshots = []
    calibrate = crit.calibrate

    def spy(m, batches_, groups=None, **kw):  # runs before each step's cut: the zeros so far
        snapshots.append({g.name: (g.param == 0).clone() for g in groups})
        return calibrate(m, batches_, groups=groups, **kw)

    crit.calibrate = spy
    small = compress.prune(model, crit, ratio=0.6, strategy="unstructured", steps=3, example_inputs=X,
                           calibration=cal)
    layers = small.compress_pruning[-1]["layers"]
    params = {n: p for n, p in small.named_parameters()}
    mods = dict(small.named_modules())
    final = {n: ((mods[n].weight if n in mods else params[n]) == 0) for n in layers}
    total = sum(v.numel() for v in final.values())
    assert len(snapshots) == 3
    cfg = compress.strategies.PruneConfig(ratio=0.6, steps=3)
    for step, snap in enumerate(snapshots[1:] + [final], start=1):
        assert sum(int(v.sum()) for v in snap.values()) == int(round(total * cfg.fraction_after(step)))
    for before, after in zip(snapshots, snapshots[1:] + [final]):
        for n in before:
            assert bool(after[n][before[n]].all()), f"{n}: a zero came back"
    # nn.MultiheadAttention's fused q/k/v weight is pruned too
    assert any(n.endswith("in_proj_weight") and final[n].any() for n in layers)


def test_unstructured_prunable_density_is_taken_over_what_may_be_pruned():
    model = TorchEncoderForecaster().eval()
    small = compress.prune(model, "magnitude", ratio=0.5, strategy="unstructured", example_inputs=X)
    layers = small.compress_pruning[-1]["layers"]
    assert "embed" not in layers and "head" not in layers
    assert sum(n.endswith("self_attn.in_proj_weight") for n in layers) == 2
    m = compress.measure(small, X, latency=False, memory=False)
    assert m.prunable_density == pytest.approx(0.5, abs=1e-3)  # embedding and head (dense) not counted
    assert compress.measure(small, X, latency=False, memory=False, prunable=nn.Linear).prunable_density > 0.55


# --- the drop-in MultiheadAttention -----------------------------------------------------

@pytest.mark.parametrize("batch_first", [True, False])
def test_drop_in_attention_matches_torch_and_uses_sdpa_without_weights(batch_first, monkeypatch):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    drop = G.MultiheadAttention.from_torch(copy.deepcopy(mha)).eval()
    shape = (2, 5, 16) if batch_first else (5, 2, 16)
    q, kv = torch.randn(shape), torch.randn(shape)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[1, 3:] = True
    masks = [{}, {"attn_mask": torch.randn(5, 5)}, {"key_padding_mask": pad},
             {"attn_mask": torch.rand(5, 5) > 0.7, "key_padding_mask": pad},
             {"attn_mask": nn.Transformer.generate_square_subsequent_mask(5), "is_causal": True}]
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    for kw in masks:
        for need_weights in (True, False):
            for avg in (True, False):
                n = len(calls)
                ref = mha(q, kv, kv, need_weights=need_weights, average_attn_weights=avg, **kw)
                n_ref = len(calls) - n
                out = drop(q, kv, kv, need_weights=need_weights, average_attn_weights=avg, **kw)
                torch.testing.assert_close(out[0], ref[0], rtol=1e-5, atol=1e-6)
                if need_weights:
                    torch.testing.assert_close(out[1], ref[1], rtol=1e-5, atol=1e-6)
                else:
                    assert out[1] is None and len(calls) - n - n_ref == 1  # the fused kernel ran
    x = torch.randn(shape)
    from compress.measure import count_flops

    B, Lq, D, h = 2, 5, 16, 4
    attention = 2 * 2 * B * h * Lq * Lq * (D // h)  # q k^T and a v
    projections = 2 * B * Lq * D * D * 4
    assert count_flops(lambda t: drop(t, t, t, need_weights=False)[0], x) == attention + projections


# --- per-head tables --------------------------------------------------------------------

class BiasTableAttention(HandAttention):
    """HandAttention with a T5-style per-head bias table (nn.Embedding [buckets, heads])."""

    def __init__(self, d, h):
        super().__init__(d, h)
        self.table = nn.Embedding(7, h)

    def per_head_parameters(self):
        return [(self.table, "weight", 1)]

    def forward(self, x):
        B, L, _ = x.shape
        h = self.n_heads
        q = self.q_proj(x).view(B, L, h, -1).transpose(1, 2)
        k = self.k_proj(x).view(B, L, h, -1).transpose(1, 2)
        v = self.v_proj(x).view(B, L, h, -1).transpose(1, 2)
        pos = (torch.arange(L)[None, :] - torch.arange(L)[:, None]).clamp(-3, 3) + 3
        bias = self.table(pos).permute(2, 0, 1)  # [h, L, L]
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias, dim=-1)
        return self.out_proj((a @ v).transpose(1, 2).reshape(B, L, -1))


def test_per_head_table_cuts_keep_the_embedding_attributes_in_line():
    model = TinyForecaster().eval()
    for b in model.blocks:
        b.attn = BiasTableAttention(16, 4)
    small = compress.prune(model, "magnitude", ratio=0.5, example_inputs=X, units=("heads",))
    tables = [b.attn.table for b in small.blocks]
    assert all(t.weight.shape == (7, 2) for t in tables)
    assert all((t.num_embeddings, t.embedding_dim) == tuple(t.weight.shape) for t in tables)
    check_pruned_equals_zeroed(model, small, [X])


# --- unit kinds -------------------------------------------------------------------------

def test_depth_is_a_registered_unit_kind_that_width_strategies_refuse():
    assert "layers" in G.available_kinds() and "layers" not in G.available_kinds(default_only=True)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 3,
                                enable_nested_tensor=False)
    assert [s.path for s in G.get_kind("layers").stacks(enc)] == ["layers"]
    with pytest.raises(ValueError, match='strategy="layers"'):
        compress.prune(enc, "magnitude", ratio=0.5, example_inputs=torch.randn(2, 5, 8), units=("layers",))


# --- coupled heads (residual attention): one mask, every layer's gradient ------------------

def test_taylor_on_coupled_heads_sums_the_mask_gradients_of_every_layer():
    import foreign

    model, x = foreign.res_attention()
    pg = G.build(model, x)
    g = next(g for g in pg.groups if g.coupled)
    assert len(g.sites()) == 3
    gen = torch.Generator().manual_seed(0)
    cal = [(torch.randn(3, *x.shape[1:], generator=gen), torch.randn(3, 4, 3, generator=gen))]
    crit = compress.criteria.get("taylor", order=2).calibrate(model, cal, groups=[g])
    ref = torch.zeros(g.n)  # brute force: one mask applied at every site, one backward per sample
    for xb, yb in cal:
        for i in range(xb.shape[0]):
            m = torch.ones(g.n, requires_grad=True)
            hooks = [site.register_forward_pre_hook(
                lambda mod, a, w=w: (a[0] * m.repeat_interleave(w),) + tuple(a[1:])) for site, w in g.sites()]
            try:
                loss = F.mse_loss(model(xb[i:i + 1]), yb[i:i + 1])
            finally:
                for h in hooks:
                    h.remove()
            (gm,) = torch.autograd.grad(loss, m)
            ref += -gm + gm.pow(2) / 2
    torch.testing.assert_close(crit.score(g), ref, rtol=1e-3, atol=1e-6 * float(ref.abs().max()) + 1e-9)


@pytest.mark.parametrize("Model", [TinyForecaster, TorchEncoderForecaster])
def test_ratio_zero_runs_graph_calibration_and_an_empty_cut_and_is_bit_identical(Model):
    model = Model().eval()
    cal = batches(model, 2)
    crit = compress.criteria.get("taylor", order=2)
    seen = []
    calibrate = crit.calibrate
    crit.calibrate = lambda *a, **kw: seen.append(kw.get("groups")) or calibrate(*a, **kw)
    small = compress.prune(model, crit, ratio=0.0, example_inputs=X, calibration=cal)
    rec = small.compress_pruning[-1]["groups"]
    assert seen and seen[0] and rec and all(g["removed"] == [] and g["after"] == g["before"] for g in rec.values())
    assert [type(m) for m in small.modules()] == [type(m) for m in model.modules()]  # swapped MHA put back
    ref = model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in small.state_dict().items()) and small.state_dict().keys() == ref.keys()
    assert torch.equal(small(X), model(X))
