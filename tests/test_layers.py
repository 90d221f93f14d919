"""Depth pruning: criterion `dominance` and strategy `layers` (whole blocks removed)."""
import copy
import os
import warnings

import pytest
import torch
from torch import nn

import compress
from compress.criteria.dominance import skipping
from compress.strategies.layers import BlockStack, find_block_stacks, model_stacks
from tiny import TinyForecaster

MEASURES = ["removal", "cosine", "angular", "cka"]


class Residual(nn.Module):
    """x + fc2(gelu(fc1(norm(x)))): a pre-norm residual block; fc2 = 0 makes it the identity."""

    def __init__(self, d=8, f=16):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(d), nn.Linear(d, f), nn.Linear(f, d)

    def forward(self, x):
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))


class Deep(nn.Module):
    """[B, L, C] -> [B, H, C] through a stack of residual blocks."""

    def __init__(self, n=6, L=12, H=3, C=2, d=8, identity=()):
        super().__init__()
        self.H, self.C = H, C
        self.embed = nn.Linear(C, d)
        self.blocks = nn.ModuleList([Residual(d) for _ in range(n)])
        self.head = nn.Linear(L * d, H * C)
        with torch.no_grad():
            for i in identity:
                self.blocks[i].fc2.weight.zero_()
                self.blocks[i].fc2.bias.zero_()
            for i, b in enumerate(self.blocks):  # later blocks move the hidden state more
                if i not in identity:
                    b.fc2.weight.mul_(1.0 + i)

    def forward(self, x):
        z = self.embed(x)
        for b in self.blocks:
            z = b(z)
        return self.head(z.flatten(1)).view(x.shape[0], self.H, self.C)


