"""Parameter-efficient fine-tuning: linear probing, LoRA (peft), Gated DSIC (TRACE), and
their composition with pruning, on tiny models and synthetic data."""
import copy
import importlib.util

import pytest
import torch
from torch import nn

import compress
from compress.data import from_array, synthetic
from compress.finetune.lora import LoraSettings, add_lora, lora_layers, merge_lora, resolve_targets
from compress.finetune.trace import TraceConfig, select_modules
from compress.models.saving import SavedModelError
from tiny import ConvFFNForecaster, TinyForecaster, TorchEncoderForecaster

pytest.importorskip("peft")
HAS_HEAD = importlib.util.find_spec("compress.finetune.heads") is not None
needs_head = pytest.mark.skipif(not HAS_HEAD, reason="compress.finetune.heads (reconstructed head) not merged yet")

FAST = dict(epochs=1, lr=3e-3, batch_size=16, max_train_batches=4, max_val_batches=2, progress=False)
TRACE_FAST = {"warmup_steps": 3, "mc_samples": 4, "score_batches": 1}


def splits(L=16, H=4, C=3):
    arr = synthetic(length=900, n_channels=C, seed=1, seasonalities=(12,), noise=0.05)
    return [from_array(arr, L, H, split=s) for s in ("train", "val", "test")]


def data_for(model):
    return splits(model.context_length, model.horizon)[:2]


def peft_modules(model):
    return [n for n, m in model.named_modules() if type(m).__module__.startswith("peft.")]


def test_lora_trains_only_the_adapters_and_the_head():
    train, val, _ = splits()
    model = TinyForecaster()
    before = copy.deepcopy(model.state_dict())
    tuned = compress.finetune(model, train, val, method="lora", rank=2, merge=False, **FAST)
    trainable = [n for n, p in tuned.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n or n.startswith("head.") for n in trainable)
    assert any(".lora_" in n for n in trainable)
    after = tuned.state_dict()
    for k, v in before.items():  # every base weight outside the head is untouched
        key = k if k in after else k.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        if not k.startswith("head."):
            assert torch.equal(after[key], v), k
    assert not torch.equal(after["head.weight"], before["head.weight"])
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in after.items() if "lora_B" in k)  # B moved off 0
    n_lora = sum(p.numel() for n, p in tuned.named_parameters() if ".lora_" in n)
    n_head = sum(p.numel() for p in tuned.head.parameters())
    assert tuned.finetune_info["trainable_params"] == n_lora + n_head
    assert all(h["trainable_params"] == n_lora + n_head for h in tuned.finetune_history)
    # the measured count agrees, and the input model is unchanged
    assert compress.measure(tuned, torch.randn(2, 16, 3), latency=False, memory=False).trainable_params == n_lora + n_head
    assert not peft_modules(model) and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("make", [TinyForecaster, ConvFFNForecaster])
def test_merged_lora_gives_the_unmerged_outputs_with_plain_layers(make):
    train, val, _ = splits()
    tuned = compress.finetune(make(), train, val, method="lora", rank=4, merge=False, **FAST)
    x = torch.randn(5, 16, 3)
    with torch.no_grad():
        before = tuned(x)
        merged = merge_lora(copy.deepcopy(tuned))
        after = merged(x)
    assert peft_modules(tuned) and not peft_modules(merged)
    assert torch.allclose(before, after, atol=1e-5, rtol=1e-5)
    kinds = {type(m) for m in merged.modules()}
    assert (nn.Conv1d in kinds) == (make is ConvFFNForecaster)
    # merge=True in finetune ends the same way: plain layers, every parameter trainable again
    direct = compress.finetune(make(), train, val, method="lora", rank=4, **FAST)
    assert not peft_modules(direct) and all(p.requires_grad for p in direct.parameters())
    assert direct.finetune_info["merged"] is True


def test_a_merged_lora_forecaster_saves_and_loads_bit_exactly(tmp_path):
    model = compress.models.load("transformer", size="tiny")
    train, val = data_for(model)
    tuned = compress.finetune(model, train, val, method="lora", rank=2, **FAST)
    assert not peft_modules(tuned)
    tuned.save(tmp_path / "m")
    again = compress.models.load(str(tmp_path / "m"))
    a, b = tuned.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = model.example_inputs(2)
    with torch.no_grad():
        assert torch.equal(tuned(x), again(x))
    unmerged = compress.finetune(model, train, val, method="lora", rank=2, merge=False, **FAST)
    with pytest.raises(SavedModelError, match="merge_lora"):
        unmerged.save(tmp_path / "u")


