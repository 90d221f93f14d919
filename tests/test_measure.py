"""Tests for compress.measure: FLOP counts against hand counts, density, the measure() contract.

Timings are never asserted (only their presence); see DESIGN.md "Measuring honestly".
"""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from compress.measure import Measurement, count_flops, measure

torch.manual_seed(0)


# ----------------------------------------------------------------------------- models


class ExplicitAttention(nn.Module):
    """Multi-head self-attention with explicit matmuls; `use_sdpa` swaps in the fused op."""

    def __init__(self, d_model: int, heads: int, use_sdpa: bool = False, causal: bool = False):
        super().__init__()
        self.h, self.use_sdpa, self.causal = heads, use_sdpa, causal
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.o = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):  # x: [B, L, D]
        b, length, d = x.shape
        q, k, v = (p(x).view(b, length, self.h, d // self.h).transpose(1, 2)
                   for p in (self.q, self.k, self.v))  # each [B, H, L, d]
        if self.use_sdpa:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # [B, H, L, d]
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.h)  # [B, H, L, L]
            if self.causal:
                mask = torch.ones(length, length, dtype=torch.bool).triu(1)
                scores = scores.masked_fill(mask, float("-inf"))
            out = scores.softmax(-1) @ v  # [B, H, L, d]
        return self.o(out.transpose(1, 2).reshape(b, length, d))


def attention_hand_flops(b, length, d, projections=4):
    # projections: 2*B*L*D*D each; Q K^T and A V: 2*B*L*L*D each (summed over heads)
    return projections * 2 * b * length * d * d + 2 * (2 * b * length * length * d)


def encoder_layer_hand_flops(lengths, d, ffn):
    tokens = sum(lengths)
    linear = 2 * tokens * (3 * d * d + d * d + 2 * d * ffn)  # in-proj, out-proj, FFN
    return linear + sum(4 * n * n * d for n in lengths)  # Q K^T + A V per sequence


class SpectralBlock(nn.Module):
    """rfft over time, a learned complex filter per frequency, irfft back."""

    def __init__(self, length: int):
        super().__init__()
        self.length = length
        self.filter = nn.Parameter(torch.randn(length // 2 + 1, dtype=torch.cfloat))

    def forward(self, x):  # x: [B, C, N]
        spec = torch.fft.rfft(x, dim=-1)  # [B, C, N//2+1]
        return torch.fft.irfft(spec * self.filter, n=self.length, dim=-1)  # [B, C, N]


# ------------------------------------------------------------------------------ FLOPs


def test_mlp_flops_equal_hand_count_for_2d_and_3d_inputs():
    mlp = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    assert count_flops(mlp, torch.randn(4, 16)) == 2 * 4 * 16 * 32 + 2 * 4 * 32 * 8
    assert count_flops(mlp, torch.randn(4, 10, 16)) == 2 * 40 * 16 * 32 + 2 * 40 * 32 * 8


def test_explicit_matmul_attention_flops_equal_hand_count():
    x = torch.randn(2, 12, 32)
    assert count_flops(ExplicitAttention(32, 4), x) == attention_hand_flops(2, 12, 32)


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_attention_counts_the_same_flops_as_explicit_matmuls(causal):
    explicit, fused = ExplicitAttention(32, 4, causal=causal), ExplicitAttention(32, 4, True, causal)
    x = torch.randn(2, 12, 32)
    with torch.no_grad():
        by_op = count_flops(fused, x, by_op=True)
        # the fused CPU kernel (counted 0 by stock FlopCounterMode) is what ran
        assert "aten._scaled_dot_product_flash_attention_for_cpu" in by_op
        assert sum(by_op.values()) == count_flops(explicit, x) == attention_hand_flops(2, 12, 32)


def test_sdpa_backward_is_counted_as_twice_the_forward():
    q, k, v = (torch.randn(2, 4, 12, 8, requires_grad=True) for _ in range(3))  # [B, H, L, E]
    from torch.utils.flop_counter import FlopCounterMode

    from compress.measure import FLOP_FORMULAS

    out = F.scaled_dot_product_attention(q, k, v)
    with FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as counter:
        out.sum().backward()
    forward = 2 * (2 * 2 * 4 * 12 * 12 * 8)
    assert counter.get_total_flops() == 2 * forward


def test_multihead_attention_fast_path_equals_hand_count():
    mha = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    x = torch.randn(2, 12, 32)
    with torch.no_grad():
        by_op = count_flops(lambda t: mha(t, t, t), x, by_op=True)
    assert list(by_op) == ["aten._native_multi_head_attention"]  # the fast path ran
    in_proj, out_proj = 2 * 24 * 32 * 96, 2 * 24 * 32 * 32
    assert by_op["aten._native_multi_head_attention"] == in_proj + 2 * (2 * 2 * 12 * 12 * 32) + out_proj
    # ...and the slow path (training, autograd) gives the same number
    assert count_flops(lambda t: mha.train()(t, t, t), x) == sum(by_op.values())


@pytest.mark.parametrize("norm_first,activation", [(False, "relu"), (True, "gelu")])
def test_transformer_encoder_layer_fast_path_equals_hand_count(norm_first, activation):
    layer = nn.TransformerEncoderLayer(32, 4, 48, batch_first=True, norm_first=norm_first,
                                       activation=activation)
    x = torch.randn(3, 10, 32)
    with torch.no_grad():
        by_op = count_flops(layer.eval(), x, by_op=True)
    assert list(by_op) == ["aten._transformer_encoder_layer_fwd"]
    assert by_op["aten._transformer_encoder_layer_fwd"] == encoder_layer_hand_flops([10] * 3, 32, 48)
    # measure() counts in eval + no_grad, i.e. through the fast path
    assert measure(layer.train(), x, latency=False, memory=False).flops == sum(by_op.values())


def test_transformer_encoder_counts_equal_in_training_autograd_and_eval_no_grad():
    encoder = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=True), num_layers=2,
    )
    x = torch.randn(3, 10, 32)
    hand = 2 * encoder_layer_hand_flops([10] * 3, 32, 64)
    encoder.train()
    training = count_flops(encoder, x)  # autograd records a graph; dropout active
    encoder.eval()
    with torch.no_grad():
        inference = count_flops(encoder, x, by_op=True)
    assert "aten._transformer_encoder_layer_fwd" in inference
    assert training == sum(inference.values()) == hand


