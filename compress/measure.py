"""Measure a model: parameters, density, FLOPs, latency and peak memory.

`measure(model, example_inputs)` returns a `Measurement`; `Measurement.compare(other)`
renders the side-by-side table that proves what pruning bought.

What is counted, and how
------------------------
* **Parameters / density.** Every parameter entry is counted once (tied parameters too);
  a parameter is "non-zero" entry-wise, exactly (``!= 0``). Masks made by
  ``torch.nn.utils.prune`` (``weight_orig`` parameter times ``weight_mask`` buffer) are
  applied before counting, so a masked model shows its real density. "Prunable" density is
  taken over the weights of ``nn.Linear`` and ``nn.Conv1d`` layers and the input
  projection of ``nn.MultiheadAttention`` (a Linear in all but name), or over what the
  caller passes as ``prunable``. Biases and norms are never prunable by default. A model
  that `compress.prune(strategy="unstructured")` made carries the weights it was allowed
  to zero (its record's ``layers``): by default those are the prunable set, so the
  protected input embedding and forecasting head are not in the denominator.
* **FLOPs** are ``2 x multiply-accumulates`` of the matrix-like work of one forward
  (matmuls, convolutions, attention, FFTs), the convention of
  ``torch.utils.flop_counter.FlopCounterMode``, which does the counting at the aten level.
  Element-wise ops, softmax, norms and activations count 0, as they do there.
* **Latency** is the median (and inter-quartile range) of ``repeats`` blocks timed with
  ``torch.utils.benchmark.Timer`` after a warm-up, at a fixed, reported thread count.
* **Peak memory** is the peak of extra bytes allocated during one forward (see
  `measure`'s docstring for exactly how, on CPU and on CUDA).

Why some FLOP formulas are hand-written here
--------------------------------------------
``FlopCounterMode`` only counts aten ops that are in its registry, and it sees a fused
kernel as one opaque op (the ops inside it run below the dispatch mode). In torch 2.13 on
CPU that leaves these gaps, all filled by `FLOP_FORMULAS` below:

* ``F.scaled_dot_product_attention`` dispatches to
  ``aten._scaled_dot_product_flash_attention_for_cpu`` (whenever the shapes allow it:
  e.g. self-attention with equal q/k/v head sizes, or ``is_causal=True``), which is not
  registered: it counted 0. Formula: ``2*B*H*Lq*Lk*E`` (Q K^T) ``+ 2*B*H*Lq*Lk*Ev`` (A V),
  the same as the explicit-matmul version; causal masking is not discounted (torch's
  own CUDA formulas make the same choice). Its backward is registered too.
* ``nn.MultiheadAttention`` in eval + no_grad takes the fast path,
  ``aten._native_multi_head_attention``; ``nn.TransformerEncoderLayer`` takes
  ``aten._transformer_encoder_layer_fwd``. Both counted 0. Formulas: the in/out
  projections, ``Q K^T`` and ``A V`` (and the two FFN matmuls of the encoder layer),
  exactly what the slow path's ``mm``/``addmm``/``bmm`` add up to; with nested
  (padding-free) inputs only the real tokens are counted, as only they are computed.
* FFTs (``aten._fft_r2c``, ``_fft_c2r``, ``_fft_c2c``) were never counted. Convention
  (FFTW's benchFFT): a complex transform of ``N`` points costs ``5 N log2 N`` real flops,
  a real-input or real-output transform of ``N`` real points half that,
  ``2.5 N log2 N``; ``N`` is the product of the transformed sizes, and the count is
  multiplied by the number of independent transforms in the batch. Normalisation
  scaling is element-wise and not counted.
* LSTM on CPU runs ``aten.mkldnn_rnn_layer`` (0 before); counted as
  ``2 * tokens * (|W_ih| + |W_hh|)`` per layer and direction, what GRU's
  ``mm``/``addmm`` decomposition gives.
* ``dot``, ``mv``, ``addmv``, ``addbmm`` and ``_addmm_activation`` are registered for
  completeness (``2 x`` their multiply-accumulates).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from compress.measure import measure
    >>> model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    >>> m = measure(model, torch.randn(4, 16), latency=False)
    >>> m.params, m.flops  # 2*4*16*32 + 2*4*32*8
    (808, 6144)
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from tabulate import tabulate
from torch import Tensor, nn
from torch.utils import benchmark
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["measure", "Measurement", "count_flops", "interleaved_latency", "FLOP_FORMULAS", "PRUNABLE_TYPES"]

aten = torch.ops.aten

#: Module types whose ``weight`` counts as prunable when ``prunable`` is not given.
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d)

_MIB = 2**20
_WARMUP_S = 0.05  # warm-up: at least 2 calls and about this long
_MIN_BLOCK_S = 0.01  # each timed block runs enough calls to last about this long


# --------------------------------------------------------------------------------------
# FLOP formulas for what FlopCounterMode misses (see the module docstring)
# --------------------------------------------------------------------------------------


def _prod(xs: Iterable[int]) -> int:
    return math.prod(int(x) for x in xs)


def _raw(fn: Callable[..., int]) -> Callable[..., int]:
    """Mark a formula as taking the op's real arguments, not their shapes."""
    fn._get_raw = True  # type: ignore[attr-defined]  # read by FlopCounterMode
    return fn