def cal_for(model, n=2, B=6, seed=0, noise=0.1):
    """(inputs, the model's own forecast + noise) pairs."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(B, 12, 2, generator=g)
        with torch.no_grad():
            y = model(x)
        out.append((x, y + noise * torch.randn(y.shape, generator=g)))
    return out


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# --- the criterion ------------------------------------------------------------------------
@pytest.mark.parametrize("measure", MEASURES)
def test_identity_blocks_score_lowest_and_are_removed_first(measure):
    model = Deep(identity=(1, 4)).eval()
    small = compress.prune(model, compress.criteria.get("dominance", measure=measure), ratio=2 / 6,
                           strategy="layers", calibration=cal_for(model))
    rec = small.compress_pruning[-1]["stacks"]["blocks"]
    if measure != "angular":  # angular removes consecutive blocks (its own test below)
        assert rec["removed"] == [1, 4] and rec["kept"] == [0, 2, 3, 5]
    assert len(small.blocks) == 4
    scores = torch.tensor(rec["scores"])
    assert scores[[1, 4]].abs().max() < 1e-6 and (scores[[0, 2, 3, 5]] > 1e-4).all()


def test_removal_score_is_the_exact_loss_increase_of_skipping_the_block():
    model = Deep().eval()
    cal = cal_for(model)
    stacks = model_stacks(model)
    crit = compress.criteria.get("dominance", measure="removal").calibrate(model, cal, groups=stacks)

    def loss():
        return sum(float(torch.nn.functional.mse_loss(model(x), y)) for x, y in cal) / len(cal)

    with torch.no_grad():
        base = loss()
        for i in (0, 3):
            with skipping([(stacks[0], i)]):
                want = loss() - base
            assert crit.score(stacks[0])[i].item() == pytest.approx(want, rel=1e-5, abs=1e-7)


def test_cosine_and_cka_match_their_formulas_on_one_batch():
    model = Deep(n=2).eval()
    x = torch.randn(5, 12, 2)
    with torch.no_grad():
        h0 = model.embed(x)
        h1 = model.blocks[0](h0)
    cal = [(x, torch.zeros(5, 3, 2))]
    stacks = model_stacks(model)
    cos = compress.criteria.get("dominance", measure="cosine").calibrate(model, cal, groups=stacks)
    a, b = h0.reshape(-1, 8), h1.reshape(-1, 8)
    want = (1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)).mean()
    assert cos.score(stacks[0])[0].item() == pytest.approx(want.item(), rel=1e-5)
    cka = compress.criteria.get("dominance", measure="cka").calibrate(model, cal, groups=stacks)
    ac, bc = a - a.mean(0), b - b.mean(0)
    lin = (torch.linalg.norm(bc.T @ ac) ** 2 / (torch.linalg.norm(ac.T @ ac) * torch.linalg.norm(bc.T @ bc)))
    assert cka.score(stacks[0])[0].item() == pytest.approx(1 - lin.item(), rel=1e-4, abs=1e-6)


def test_angular_removes_the_consecutive_window_that_moves_the_state_least():
    model = Deep(n=6, identity=(2, 3)).eval()
    small = compress.prune(model, compress.criteria.get("dominance", measure="angular"), ratio=2 / 6,
                           strategy="layers", calibration=cal_for(model))
    assert small.compress_pruning[-1]["stacks"]["blocks"]["removed"] == [2, 3]


def test_default_measure_is_the_best_mean_predictor_in_the_committed_depth_results():
    """The rule stated in the docstring: the default is the measure with the highest mean Spearman
    correlation over every block-scores record in benchmarks/results/depth/ (rounded as quoted)."""
    import json
    from compress.criteria.dominance import DEFAULT_MEASURE_EVIDENCE, MEASURES, Dominance

    folder = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "results", "depth")
    last = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".jsonl"):
            for line in open(os.path.join(folder, name)):
                r = json.loads(line)
                if r["method"] == "block-scores":
                    last[(r["model"], r["dataset"])] = r
    assert len(last) >= 11
    mean = {m: sum(r["spearman"][m] for r in last.values()) / len(last) for m in MEASURES}
    assert {m: round(v, 2) for m, v in mean.items()} == pytest.approx(DEFAULT_MEASURE_EVIDENCE, abs=0.006)
    assert Dominance().measure == max(mean, key=mean.get) == "removal"


def test_dominance_refuses_unit_groups_and_the_layers_strategy_refuses_unit_criteria():
    model = TinyForecaster().eval()
    x = torch.randn(4, 16, 3)
    cal = [(x, torch.randn(4, 4, 3))]
    with pytest.raises(ValueError, match="strategy='layers'"):
        compress.prune(model, "dominance", ratio=0.5, calibration=cal)
    with pytest.raises(ValueError, match="does not score whole blocks"):
        compress.prune(model, "magnitude", ratio=0.5, strategy="layers", example_inputs=x)
    with pytest.raises(ValueError, match="unknown measure"):
        compress.criteria.get("dominance", measure="entropy")


# --- the strategy -------------------------------------------------------------------------
def test_plain_module_without_adapter_loses_blocks_and_still_forecasts():
    model = TinyForecaster(n_layers=4).eval()
    x = torch.randn(4, 16, 3)
    cal = [(torch.randn(4, 16, 3), torch.randn(4, 4, 3))]
    small = compress.prune(model, "dominance", ratio=0.5, strategy="layers", calibration=cal)
    assert len(small.blocks) == 2 and len(model.blocks) == 4  # the user's model is untouched
    assert small(x).shape == (4, 4, 3) and n_params(small) < n_params(model)
    assert [s.path for s in find_block_stacks(model)] == ["blocks"]


def test_first_last_and_keep_select_by_position_and_count():
    model = Deep(n=6).eval()
    cal = cal_for(model)
    x = cal[0][0]
    first = compress.prune(model, "random", ratio=0.5, strategy="layers", example_inputs=x,
                           options={"select": "first"})
    last = compress.prune(model, "random", ratio=0.5, strategy="layers", example_inputs=x, options={"select": "last"})
    assert first.compress_pruning[-1]["stacks"]["blocks"]["kept"] == [3, 4, 5]
    assert last.compress_pruning[-1]["stacks"]["blocks"]["kept"] == [0, 1, 2]
    two = compress.prune(model, "dominance", strategy="layers", calibration=cal, options={"keep": 2})
    assert len(two.blocks) == 2
    with pytest.raises(ValueError, match="only 6 removable blocks"):
        compress.prune(model, "dominance", strategy="layers", calibration=cal, options={"keep": 7})
    with pytest.raises(ValueError, match="unknown option"):
        compress.prune(model, "dominance", strategy="layers", calibration=cal, options={"kepp": 2})


def test_keep_auto_removes_the_most_blocks_within_tolerance():
    model = Deep(n=6, identity=(0, 2, 5)).eval()
    cal = cal_for(model, noise=0.0)  # the full model's loss is 0: any real block removed costs loss
    small = compress.prune(model, "dominance", ratio=0.99, strategy="layers", calibration=cal, validation=cal,
                           options={"keep": "auto", "tolerance": 0.0})
    rec = small.compress_pruning[-1]
    assert rec["stacks"]["blocks"]["removed"] == [0, 2, 5]
    assert rec["auto"]["chosen_removed"] == 3 and len(rec["auto"]["trail"]) == 6  # k = 0..5
    assert rec["auto"]["trail"][4]["loss"] > rec["auto"]["base_loss"]  # a 4th block costs loss
    capped = compress.prune(model, "dominance", ratio=0.2, strategy="layers", calibration=cal,
                            options={"keep": "auto", "tolerance": 0.0})
    assert capped.compress_pruning[-1]["blocks_removed"] == 1  # ratio caps what auto may remove


def test_min_keep_is_respected_across_stacks():
    model = Deep(n=3).eval()
    small = compress.prune(model, "random", ratio=0.99, strategy="layers", example_inputs=torch.randn(2, 12, 2))
    assert len(small.blocks) == 1


def test_depth_then_width_compose_in_one_record_chain():
    model = TinyForecaster(n_layers=4).eval()
    x = torch.randn(4, 16, 3)
    cal = [(torch.randn(4, 16, 3), torch.randn(4, 4, 3)) for _ in range(2)]
    shallow = compress.prune(model, "dominance", ratio=0.5, strategy="layers", calibration=cal)
    narrow = compress.prune(shallow, "magnitude", ratio=0.5, example_inputs=x)
    assert [r["strategy"] for r in narrow.compress_pruning] == ["layers", "structured"]
    assert len(narrow.blocks) == 2 and narrow.blocks[0].fc1.out_features == 16
    deeper_cut = compress.prune(narrow, "dominance", ratio=0.5, strategy="layers", calibration=cal)
    assert len(deeper_cut.blocks) == 1 and narrow(x).shape == deeper_cut(x).shape
    # positions in the record refer to the original model's blocks
    first = shallow.compress_pruning[0]["stacks"]["blocks"]["kept"]
    assert deeper_cut.compress_pruning[-1]["stacks"]["blocks"]["kept"][0] in first


# --- every model family -------------------------------------------------------------------
FAMILIES = compress.models.available()
_cache = {}


def tiny(name, **kw):
    key = (name, tuple(sorted(kw.items())))
    if key not in _cache:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _cache[key] = compress.models.load(name, size="tiny", **kw)
        except ImportError as e:  # pragma: no cover - depends on the install
            _cache[key] = e
    if isinstance(_cache[key], ImportError):
        pytest.skip(f"{name}: model package not installed ({_cache[key]})")
    return copy.deepcopy(_cache[key]).eval()


def family_data(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(model.example_inputs(4, 3).shape, generator=g)
    with torch.no_grad():
        y = model(x)
    return x, [(torch.randn(x.shape, generator=g), torch.randn(y.shape, generator=g)) for _ in range(2)]


def _subject(name):
    # Informer's distilling encoder is not removable; without distilling it is
    return tiny(name, distil=False) if name == "informer" else tiny(name)


@pytest.mark.parametrize("measure", ["removal", "cosine"])
@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_removal_equals_skipping_the_same_blocks(name, measure):
    model = _subject(name)
    x, cal = family_data(model)
    small = compress.prune(model, compress.criteria.get("dominance", measure=measure), ratio=0.5,
                           strategy="layers", calibration=cal).eval()
    rec = small.compress_pruning[-1]
    assert 0 < rec["blocks_removed"] < rec["blocks_before"]
    assert n_params(small) < n_params(model)
    stacks = model_stacks(model)
    pairs = [(s, i) for s in stacks for i in rec["stacks"][s.path]["removed"]]
    with torch.no_grad():
        with skipping(pairs):
            want = model(x)
        got = small(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for s in model_stacks(small):
        assert s.n == rec["stacks"][s.path]["after"]


COUNT_FIELDS = {  # family -> the layer count(s) in the pruned forecaster's live family config
    "patchtst": lambda m: [m.model.config.num_hidden_layers],
    "timesfm": lambda m: [m.model.config.num_hidden_layers],
    "moirai": lambda m: [m.model.num_layers],
    "chronos_bolt": lambda m: [m.model.config.num_layers, m.model.encoder.config.num_layers],
    "moment": lambda m: [m.model.encoder.config.num_layers, m.model.config.t5_config["num_layers"]],
    "ttm": lambda m: [m.model.config.num_layers, m.model.config.decoder_num_layers],
}


@pytest.mark.parametrize("name", sorted(COUNT_FIELDS))
def test_layer_count_fields_follow_the_removal(name):
    model = tiny(name)
    before = copy.deepcopy(model.config)
    keep = {"chronos_bolt": 2, "ttm": 3}.get(name, 1)  # chronos: 1 encoder + 1 decoder; ttm: 1 per level
    small = compress.prune(model, "random", strategy="layers", example_inputs=model.example_inputs(),
                           options={"keep": keep, "select": "last"})
    if name == "chronos_bolt":  # one encoder and one decoder block stay
        assert small.model.config.num_decoder_layers == 1 and small.model.decoder.config.num_layers == 1
    assert set(COUNT_FIELDS[name](small)) == {1}
    assert small.config == before  # the build record (what a saved model is rebuilt from) is unchanged


def _encoder_states(model, x):
    """The T5 encoder's output (its final layer norm), where the relative bias acts."""
    seen = []
    h = model.model.encoder.final_layer_norm.register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    return seen[0]