def test_nested_fast_path_counts_only_the_unpadded_tokens():
    encoder = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), num_layers=2,
    ).eval()
    x = torch.randn(3, 6, 32)
    pad = torch.zeros(3, 6, dtype=torch.bool)  # True = padding
    pad[0, 4:] = True
    pad[1, 2:] = True
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "nested tensors are a prototype"
        flops = count_flops(encoder, {"src": x, "src_key_padding_mask": pad})
    assert flops == 2 * encoder_layer_hand_flops([4, 2, 6], 32, 64)


def test_fft_block_is_counted_with_the_documented_convention():
    n, batch, channels = 64, 2, 3
    flops = count_flops(SpectralBlock(n), torch.randn(batch, channels, n))
    real_transform = 2.5 * n * math.log2(n)  # one real FFT of N points
    assert flops > 0
    assert flops == round(batch * channels * real_transform) * 2  # rfft + irfft


def test_complex_and_multidim_fft_follow_the_same_convention():
    x = torch.randn(2, 8, 16, dtype=torch.cfloat)
    assert count_flops(lambda t: torch.fft.fft(t, dim=-1), x) == round(2 * 8 * 5 * 16 * 4)
    n = 8 * 16  # a 2-D transform of 8x16 points is one transform of N = 128 points
    assert count_flops(lambda t: torch.fft.fft2(t), x) == round(2 * 5 * n * math.log2(n))


def test_lstm_is_counted_like_its_matmuls():
    lstm = nn.LSTM(8, 16, num_layers=2, batch_first=True)
    x = torch.randn(2, 5, 8)
    tokens, gates = 2 * 5, 4 * 16
    hand = 2 * tokens * (gates * 8 + gates * 16) + 2 * tokens * (gates * 16 + gates * 16)
    with torch.no_grad():
        assert count_flops(lstm, x) == hand


# ----------------------------------------------------------------------------- density


def test_half_zeroed_weights_give_half_density():
    model = nn.Sequential(nn.Linear(8, 8, bias=False), nn.LayerNorm(8))
    with torch.no_grad():
        model[0].weight[:4] = 0.0  # 32 of 64 weights
    m = measure(model, torch.randn(2, 8), latency=False, memory=False)
    assert m.params == 64 + 16
    assert m.nonzero_params == 32 + 8  # LayerNorm bias starts at zero
    assert m.density == pytest.approx(40 / 80)
    assert m.prunable_params == 64
    assert m.prunable_density == pytest.approx(0.5)


def test_torch_prune_masks_are_applied_before_counting():
    model = nn.Sequential(nn.Linear(10, 10, bias=False))
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    m = measure(model, torch.randn(2, 10), latency=False, memory=False)
    assert m.params == 100  # weight_orig; the mask is a buffer
    assert m.nonzero_params == 50
    assert m.prunable_density == pytest.approx(0.5)


def test_prunable_can_be_chosen_by_module_list_or_type():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    x = torch.randn(1, 4)
    assert measure(model, x, latency=False, memory=False).prunable_params == 16 + 8
    assert measure(model, x, latency=False, memory=False, prunable=[model[1]]).prunable_params == 8
    assert measure(model, x, latency=False, memory=False, prunable=nn.LayerNorm).prunable_params is None
    assert measure(model, x, latency=False, memory=False,
                   prunable=[model[0].bias]).prunable_params == 4


# ------------------------------------------------------------------- measure() contract


