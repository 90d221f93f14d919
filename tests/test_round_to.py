"""`round_to=`: structured and progressive pruning keep widths at hardware multiples."""
import pytest
import torch

import compress
from compress.strategies.base import PruneConfig, rounded_keep
from tiny import TinyForecaster, batches

X = torch.randn(4, 16, 3)


def _ffn_widths(model):
    return [b.fc1.out_features for b in model.blocks]


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_when_round_to_is_set_then_kept_ffn_widths_are_multiples_and_the_lowest_scored_go(scope):
    torch.manual_seed(0)
    model = TinyForecaster(f=64)
    plain = compress.prune(model, "magnitude", 0.3, example_inputs=X, units=("ffn",), scope=scope)
    rounded = compress.prune(model, "magnitude", 0.3, example_inputs=X, units=("ffn",), scope=scope, round_to=8)
    assert any(w % 8 for w in _ffn_widths(plain))  # 0.3 of 64 does not land on a multiple of 8
    assert all(w % 8 == 0 for w in _ffn_widths(rounded))
    assert all(r >= p for r, p in zip(_ffn_widths(rounded), _ffn_widths(plain)))  # rounded up, not down
    assert rounded.compress_pruning[-1]["round_to"] == {"ffn": 8}
    # the channels kept are a superset of the unrounded cut's: rounding restores the best-scored of those cut
    for b_plain, b_round in zip(plain.blocks, rounded.blocks):
        w_plain, w_round = b_plain.fc1.weight, b_round.fc1.weight
        kept_round = {tuple(r.tolist()) for r in w_round.detach().round(decimals=6)}
        assert all(tuple(r.tolist()) in kept_round for r in w_plain.detach().round(decimals=6))


def test_when_round_to_is_a_dict_then_heads_follow_their_own_multiple():
    torch.manual_seed(0)
    model = TinyForecaster(h=4, f=64)
    small = compress.prune(model, "magnitude", 0.3, example_inputs=X, round_to={"ffn": 16, "heads": 2})
    assert all(w % 16 == 0 for w in _ffn_widths(small))
    # 4 heads at ratio 0.3 keeps round(2.8) = 3 heads; rounded up to a multiple of 2: 4
    assert [b.attn.n_heads for b in small.blocks] == [4, 4]
    again = compress.prune(model, "magnitude", 0.5, example_inputs=X, round_to={"heads": 2})
    assert [b.attn.n_heads for b in again.blocks] == [2, 2]


def test_when_progressive_prunes_with_round_to_then_widths_are_multiples():
    torch.manual_seed(0)
    model = TinyForecaster(f=64)
    val = batches(model, 2, seed=1)
    small = compress.prune(model, "random", 0.9, strategy="progressive", example_inputs=X, validation=val,
                           units=("ffn",), options={"step_fraction": 0.13, "patience": 50, "tolerance": 1e9,
                                                    "max_rounds": 3}, round_to=8)
    widths = _ffn_widths(small)
    assert all(w % 8 == 0 for w in widths) and min(widths) < 64
    rec = small.compress_pruning[-1]
    masked = rec["rounds"][rec["chosen_round"]]["masked"]["ffn"]
    assert sum(64 - w for w in widths) <= masked  # rounding only restores masked channels
    with torch.no_grad():
        assert torch.isfinite(small(X)).all()


@pytest.mark.parametrize("bad", [0, -8, 2.5, True, {"attn": 8}, {"ffn": 0}])
def test_when_round_to_is_invalid_then_it_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="round_to"):
        PruneConfig(round_to=bad)


def test_when_round_to_is_given_to_unstructured_then_it_is_refused():
    with pytest.raises(ValueError, match="round_to"):
        compress.prune(TinyForecaster(), "magnitude", 0.5, strategy="unstructured", example_inputs=X, round_to=8)


def test_rounded_keep_rounds_up_within_the_original_count():
    assert [rounded_keep(k, 64, 8) for k in (1, 8, 9, 63, 64)] == [8, 8, 16, 64, 64]
    assert rounded_keep(5, 6, 8) == 5  # groups smaller than the multiple are left alone
    assert rounded_keep(45, 50, 8) == 48 and rounded_keep(49, 50, 8) == 50