def _sdpa_fwd_flops(q: torch.Size, k: torch.Size, v: torch.Size) -> int:
    # q: [..., Hq, Lq, E]  k: [..., Hkv, Lk, E]  v: [..., Hkv, Lk, Ev]; grouped-query
    # attention broadcasts the Hkv heads to Hq, so the work is per query head.
    *batch_heads, lq, e = q
    lk, ev = k[-2], v[-1]
    bh = _prod(batch_heads)
    return 2 * bh * lq * lk * e + 2 * bh * lq * lk * ev  # Q K^T + A V


def _sdpa_cpu_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return _sdpa_fwd_flops(q, k, v)


def _sdpa_cpu_backward_flops(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    # dV = A^T dO, dA = dO V^T, dQ = dS K, dK = dS^T Q: two of each forward matmul.
    return 2 * _sdpa_fwd_flops(q, k, v)


def _lengths(x: Tensor) -> list[int]:
    """Sequence length of each sample of a batch-first ``[B, L, E]`` (or nested) tensor."""
    if x.is_nested:
        return [int(t.shape[0]) for t in x.unbind()]  # each [L_i, E]
    *batch, length, _ = x.shape
    return [int(length)] * _prod(batch)


def _attention_flops(q_lengths: list[int], k_lengths: list[int], embed_dim: int) -> int:
    # Per sample and head: Q K^T is 2*Lq*Lk*d, A V is 2*Lq*Lk*d; summed over the
    # H heads (H*d = E) that is 4*Lq*Lk*E.
    return sum(4 * lq * lk * embed_dim for lq, lk in zip(q_lengths, k_lengths, strict=True))


@_raw
def _native_mha_flops(query, key, value, embed_dim, num_head, qkv_weight, qkv_bias,
                      proj_weight, proj_bias, *args, out_val=None, **kwargs) -> int:
    # query: [B, Lq, E], key/value: [B, Lk, E] (or nested); qkv_weight: [3E, E];
    # proj_weight: [E, E].
    lq, lk = _lengths(query), _lengths(key)
    tq, tk = sum(lq), sum(lk)
    e = int(embed_dim)
    in_proj = 2 * tq * e * e + 2 * 2 * tk * e * e  # q from query; k, v from key/value
    out_proj = 2 * tq * proj_weight.numel()
    return in_proj + _attention_flops(lq, lk, e) + out_proj


@_raw
def _encoder_layer_flops(src, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight,
                         proj_bias, use_gelu, norm_first, eps, norm_weight_1, norm_bias_1,
                         norm_weight_2, norm_bias_2, ffn_weight_1, ffn_bias_1, ffn_weight_2,
                         ffn_bias_2, *args, out_val=None, **kwargs) -> int:
    # src: [B, L, E] (or nested); qkv_weight: [3E, E]; proj_weight: [E, E];
    # ffn_weight_1: [F, E]; ffn_weight_2: [E, F].
    lengths = _lengths(src)
    tokens = sum(lengths)
    linear = qkv_weight.numel() + proj_weight.numel() + ffn_weight_1.numel() + ffn_weight_2.numel()
    return 2 * tokens * linear + _attention_flops(lengths, lengths, int(embed_dim))


def _fft_flops(shape: torch.Size, dim: Iterable[int], per_point: float) -> int:
    # shape: the real-space (full-length) shape; `per_point * N * log2(N)` per transform.
    dims = [d % len(shape) for d in dim]
    n = _prod(shape[d] for d in dims)
    if n <= 1:
        return 0
    transforms = _prod(shape) // n
    return round(transforms * per_point * n * math.log2(n))


def _fft_r2c_flops(x, dim, normalization, onesided, *args, out_shape=None, **kwargs) -> int:
    return _fft_flops(x, dim, 2.5)  # x: real input, its full length is transformed


def _fft_c2r_flops(x, dim, normalization, last_dim_size, *args, out_shape=None, **kwargs) -> int:
    return _fft_flops(out_shape, dim, 2.5)  # x is half a spectrum; out_shape is full length


def _fft_c2c_flops(x, dim, normalization, forward, *args, out_shape=None, **kwargs) -> int:
    return _fft_flops(x, dim, 5.0)


def _mkldnn_rnn_layer_flops(x, w_ih, w_hh, *args, out_shape=None, **kwargs) -> int:
    # x: [T, B, In]; w_ih: [G*H, In]; w_hh: [G*H, H] (G = 4 gates for LSTM)
    tokens = _prod(x) // x[-1]
    return 2 * tokens * (_prod(w_ih) + _prod(w_hh))


def _dot_flops(a, b, *args, out_shape=None, **kwargs) -> int:
    return 2 * _prod(a)  # a, b: [N]


def _mv_flops(m, v, *args, out_shape=None, **kwargs) -> int:
    return 2 * _prod(m)  # m: [M, N], v: [N]


def _addmv_flops(bias, m, v, *args, out_shape=None, **kwargs) -> int:
    return 2 * _prod(m)


def _addbmm_flops(bias, a, b, *args, out_shape=None, **kwargs) -> int:
    nb, m, k = a  # a: [B, M, K], b: [B, K, N]
    return 2 * nb * m * k * b[-1]


def _addmm_activation_flops(bias, a, b, *args, out_shape=None, **kwargs) -> int:
    return 2 * a[0] * a[1] * b[1]  # a: [M, K], b: [K, N]


#: Formulas added to FlopCounterMode's registry, keyed by aten op (see the module docstring).
FLOP_FORMULAS: dict[Any, Callable[..., int]] = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops,
    aten._native_multi_head_attention: _native_mha_flops,
    aten._transformer_encoder_layer_fwd: _encoder_layer_flops,
    aten._fft_r2c: _fft_r2c_flops,
    aten._fft_c2r: _fft_c2r_flops,
    aten._fft_c2c: _fft_c2c_flops,
    aten.mkldnn_rnn_layer: _mkldnn_rnn_layer_flops,
    aten.dot: _dot_flops,
    aten.vdot: _dot_flops,
    aten.mv: _mv_flops,
    aten.addmv: _addmv_flops,
    aten.addbmm: _addbmm_flops,
    aten._addmm_activation: _addmm_activation_flops,
}