def test_latency_is_a_positive_float_when_requested_and_none_otherwise():
    model, x = nn.Linear(16, 16), torch.randn(4, 16)
    timed = measure(model, x, repeats=3)
    assert isinstance(timed.latency_ms, float) and timed.latency_ms > 0
    assert isinstance(timed.latency_iqr_ms, float) and timed.latency_iqr_ms >= 0
    assert timed.threads == 1
    untimed = measure(model, x, latency=False)
    assert untimed.latency_ms is None and untimed.latency_iqr_ms is None


def test_measure_restores_training_flags_and_threads_and_leaves_the_model_unchanged():
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.BatchNorm1d(8))
    model.train()
    model[2].eval()  # mixed flags must come back as they were
    before = {k: v.clone() for k, v in model.state_dict().items()}
    threads = torch.get_num_threads()
    measure(model, torch.randn(4, 8), repeats=2, threads=1)
    assert [m.training for m in model.modules()] == [True, True, True, False]
    assert torch.get_num_threads() == threads
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_tuple_and_dict_inputs_are_passed_as_args_and_kwargs():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(6, 3)

        def forward(self, x, y):  # x: [B, 4], y: [B, 6]
            return self.a(x) + self.b(y)

    model, x, y = TwoInputs(), torch.randn(2, 4), torch.randn(2, 6)
    hand = 2 * 2 * 4 * 3 + 2 * 2 * 6 * 3
    assert measure(model, (x, y), latency=False, memory=False).flops == hand
    assert measure(model, {"y": y, "x": x}, latency=False, memory=False).flops == hand


def test_peak_memory_counts_the_activations_of_one_forward():
    model = nn.Sequential(nn.Linear(1024, 2048), nn.ReLU(), nn.Linear(2048, 1024))
    x = torch.randn(256, 1024)
    m = measure(model, x, latency=False)
    # Linear output and ReLU output (2 MiB each) are alive together; weights are not counted
    assert 4.0 <= m.peak_memory_mb < 6.0
    assert measure(model, x, latency=False, memory=False).peak_memory_mb is None


def test_peak_memory_is_skipped_rather_than_breaking_a_running_profiler():
    with torch.profiler.profile() as prof, pytest.warns(UserWarning, match="profiler"):
        m = measure(nn.Linear(4, 4), torch.randn(2, 4), latency=False)
    assert m.peak_memory_mb is None
    assert any(e.name == "aten::addmm" for e in prof.events())  # the caller's session survived


# ----------------------------------------------------------------------------- compare


def _measurement(**overrides):
    fields = dict(params=1_000_000, nonzero_params=1_000_000, density=1.0, prunable_params=900_000,
                  prunable_density=1.0, flops=4_000_000_000, latency_ms=2.0, latency_iqr_ms=0.1,
                  threads=1, peak_memory_mb=8.0)
    return Measurement(**{**fields, **overrides})


def test_compare_shows_every_metric_and_ratios_as_original_over_pruned():
    pruned = _measurement(flops=1_000_000_000, latency_ms=0.5)
    original = _measurement(params=2_000_000, nonzero_params=2_000_000)
    table = pruned.compare(original)
    for metric in ("params", "non-zero params", "density", "FLOPs", "latency", "peak memory", "threads"):
        assert metric in table
    params_row = next(line for line in table.splitlines() if line.startswith("| params"))
    assert "1.00M" in params_row and "2.00M" in params_row and "2.00x" in params_row
    flops_row = next(line for line in table.splitlines() if line.startswith("| FLOPs"))
    assert "4.00x" in flops_row
    latency_row = next(line for line in table.splitlines() if line.startswith("| latency"))
    assert "4.00x" in latency_row  # speedup of pruned
    assert "original/pruned" in table and "speedup" in table


def test_compare_says_na_for_missing_metrics_and_accepts_names():
    table = _measurement(latency_ms=None, latency_iqr_ms=None).compare(_measurement(), names=("small", "big"))
    latency_row = next(line for line in table.splitlines() if line.startswith("| latency"))
    assert "n/a" in latency_row
    assert "big/small" in table


def test_as_dict_has_every_field():
    d = _measurement().as_dict()
    assert d["params"] == 1_000_000 and d["threads"] == 1
    assert set(d) == {
        "params", "nonzero_params", "density", "prunable_params", "prunable_density", "flops",
        "latency_ms", "latency_iqr_ms", "threads", "peak_memory_mb", "weight_mb", "backend", "trainable_params",
    }


def test_flops_count_a_model_that_expands_a_parameter_table():
    class PosTable(nn.Module):  # Crossformer-style: a parameter view taken under no_grad
        def __init__(self):
            super().__init__()
            self.pos = nn.Parameter(torch.randn(1, 4, 8))
            self.lin = nn.Linear(8, 8)

        def forward(self, x):  # [B, 4, 8]
            return self.lin(x + self.pos.expand(x.shape[0], -1, -1))

    m = measure(PosTable(), torch.randn(3, 4, 8), latency=False, memory=False)
    assert m.flops == 2 * 3 * 4 * 8 * 8