@pytest.mark.parametrize("name", ["chronos_bolt", "moment"])
def test_t5_removing_the_first_block_moves_the_relative_bias_table(name):
    model = tiny(name)
    x, _ = family_data(model)
    with torch.no_grad():  # a table and attention large enough to matter (chronos' tiny init is near zero)
        model.model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.normal_(0, 1.0)
        for block in model.model.encoder.block:
            for lin in ("v", "o"):
                getattr(block.layer[0].SelfAttention, lin).weight.normal_(0, 0.3)
    small = compress.prune(model, "random", strategy="layers", example_inputs=x, options={"keep": 1 if name == "moment" else 2,
                                                                       "select": "first"})
    enc = small.model.encoder.block
    att = enc[0].layer[0].SelfAttention
    assert len(enc) == 1 and att.has_relative_attention_bias
    stacks = model_stacks(model)
    pairs = [(s, i) for s in stacks for i in range(s.n - 1)]  # all but the last block of each stack
    with skipping(pairs):
        want = _encoder_states(model, x)
    torch.testing.assert_close(_encoder_states(small, x), want, rtol=1e-5, atol=1e-6)
    att.has_relative_attention_bias = False  # without the moved table the encoder computes otherwise
    assert not torch.allclose(_encoder_states(small, x), want, atol=1e-3)


