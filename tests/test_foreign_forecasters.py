"""Forecasters from other libraries (pytorch-forecasting, transformers, gluonts) and
hand-written reproductions of their patterns (`tests/foreign.py`), pruned as a new user
would: each either prunes correctly - the pruned model computes what the original computes
with the removed units masked, the input model is untouched - or raises the documented
clear error, within the time limit.
"""
import copy
import re
import threading
import time
import warnings

import pytest
import torch
import torch_pruning as tp

import compress
from compress import graph as G

import foreign

LIMIT = 30.0  # seconds: the time limit every prune here runs under (they take < 2 s each)


def pred(out):
    if isinstance(out, dict) and "prediction" in out:
        return out["prediction"]
    return out if isinstance(out, torch.Tensor) else G._first_tensor(out)


def masked_reference(original, record, x):
    """The original's output with the units the record says were removed masked at their sites."""
    ref = copy.deepcopy(original)
    G.swap_torch_mha(ref)  # the drop-in computes the same; its out_proj is called as a module
    mods = dict(ref.named_modules())
    hooks = []
    for g in record["groups"].values():
        if not g["removed"]:
            continue
        for site in g["sites"]:
            m = mods[site]

            def hook(module, args, idxs=g["removed"], width=g["width"]):
                x0 = args[0]
                cdim = 1 if isinstance(module, torch.nn.Conv1d) else x0.dim() - 1
                keep = torch.ones(x0.shape[cdim])
                for i in idxs:
                    keep[i * width:(i + 1) * width] = 0
                shape = [1] * x0.dim()
                shape[cdim] = -1
                return (x0 * keep.view(shape),) + args[1:]
            hooks.append(m.register_forward_pre_hook(hook))
    try:
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(0)
            return pred(G.run_model(ref, x))
    finally:
        for h in hooks:
            h.remove()


def run(model, x):
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        return pred(G.run_model(model, x))


def prune_and_check(name, **kw):
    """Prune `name` (structured, magnitude, ratio 0.5) and check it is a masked sub-network."""
    model, x = foreign.BUILDERS[name]()
    before = copy.deepcopy(model.state_dict())
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = compress.prune(model, "magnitude", ratio=0.5, example_inputs=x, time_limit_s=LIMIT, **kw)
    seconds = time.perf_counter() - t0
    assert seconds < LIMIT
    record = small.compress_pruning[-1]
    y, ref = run(small, x), masked_reference(model, record, x)
    assert y.shape == run(model, x).shape and torch.isfinite(y).all()
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)
    after = model.state_dict()  # the user's model is untouched
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    return small, record, [str(w.message) for w in caught]


def cut(record, kind):
    return sum(g["before"] - g["after"] for g in record["groups"].values() if g["kind"] == kind)


