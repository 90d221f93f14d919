"""Compressed sparse Linear layers that make unstructured sparsity run faster on CPU.

Why this module exists
----------------------
Unstructured pruning leaves a model of the same shape whose weights are mostly exact
zeros; dense kernels multiply the zeros anyway, so every framework reports ~1x speed for
it (our study: 0.93-1.04x). `sparsify` replaces each Linear (and each ``Conv1d`` with
kernel size 1, i.e. a Linear over channels) whose weight is sparse enough with a
`SparseLinear` that stores the weight in CSR form (``crow_indices``, ``col_indices``,
``values``: the memory really shrinks) and multiplies through a compiled CSR kernel.

Why these kernels (by measurement)
----------------------------------
Measured on the project's 2-core Xeon (AVX-512), one thread, torch 2.13, for the Linear
shapes of the classic forecasters and PatchTST at 50-95% random sparsity
(``benchmarks/sparse_kernels.py``, ``benchmarks/results/sparse_kernels.jsonl``, README):
torch's CSR written the obvious way (``x @ W_csr.T``), scipy's CSR matmul and torch's BSR
(4x4) are slower than dense everywhere; two kernels win on the larger shapes and are kept:
torch's own CSR ``addmm`` in the ``W @ x^T`` orientation ("torch_csr", MKL sparse
underneath; always available) and a CSR row kernel compiled with numba ("numba": token
tiles of the transposed input stay in L2 while every row streams them, SIMD over tokens,
rows of jobs split with ``prange`` across threads). Neither wins on the classic models'
small shapes (64x64 at 96 tokens): dense MKL runs at ~50 GFMA/s per core there and the
kernels' per-call overhead dominates. Which one is faster depends on the shape, so
`sparsify` measures both (``kernel="auto"``). Without numba (``pip install 'compress-tsfm[speed]'``) torch_csr
is used alone, and a `SparseLinear` whose kernel cannot run decompresses and multiplies
dense, so a saved sparse model always loads and runs.

Dense or sparse, per layer
--------------------------
Whether a kernel beats dense depends on the shape (out, in, tokens) and the machine.
`crossover_density` / `choose_kernel` measure it once per shape and thread count: they
time the dense matmul and each kernel at two densities on random weights, fit each
kernel's time as linear in the density, and give the density below which it is faster /
the fastest choice at a layer's density (converted only if predicted ``min_speedup``,
default 1.1x, faster). Results
are cached per process (`clear_crossover_cache` resets it); ``sparsify(..., crossover=d)``
(or the environment variable ``COMPRESS_SPARSE_CROSSOVER=d``) skips the measurement and
uses density ``d`` for every layer.

Inference first: under ``torch.no_grad()`` (or for inputs that need no gradient) the
kernel runs; when autograd needs a graph, `SparseLinear` falls back to a dense matmul of
the decompressed weight, so gradients reach the input (the weights stay fixed: values are
buffers, not parameters).

Example:
    >>> import torch, compress
    >>> lin = torch.nn.Linear(64, 32)
    >>> with torch.no_grad():
    ...     lin.weight[torch.rand(32, 64) < 0.9] = 0.0
    >>> fast = compress.sparsify(torch.nn.Sequential(lin), min_sparsity=0.7, crossover=1.0)
    >>> type(fast[0]).__name__
    'SparseLinear'
    >>> x = torch.randn(5, 64)
    >>> bool(torch.allclose(fast(x), lin(x), atol=1e-5))
    True
"""
from __future__ import annotations

import copy
import os
import time
import warnings
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SparseLinear", "sparsify", "crossover_density", "choose_kernel", "clear_crossover_cache", "kernel_available",
           "sparse_layout", "restore_layout", "KERNELS"]

#: the kernels `SparseLinear` knows: "numba" (needs the numba package), "torch_csr"
#: (torch's own CSR ``addmm``, always there) and "dense" (decompress, then a dense matmul)
KERNELS = ("numba", "torch_csr", "dense")
_L2_TILE_BYTES = 256 * 1024  # the numba kernel's input tile (K x tokens floats) fits in this


# --------------------------------------------------------------------------------------
# The numba kernel (compiled lazily on first use; `import compress` never imports numba)
# --------------------------------------------------------------------------------------

_NUMBA: Dict[str, Any] = {}