# --------------------------------------------------------------------------------------
# Calling the model
# --------------------------------------------------------------------------------------


def _call(model: nn.Module, example_inputs: Any) -> Callable[[], Any]:
    """A no-argument function running one forward: tuple -> *args, Mapping -> **kwargs."""
    if isinstance(example_inputs, tuple):
        return lambda: model(*example_inputs)
    if isinstance(example_inputs, Mapping):
        return lambda: model(**example_inputs)
    return lambda: model(example_inputs)


@contextlib.contextmanager
def _frozen(model: nn.Module):
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, r in flags:
            p.requires_grad_(r)


def count_flops(model: Callable[..., Any], example_inputs: Any, *,
                by_op: bool = False) -> int | dict[str, int]:
    """FLOPs (2 x multiply-accumulates) of one forward, gaps of FlopCounterMode filled.

    The forward runs as the caller set it up: train/eval mode and grad mode are left
    alone (`measure` counts in eval mode under ``torch.no_grad()``). Only the forward is
    counted, even when autograd records a graph.

    Args:
        model: the module (or any callable) to run.
        example_inputs: a Tensor (``model(x)``), a tuple (``model(*x)``) or a dict
            (``model(**x)``).
        by_op: return ``{aten op name: flops}`` instead of the total.

    Returns:
        The total FLOPs, or their split by aten op.

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> q = torch.randn(1, 2, 8, 4)  # [B, H, L, E]
        >>> count_flops(lambda x: F.scaled_dot_product_attention(x, x, x), q)
        2048
    """
    counter = FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS)
    with counter:
        _call(model, example_inputs)()
    if by_op:
        return {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops())