def test_targets_names_patterns_and_clear_errors():
    model = TinyForecaster()
    assert resolve_targets(model, ["q_proj"]) == ["blocks.0.attn.q_proj", "blocks.1.attn.q_proj"]
    block0 = resolve_targets(model, [r"blocks\.0\..*"])
    assert block0 and all(n.startswith("blocks.0.") for n in block0)
    assert "head" not in resolve_targets(model)  # defaults leave the head to train fully
    assert set(resolve_targets(model)) >= {"blocks.0.fc1", "blocks.1.attn.out_proj"}
    with pytest.raises(ValueError, match="'nothing_here' matches no module"):
        resolve_targets(model, ["q_proj", "nothing_here"])
    with pytest.raises(ValueError, match="swap_torch_mha"):
        resolve_targets(TorchEncoderForecaster(), ["self_attn"])
    train, val, _ = splits()
    tuned = compress.finetune(model, train, val, method="lora", targets=["fc1"], merge=False, **FAST)
    assert sorted(lora_layers(tuned)) == ["blocks.0.fc1", "blocks.1.fc1"]
    with pytest.raises(ValueError, match="rank"):
        compress.finetune(model, train, val, method="lora", rank=0, **FAST)
    with pytest.raises(ValueError, match="unknown method"):
        compress.finetune(model, train, val, method="qlora", **FAST)


@pytest.mark.parametrize("family", ["transformer", "patchtst", "ttm", "informer", "crossformer", "moment"])
def test_every_family_has_default_targets_and_a_head(family):
    model = compress.models.load(family, size="tiny")
    names = resolve_targets(model)
    head = {id(m) for h in model.head_modules() for m in h.modules()}
    assert names and not any(id(model.get_submodule(n)) in head for n in names)
    assert sum(p.numel() for h in model.head_modules() for p in h.parameters()) > 0


def test_linear_probe_trains_only_the_head():
    model = compress.models.load("transformer", size="tiny")
    train, val = data_for(model)
    tuned = compress.finetune(model, train, val, method="linear_probe", **FAST)
    head = {n for n, _ in tuned.named_parameters() if n.startswith("model.projection.")}
    a, b = model.state_dict(), tuned.state_dict()
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed and changed <= head
    assert tuned.finetune_info["trainable_params"] == sum(p.numel() for p in tuned.model.projection.parameters())
    assert all(p.requires_grad for p in tuned.parameters())  # flags restored afterwards