def test_crossformer_decoder_layers_keep_reading_their_own_scale():
    model = tiny("crossformer")
    x, _ = family_data(model)
    small = compress.prune(model, "random", strategy="layers", example_inputs=x, options={"keep": 3, "select": "first"})
    # 2 of 5 go, shared by size (1, 1, 3 blocks): scale 0's TSA layer and decoder layer 0
    assert [layer.scale for layer in small.model.decoder] == [1, 2]
    assert [len(b.encode_layers) for b in small.model.encoder] == [0, 1]
    assert small(x).shape == model(x).shape


def test_timesfm_per_layer_head_counts_survive_depth_pruning():
    model = tiny("timesfm")
    x, cal = family_data(model)
    narrow = compress.prune(model, "magnitude", ratio=0.5, example_inputs=x, units=("heads",))
    heads = [layer.self_attn.num_heads for layer in narrow.model.model.layers]
    shallow = compress.prune(narrow, "random", strategy="layers", example_inputs=x, options={"keep": 1, "select": "first"})
    assert [layer.self_attn.num_heads for layer in shallow.model.model.layers] == heads[1:]
    assert shallow(x).shape == model(x).shape


@pytest.mark.parametrize("name", FAMILIES)
def test_depth_pruned_model_saves_and_loads_back_with_identical_outputs(name, tmp_path):
    model = _subject(name)
    x, cal = family_data(model)
    if name in ("chronos_bolt", "moment"):  # remove the T5 stacks' first blocks: the bias table must move
        small = compress.prune(model, "random", strategy="layers", example_inputs=x,
                               options={"keep": 1 if name == "moment" else 2, "select": "first"})
    else:
        small = compress.prune(model, "dominance", ratio=0.5, strategy="layers", calibration=cal)
    small = compress.prune(small, "magnitude", ratio=0.5, example_inputs=x)  # and width after depth
    small.eval()
    assert small.compress_removed_blocks
    small.save(str(tmp_path / "m"))
    again = compress.models.load(str(tmp_path / "m"))
    assert again.compress_removed_blocks == small.compress_removed_blocks
    assert [r["strategy"] for r in again.compress_pruning] == ["layers", "structured"]
    for a, b in zip(model_stacks(again), model_stacks(small)):
        assert a.path == b.path and a.n == b.n
    with torch.no_grad():
        torch.testing.assert_close(again(x), small(x), rtol=0, atol=0)
    if name == "patchtst":
        assert again.model.config.num_hidden_layers == len(again.model.model.encoder.layers)
