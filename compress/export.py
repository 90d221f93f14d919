"""Export a (pruned, sparsified) forecaster to ONNX and run it in ONNX Runtime.

Why this module exists: users deploy forecasters outside eager PyTorch, and what pruning
buys there is what they get. `export_onnx` writes the model's forward on one example batch
to an ``.onnx`` file and, by default, checks that ONNX Runtime reproduces the eager
outputs; `compress.measure(..., backend="onnxruntime")` times the exported graph.

How: torch's two exporters, in the order that works for most of our families. The
TorchScript exporter (``torch.onnx.export(dynamo=False)``) is fast (seconds) and handles
Transformer, Crossformer and PatchTST; the ``torch.export``-based one (``dynamo=True``,
onnxscript underneath) is slower (tens of seconds) but also handles Autoformer's FFT
auto-correlation. Informer (ProbSparse attention draws random samples in its forward)
and FEDformer (complex-valued Fourier blocks) export with neither in torch 2.13; the
error says so.

Sparse layers: ONNX Runtime has no fast kernel for unstructured sparsity on CPU, so a
`compress.sparsify`'d model exports with its `SparseLinear` weights decompressed (the
exporters trace the module's dense path): same outputs and speed as the masked model. A
*structurally* pruned model exports with its smaller matrices, and there the speedup
carries over (see the README's ONNX table).

Example:
    >>> import torch, compress
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    >>> path = compress.export_onnx(model, torch.randn(2, 8), "/tmp/compress-doctest.onnx")  # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from typing import Any, Optional, Sequence

import torch
from torch import nn

__all__ = ["export_onnx", "onnx_session", "EXPORTERS"]

#: exporter names, tried in this order by ``exporter="auto"``
EXPORTERS = ("torchscript", "dynamo")


def _as_args(example_inputs: Any) -> tuple:
    if isinstance(example_inputs, dict):
        raise TypeError("export_onnx takes positional example inputs (a Tensor or a tuple of Tensors), not a dict")
    return example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)


def _export(model: nn.Module, args: tuple, path: str, exporter: str, opset: Optional[int]) -> None:
    names_in = ["past"] if len(args) == 1 else [f"input_{i}" for i in range(len(args))]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # deprecation and tracer warnings of the exporters
        if exporter == "torchscript":
            torch.onnx.export(model, args, path, dynamo=False, opset_version=opset or 17, input_names=names_in,
                              do_constant_folding=True)
        else:
            torch.onnx.export(model, args, path, dynamo=True, opset_version=opset, input_names=names_in,
                              external_data=False, verbose=False)


def onnx_session(path: str, threads: int = 1):
    """An ONNX Runtime CPU session for `path` with `threads` intra-op threads (sequential
    execution, no inter-op pool), as `measure(..., backend="onnxruntime")` uses it.

    Example:
        >>> sess = onnx_session("model.onnx", threads=1)   # doctest: +SKIP
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError("onnxruntime is not installed: pip install 'compress-tsfm[speed]' (or 'onnxruntime==1.32.0')") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def export_onnx(model: nn.Module, example_inputs: Any, path: str, *, exporter: str = "auto",
                opset: Optional[int] = None, check: bool = True, rtol: float = 1e-4, atol: float = 1e-5) -> str:
    """Export `model` (eval mode, on `example_inputs`' shapes) to an ONNX file.

    Args:
        model: a forecaster or any module; exported in eval mode (its flags are restored).
        example_inputs: one batch: a Tensor or a tuple of positional Tensors. The graph has
            these fixed shapes.
        path: the ``.onnx`` file to write (its directory is created).
        exporter: "auto" (TorchScript exporter, then torch.export's on failure),
            "torchscript" or "dynamo".
        opset: ONNX opset (default: 17 for TorchScript, the exporter's default for dynamo).
        check: run the file in ONNX Runtime on `example_inputs` and raise if its outputs
            differ from the eager model's beyond `rtol` / `atol`.
        rtol, atol: tolerances of the check.

    Returns:
        `path`.

    Raises:
        RuntimeError: no exporter could export the model (each one's error is named), or
            ONNX Runtime's outputs differ.

    Example:
        >>> import torch, compress
        >>> m = compress.models.load("transformer", size="tiny")                      # doctest: +SKIP
        >>> compress.export_onnx(m, m.example_inputs(), "runs/transformer.onnx")       # doctest: +SKIP
        'runs/transformer.onnx'
    """
    if exporter not in EXPORTERS + ("auto",):
        raise ValueError(f"exporter={exporter!r}: choose from auto, {', '.join(EXPORTERS)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"export_onnx needs an nn.Module, got {type(model).__name__}")
    args = _as_args(example_inputs)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    model = _densified(model)
    flags = [(m, m.training) for m in model.modules()]
    errors = []
    try:
        model.eval()
        with torch.no_grad():
            expected = model(*args)
            for name in (EXPORTERS if exporter == "auto" else (exporter,)):
                try:
                    _export(model, args, path, name, opset)
                    break
                except Exception as e:  # noqa: BLE001 - reported below with the other exporter's
                    errors.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
            else:
                raise RuntimeError(f"{type(model).__name__} could not be exported to ONNX with torch "
                                   f"{torch.__version__}: " + " | ".join(errors))
    finally:
        for m, training in flags:
            m.training = training
    if check:
        _check(path, args, expected, rtol, atol)
    return path


def _densified(model: nn.Module) -> nn.Module:
    """`model`, or a copy whose `SparseLinear` layers are dense Linear / Conv1d again (ONNX
    Runtime has no fast unstructured-sparse kernel; the dense graph exports everywhere)."""
    import copy

    from .sparse import SparseLinear

    if not any(isinstance(m, SparseLinear) for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, SparseLinear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, m.to_dense_module())
    return model


def _flat(outputs) -> Sequence[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, (tuple, list)):
        return [t for o in outputs for t in _flat(o)]
    if isinstance(outputs, dict):
        return [t for o in outputs.values() for t in _flat(o)]
    return []


def _check(path: str, args: tuple, expected, rtol: float, atol: float) -> None:
    sess = onnx_session(path)
    feeds = {i.name: a.detach().cpu().numpy() for i, a in zip(sess.get_inputs(), args)}
    got = sess.run(None, feeds)
    want = [t.detach().cpu() for t in _flat(expected)]
    if len(got) != len(want):
        raise RuntimeError(f"{path}: ONNX Runtime returned {len(got)} outputs, the model {len(want)}")
    for i, (g, w) in enumerate(zip(got, want)):
        g = torch.from_numpy(g)
        if g.shape != w.shape or not torch.allclose(g.to(w.dtype), w, rtol=rtol, atol=atol):
            diff = (g.to(w.dtype) - w).abs().max().item() if g.shape == w.shape else "shape"
            raise RuntimeError(f"{path}: ONNX Runtime output {i} differs from the eager model's "
                               f"(max abs diff {diff}); the export is not faithful")