def kernel_available(kernel: str = "numba") -> bool:
    """True if `kernel` can run here ("dense" and "torch_csr" always can; "numba" needs
    the numba package).

    Example:
        >>> kernel_available("dense")
        True
    """
    if kernel in ("dense", "torch_csr"):
        return True
    if kernel != "numba":
        raise ValueError(f"unknown sparse kernel {kernel!r}; choose from {', '.join(KERNELS)}")
    return _numba_kernels() is not None


def _numba_kernels():
    if "serial" in _NUMBA:
        return _NUMBA["serial"], _NUMBA["parallel"]
    if _NUMBA.get("missing"):
        return None
    try:
        import numba
        import numpy as np
    except ImportError:
        _NUMBA["missing"] = True
        return None

    def make(parallel: bool):
        rng = numba.prange if parallel else range

        @numba.njit(parallel=parallel, fastmath=True, cache=True, nogil=True)
        def csr_rows(indptr, indices, data, bias, xt, out, tile, chunks):
            # indptr [M+1], indices/data [nnz]: the weight W [M, K] in CSR; bias [M];
            # xt [B, K, N]: input with tokens last; out [B, M, N] = W @ xt[b] + bias.
            # Work is split into (batch, token tile) jobs, `chunks` of them per thread pool
            # slot; each job runs every output row over one tile of `tile` tokens, so the
            # tile of the input (K x tile floats) stays in L2 while all rows read it. Per
            # row, four non-zeros at a time (fewer accumulator loads/stores per FMA);
            # slices rather than offset indices keep numba from adding negative-index
            # checks, so the token loops vectorise.
            nb, m, n = out.shape
            tiles = (n + tile - 1) // tile
            jobs = nb * tiles
            per = (jobs + chunks - 1) // chunks
            for c in rng(chunks):
                acc = np.empty(tile, dtype=out.dtype)
                for job in range(c * per, min(jobs, (c + 1) * per)):
                    b = job // tiles
                    t0 = (job - b * tiles) * tile
                    tn = min(tile, n - t0)
                    xb = xt[b]
                    a = acc[:tn]
                    for i in range(m):
                        a[:] = bias[i]
                        p, p1 = indptr[i], indptr[i + 1]
                        while p + 4 <= p1:
                            w0, w1, w2, w3 = data[p], data[p + 1], data[p + 2], data[p + 3]
                            x0 = xb[indices[p], t0:t0 + tn]
                            x1 = xb[indices[p + 1], t0:t0 + tn]
                            x2 = xb[indices[p + 2], t0:t0 + tn]
                            x3 = xb[indices[p + 3], t0:t0 + tn]
                            for t in range(tn):
                                a[t] += w0 * x0[t] + w1 * x1[t] + w2 * x2[t] + w3 * x3[t]
                            p += 4
                        while p < p1:
                            w0 = data[p]
                            x0 = xb[indices[p], t0:t0 + tn]
                            for t in range(tn):
                                a[t] += w0 * x0[t]
                            p += 1
                        out[b, i, t0:t0 + tn] = a

        return csr_rows

    _NUMBA["serial"], _NUMBA["parallel"] = make(False), make(True)
    _NUMBA["module"] = numba
    return _NUMBA["serial"], _NUMBA["parallel"]


