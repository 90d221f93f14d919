"""Running and tracing a model for torch-pruning's `DependencyGraph`.

Helpers to call a model on any input shape, find its output tensor, name the module that
failed, hide the inside of recognised attention modules from the tracer (so their heads
stay one opaque node), list standalone parameters, and infer the input embedding and the
forecasting head that default pruning leaves dense.
"""
from __future__ import annotations

import contextlib
from typing import Dict, List

import torch
import torch_pruning as tp
from torch import nn

from .attention import AttentionSpec
from .errors import GraphBuildError

__all__ = ["run_model", "module_trail", "infer_protected"]


class _Opaque(torch.autograd.Function):
    """Identity on an attention output whose autograd node links only to the module inputs."""

    @staticmethod
    def forward(ctx, out, *inputs):  # `out` is detached: only `inputs` are linked
        ctx.n = len(inputs)
        return out.clone()

    @staticmethod
    def backward(ctx, grad):
        return (None,) * (ctx.n + 1)


def _opaque_output(module, args, kwargs, output):
    """Forward hook used while tracing: hide the inside of a recognised attention module.

    torch-pruning walks the autograd graph *inside* customised modules too; RoPE's
    `cat(-x2, x1)`, einops rearranges over heads or relative-bias tables then reach its
    cat/split index mapping and the build fails or couples the wrong channels.
    """
    seen, inputs = set(), []
    for t in list(args) + list(kwargs.values()):
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.requires_grad and id(t) not in seen:
            seen.add(id(t))
            inputs.append(t)
    if not inputs:
        return None
    if isinstance(output, torch.Tensor):
        return _Opaque.apply(output.detach(), *inputs)
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return (_Opaque.apply(output[0].detach(), *inputs),) + tuple(output[1:])
    return None


class _OpaqueAttentionPruner(tp.pruner.BasePruningFunc):
    """Keeps recognised attention modules as single nodes in torch-pruning's graph.

    Their heads are cut by `AttentionSpec.prune_heads`; the residual width through them
    (d_model) is kept, so channel pruning through them is refused.
    """

    def prune_out_channels(self, layer, idxs):
        raise GraphBuildError(f"pruning the model width through {type(layer).__name__} is not supported; "
                              "d_model is kept by default")

    prune_in_channels = prune_out_channels

    def __init__(self, specs: Dict[int, AttentionSpec]):
        super().__init__()
        self.specs = specs

    def get_out_channels(self, layer):  # d_model out (index bookkeeping of cat/split needs it)
        spec = self.specs.get(id(layer))
        return spec.o.out_features if spec is not None else None

    def get_in_channels(self, layer):
        spec = self.specs.get(id(layer))
        return spec.q.in_features if spec is not None else None


def _module_names(model: nn.Module) -> Dict[nn.Module, str]:
    return {m: n for n, m in model.named_modules()}


@contextlib.contextmanager
def module_trail(model: nn.Module):
    """Record which module is running, so a failure can name it."""
    stack: List[str] = []
    names = _module_names(model)
    hooks = []

    def pre(m, args):
        stack.append(names.get(m, type(m).__name__))

    def post(m, args, out):
        if stack:
            stack.pop()

    for m in model.modules():
        hooks.append(m.register_forward_pre_hook(pre))
        hooks.append(m.register_forward_hook(post))
    try:
        yield stack
    finally:
        for h in hooks:
            h.remove()


def run_model(model: nn.Module, inputs):
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    for o in out:
        t = _first_tensor(o) if not isinstance(o, torch.Tensor) else o
        if t is not None:
            return t
    return None


def _unwrapped_parameters(model: nn.Module, specs: List[AttentionSpec]) -> list:
    """Standalone Parameters (positional tables, routers): prune along their last dim.

    Parameters inside recognised attention modules are left to the attention spec.
    """
    covered = set()
    for s in specs:
        covered.update(id(p) for p in s.module.parameters())
    wrapped = set()
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.LayerNorm, nn.Embedding, nn.BatchNorm1d, nn.GroupNorm)):
            wrapped.update(id(p) for p in m.parameters(recurse=False))
    out = []
    for p in model.parameters():
        if id(p) in covered or id(p) in wrapped:
            continue
        dims = [i for i, s in enumerate(p.shape) if s > 1]
        if dims:
            out.append((p, dims[-1]))
    return out


def infer_protected(model: nn.Module, dg: tp.DependencyGraph) -> List[nn.Module]:
    """Input embeddings and forecasting heads of a generic model.

    An input layer is a Linear/Conv1d/Embedding that no other such layer feeds (through
    any chain of parameter-free ops); an output layer is one whose result reaches the
    model output without passing another such layer.
    """
    layer_types = (nn.Linear, nn.Conv1d, nn.Embedding)
    nodes = dg.module2node
    out = []
    for m, node in nodes.items():
        if not isinstance(m, layer_types):
            continue
        for direction in ("inputs", "outputs"):
            seen, stack, hit_layer, hit_end = set(), list(getattr(node, direction)), False, False
            while stack:
                n = stack.pop()
                if n in seen:
                    continue
                seen.add(n)
                if isinstance(n.module, (layer_types + (nn.Parameter,))) or type(n.module) in dg.CUSTOMIZED_PRUNERS:
                    hit_layer = True
                    continue
                if direction == "outputs" and isinstance(n.module, tp.ops._OutputOp):
                    hit_end = True
                    continue
                stack.extend(getattr(n, direction))
            if (direction == "inputs" and not hit_layer) or (direction == "outputs" and hit_end):
                out.append(m)
                break
    return out