# name: (heads cut?, FFN channels cut?, a warning that must be given)
EXPECTED = {
    "ptf_timexer": (True, True, None),
    "ptf_tft_blocks": (False, True, r"'attn' \(InterpretableMultiHeadAttention\) not recognised \(shared value"),
    "ptf_decompformer": (True, True, None),
    "hf_informer": (True, True, None),            # ProbSparse attention reshapes with self.embed_dim
    "hf_informer_full": (True, True, None),
    # auto-correlation reshapes with self.embed_dim, and picks its delays from the mean over all
    # heads: a head cut may change what the kept heads compute, then it is undone (seed-dependent)
    "hf_autoformer": (None, True, None),
    "hf_tst": (True, True, None),
    "gluonts_patchtst": (True, True, None),
    "embed_dim_attention": (True, True, None),
    "hidden_size_attention": (True, True, None),
    "dataclass_attention": (True, True, None),
    "modeloutput_attention": (True, True, None),
    "dict_attention": (True, True, None),
    "list_attention": (True, True, None),
    "glu_ffn": (True, False, None),              # F.glu halves the width: not an FFN group torch-pruning maps
    "circular_conv_after_block": (True, True, None),
    "decomposition_padding": (True, True, None),
    "shared_value_attention": (False, True, r"not recognised \(shared value projection"),
    "res_attention": (True, True, r"per-head state crosses layers \(residual attention\)"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_foreign_forecaster_prunes_to_a_masked_sub_network(name):
    heads, ffn, warning = EXPECTED[name]
    small, record, msgs = prune_and_check(name)
    if heads is None:  # either cut and verified (the check above), or undone and reported
        assert cut(record, "heads") > 0 or any("not pruned" in m for m in msgs), record["groups"]
    else:
        assert (cut(record, "heads") > 0) == heads, record["groups"]
    assert (cut(record, "ffn") > 0) == ffn, record["groups"]
    if warning:
        assert any(re.search(warning, m) for m in msgs), msgs


def test_when_attention_reshapes_with_embed_dim_then_the_attribute_is_updated_and_verified():
    small, record, _ = prune_and_check("embed_dim_attention", units=("heads",))
    attn = small.blocks[0].attn
    assert attn.num_heads == 2 and attn.embed_dim == 8 and attn.out_proj.in_features == 8
    assert attn.out_proj.out_features == 16  # d_model kept


def test_when_residual_attention_is_coupled_then_every_layer_loses_the_same_heads():
    small, record, _ = prune_and_check("res_attention", units=("heads",))
    (g,) = [g for g in record["groups"].values() if g["kind"] == "heads"]
    assert g["coupled"] == ["attn.0", "attn.1", "attn.2"] and len(g["sites"]) == 3
    assert [a.n_heads for a in small.attn] == [2, 2, 2]


def test_circular_conv_after_a_block_no_longer_spins_in_grouping():
    model, x = foreign.BUILDERS["circular_conv_after_block"]()
    calls = []
    real = tp.DependencyGraph.get_pruning_group

    def counting(self, module, *a, **k):
        calls.append(module)
        return real(self, module, *a, **k)
    tp.DependencyGraph.get_pruning_group = counting
    try:
        small = compress.prune(model, "magnitude", 0.5, example_inputs=x, time_limit_s=LIMIT)
    finally:
        tp.DependencyGraph.get_pruning_group = real
    # only the FFN up-projections are handed to torch-pruning; residual-stream roots
    # (the circular conv, out-projections, FFN down-projections) are decided by the graph walk
    assert all(m in [b.ffn.fc1 for b in model.blocks] for m in calls) or \
        {type(m) for m in calls} == {torch.nn.Linear}
    assert len(calls) == 2
    assert small.blocks[0].ffn.fc1.out_features == 16


def _slow_grouping(slow_module_pred, seconds):
    real = tp.DependencyGraph.get_pruning_group

    def slow(self, module, *a, **k):
        if slow_module_pred(self._module2name.get(module, "")):
            end = time.monotonic() + seconds
            while time.monotonic() < end:  # a grouping call that spins (interrupted by the budget)
                time.sleep(0.005)
        return real(self, module, *a, **k)
    return real, slow


def test_when_one_root_exceeds_its_budget_then_it_is_listed_and_the_rest_prunes():
    model, x = foreign.pattern()  # plain blocks: two FFN up-projections are grouped by torch-pruning
    real, slow = _slow_grouping(lambda name: name == "blocks.1.ffn.fc1", 60)
    tp.DependencyGraph.get_pruning_group = slow
    t0 = time.perf_counter()
    try:
        with pytest.warns(UserWarning, match=r"blocks\.1\.ffn\.fc1"):
            small = compress.prune(model, "magnitude", 0.5, example_inputs=x, time_limit_s=8)
    finally:
        tp.DependencyGraph.get_pruning_group = real
    assert time.perf_counter() - t0 < 8
    rec = small.compress_pruning[-1]
    assert "blocks.1.ffn.fc1" in rec["not_prunable"]
    assert small.blocks[1].ffn.fc1.out_features == 32  # the slow root stays whole
    assert small.blocks[0].ffn.fc1.out_features == 16 and small.blocks[1].attn.n_heads == 2


def test_when_the_whole_build_exceeds_the_time_limit_then_it_is_a_clear_error():
    model, x = foreign.pattern()
    real, slow = _slow_grouping(lambda name: True, 60)
    tp.DependencyGraph.get_pruning_group = slow
    t0 = time.perf_counter()
    try:
        with pytest.raises(G.GraphBuildError, match="took longer than 2s"):
            G.build(model, x, time_limit_s=2, root_time_limit_s=10)
    finally:
        tp.DependencyGraph.get_pruning_group = real
    assert time.perf_counter() - t0 < 5


def test_unstructured_pruning_never_asks_for_structured_groups():
    model, x = foreign.BUILDERS["circular_conv_after_block"]()
    real = tp.DependencyGraph.get_pruning_group

    def refuse(self, *a, **k):
        raise AssertionError("unstructured pruning called get_pruning_group")
    tp.DependencyGraph.get_pruning_group = refuse
    try:
        small = compress.prune(model, "magnitude", 0.5, strategy="unstructured", example_inputs=x, time_limit_s=LIMIT)
    finally:
        tp.DependencyGraph.get_pruning_group = real
    w = small.blocks[0].ffn.fc1.weight
    assert 0.3 < float((w == 0).float().mean()) < 0.8
    assert float((small.embed.weight == 0).float().mean()) == 0.0  # the embedding stays dense


def test_when_the_core_is_conv2d_then_structured_says_nothing_prunable_and_unstructured_zeroes_it():
    model, x = foreign.conv2d_core()
    with pytest.raises(G.GraphBuildError, match="no prunable"):
        compress.prune(model, "magnitude", 0.5, example_inputs=x, time_limit_s=LIMIT)
    small = compress.prune(model, "magnitude", 0.5, strategy="unstructured", example_inputs=x, time_limit_s=LIMIT)
    conv = small.blocks[0].conv1.weight  # Conv2d weights are eligible
    assert 0.3 < float((conv == 0).float().mean()) < 0.8
    total = sum(p.numel() for p in small.parameters())
    assert sum(int((p == 0).sum()) for p in small.parameters()) / total > 0.35


def test_when_few_weights_are_eligible_then_unstructured_says_so():
    model, x = foreign.lstm_core()
    with pytest.warns(UserWarning, match=r"only \d+\.\d% of the weights of LSTMCore were eligible .* "
                                         r"ratio=0\.5 zeroes \d+\.\d% of all parameters"):
        small = compress.prune(model, "magnitude", 0.5, strategy="unstructured", example_inputs=x,
                               time_limit_s=LIMIT)
    share = small.compress_pruning[-1]["eligible_share"]
    n = sum(p.numel() for p in model.parameters())
    assert share == pytest.approx(small.proj.weight.numel() / n)  # only the inner Linear: embed and head stay
    assert float((small.proj.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)


class HiddenHeadCount(foreign.QKVOAttention):
    """Reshapes with a private `_h` the engine cannot know: a head cut breaks the forward."""

    def __init__(self, d, h):
        super().__init__(d, h)
        self._h = h

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = (p(x).view(B, T, self._h, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        a = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1)
        return self.out_proj((a @ v).transpose(1, 2).flatten(2))


def test_when_a_head_cut_breaks_the_forward_then_it_is_undone_and_named():
    model, x = foreign.pattern(HiddenHeadCount)
    with pytest.warns(UserWarning, match=r"blocks\.0\.attn\.heads not pruned: cutting heads of 'blocks\.0\.attn' "
                                         r"\(HiddenHeadCount\) breaks the model"):
        small = compress.prune(model, "magnitude", 0.5, example_inputs=x, time_limit_s=LIMIT)
    rec = small.compress_pruning[-1]
    assert "blocks.0.attn.heads" in rec["not_prunable"] and "heads={'blocks.0.attn': 'attr'}" in \
        rec["not_prunable"]["blocks.0.attn.heads"]
    assert small.blocks[0].attn.q_proj.out_features == 16  # restored exactly
    assert small.blocks[0].ffn.fc1.out_features == 16      # the FFN still pruned
    torch.testing.assert_close(run(small, x), masked_reference(model, rec, x), rtol=1e-4, atol=1e-5)
    # the advice works: name the attribute
    fixed = compress.prune(model, "magnitude", 0.5, example_inputs=x, time_limit_s=LIMIT,
                           heads={"blocks.0.attn": "_h", "blocks.1.attn": "_h"})
    assert fixed.blocks[0].attn._h == 2
    # heads only, and none can be cut: an error rather than an unpruned model
    with pytest.raises(G.GraphBuildError, match="no unit group could be cut"):
        compress.prune(model, "magnitude", 0.5, example_inputs=x, time_limit_s=LIMIT, units=("heads",))


class NumpySelector(torch.nn.Module):
    """Picks modes with numpy (as FEDformer-style code does): fails under autograd."""

    def forward(self, x):
        idx = torch.as_tensor(abs(x[0, :, 0].numpy()).argsort()[-4:].copy())
        return x[:, idx]


class NumpyAttention(foreign.QKVOAttention):
    def __init__(self, d, h):
        super().__init__(d, h)
        self.sel = NumpySelector()

    def forward(self, x):
        return super().forward(x) + self.sel(x).mean(1, keepdim=True)


def test_when_tracing_fails_the_error_names_the_innermost_module_and_a_fix_that_works():
    model, x = foreign.pattern(NumpyAttention)
    with pytest.raises(G.GraphBuildError) as e:
        compress.prune(model, "magnitude", 0.5, example_inputs=x, time_limit_s=LIMIT)
    msg = str(e.value)
    assert "module 'blocks.0.attn.sel' (NumpySelector) raised RuntimeError" in msg
    assert "ignore= cannot help" in msg and "strategy='unstructured'" in msg
    with pytest.warns(UserWarning, match="could not be traced"):  # the advice works
        small = compress.prune(model, "magnitude", 0.5, strategy="unstructured", example_inputs=x,
                               time_limit_s=LIMIT)
    assert float((small.blocks[0].ffn.fc1.weight == 0).float().mean()) > 0.3
    assert float((small.embed.weight == 0).float().mean()) == 0.0  # first layer to run: left dense


@pytest.mark.parametrize("cls", [foreign.DataclassAttention, foreign.ModelOutputAttention, foreign.DictAttention,
                                 foreign.ListAttention])
def test_opaque_attention_handles_any_output_container(cls):
    model, x = foreign.pattern(cls)
    pg = G.build(model, x, time_limit_s=LIMIT)
    assert len(pg.of_kind("heads")) == 2
    leaves, rebuild = G.outputs.flatten(model.blocks[0].attn(torch.randn(2, 16, 16)))
    assert type(rebuild(leaves)) is type(model.blocks[0].attn(torch.randn(2, 16, 16)))


def test_outputs_flatten_rebuilds_each_container_kind():
    from compress.graph.outputs import flatten

    out = {"a": (torch.ones(1), [torch.zeros(2), None]), "b": foreign.AttnOut(torch.ones(3))}
    leaves, rebuild = flatten(out)
    assert [getattr(x, "shape", x) for x in leaves] == [(1,), (2,), None, (3,), None]
    new = rebuild([1, 2, 3, 4, 5])
    assert new == {"a": (1, [2, 3]), "b": foreign.AttnOut(4, 5)}


def test_build_limit_also_works_off_the_main_thread():
    model, x = foreign.pattern()
    real, slow = _slow_grouping(lambda name: True, 60)
    result = {}

    def work():
        try:
            G.build(model, x, time_limit_s=2, root_time_limit_s=10)
        except G.GraphBuildError as e:
            result["error"] = e
    tp.DependencyGraph.get_pruning_group = slow
    t0 = time.perf_counter()
    try:
        t = threading.Thread(target=work)
        t.start()
        t.join(20)
    finally:
        tp.DependencyGraph.get_pruning_group = real
    assert not t.is_alive() and "error" in result
    assert time.perf_counter() - t0 < 8


def _batches(n=2):
    return [(foreign.past(4), torch.randn(4, foreign.H, foreign.C)) for _ in range(n)]


@pytest.mark.parametrize("criterion", ["taylor", "activation"])
def test_coupled_residual_attention_prunes_with_data_driven_criteria(criterion):
    model, x = foreign.res_attention()
    small = compress.prune(model, criterion, 0.5, example_inputs=x, calibration=_batches(), time_limit_s=LIMIT,
                           units=("heads",))
    rec = small.compress_pruning[-1]
    (g,) = rec["groups"].values()
    assert len(g["removed"]) == 2 and len(g["sites"]) == 3
    torch.testing.assert_close(run(small, x), masked_reference(model, rec, x), rtol=1e-4, atol=1e-5)


def test_progressive_masks_and_cuts_every_coupled_layer():
    model, x = foreign.res_attention()
    small = compress.prune(model, "taylor", 0.5, strategy="progressive", example_inputs=x, calibration=_batches(),
                           validation=_batches(), time_limit_s=LIMIT, options={"max_rounds": 2, "patience": 2})
    rec = small.compress_pruning[-1]
    heads = [g for g in rec["groups"].values() if g["kind"] == "heads"]
    assert len(heads) == 1 and heads[0]["coupled"] == ["attn.0", "attn.1", "attn.2"]
    assert len({a.n_heads for a in small.attn}) == 1
    torch.testing.assert_close(run(small, x), masked_reference(model, rec, x), rtol=1e-4, atol=1e-5)


def test_when_a_model_ends_in_a_linear_then_unstructured_keeps_that_head_dense():
    model = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 3))
    small = compress.prune(model, "magnitude", 0.5, strategy="unstructured", example_inputs=torch.randn(2, 8, 3))
    assert float((small[4].weight == 0).float().mean()) == 0.0 and float((small[0].weight == 0).float().mean()) == 0.0
    assert float((small[2].weight == 0).float().mean()) > 0.4


def test_when_glu_halves_the_width_then_no_wrong_ffn_group_is_made():
    model, x = foreign.BUILDERS["glu_ffn"]()
    pg = G.build(model, x, time_limit_s=LIMIT)
    for g in pg.of_kind("ffn"):  # every FFN group's producers and consumer agree on the unit count
        assert all(m.out_features == g.n for m in g.dg_out) and g.site.in_features == g.n
    assert not any(g.name.endswith("ffn.fc.ffn") for g in pg.groups)