# --------------------------------------------------------------------------------------
# Parameters and density
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Param:
    value: Tensor  # the effective weights (mask applied)
    module: nn.Module
    name: str  # name in `module`, without a `_orig` suffix
    trainable: bool = False  # the parameter requires grad


def _parameters(model: nn.Module) -> dict[int, _Param]:
    """Every parameter once, keyed by id, with torch.nn.utils.prune masks applied."""
    from .sparse import SparseLinear

    params: dict[int, _Param] = {}
    for module in model.modules():
        if isinstance(module, SparseLinear):
            # the CSR weight counts as the dense weight it stands for (entries and zeros),
            # so density stays comparable with the masked model; its bytes are in weight_mb
            params[id(module.values)] = _Param(module.dense_weight(), module, "weight")
        for name, p in module.named_parameters(recurse=False):
            if id(p) in params:
                continue  # tied
            value: Tensor = p
            if name.endswith("_orig"):
                name = name[: -len("_orig")]
                mask = module._buffers.get(name + "_mask")
                if mask is not None:
                    value = p * mask
            params[id(p)] = _Param(value.detach(), module, name, p.requires_grad)
    return params


def _sparse_types() -> tuple[type[nn.Module], ...]:
    from .sparse import SparseLinear

    return (SparseLinear,)


