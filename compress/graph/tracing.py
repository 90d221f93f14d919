"""Running and tracing a model for torch-pruning's `DependencyGraph`.

Helpers to call a model on any input shape, find its output tensor, name the module that
failed, hide the inside of recognised attention modules from the tracer (so their heads
stay one opaque node), list standalone parameters, and infer the input embedding and the
forecasting head that default pruning leaves dense.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch_pruning as tp
from torch import nn

from .attention import AttentionSpec
from .errors import GraphBuildError
from .outputs import flatten, tensors

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


class _WithGradFn:
    """Mixin for rebuilt containers: torch-pruning's tracing hook reads `output.grad_fn`
    of every customised module's output (or of `output[0]` for tuples)."""

    grad_fn = None


class _Dict(_WithGradFn, dict):
    pass


class _List(_WithGradFn, list):
    pass


def _carry_grad_fn(container, grad_fn):
    """`container` with a `grad_fn` attribute torch-pruning's hook can read."""
    if isinstance(container, (torch.Tensor, tuple)):
        return container
    if type(container) is dict:
        container = _Dict(container)
    elif type(container) is list:
        container = _List(container)
    try:
        object.__setattr__(container, "grad_fn", grad_fn)
    except (AttributeError, TypeError):  # __slots__ or a frozen builtin: torch-pruning's hook will fail
        pass
    return container


@dataclass
class TraceRecord:
    """What the tracing hooks saw: per recognised attention module, its tensor inputs and
    the side outputs (attention weights, scores) handed on, kept alive so identities hold."""

    inputs: Dict[int, List[torch.Tensor]] = field(default_factory=dict)
    side_outputs: Dict[int, List[torch.Tensor]] = field(default_factory=dict)


def opaque_hook(spec: AttentionSpec, record: Optional[TraceRecord] = None):
    """A forward hook (with kwargs) that hides the inside of `spec.module` from the tracer.

    torch-pruning walks the autograd graph *inside* customised modules too; RoPE's
    `cat(-x2, x1)`, einops rearranges over heads or relative-bias tables then reach its
    cat/split index mapping and the build fails or couples the wrong channels. Every
    output tensor of the model width (d_model) becomes an identity whose autograd node
    links only to the module inputs (shaped like the query: [..., L, d_model]); the other
    tensors (attention weights, scores) are
    detached, so the tracer never sees the per-head tensors. Any container (tensor,
    tuple, list, dict, dataclass, `ModelOutput`) is flattened and rebuilt.
    """
    width = spec.o.out_features

    def _opaque_hook(module, args, kwargs, output):
        seen, inputs = set(), []
        for t in tensors(tuple(args)) + tensors(dict(kwargs)):
            if t.is_floating_point() and t.requires_grad and id(t) not in seen:
                seen.add(id(t))
                inputs.append(t)
        if record is not None:
            record.inputs.setdefault(id(module), []).extend(tensors(tuple(args)) + tensors(dict(kwargs)))
        if not inputs:
            return None
        leaves, rebuild = flatten(output)
        lead = inputs[0].shape[:-1]  # the query's [B, L]: outputs of the model width share it
        main, new = None, []
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
                if leaf.dim() and leaf.shape[-1] == width and leaf.shape[:-1] == lead and leaf.requires_grad:
                    leaf = _Opaque.apply(leaf.detach(), *inputs)
                    main = leaf if main is None else main
                else:
                    leaf = leaf.detach()
                    if record is not None:
                        record.side_outputs.setdefault(id(module), []).append(leaf)
            new.append(leaf)
        if main is None:
            return None
        return _carry_grad_fn(rebuild(new), main.grad_fn)

    return _opaque_hook


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
        if not node.outputs:  # the traced output itself (torch-pruning adds no output node then)
            out.append(m)
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

