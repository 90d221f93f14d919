"""The progressive strategy (prune-then-finetune's method) and `compress.prune_then_finetune`."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

import compress
from compress.criteria.base import Criterion
from compress.strategies.progressive import Progressive, apply_masks, masked_loss
from tiny import TinyForecaster, TorchEncoderForecaster, batches

X = torch.randn(4, 16, 3)
S = list(range(8))  # the channels of blocks.0's FFN that the constructed cases single out


class Fixed(Criterion):
    """Test criterion: fixed scores by group name (not registered: stays out of the conformance suite)."""

    name = "fixed"

    def __init__(self, scores):
        self.scores = scores

    def score(self, group):
        return self.scores[group.name].clone()


def ffn_scores(low=S, heads=False):
    s = {"blocks.0.fc1.ffn": torch.arange(32.0), "blocks.1.fc1.ffn": torch.arange(32.0) + 100}
    s["blocks.0.fc1.ffn"][low] = -10.0
    if heads:
        s.update({"blocks.0.attn.heads": torch.arange(4.0), "blocks.1.attn.heads": torch.arange(4.0) + 10})
    return s


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def teacher_case():
    """A model, and validation targets made by the same model with the channels S of blocks.0 cut:
    masking S makes the validation loss 0; masking anything else makes it worse."""
    model = TinyForecaster()
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        teacher.blocks[0].fc2.weight[:, S] = 0
        val = [(x, teacher(x)) for x, _ in batches(model, 2, seed=1)]
    return model, teacher, val


def progressive(model, criterion, ratio=0.9, validation=None, calibration=None, **options):
    return compress.prune(model, criterion, ratio=ratio, strategy="progressive", example_inputs=X,
                          calibration=calibration, validation=validation, options=options,
                          units=options.pop("units", ("ffn",)))


def test_when_validation_loss_is_lowest_at_some_round_then_that_mask_set_is_cut_out():
    model, teacher, val = teacher_case()
    small = progressive(model, Fixed(ffn_scores()), validation=val, step_fraction=0.125, patience=1)
    rec = small.compress_pruning[-1]
    assert rec["chosen_round"] == 1 and len(rec["rounds"]) == 3  # round 0, the best round, one worse round
    assert rec["val_loss"][1] < 1e-10 < rec["val_loss"][2]
    assert rec["groups"]["blocks.0.fc1.ffn"]["removed"] == S
    assert small.blocks[0].fc1.out_features == 24 and small.blocks[1].fc1.out_features == 32
    for x, _ in val:
        torch.testing.assert_close(small(x), teacher(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("patience", [1, 2, 3])
def test_when_validation_loss_stops_improving_then_pruning_stops_after_patience_rounds(patience):
    model, _, val = teacher_case()
    small = progressive(model, Fixed(ffn_scores()), validation=val, step_fraction=0.125, patience=patience)
    rec = small.compress_pruning[-1]
    assert rec["stopped"] == "patience"
    assert len(rec["rounds"]) == 2 + patience and rec["chosen_round"] == 1


def test_when_best_is_the_unpruned_model_then_it_is_returned_unchanged_and_weights_stay_frozen():
    model = TinyForecaster()
    with torch.no_grad():
        val = [(x, model(x)) for x, _ in batches(model, 2, seed=1)]  # the model is perfect: any cut hurts
    small = progressive(model, compress.criteria.get("taylor", order=2, ema=0.9), validation=val,
                        calibration=batches(model, 2), units=("ffn", "heads"))
    rec = small.compress_pruning[-1]
    assert rec["chosen_round"] == 0 and rec["val_loss"][0] == 0.0 and len(rec["rounds"]) >= 2
    sa, sb = model.state_dict(), small.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_when_rounds_tie_then_the_more_pruned_round_is_kept():
    model = TinyForecaster(act=F.relu)
    with torch.no_grad():
        model.blocks[0].fc1.bias[S] = -1e3  # dead channels: masking them changes nothing
    val = batches(model, 2, seed=1)
    small = progressive(model, Fixed(ffn_scores()), validation=val, step_fraction=0.125, patience=1)
    rec = small.compress_pruning[-1]
    assert rec["val_loss"][1] == rec["val_loss"][0]
    assert rec["chosen_round"] == 1 and rec["groups"]["blocks.0.fc1.ffn"]["removed"] == S
    assert Progressive.choose([{"val_loss": 1.0}, {"val_loss": 0.5}, {"val_loss": 0.5}, {"val_loss": 0.7}]) == 2
    assert Progressive.choose([{"val_loss": 1.0}, {"val_loss": 0.5}, {"val_loss": 0.52}], tolerance=0.05) == 2


@pytest.mark.parametrize("Model", [TinyForecaster, TorchEncoderForecaster])
def test_masked_model_at_the_chosen_round_equals_the_physically_pruned_model(Model):
    model = Model()
    val, cal = batches(model, 2, seed=1), batches(model, 2)
    # tolerance makes the most pruned round the chosen one, whatever the losses
    small = progressive(model, compress.criteria.get("taylor", order=2, ema=0.9), validation=val, calibration=cal,
                        units=("ffn", "heads"), step_fraction=0.3, patience=5, max_rounds=2, tolerance=1e9)
    rec = small.compress_pruning[-1]
    assert rec["chosen_round"] == 2 == len(rec["rounds"]) - 1 and rec["stopped"] == "max_rounds"
    assert sum(len(g["removed"]) for g in rec["groups"].values()) > 0
    masked = copy.deepcopy(model)
    groups = compress.graph.build(masked, X).groups
    masks = {}
    for g in groups:
        m = torch.ones(g.n)
        m[rec["groups"][g.name]["removed"]] = 0
        masks[id(g)] = m
    hooks = apply_masks(masks, groups)
    with torch.no_grad():
        for x, _ in val:
            torch.testing.assert_close(small(x), masked(x), rtol=1e-5, atol=1e-6)
    assert masked_loss(masked, val) == pytest.approx(rec["val_loss"][2], rel=1e-5)
    assert masked_loss(small, val) == pytest.approx(rec["val_loss"][2], rel=1e-5)
    for h in hooks:
        h.remove()
    assert n_params(small) < n_params(model)


def test_when_scores_favour_one_layer_then_no_group_is_ever_emptied():
    model = TinyForecaster()
    scores = ffn_scores(low=list(range(32)), heads=True)  # blocks.0 lowest everywhere
    small = progressive(model, Fixed(scores), ratio=0.95, validation=batches(model, 1, seed=1),
                        units=("ffn", "heads"), step_fraction=0.6, patience=50, tolerance=1e9)
    rec = small.compress_pruning[-1]
    assert all(g["after"] >= 1 for g in rec["groups"].values())
    assert small.blocks[0].fc1.out_features == 1 and small.blocks[0].attn.n_heads == 1


@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_max_ratio_is_respected_per_kind(ratio):
    model = TinyForecaster()
    small = progressive(model, compress.criteria.get("random"), ratio=ratio, validation=batches(model, 1, seed=1),
                        units=("ffn", "heads"), step_fraction=0.2, patience=50, tolerance=1e9)
    rec = small.compress_pruning[-1]
    assert rec["stopped"] == "max_ratio"
    assert rec["rounds"][-1]["masked"] == {"ffn": math.floor(ratio * 64), "heads": math.floor(ratio * 8)}
    for kind, total in (("ffn", 64), ("heads", 8)):
        kept = sum(g["after"] for g in rec["groups"].values() if g["kind"] == kind)
        assert total - kept <= ratio * total


def test_when_validation_is_missing_or_options_are_wrong_then_errors_say_what_to_pass():
    model = TinyForecaster()
    val = batches(model, 1)
    with pytest.raises(ValueError, match=r"validation=\[\(inputs, target\)"):
        compress.prune(model, "magnitude", ratio=0.5, strategy="progressive", example_inputs=X)
    with pytest.raises(ValueError, match="validation is empty"):
        compress.prune(model, "magnitude", ratio=0.5, strategy="progressive", example_inputs=X, validation=[])
    with pytest.raises(ValueError, match="validation batch 0 contains NaN"):
        compress.prune(model, "magnitude", 0.5, "progressive", X, validation=[(X * float("nan"), val[0][1])])
    with pytest.raises(ValueError, match="unknown option.*stepfraction.*known: step_fraction"):
        compress.prune(model, "magnitude", 0.5, "progressive", X, validation=val, options={"stepfraction": 0.1})
    with pytest.raises(ValueError, match="ratio="):
        compress.prune(model, "magnitude", 0.5, "progressive", X, validation=val, options={"max_ratio": 0.3})
    with pytest.raises(ValueError, match="step_fraction=0"):
        compress.prune(model, "magnitude", 0.5, "progressive", X, validation=val, options={"step_fraction": 0})
    with pytest.raises(ValueError, match="patience=0"):
        compress.prune(model, "magnitude", 0.5, "progressive", X, validation=val, options={"patience": 0})
    with pytest.raises(ValueError, match="strategy 'structured' takes no options"):
        compress.prune(model, "magnitude", 0.5, "structured", X, options={"patience": 1})
    with pytest.raises(ValueError, match="taylor.*calibration"):
        compress.prune(model, "taylor", 0.5, "progressive", X, validation=val)


def _ett_like(split):
    return compress.data.from_array(compress.data.synthetic(length=700, n_channels=3, seed=3), 16, 4, split=split)


def test_prune_then_finetune_returns_a_smaller_model_no_worse_than_right_after_pruning():
    train, val = _ett_like("train"), _ett_like("val")
    model = TinyForecaster()
    small = compress.prune_then_finetune(
        model, train, val, max_ratio=0.5, step_fraction=0.25, calibration_batches=2, validation_batches=2,
        batch_size=16, finetune_epochs=2, lr=1e-3, max_train_batches=3, max_val_batches=2, progress=False,
        tolerance=1e9)  # keep the most pruned round, so the test always sees a cut
    rec = small.compress_pruning[-1]
    assert rec["strategy"] == "progressive" and "Taylor(order=2, ema=0.9" in rec["criterion"]
    assert n_params(small) < n_params(model)
    hist = small.finetune_history
    assert hist[0]["val"] == pytest.approx(rec["val_mse_after_pruning"])
    after = compress.evaluate(small, val, batch_size=16, limit=2)["mse"]
    assert after <= rec["val_mse_after_pruning"] + 1e-9
    assert after == pytest.approx(min(h["val"] for h in hist))