def _stored_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer as stored (CSR indices and values of sparse
    layers included; tied tensors once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def _nonzero(t: Tensor) -> int:
    if t.layout != torch.strided:
        t = t.to_dense()
    return int(torch.count_nonzero(t))


def _recorded_prunable(model: nn.Module | None) -> set[int] | None:
    """Ids of the weights the model's last unstructured pruning step was allowed to zero."""
    from .sparse import SparseLinear

    records = [r for r in getattr(model, "compress_pruning", None) or []
               if isinstance(r, dict) and r.get("strategy") == "unstructured" and r.get("layers")]
    if not records:
        return None
    modules, ids = dict(model.named_modules()), set()
    for name in records[-1]["layers"]:
        m = modules.get(name)
        if isinstance(m, SparseLinear):
            ids.add(id(m.values))
        elif m is not None and isinstance(getattr(m, "weight", None), Tensor):
            ids.add(id(m.weight))
        else:
            owner, _, attr = name.rpartition(".")
            t = getattr(modules.get(owner), attr, None)
            if isinstance(t, Tensor):
                ids.add(id(t))
    return ids or None


def _prunable_ids(params: dict[int, _Param], prunable: Any, model: nn.Module | None = None) -> set[int]:
    """Ids of the prunable parameters. `prunable`: None (the weights the model's unstructured
    pruning record names, else the default layers), a module type or tuple of types, or an
    iterable of modules (their ``*weight`` parameters) and Parameters."""
    if prunable is None:
        recorded = _recorded_prunable(model)
        if recorded is not None:
            return recorded & set(params)
        return {
            i for i, p in params.items()
            if (isinstance(p.module, PRUNABLE_TYPES + _sparse_types()) and p.name == "weight")
            or (isinstance(p.module, nn.MultiheadAttention)
                and p.name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"))
        }
    if isinstance(prunable, type) or (
        isinstance(prunable, tuple) and prunable and all(isinstance(t, type) for t in prunable)
    ):
        return {i for i, p in params.items() if isinstance(p.module, prunable) and p.name.endswith("weight")}
    prunable = [prunable] if isinstance(prunable, (nn.Module, Tensor)) else list(prunable)
    modules = {id(m) for m in prunable if isinstance(m, nn.Module)}
    tensors = {id(t) for t in prunable if isinstance(t, Tensor)}
    return {
        i for i, p in params.items()
        if i in tensors or (id(p.module) in modules and p.name.endswith("weight"))
    }


# --------------------------------------------------------------------------------------
# Latency and memory
# --------------------------------------------------------------------------------------


def _latency(fn: Callable[[], Any], repeats: int, threads: int) -> tuple[float, float]:
    """(median, IQR) in ms of `repeats` timed blocks, after a warm-up."""
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    first = timer.timeit(1).mean  # warm-up (lazy init, allocator, caches); seconds
    warm = timer.timeit(max(2, math.ceil(_WARMUP_S / max(first, 1e-9)))).mean
    number = max(1, math.ceil(_MIN_BLOCK_S / max(warm, 1e-9)))  # calls per block
    times = np.array([timer.timeit(number).mean for _ in range(repeats)]) * 1e3  # ms/call
    q1, median, q3 = np.percentile(times, [25, 50, 75])
    return float(median), float(q3 - q1)


@contextlib.contextmanager
def _drop_usdt_stderr_lines():
    """Silence the two ``USDT: ... profiler_start/stop`` lines kineto's C++ side writes to
    fd 2 on every profiler start and stop; anything else written meanwhile is passed on."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            other = [ln for ln in tmp.read().splitlines(keepends=True) if not ln.startswith(b"USDT:")]
            if other:
                os.write(2, b"".join(other))


def _cpu_peak_bytes(fn: Callable[[], Any]) -> int:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _drop_usdt_stderr_lines():
        prof.__enter__()
    try:
        out = fn()
        del out  # freed while profiling: the peak is what counts
    finally:
        with _drop_usdt_stderr_lines():
            prof.__exit__(None, None, None)
    # One "[memory]" event per allocation (+bytes) and free (-bytes) by the CPU allocator;
    # frees of memory allocated before profiling (weights, inputs) are not reported.
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == DeviceType.CPU]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def _cuda_peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = fn()
    torch.cuda.synchronize(device)
    del out
    return torch.cuda.max_memory_allocated(device) - base


def _device(model: nn.Module, example_inputs: Any) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    values = example_inputs.values() if isinstance(example_inputs, Mapping) else (
        example_inputs if isinstance(example_inputs, tuple) else (example_inputs,))
    for t in values:
        if isinstance(t, Tensor):
            return t.device
    return torch.device("cpu")


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def _si(n: float) -> str:
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}"
    return f"{n:g}"


@dataclasses.dataclass
class Measurement:
    """What `measure` found for one model on one input.

    Attributes:
        params: number of parameter entries (tied parameters counted once).
        nonzero_params: entries that are exactly non-zero (prune masks applied).
        density: ``nonzero_params / params``.
        prunable_params: entries of the prunable weights (Linear/Conv1d weights, the
            MultiheadAttention input projection, or the caller's choice); None if none.
        prunable_density: non-zero fraction of the prunable weights; None if none.
        flops: ``2 x multiply-accumulates`` of one forward (see the module docstring).
        latency_ms: median time of one forward in ms; None if not timed.
        latency_iqr_ms: inter-quartile range of the timed blocks in ms; None if not timed.
        threads: torch intra-op threads used for timing.
        peak_memory_mb: peak extra memory of one forward in MiB (2**20 bytes); None if
            not measured.
        weight_mb: MiB that the parameters and buffers take as stored: a
            `compress.sparsify`'d layer counts its CSR arrays, not a dense weight.
        backend: what ran the timed forwards: "torch" (eager) or "onnxruntime".
        trainable_params: parameter entries with ``requires_grad`` (tied counted once):
            what a fine-tune of this model would train (after `compress.finetune(...,
            method="lora")` with ``merge=False``, the adapters and the head).

    Example:
        >>> a = Measurement(params=1_000_000, nonzero_params=1_000_000, density=1.0,
        ...                 prunable_params=None, prunable_density=None, flops=10**9,
        ...                 latency_ms=None, latency_iqr_ms=None, threads=1,
        ...                 peak_memory_mb=None, weight_mb=4.0)
        >>> a.as_dict()["flops"]
        1000000000
    """

    params: int
    nonzero_params: int
    density: float
    prunable_params: int | None
    prunable_density: float | None
    flops: int
    latency_ms: float | None
    latency_iqr_ms: float | None
    threads: int
    peak_memory_mb: float | None
    weight_mb: float | None = None
    backend: str = "torch"
    trainable_params: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """All fields as a plain dict (for results files).

        Example:
            >>> import torch
            >>> sorted(measure(torch.nn.Linear(2, 2), torch.ones(1, 2), latency=False).as_dict())[:3]
            ['backend', 'density', 'flops']
        """
        return dataclasses.asdict(self)

    def compare(self, other: Measurement, names: tuple[str, str] = ("pruned", "original")) -> str:
        """A table of this measurement beside `other`, with ratios ``other / self``.

        Every ratio is ``other / self`` (e.g. ``original / pruned``): above 1 means this
        model is smaller, needs fewer FLOPs or less memory, or is faster (for latency the
        ratio is the speedup).

        Args:
            other: the measurement to compare against (usually the unpruned model).
            names: column titles for ``self`` and ``other``.

        Returns:
            A GitHub-markdown table (tabulate) followed by a note on the ratio's direction.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> x = torch.randn(4, 16)
            >>> big, small = nn.Linear(16, 64), nn.Linear(16, 32)
            >>> print(measure(small, x, latency=False).compare(measure(big, x, latency=False)))
            ... # doctest: +SKIP
        """
        mine, theirs = names

        def count(v: int | None) -> str:
            return "n/a" if v is None else _si(v)

        def pct(v: float | None) -> str:
            return "n/a" if v is None else f"{100 * v:.1f}%"

        def ms(v: float | None, iqr: float | None) -> str:
            if v is None:
                return "n/a"
            return f"{v:.3g} ms" + ("" if iqr is None else f" (IQR {iqr:.2g})")

        def mib(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.3g} MiB"

        def ratio(a: float | None, b: float | None) -> str:
            # b / a, i.e. other / self
            if a is None or b is None:
                return "n/a"
            if a == 0:
                return "inf" if b else "n/a"
            return f"{b / a:.2f}x"

        s, o = self, other
        rows = [
            ["params", count(s.params), count(o.params), ratio(s.params, o.params)],
            ["non-zero params", count(s.nonzero_params), count(o.nonzero_params),
             ratio(s.nonzero_params, o.nonzero_params)],
            ["prunable params", count(s.prunable_params), count(o.prunable_params),
             ratio(s.prunable_params, o.prunable_params)],
            ["density", pct(s.density), pct(o.density), ratio(s.density, o.density)],
            ["prunable density", pct(s.prunable_density), pct(o.prunable_density),
             ratio(s.prunable_density, o.prunable_density)],
            ["FLOPs", count(s.flops), count(o.flops), ratio(s.flops, o.flops)],
            ["latency (median)", ms(s.latency_ms, s.latency_iqr_ms), ms(o.latency_ms, o.latency_iqr_ms),
             ratio(s.latency_ms, o.latency_ms)],
            ["peak memory", mib(s.peak_memory_mb), mib(o.peak_memory_mb),
             ratio(s.peak_memory_mb, o.peak_memory_mb)],
            ["weights (stored)", mib(s.weight_mb), mib(o.weight_mb), ratio(s.weight_mb, o.weight_mb)],
            ["threads", str(s.threads), str(o.threads), ""],
            ["backend", s.backend, o.backend, ""],
        ]
        table = tabulate(rows, headers=["metric", mine, theirs, f"{theirs}/{mine}"],
                         tablefmt="github", colalign=("left", "right", "right", "right"))
        note = (f"ratio = {theirs} / {mine}: > 1 means {mine} is smaller / faster "
                f"(latency ratio = speedup of {mine}).")
        if s.threads != o.threads and s.latency_ms is not None and o.latency_ms is not None:
            note += f" Warning: timed with different thread counts ({s.threads} vs {o.threads})."
        return f"{table}\n{note}"


def measure(
    model: nn.Module,
    example_inputs: Any,
    *,
    latency: bool = True,
    repeats: int = 20,
    threads: int = 1,
    memory: bool = True,
    prunable: Any = None,
    backend: str = "torch",
) -> Measurement:
    """Measure size, density, FLOPs, latency and peak memory of `model` on `example_inputs`.

    Forwards run in eval mode under ``torch.no_grad()``, with ``torch.set_num_threads(
    threads)``; every module's training flag and torch's thread count are restored
    afterwards, and the model's parameters and buffers are not changed.

    Peak memory is the largest amount of memory allocated during one forward beyond what
    was allocated before it (so weights and inputs are excluded; activations, workspaces
    and the output are included):

    * CPU: one forward under ``torch.profiler`` with ``profile_memory=True``; the
      profiler receives every allocation and free made by torch's CPU allocator, and the
      peak of their running sum is reported. Memory that kernels obtain outside torch's
      allocator (oneDNN/MKL scratch buffers) and allocations made on worker threads
      inside parallel regions are not seen; with ``threads=1`` the latter do not occur.
    * CUDA: ``torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()`` around
      one forward, after ``reset_peak_memory_stats``.

    Args:
        model: the model to measure (not modified).
        example_inputs: one batch: a Tensor (``model(x)``), a tuple of positional
            arguments (``model(*x)``) or a dict of keyword arguments (``model(**x)``).
        latency: time the forward (median of `repeats` blocks, after a warm-up).
        repeats: number of timed blocks; each block runs enough forwards to last ~10 ms.
        threads: torch intra-op thread count for all forwards (reported). 1 is the
            honest choice on small CPUs, where idle OpenMP threads spin.
        memory: measure peak memory of one forward.
        prunable: what "prunable" means for ``prunable_density``: None (the weights an
            unstructured `compress.prune` of this model was allowed to zero, if the model
            records one; else the weights of ``nn.Linear``/``nn.Conv1d`` and the
            ``nn.MultiheadAttention`` input projection), a module type or tuple of types, or an iterable of modules
            (their ``*weight`` parameters) and/or Parameters.
        backend: "torch" (eager PyTorch) or "onnxruntime": the model is exported with
            `compress.export_onnx` (checked against the eager outputs) and the forward is
            timed in an ONNX Runtime CPU session with `threads` intra-op threads; sizes and
            FLOPs are still counted on the torch model, and peak memory is not measured
            (None) for ONNX Runtime.

    Returns:
        A `Measurement`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
        >>> m = measure(model, torch.randn(4, 16), repeats=5)
        >>> m.flops, m.latency_ms > 0
        (6144, True)
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if backend not in ("torch", "onnxruntime"):
        raise ValueError(f"backend={backend!r}: choose 'torch' or 'onnxruntime'")

    params = _parameters(model)
    n_params = sum(p.value.numel() for p in params.values())
    n_nonzero = sum(_nonzero(p.value) for p in params.values())
    n_trainable = sum(p.value.numel() for p in params.values() if p.trainable)
    chosen = _prunable_ids(params, prunable, model)
    n_prunable = sum(params[i].value.numel() for i in chosen)
    n_prunable_nonzero = sum(_nonzero(params[i].value) for i in chosen)
    del params  # masked copies

    forward = _call(model, example_inputs)
    device = _device(model, example_inputs)
    flags = [(m, m.training) for m in model.modules()]
    prior_threads = torch.get_num_threads()
    latency_ms = latency_iqr_ms = peak_mb = None
    try:
        model.eval()
        torch.set_num_threads(threads)
        with torch.no_grad(), _frozen(model):
            # frozen: a view of a parameter taken under no_grad still "requires grad" without
            # a grad_fn, which FlopCounterMode's module tracker rejects (Crossformer's
            # expanded position tables); nothing here needs gradients
            flops = count_flops(model, example_inputs)  # also a first warm-up forward
            if backend == "onnxruntime":
                if latency:
                    latency_ms, latency_iqr_ms = _onnx_latency(model, example_inputs, repeats, threads)
            elif memory:
                if device.type == "cuda":
                    peak = _cuda_peak_bytes(forward, device)
                elif torch._C._autograd._profiler_enabled():
                    # A second profiler would end the caller's session; skip, don't break it.
                    warnings.warn("a torch profiler is already running: peak memory not "
                                  "measured (peak_memory_mb=None)", stacklevel=2)
                    peak = None
                elif device.type != "cpu":
                    warnings.warn(f"peak memory on {device.type} is not supported "
                                  "(peak_memory_mb=None)", stacklevel=2)
                    peak = None
                else:
                    peak = _cpu_peak_bytes(forward)
                peak_mb = None if peak is None else peak / _MIB
            if latency and backend == "torch":
                latency_ms, latency_iqr_ms = _latency(forward, repeats, threads)
    finally:
        torch.set_num_threads(prior_threads)
        for m, training in flags:
            m.training = training

    return Measurement(
        params=n_params,
        nonzero_params=n_nonzero,
        density=n_nonzero / n_params if n_params else 0.0,
        prunable_params=n_prunable or None,
        prunable_density=n_prunable_nonzero / n_prunable if n_prunable else None,
        flops=flops,
        latency_ms=latency_ms,
        latency_iqr_ms=latency_iqr_ms,
        threads=threads,
        peak_memory_mb=peak_mb,
        weight_mb=_stored_bytes(model) / _MIB,
        backend=backend,
        trainable_params=n_trainable,
    )


def interleaved_latency(models: dict[str, nn.Module], example_inputs: Any, *, rounds: int = 3, repeats: int = 5,
                        threads: int = 1) -> dict[str, tuple[float, float]]:
    """(median, IQR) ms of one forward of each model, timed in alternating rounds.

    Why: a speedup is a ratio of two timings, and on a shared machine the load changes by the
    minute; timing the baseline once and the pruned models later mixes two machines. Here
    every round times every model once (`repeats` blocks each, as `measure` does), so all
    models share whatever load there is; the result is the median over rounds.

    Args:
        models: name -> model (e.g. ``{"original": model, "pruned": small}``); put in eval
            mode for the timing, training flags restored afterwards.
        example_inputs: one batch, as for `measure`.
        rounds: alternating rounds (>= 1).
        repeats: timed blocks per model per round (>= 1).
        threads: torch intra-op threads for the timing.

    Returns:
        name -> (median latency ms, median IQR ms).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> big, small = nn.Linear(64, 64), nn.Linear(64, 8)
        >>> t = interleaved_latency({"big": big, "small": small}, torch.randn(4, 64), rounds=2, repeats=2)
        >>> sorted(t), all(ms > 0 for ms, _ in t.values())
        (['big', 'small'], True)
    """
    if rounds < 1 or repeats < 1:
        raise ValueError(f"rounds and repeats must be >= 1, got rounds={rounds}, repeats={repeats}")
    flags = [(m, m.training) for model in models.values() for m in model.modules()]
    prior_threads = torch.get_num_threads()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    try:
        torch.set_num_threads(threads)
        for model in models.values():
            model.eval()
        with torch.no_grad():
            for _ in range(rounds):
                for name, model in models.items():
                    times[name].append(_latency(_call(model, example_inputs), repeats, threads))
    finally:
        torch.set_num_threads(prior_threads)
        for m, training in flags:
            m.training = training
    return {name: (float(np.median([t[0] for t in ts])), float(np.median([t[1] for t in ts])))
            for name, ts in times.items()}


def _onnx_latency(model: nn.Module, example_inputs: Any, repeats: int, threads: int) -> tuple[float, float]:
    """(median, IQR) ms of the model exported to ONNX and run by ONNX Runtime."""
    from .export import _as_args, export_onnx, onnx_session

    args = _as_args(example_inputs)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, args, os.path.join(tmp, "model.onnx"))
        sess = onnx_session(path, threads=threads)
        feeds = {i.name: a.detach().cpu().numpy() for i, a in zip(sess.get_inputs(), args)}
        return _latency(lambda: sess.run(None, feeds), repeats, threads)