def _csr_matmul(arrays: tuple, xt: Tensor, out_features: int) -> Tensor:
    """The numba kernel: `arrays` = numpy (indptr, indices, values, bias); xt [B, K, N]
    contiguous -> [B, M, N]."""
    serial, parallel = _numba_kernels()
    threads = torch.get_num_threads()
    out = torch.empty((xt.shape[0], out_features, xt.shape[2]), dtype=xt.dtype)
    k, n = xt.shape[1], xt.shape[2]
    # token tile: the input tile (K x tile floats) within ~256 KiB of L2, 64..1024 tokens
    tile = int(min(1024, max(64, (_L2_TILE_BYTES // (4 * max(1, k))) // 16 * 16)))
    if threads > 1:
        numba = _NUMBA["module"]
        threads = min(threads, numba.config.NUMBA_NUM_THREADS)
        numba.set_num_threads(threads)
        jobs = xt.shape[0] * -(-n // tile)
        parallel(*arrays, xt.numpy(), out.numpy(), tile, min(jobs, 4 * threads))
    else:
        serial(*arrays, xt.numpy(), out.numpy(), tile, 1)
    return out


# --------------------------------------------------------------------------------------
# The drop-in module
# --------------------------------------------------------------------------------------


class SparseLinear(nn.Module):
    """A Linear (or kernel-size-1 Conv1d) whose weight is stored and multiplied in CSR form.

    The weight ``W [out, in]`` is held as three buffers, ``crow_indices [out + 1]`` and
    ``col_indices [nnz]`` (int32) and ``values [nnz]`` (the weight's dtype); the bias, if
    any, stays a dense parameter. Outputs equal the dense layer's within float rounding.

    Args:
        weight: the dense weight, ``[out, in]`` (or a Conv1d's ``[out, in, 1]``).
        bias: the bias ``[out]`` or None.
        layout: "linear" (input ``[..., in]``) or "conv1d" (input ``[B, in, L]``).
        kernel: "numba" (compiled CSR row kernel), "torch_csr" (torch's CSR ``addmm``) or
            "dense" (decompress, then ``F.linear``); `sparsify` picks per layer by measurement.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(8, 4)
        >>> sp = SparseLinear.from_dense(lin, kernel="dense")
        >>> sp.nnz == int((lin.weight != 0).sum()), sp(torch.ones(2, 8)).shape
        (True, torch.Size([2, 4]))
    """

    def __init__(self, weight: Tensor, bias: Optional[Tensor] = None, layout: str = "linear",
                 kernel: str = "numba"):
        super().__init__()
        if layout not in ("linear", "conv1d"):
            raise ValueError(f"layout={layout!r} must be 'linear' or 'conv1d'")
        if kernel not in KERNELS:
            raise ValueError(f"kernel={kernel!r}: choose from {', '.join(KERNELS)}")
        weight = weight.detach()
        if layout == "conv1d":
            if weight.dim() != 3 or weight.shape[2] != 1:
                raise ValueError(f"a conv1d SparseLinear needs a kernel-size-1 weight [out, in, 1], got "
                                 f"{tuple(weight.shape)}")
            weight = weight[:, :, 0]
        if weight.dim() != 2:
            raise ValueError(f"weight must be [out, in], got {tuple(weight.shape)}")
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        self.layout, self.kernel = layout, kernel
        weight = weight.cpu()
        nonzero = weight != 0  # [out, in]; row-major order is CSR order
        crow = torch.zeros(self.out_features + 1, dtype=torch.int64)
        crow[1:] = torch.cumsum(nonzero.sum(1), 0)
        self.register_buffer("crow_indices", crow.to(torch.int32))
        self.register_buffer("col_indices", nonzero.nonzero()[:, 1].to(torch.int32).contiguous())
        self.register_buffer("values", weight[nonzero].contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)

    @classmethod
    def from_dense(cls, module: nn.Module, kernel: str = "numba") -> "SparseLinear":
        """A `SparseLinear` computing what `module` (an ``nn.Linear`` or a kernel-size-1,
        unpadded, ungrouped, stride-1 ``nn.Conv1d``) computes."""
        if isinstance(module, nn.Linear):
            return cls(module.weight, module.bias, "linear", kernel)
        if _is_pointwise_conv(module):
            return cls(module.weight, module.bias, "conv1d", kernel)
        raise TypeError(f"SparseLinear.from_dense needs an nn.Linear or a kernel-size-1 Conv1d, got {module!r}")

    @classmethod
    def empty(cls, in_features: int, out_features: int, layout: str = "linear", bias: bool = True,
              kernel: str = "numba", nnz: int = 0, dtype: torch.dtype = torch.float32) -> "SparseLinear":
        """A `SparseLinear` with `nnz` zero-valued entries, to load a state dict into."""
        shape = (out_features, in_features, 1) if layout == "conv1d" else (out_features, in_features)
        m = cls(torch.zeros(shape, dtype=dtype), torch.zeros(out_features, dtype=dtype) if bias else None,
                layout, kernel)
        m.col_indices = torch.zeros(nnz, dtype=torch.int32)
        m.values = torch.zeros(nnz, dtype=dtype)
        return m

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    @property
    def density(self) -> float:
        return self.nnz / max(1, self.out_features * self.in_features)

    def dense_weight(self) -> Tensor:
        """The weight as a dense ``[out, in]`` tensor (a new tensor; zeros filled in)."""
        counts = (self.crow_indices[1:] - self.crow_indices[:-1]).long()
        rows = torch.repeat_interleave(torch.arange(self.out_features, device=self.values.device), counts)
        w = torch.zeros(self.out_features, self.in_features, dtype=self.values.dtype, device=self.values.device)
        return w.index_put((rows, self.col_indices.long()), self.values)

    def to_dense_module(self) -> nn.Module:
        """The equivalent ``nn.Linear`` / ``nn.Conv1d`` with a dense weight."""
        w = self.dense_weight()
        if self.layout == "linear":
            m = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, dtype=w.dtype)
            m.weight.data.copy_(w)
        else:
            m = nn.Conv1d(self.in_features, self.out_features, 1, bias=self.bias is not None, dtype=w.dtype)
            m.weight.data.copy_(w[:, :, None])
        if self.bias is not None:
            m.bias.data.copy_(self.bias.detach())
        return m

    def _use_kernel(self, x: Tensor) -> Optional[str]:
        """The kernel this call runs, or None for the dense fallback."""
        if self.kernel == "dense" or x.device.type != "cpu" or x.dtype != torch.float32:
            return None
        if self.values.dtype != torch.float32 or self.values.device.type != "cpu":
            return None
        if torch.is_grad_enabled() and (x.requires_grad or (self.bias is not None and self.bias.requires_grad)):
            return None  # training: autograd needs the dense graph
        if (type(x) is not torch.Tensor or torch.jit.is_scripting() or torch.jit.is_tracing()
                or torch.compiler.is_compiling() or torch.compiler.is_exporting()):
            return None  # export / tracing (fake or traced tensors) sees the dense computation
        if self.kernel == "numba" and _numba_kernels() is None:
            return None
        return self.kernel

    def forward(self, x: Tensor) -> Tensor:
        kernel = self._use_kernel(x)
        if kernel is None:
            w = self.dense_weight().to(x.dtype)
            if self.layout == "linear":
                return F.linear(x, w, self.bias)
            return F.conv1d(x, w[:, :, None], self.bias)
        if self.layout == "linear":
            if x.shape[-1] != self.in_features:
                raise RuntimeError(f"SparseLinear expected input [..., {self.in_features}], got {tuple(x.shape)}")
            lead = x.shape[:-1]
            xt = x.reshape(-1, self.in_features).t()  # [K, N]
        else:
            if x.dim() == 2:  # unbatched conv input [K, L]
                return self.forward(x[None])[0]
            if x.dim() != 3 or x.shape[1] != self.in_features:
                raise RuntimeError(f"SparseLinear (conv1d) expected input [B, {self.in_features}, L], "
                                   f"got {tuple(x.shape)}")
            lead = None
        cache = self._cache()
        if kernel == "numba":
            xt = xt.contiguous()[None] if lead is not None else x.contiguous()
            out = _csr_matmul(cache["arrays"], xt, self.out_features)  # [B, M, N]
            return out[0].t().reshape(*lead, self.out_features) if lead is not None else out
        # torch_csr: W [M, K] @ x^T [K, N] (MKL sparse underneath), bias added by addmm
        if lead is not None:
            out = torch.addmm(cache["bias_col"], cache["csr"], xt)  # [M, N]
            return out.t().reshape(*lead, self.out_features)  # [..., M] (a transposed view)
        b, _, length = x.shape
        xt = x.transpose(0, 1).reshape(self.in_features, b * length)  # [K, B*L]
        out = torch.addmm(cache["bias_col"], cache["csr"], xt)  # [M, B*L]
        return out.view(self.out_features, b, length).transpose(0, 1)  # [B, M, L]

    def _cache(self) -> dict:
        """Per-module views of the CSR buffers for the kernels (numpy arrays for numba,
        whose dispatch is several times slower on fresh views of torch buffers; a torch
        CSR tensor for torch_csr), rebuilt when a buffer is replaced."""
        bias = self.bias
        key = (self.crow_indices.data_ptr(), self.col_indices.data_ptr(), self.values.data_ptr(),
               None if bias is None else bias.data_ptr(), self.values.numel())
        cached = self.__dict__.get("_kernel_cache")
        if cached is None or cached["key"] != key:
            b = torch.zeros(self.out_features, dtype=self.values.dtype) if bias is None else bias.detach()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
                csr = torch.sparse_csr_tensor(self.crow_indices, self.col_indices, self.values,
                                              (self.out_features, self.in_features))
            cached = {"key": key, "bias": b, "bias_col": b[:, None], "csr": csr,
                      "arrays": (self.crow_indices.numpy(), self.col_indices.numpy(), self.values.numpy(),
                                 b.numpy())}
            self.__dict__["_kernel_cache"] = cached
        return cached

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_kernel_cache", None)  # views of the buffers: rebuilt on first use
        return state

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # nnz differs between checkpoints of the same architecture: take the stored sizes
        for name in ("crow_indices", "col_indices", "values"):
            t = state_dict.get(prefix + name)
            if t is not None and t.shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(t, dtype=getattr(self, name).dtype))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, layout={self.layout}, "
                f"density={self.density:.3f}, kernel={self.kernel}, bias={self.bias is not None}")


def _is_pointwise_conv(m: nn.Module) -> bool:
    return (isinstance(m, nn.Conv1d) and tuple(m.kernel_size) == (1,) and tuple(m.stride) == (1,)
            and tuple(m.dilation) == (1,) and m.groups == 1 and m.padding in ((0,), "valid"))


# --------------------------------------------------------------------------------------
# Crossover: below which density does the kernel beat dense, for one shape?
# --------------------------------------------------------------------------------------

_PROFILES: Dict[Tuple, dict] = {}
_PROBE_DENSITIES = (0.05, 0.25)


def clear_crossover_cache() -> None:
    """Forget the kernel timings measured in this process.

    Example:
        >>> clear_crossover_cache()
    """
    _PROFILES.clear()


def _time(fn, budget_s: float = 0.03, reps: int = 5) -> float:
    """Median seconds of one call of `fn` (blocks of calls ~budget_s/reps long)."""
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    number = max(1, int(budget_s / reps / one))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    times.sort()
    return times[len(times) // 2]


def _sparse_kernels() -> Tuple[str, ...]:
    return tuple(k for k in KERNELS if k != "dense" and kernel_available(k))


def _profile(out_features: int, in_features: int, tokens: int, layout: str, batch: int,
             threads: Optional[int]) -> dict:
    """Dense time and, per available kernel, a fit ``time = a + b * density`` (seconds),
    measured once per shape and thread count and cached for the process."""
    threads = torch.get_num_threads() if threads is None else threads
    key = (layout, out_features, in_features, tokens, batch if layout == "conv1d" else 1, threads)
    if key in _PROFILES:
        return _PROFILES[key]
    prior = torch.get_num_threads()
    gen = torch.Generator().manual_seed(0)
    fits = {}
    try:
        torch.set_num_threads(threads)
        shape = (batch, in_features, tokens) if layout == "conv1d" else (tokens, in_features)
        x = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            w = torch.randn(out_features, in_features, generator=gen)
            dense = nn.Linear(in_features, out_features) if layout == "linear" else nn.Conv1d(in_features, out_features, 1)
            layers = {}
            for d in _PROBE_DENSITIES:
                wd = w * (torch.rand(w.shape, generator=gen) < d)
                for k in _sparse_kernels():
                    layers[k, d] = SparseLinear(wd if layout == "linear" else wd[:, :, None], dense.bias, layout, k)
            times = {k: _time(lambda: layer(x)) for k, layer in layers.items()}
            t_dense = _time(lambda: dense(x))
    finally:
        torch.set_num_threads(prior)
    d0, d1 = _PROBE_DENSITIES
    for k in _sparse_kernels():
        t0, t1 = times[k, d0], times[k, d1]
        slope = max((t1 - t0) / (d1 - d0), 0.0)  # noise can make it negative: then flat
        fits[k] = (t0 - slope * d0, slope)
    _PROFILES[key] = prof = {"dense": t_dense, "fits": fits, "threads": threads}
    return prof


def crossover_density(out_features: int, in_features: int, tokens: int, layout: str = "linear",
                      batch: int = 1, threads: Optional[int] = None, kernel: str = "numba") -> float:
    """The weight density below which `kernel` beats the dense matmul for this shape.

    Measured once per (layout, out, in, tokens, batch, threads) and cached for the process
    (`clear_crossover_cache` forgets): the dense layer and each available kernel at
    densities 0.05 and 0.25 (random weights) are timed, each kernel's time is fitted as
    ``a + b * density``, and the density where it meets the dense time is returned
    (clipped to [0, 1]; 0 means never faster, 1 faster even when dense).

    Args:
        out_features, in_features: the weight's shape.
        tokens: rows of the input (``batch * length`` for a Linear; ``L`` for a Conv1d).
        layout: "linear" or "conv1d" (then `batch` is the conv batch).
        batch: conv1d batch size (ignored for "linear").
        threads: torch thread count to measure at (default: the current one).
        kernel: the sparse kernel ("numba" or "torch_csr"; "dense" gives 0).

    Returns:
        The crossover density in [0, 1].

    Example:
        >>> crossover_density(64, 64, 32, kernel="dense")
        0.0
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown sparse kernel {kernel!r}; choose from {', '.join(KERNELS)}")
    if kernel == "dense" or not kernel_available(kernel):
        return 0.0
    prof = _profile(out_features, in_features, tokens, layout, batch, threads)
    a, b = prof["fits"][kernel]
    if b <= 0:
        return 1.0 if a < prof["dense"] else 0.0
    return float(min(1.0, max(0.0, (prof["dense"] - a) / b)))


def choose_kernel(out_features: int, in_features: int, tokens: int, density: float, layout: str = "linear",
                  batch: int = 1, threads: Optional[int] = None, kernels=None,
                  min_speedup: float = 1.0) -> Tuple[str, float]:
    """The fastest way to multiply a weight of this shape and density: a sparse kernel, or
    "dense" when none beats the dense matmul (from the same cached measurement as
    `crossover_density`).

    Args:
        out_features, in_features, tokens, layout, batch, threads: as in `crossover_density`.
        density: the weight's fraction of non-zeros.
        kernels: the sparse kernels to choose from (default: every available one).
        min_speedup: the predicted speedup a kernel needs over dense to be chosen.

    Returns:
        ``(kernel, predicted speedup over dense)``.

    Example:
        >>> kernel, speedup = choose_kernel(256, 128, 448, density=0.05)   # doctest: +SKIP
    """
    kernels = tuple(k for k in (kernels or _sparse_kernels()) if k != "dense" and kernel_available(k))
    if not kernels:
        return "dense", 1.0
    prof = _profile(out_features, in_features, tokens, layout, batch, threads)
    predicted = {k: prof["fits"][k][0] + prof["fits"][k][1] * density for k in kernels}
    best = min(predicted, key=predicted.get)
    speedup = prof["dense"] / max(predicted[best], 1e-12)
    return (best, speedup) if speedup > max(1.0, min_speedup) else ("dense", 1.0)


# --------------------------------------------------------------------------------------
# sparsify
# --------------------------------------------------------------------------------------


def _candidates(model: nn.Module, ignore) -> Dict[str, nn.Module]:
    skip = set()
    for m in ignore:
        skip.update(id(s) for s in m.modules())
    return {name: m for name, m in model.named_modules()
            if (isinstance(m, nn.Linear) or _is_pointwise_conv(m)) and id(m) not in skip
            and not isinstance(getattr(m, "weight", None), type(None))}


def _effective_weight(m: nn.Module) -> Tensor:
    return m.weight.detach()  # torch.nn.utils.prune keeps `weight` = orig * mask up to date


def _input_shapes(model: nn.Module, modules: Dict[str, nn.Module], example_inputs) -> Dict[str, torch.Size]:
    shapes: Dict[str, torch.Size] = {}
    hooks = []
    for name, m in modules.items():
        def hook(mod, args, name=name):
            if name not in shapes and args and isinstance(args[0], Tensor):
                shapes[name] = args[0].shape
        hooks.append(m.register_forward_pre_hook(hook))
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            if isinstance(example_inputs, dict):
                model(**example_inputs)
            elif isinstance(example_inputs, tuple):
                model(*example_inputs)
            else:
                model(example_inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return shapes


def _env_crossover() -> Optional[float]:
    raw = os.environ.get("COMPRESS_SPARSE_CROSSOVER")
    if raw in (None, ""):
        return None
    try:
        v = float(raw)
    except ValueError:
        raise ValueError(f"COMPRESS_SPARSE_CROSSOVER={raw!r} must be a density in [0, 1]") from None
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"COMPRESS_SPARSE_CROSSOVER={raw!r} must be a density in [0, 1]")
    return v


def sparsify(model: nn.Module, min_sparsity: float = 0.7, example_inputs: Any = None, *,
             kernel: str = "auto", crossover: Optional[float] = None, threads: Optional[int] = None,
             min_speedup: float = 1.1, ignore=(), inplace: bool = False) -> nn.Module:
    """Replace sparse-enough Linear / pointwise Conv1d layers by `SparseLinear` (CSR kernel).

    A layer is converted when its weight's fraction of exact zeros is at least
    `min_sparsity` *and* a sparse kernel beats the dense matmul at that layer's shape and
    density (measured once per shape, see `crossover_density` / `choose_kernel`, on the
    input shapes of one forward of `example_inputs`). The model's outputs stay the masked
    dense model's within float rounding.

    Args:
        model: any module with exact zeros in its weights (e.g. after
            ``compress.prune(..., strategy="unstructured")``).
        min_sparsity: convert only layers with at least this fraction of zero weights.
        example_inputs: one input batch of the shape you will run (its token count decides
            the crossover); defaults to ``model.example_inputs()`` for a Forecaster. Not
            needed when `crossover` is given.
        kernel: "auto" (per layer, the fastest measured of "numba" and "torch_csr"),
            "numba" (the compiled CSR row kernel), "torch_csr" (torch's CSR ``addmm``) or
            "dense" (store compressed, multiply dense). Without numba installed, "auto"
            uses torch_csr and "numba" warns and does the same.
        crossover: a density in [0, 1] to use for every layer instead of measuring
            (1.0: convert every layer that passes `min_sparsity`); "auto" then takes numba
            where installed. The environment variable ``COMPRESS_SPARSE_CROSSOVER`` sets
            the same.
        threads: thread count the crossover is measured at (default: torch's current).
        min_speedup: a layer is converted only where the measured kernel is predicted at
            least this much faster than dense (the margin absorbs timing noise and the
            per-call overhead the probe does not see).
        ignore: modules or qualified names to keep dense.
        inplace: convert `model` itself instead of a copy.

    Returns:
        The model with `SparseLinear` layers; ``model.compress_sparse`` records, per
        converted layer, its layout, shape, density, kernel and the crossover used (see
        `sparse_layout` / `restore_layout` for saving and loading).

    Example:
        >>> import torch, compress
        >>> model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
        >>> with torch.no_grad():
        ...     model[0].weight[torch.rand(64, 32) < 0.9] = 0.0   # 90% zeros; model[2] stays dense
        >>> fast = compress.sparsify(model, example_inputs=torch.randn(4, 32))
        >>> sorted(fast.compress_sparse) in (["0"], [])   # [] where the kernel loses at this shape
        True
        >>> x = torch.randn(4, 32)
        >>> bool(torch.allclose(fast(x), model(x), atol=1e-5))
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"sparsify() needs an nn.Module, got {type(model).__name__}")
    if isinstance(min_sparsity, bool) or not isinstance(min_sparsity, (int, float)) or not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity={min_sparsity!r} must be a fraction of zeros in [0, 1]")
    if kernel not in KERNELS + ("auto",):
        raise ValueError(f"kernel={kernel!r}: choose from auto, {', '.join(KERNELS)}")
    if crossover is None:
        crossover = _env_crossover()
    elif isinstance(crossover, bool) or not isinstance(crossover, (int, float)) or not 0.0 <= crossover <= 1.0:
        raise ValueError(f"crossover={crossover!r} must be a density in [0, 1] (or None to measure)")
    if kernel == "numba" and not kernel_available("numba"):
        warnings.warn("sparsify: numba is not installed (pip install 'compress-tsfm[speed]'): using torch's CSR kernel "
                      "(kernel='torch_csr') where it beats dense", stacklevel=2)
        kernel = "torch_csr"
    choices = _sparse_kernels() if kernel == "auto" else (kernel,)

    names = {m: n for n, m in model.named_modules()}
    ignore_names = set()
    for x in ignore:
        if isinstance(x, str):
            ignore_names.add(x)
        elif x in names:
            ignore_names.add(names[x])
        else:
            raise ValueError(f"ignore refers to a {type(x).__name__} that is not part of the model")
    if not inplace:
        model = copy.deepcopy(model)
    by_name = dict(model.named_modules())
    unknown = ignore_names - set(by_name)
    if unknown:
        raise ValueError(f"ignore names no module of the model: {', '.join(sorted(unknown))}")
    cands = _candidates(model, [by_name[n] for n in ignore_names])
    sparse_enough = {}
    for name, m in cands.items():
        w = _effective_weight(m)
        zeros = float((w == 0).float().mean()) if w.numel() else 0.0
        if zeros >= min_sparsity and w.is_floating_point():
            sparse_enough[name] = (m, 1.0 - zeros)

    shapes = {}
    if crossover is None and kernel != "dense" and sparse_enough:
        if example_inputs is None and hasattr(model, "example_inputs"):
            example_inputs = model.example_inputs()
        if example_inputs is None:
            raise ValueError("sparsify needs example_inputs (one batch of the shape you will run) to measure where "
                             "the sparse kernel beats dense, or crossover=<density> to skip the measurement")
        shapes = _input_shapes(model, {n: m for n, (m, _) in sparse_enough.items()}, example_inputs)

    record = dict(getattr(model, "compress_sparse", {}) or {})
    for name, (m, density) in sparse_enough.items():
        layout = "linear" if isinstance(m, nn.Linear) else "conv1d"
        if crossover is not None or kernel == "dense":
            cross = 1.0 if kernel == "dense" else float(crossover)
            chosen = choices[0]
            if cross < 1.0 and density >= cross:
                continue  # (crossover 1.0 converts every layer that passed min_sparsity)
        elif name not in shapes:
            continue  # not called by the example forward: no shape to decide on, keep dense
        else:
            s = shapes[name]
            if layout == "linear":
                tokens, batch = max(1, int(torch.Size(s[:-1]).numel())), 1
            else:
                batch, tokens = (int(s[0]), int(s[2])) if len(s) == 3 else (1, int(s[-1]))
            out_f, in_f = (m.out_channels, m.in_channels) if layout == "conv1d" else (m.out_features, m.in_features)
            chosen, _ = choose_kernel(out_f, in_f, tokens, density, layout, batch, threads, choices, min_speedup)
            if chosen == "dense":
                continue
            cross = crossover_density(out_f, in_f, tokens, layout, batch, threads, chosen)
        new = SparseLinear.from_dense(m, chosen)
        parent_name, _, child = name.rpartition(".")
        setattr(by_name[parent_name] if parent_name else model, child, new)
        record[name] = {"layout": layout, "in": new.in_features, "out": new.out_features, "nnz": new.nnz,
                        "bias": new.bias is not None, "density": new.density, "crossover": cross,
                        "kernel": chosen}
    model.compress_sparse = record
    if sparse_enough and not record:
        warnings.warn(f"sparsify: none of the {len(sparse_enough)} layers with >= {min_sparsity:.0%} zeros is sparse "
                      "enough for a sparse kernel to beat dense at this input shape; the model stays dense",
                      stacklevel=2)
    return model


# --------------------------------------------------------------------------------------
# Saving and loading: the layout travels with the weights
# --------------------------------------------------------------------------------------


def sparse_layout(model: nn.Module) -> Dict[str, dict]:
    """What `restore_layout` needs to rebuild the sparse layers of `model` (JSON-able).

    Example:
        >>> sparse_layout(torch.nn.Linear(2, 2))
        {}
    """
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, SparseLinear):
            out[name] = {"layout": m.layout, "in": m.in_features, "out": m.out_features, "nnz": m.nnz,
                         "bias": m.bias is not None, "kernel": m.kernel, "dtype": str(m.values.dtype)}
    return out


def restore_layout(model: nn.Module, layout: Dict[str, dict]) -> nn.Module:
    """Put empty `SparseLinear` layers (sized from `layout`) where `sparse_layout` found
    them, in place, so that the sparse state dict loads with strict shape checks. (A
    `compress.models.Forecaster` needs none of this: ``save`` / ``compress.models.load``
    store and rebuild its sparse layers.)

    Example:
        >>> import torch
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 4))
        >>> s = sparsify(m, min_sparsity=0.0, crossover=1.0, kernel="dense")
        >>> fresh = restore_layout(torch.nn.Sequential(torch.nn.Linear(4, 4)), sparse_layout(s))
        >>> _ = fresh.load_state_dict(s.state_dict())
    """
    by_name = dict(model.named_modules())
    for name, spec in layout.items():
        if name not in by_name:
            raise ValueError(f"sparse layer {name!r} of the saved model is not part of this architecture")
        dtype = getattr(torch, str(spec.get("dtype", "torch.float32")).replace("torch.", ""))
        new = SparseLinear.empty(spec["in"], spec["out"], spec["layout"], spec["bias"], spec.get("kernel", "numba"),
                                 spec["nnz"], dtype)
        parent_name, _, child = name.rpartition(".")
        setattr(by_name[parent_name] if parent_name else model, child, new)
    return model


def _rebuild_for_load(old: nn.Module, entry: dict) -> SparseLinear:
    # compress.models.saving: the skeleton has a dense Linear / Conv1d where the saved model
    # had a SparseLinear; tensor sizes (nnz) are set from the description afterwards
    a = entry.get("attrs", {})
    kernel = a.get("kernel", "numba")
    return SparseLinear.empty(int(a["in_features"]), int(a["out_features"]), a.get("layout", "linear"),
                              bias=getattr(old, "bias", None) is not None,
                              kernel=kernel if kernel in KERNELS else "numba")


def _register_with_saving() -> None:
    from .models import saving

    saving.register_module_type(SparseLinear, _rebuild_for_load, name="compress.sparse.SparseLinear")


_register_with_saving()