class Irrelevant(nn.Module):
    """Three Linears; the output of `dead` is multiplied by zero, so its LoRA update cannot matter."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.dead = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.head = nn.Linear(8, 8)

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))) + 0.0 * self.dead(x))


def _batches(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(16, 8, generator=g) for _ in range(n)]
    return [(x, torch.sin(3 * x)) for x in xs]


def test_gated_dsic_scores_an_irrelevant_module_lowest_and_removes_it():
    model = Irrelevant()
    add_lora(model, LoraSettings(rank=2, targets=["a", "b", "dead"]))
    data = _batches()
    cfg = TraceConfig(warmup_steps=20, mc_samples=6, budget=0.6, drop_fraction=0.34, score_batches=2)
    rec = select_modules(model, lambda: data, data[:2], cfg, lr=1e-2)
    scores = rec["rounds"][0]["scores"]
    assert scores["dead"] == 0.0 and min(scores["a"], scores["b"]) > 0
    assert rec["rounds"][0]["dropped"] == ["dead"]
    assert rec["modules_after"] == 2 and sorted(lora_layers(model)) == ["a", "b"]
    assert type(model.dead) is nn.Linear  # removed, not zeroed: the plain layer is back
    assert not any("dead.lora" in n for n, _ in model.named_parameters())


def test_gated_dsic_meets_a_module_or_parameter_budget_over_rounds():
    train, val, _ = splits()
    model = TinyForecaster()
    with pytest.warns(UserWarning, match="reconstructed head|heads"):
        tuned = compress.finetune(model, train, val, method="trace", rank=2, merge=False,
                                  trace={**TRACE_FAST, "budget": 0.25, "drop_fraction": 0.5}, **FAST)
    rec = tuned.finetune_info["trace"]
    assert rec["modules_before"] == 12 and rec["modules_after"] == 3 and len(rec["rounds"]) >= 2
    assert len(lora_layers(tuned)) == 3 and len(peft_modules(tuned)) > 0
    assert tuned.finetune_history[0]["trainable_params"] < TinyForecaster().head.weight.numel() + 12 * 2 * 2 * 32
    model2 = TinyForecaster(f=64)  # FFN adapters are larger than attention ones: a params budget differs
    with pytest.warns(UserWarning):
        tuned2 = compress.finetune(model2, train, val, method="trace", rank=2, merge=True,
                                   trace={**TRACE_FAST, "budget": 0.4, "budget_kind": "params"}, **FAST)
    rec2 = tuned2.finetune_info["trace"]
    assert rec2["lora_params_after"] <= 0.4 * rec2["lora_params_before"]
    assert not peft_modules(tuned2)
    with pytest.raises(ValueError, match="budget_kind"):
        TraceConfig(budget_kind="layers")


@pytest.mark.parametrize("strategy", ["structured", "layers"])
def test_pruned_then_trace_tuned_forecaster_is_small_and_saves(strategy, tmp_path):
    model = compress.models.load("transformer", size="tiny")
    train, val = data_for(model)
    x = model.example_inputs(2)
    if strategy == "structured":
        pruned = compress.prune(model, "magnitude", ratio=0.5, example_inputs=x)
    else:
        pruned = compress.prune(model, "random", ratio=0.5, strategy="layers", example_inputs=x)
    with pytest.warns(UserWarning):
        tuned = compress.finetune(pruned, train, val, method="trace", rank=2, trace=TRACE_FAST, **FAST)
    n_pruned = sum(p.numel() for p in pruned.parameters())
    assert sum(p.numel() for p in tuned.parameters()) == n_pruned < sum(p.numel() for p in model.parameters())
    assert tuned.finetune_info["trace"]["modules_after"] < tuned.finetune_info["trace"]["modules_before"]
    tuned.save(tmp_path / "m")
    again = compress.models.load(str(tmp_path / "m"))
    with torch.no_grad():
        assert torch.equal(tuned(x), again(x))


def test_prune_then_finetune_takes_a_finetune_method():
    model = compress.models.load("transformer", size="tiny")
    train, val = data_for(model)
    with pytest.warns(UserWarning):
        small = compress.prune_then_finetune(model, train, val, max_ratio=0.3, step_fraction=0.3, patience=1,
                                             calibration_batches=2, validation_batches=2, batch_size=16,
                                             finetune_epochs=1, max_train_batches=3, max_val_batches=2,
                                             progress=False, finetune_method="trace", rank=2, trace=TRACE_FAST)
    assert small.finetune_info["method"] == "trace" and small.compress_pruning
    assert small.finetune_info["trainable_params"] < sum(p.numel() for p in model.parameters())


def test_full_finetune_reports_trainable_params_and_measure_counts_them():
    train, val, _ = splits()
    model = TinyForecaster()
    model.embed.weight.requires_grad_(False)
    tuned = compress.finetune(model, train, val, **FAST)
    total = sum(p.numel() for p in model.parameters())
    assert tuned.finetune_info["method"] == "full"
    assert tuned.finetune_history[0]["trainable_params"] == total - model.embed.weight.numel()
    m = compress.measure(tuned, torch.randn(2, 16, 3), latency=False, memory=False)
    assert m.trainable_params == total - model.embed.weight.numel() and m.params == total


@needs_head
def test_trace_uses_the_reconstructed_head_on_a_patch_backbone(tmp_path):
    model = compress.models.load("patchtst", size="tiny")
    train, val = data_for(model)
    lora = compress.finetune(model, train, val, method="lora", rank=2, merge=False, **FAST)
    tuned = compress.finetune(model, train, val, method="trace", rank=2, trace=TRACE_FAST, merge=False, **FAST)
    assert tuned.finetune_info["head"] == "reconstructed"
    assert tuned.finetune_info["trainable_params"] < lora.finetune_info["trainable_params"]
    merged = merge_lora(tuned)
    merged.save(tmp_path / "m")
    again = compress.models.load(str(tmp_path / "m"))
    x = model.example_inputs(2, 3)
    with torch.no_grad():
        assert torch.equal(merged(x), again(x))


def test_lora_on_a_pruned_torch_encoder_uses_the_drop_in_attention():
    """Structured pruning swaps nn.MultiheadAttention for compress.graph.MultiheadAttention:
    its q/k/v/out Linears (and nn.TransformerEncoderLayer's linear1/linear2) get adapters."""
    train, val, _ = splits()
    model = TorchEncoderForecaster()
    pruned = compress.prune(model, "magnitude", ratio=0.5, example_inputs=torch.randn(2, 16, 3))
    names = resolve_targets(pruned)
    assert {"encoder.layers.0.self_attn.q_proj", "encoder.layers.0.linear1"} <= set(names)
    tuned = compress.finetune(pruned, train, val, method="lora", rank=2, merge=False, **FAST)
    x = torch.randn(3, 16, 3)
    with torch.no_grad():
        a = tuned(x)
        b = merge_lora(tuned)(x)
    assert not peft_modules(tuned) and torch.allclose(a, b, atol=1e-5)
