"""Tracing a forecaster into prunable unit groups.

torch-pruning's `DependencyGraph` does the tracing and the channel surgery; this module
adds what it does not do for forecasting Transformers:

* **Attention heads as units.** torch-pruning couples q/k/v channels through the matmuls
  as if they were element-wise, and its head support depends on the pruner and on a
  scope bug (see NOTES, cause 6). Here every recognised attention module is registered
  as one opaque node while tracing (its inside is never split into channel groups), and
  its heads are cut by `AttentionSpec.prune_heads`, which slices q/k/v rows, output
  columns and per-head tables (relative-position bias columns, Fourier weights) with
  torch-pruning's own Linear pruning functions and then fixes the head-count attributes.
* **FFN channels.** A torch-pruning group rooted at a Linear/Conv1d whose out-channels
  reach only the in-channels of other Linear/Conv1d layers (nothing on the residual
  stream: no norm, no embedding, no head, no attention) is an FFN group.
* **Guard rails.** Graph building runs under a time limit (it can spin for minutes on
  some attention code), and a model that fails to run is reported with the module that
  raised and what to do.

Adapters teach the engine about new attention classes with `register_attention`.
"""
from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

__all__ = [
    "AttentionSpec", "UnitGroup", "PruningGraph", "build", "register_attention",
    "MultiheadAttention", "GraphBuildError", "describe_sizes", "HEAD_ATTRS",
]

#: attribute names that hold a module's head count, in lookup order
HEAD_ATTRS = ("num_heads", "n_heads", "n_head", "num_attention_heads", "heads", "h")
#: attribute names that hold the concatenated width of all heads (heads x head_dim)
INNER_ATTRS = ("inner_dim", "all_head_size", "inner_size", "proj_dim")

_PROJ_NAMES = {
    "q": ("q_proj", "query_projection", "q", "query", "W_Q", "wq", "to_q", "q_lin"),
    "k": ("k_proj", "key_projection", "k", "key", "W_K", "wk", "to_k", "k_lin"),
    "v": ("v_proj", "value_projection", "v", "value", "W_V", "wv", "to_v", "v_lin"),
    "o": ("out_proj", "o_proj", "out_projection", "o", "out", "W_O", "wo", "to_out", "dense", "out_lin"),
}


class GraphBuildError(RuntimeError):
    """The model could not be traced into a dependency graph."""


# ---------------------------------------------------------------------------------
# Attention modules
# ---------------------------------------------------------------------------------
@dataclass
class AttentionSpec:
    """How to cut whole heads out of one attention module.

    Args:
        module: the attention module.
        n_heads: its current head count.
        q, k, v, o: its projection Linears (q/k/v rows and o columns hold the heads).
        per_head: extra per-head tensors as (owner module, parameter name, dim); that
            dim's size is a multiple of `n_heads` and head j is block j.
        fix: called as `fix(module, new_n_heads)` after the cut to update attributes;
            the default sets every `HEAD_ATTRS` / `INNER_ATTRS` attribute it finds.
    """

    module: nn.Module
    n_heads: int
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    per_head: List[Tuple[nn.Module, str, int]] = field(default_factory=list)
    fix: Optional[Callable[[nn.Module, int], None]] = None

    @property
    def qk_dim(self) -> int:
        return self.q.out_features // self.n_heads

    @property
    def v_dim(self) -> int:
        return self.v.out_features // self.n_heads

    def slices(self) -> List[Tuple[nn.Parameter, int, int]]:
        """(parameter, dim, width per head) for every tensor that holds the heads."""
        out = []
        for lin, width in ((self.q, self.qk_dim), (self.k, self.qk_dim), (self.v, self.v_dim)):
            out.append((lin.weight, 0, width))
            if lin.bias is not None:
                out.append((lin.bias, 0, width))
        out.append((self.o.weight, 1, self.v_dim))
        for owner, name, dim in self.per_head:
            p = getattr(owner, name)
            out.append((p, dim, p.shape[dim] // self.n_heads))
        return out

    def prune_heads(self, idxs: Sequence[int]) -> None:
        """Remove heads `idxs` (physically) and update the head-count attributes."""
        idxs = sorted(set(int(i) for i in idxs))
        if not idxs:
            return
        if len(idxs) >= self.n_heads:
            raise ValueError(f"cannot remove all {self.n_heads} heads of {type(self.module).__name__}")

        def expand(width: int) -> List[int]:
            return [h * width + j for h in idxs for j in range(width)]

        dq, dv = self.qk_dim, self.v_dim
        tp.prune_linear_out_channels(self.q, expand(dq))
        tp.prune_linear_out_channels(self.k, expand(dq))
        tp.prune_linear_out_channels(self.v, expand(dv))
        tp.prune_linear_in_channels(self.o, expand(dv))
        for owner, name, dim in self.per_head:
            p = getattr(owner, name)
            width = p.shape[dim] // self.n_heads
            keep = [i for i in range(p.shape[dim]) if i // width not in set(idxs)]
            new = torch.index_select(p.data, dim, torch.tensor(keep, device=p.device))
            setattr(owner, name, nn.Parameter(new, requires_grad=p.requires_grad) if isinstance(p, nn.Parameter) else new)
        old = self.n_heads
        self.n_heads = old - len(idxs)
        (self.fix or _default_fix)(self.module, self.n_heads, old)


def _default_fix(module: nn.Module, new_heads: int, old_heads: int) -> None:
    for name in HEAD_ATTRS:
        if isinstance(getattr(module, name, None), int) and getattr(module, name) == old_heads:
            setattr(module, name, new_heads)
    for name in INNER_ATTRS:
        val = getattr(module, name, None)
        if isinstance(val, int) and val % old_heads == 0:
            setattr(module, name, val // old_heads * new_heads)


def _attr_fix(attr: str):
    def fix(module: nn.Module, new_heads: int, old_heads: int) -> None:
        setattr(module, attr, new_heads)
        _default_fix(module, new_heads, old_heads)
    return fix


_RECOGNIZERS: List[Callable[[nn.Module, Optional[int]], Optional[AttentionSpec]]] = []


def register_attention(fn: Callable[[nn.Module, Optional[int]], Optional[AttentionSpec]]):
    """Register a recogniser `fn(module, n_heads_hint) -> AttentionSpec | None`.

    Recognisers registered later are tried first, so an adapter can override the
    generic q/k/v/o recogniser for its family's attention class.

    Example:
        >>> @compress.graph.register_attention                   # doctest: +SKIP
        ... def t5(module, hint):
        ...     if isinstance(module, T5Attention): return AttentionSpec(...)
    """
    _RECOGNIZERS.insert(0, fn)
    return fn


def head_count(module: nn.Module) -> Optional[int]:
    """The head count a module declares through an attribute or its `config`."""
    for name in HEAD_ATTRS:
        val = getattr(module, name, None)
        if isinstance(val, int) and not isinstance(val, bool) and val > 0:
            return val
    cfg = getattr(module, "config", None)
    if cfg is not None:
        for name in HEAD_ATTRS + ("encoder_attention_heads", "num_key_value_heads"):
            val = getattr(cfg, name, None)
            if isinstance(val, int) and val > 0:
                return val
    return None


def _generic_qkvo(module: nn.Module, hint: Optional[int]) -> Optional[AttentionSpec]:
    found = {}
    children = dict(module.named_children())
    for role, names in _PROJ_NAMES.items():
        for n in names:
            child = children.get(n)
            if isinstance(child, nn.Sequential) and len(child) and isinstance(child[0], nn.Linear):
                child = child[0]  # e.g. to_out = Sequential(Linear, Dropout)
            if isinstance(child, nn.Linear):
                found[role] = child
                break
    if len(found) < 4:
        return None
    n = hint or head_count(module)
    if n is None:
        return None
    q, k, v, o = found["q"], found["k"], found["v"], found["o"]
    if q.out_features != k.out_features or q.out_features % n or v.out_features % n or o.in_features != v.out_features:
        return None
    per_head = []
    if hasattr(module, "per_head_parameters"):
        per_head = list(module.per_head_parameters())
    return AttentionSpec(module, n, q, k, v, o, per_head)


# nn.MultiheadAttention assumes q/k/v width == embed_dim, so its heads cannot be removed in
# place: `build` swaps it for the `MultiheadAttention` drop-in below, which this recognises.
_RECOGNIZERS.append(_generic_qkvo)


def recognize(module: nn.Module, hint: Optional[int] = None) -> Optional[AttentionSpec]:
    for fn in _RECOGNIZERS:
        spec = fn(module, hint)
        if spec is not None:
            return spec
    return None


class MultiheadAttention(nn.Module):
    """Drop-in for `nn.MultiheadAttention` whose heads can be removed.

    Same call signature and outputs, but with separate q/k/v/out Linears so that the
    inner width (heads x head_dim) may differ from `embed_dim` after pruning. Built from
    an existing module with `from_torch`; outputs match it to float rounding.

    Example:
        >>> mha = compress.graph.MultiheadAttention.from_torch(nn.MultiheadAttention(16, 4))  # doctest: +SKIP
    """

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, bias: bool = True,
                 dropout: float = 0.0, batch_first: bool = False, kdim: Optional[int] = None,
                 vdim: Optional[int] = None, device=None, dtype=None):
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.dropout, self.batch_first = dropout, batch_first
        inner = num_heads * head_dim
        kw = dict(bias=bias, device=device, dtype=dtype)
        self.q_proj = nn.Linear(embed_dim, inner, **kw)
        self.k_proj = nn.Linear(kdim or embed_dim, inner, **kw)
        self.v_proj = nn.Linear(vdim or embed_dim, inner, **kw)
        self.out_proj = nn.Linear(inner, embed_dim, **kw)
        # nn.TransformerEncoder(Layer) read these to decide on their fused fast path; the
        # values below make them take the plain path that calls this module.
        self._qkv_same_embed_dim = False
        self.in_proj_bias = None
        self.in_proj_weight = None

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> "MultiheadAttention":
        if mha.bias_k is not None or mha.add_zero_attn:
            raise GraphBuildError("nn.MultiheadAttention with add_bias_kv/add_zero_attn is not supported for head pruning")
        d, h = mha.embed_dim, mha.num_heads
        # built on the meta device and given the original tensors: no throw-away init
        new = cls(d, h, d // h, bias=mha.in_proj_bias is not None, dropout=mha.dropout,
                  batch_first=mha.batch_first, kdim=mha.kdim, vdim=mha.vdim, device="meta")

        def param(t):  # shares storage with the original (views of in_proj_weight): no copy
            return nn.Parameter(t.detach(), requires_grad=t.requires_grad)

        ws = (mha.in_proj_weight.chunk(3) if mha._qkv_same_embed_dim
              else (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight))
        bs = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None,) * 3
        for lin, w, b in zip((new.q_proj, new.k_proj, new.v_proj), ws, bs):
            lin.weight = param(w)
            if b is not None:
                lin.bias = param(b)
        new.out_proj.weight = param(mha.out_proj.weight)
        if mha.out_proj.bias is not None:
            new.out_proj.bias = param(mha.out_proj.bias)
        new.train(mha.training)
        return new

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if not self.batch_first:  # [L, B, D] -> [B, L, D]
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        B, Lq, _ = query.shape
        Lk = key.shape[1]
        q = self.q_proj(query).view(B, Lq, self.num_heads, self.head_dim).transpose(1, 2)  # [B, h, Lq, dh]
        k = self.k_proj(key).view(B, Lk, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(value).view(B, Lk, self.num_heads, -1).transpose(1, 2)
        mask = _merge_masks(attn_mask, key_padding_mask, B, self.num_heads, Lq, Lk, q.dtype)
        if is_causal and mask is None:
            mask = torch.ones(Lq, Lk, dtype=torch.bool, device=q.device).tril().logical_not()
            mask = torch.zeros(Lq, Lk, dtype=q.dtype, device=q.device).masked_fill(mask, float("-inf"))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # [B, h, Lq, Lk]
        if mask is not None:
            scores = scores + mask
        attn = torch.softmax(scores, dim=-1)
        if self.training and self.dropout > 0:
            attn = F.dropout(attn, self.dropout)
        out = (attn @ v).transpose(1, 2).reshape(B, Lq, -1)  # [B, Lq, h*dv]
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        weights = None
        if need_weights:
            weights = attn.mean(1) if average_attn_weights else attn
        return out, weights


def _merge_masks(attn_mask, key_padding_mask, B, h, Lq, Lk, dtype):
    mask = None
    if attn_mask is not None:
        m = attn_mask
        if m.dtype == torch.bool:
            m = torch.zeros_like(m, dtype=dtype).masked_fill(m, float("-inf"))
        if m.dim() == 3:  # [B*h, Lq, Lk]
            m = m.view(B, -1, Lq, Lk)
        mask = m.to(dtype)
    if key_padding_mask is not None:
        kp = key_padding_mask
        if kp.dtype == torch.bool:
            kp = torch.zeros_like(kp, dtype=dtype).masked_fill(kp, float("-inf"))
        kp = kp.to(dtype).view(B, 1, 1, Lk)
        mask = kp if mask is None else mask + kp
    return mask


def swap_torch_mha(model: nn.Module) -> int:
    """Replace every `nn.MultiheadAttention` in `model` by the prunable drop-in."""
    targets = [(parent, name) for parent in model.modules() for name, child in parent.named_children()
               if type(child) is nn.MultiheadAttention]
    for parent, name in targets:  # one at a time, so each original is freed before the next
        setattr(parent, name, MultiheadAttention.from_torch(getattr(parent, name)))
    return len(targets)


# ---------------------------------------------------------------------------------
# Unit groups
# ---------------------------------------------------------------------------------
@dataclass
class UnitGroup:
    """A set of coupled units that are removed together.

    `kind` is "ffn" (intermediate channels of a feed-forward block) or "heads" (whole
    attention heads). `slices` lists every tensor holding the units as
    (parameter getter, dim, width): unit j is the block [j*width, (j+1)*width) along dim.
    `site` is the module whose *input* carries the units' activations (FFN: the down
    projection; heads: the output projection) - criteria hook it to read activations or
    to apply unit masks. `width` is the activation width of one unit at `site`.
    """

    name: str
    kind: str
    n: int
    site: nn.Module
    width: int
    attention: Optional[AttentionSpec] = None
    dg_out: List[nn.Module] = field(default_factory=list)  # FFN: Linear/Conv1d whose out-channels are the units
    dg_in: List[nn.Module] = field(default_factory=list)   # FFN: the layers that read them

    def slices(self) -> List[Tuple[torch.Tensor, int, int]]:
        if self.kind == "heads":
            return self.attention.slices()
        out = []
        for m in self.dg_out:
            out.append((m.weight, 0, 1))
            if m.bias is not None:
                out.append((m.bias, 0, 1))
        for m in self.dg_in:
            out.append((m.weight, 1, 1))
        return out

    def unit_view(self, tensor: torch.Tensor, dim: int, width: int) -> torch.Tensor:
        """`tensor` reshaped to [n, elements-of-one-unit]."""
        t = tensor.movedim(dim, 0)
        return t.reshape(self.n, width, -1).reshape(self.n, -1)

    def reduce(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Sum over slices of fn(param, grad) viewed per unit -> [n]."""
        total = torch.zeros(self.n)
        for p, dim, width in self.slices():
            total += fn(self.unit_view(p.detach(), dim, width),
                        None if p.grad is None else self.unit_view(p.grad, dim, width)).float().cpu()
        return total


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


@dataclass
class PruningGraph:
    """The unit groups found in a traced model.

    torch-pruning's graph itself is not kept: its nodes hold the autograd graph of the
    tracing pass, which would keep every original weight alive after pruning.
    """

    model: nn.Module
    groups: List[UnitGroup]
    attention: List[AttentionSpec]
    protected: List[nn.Module]
    build_seconds: float = 0.0

    def of_kind(self, kind: str) -> List[UnitGroup]:
        return [g for g in self.groups if g.kind == kind]

    def prune_group(self, group: UnitGroup, idxs: Sequence[int]) -> None:
        """Physically remove units `idxs` of `group` (torch-pruning's layer pruners)."""
        idxs = sorted(set(int(i) for i in idxs))
        if not idxs:
            return
        if group.kind == "heads":
            group.attention.prune_heads(idxs)
        else:
            # an FFN group holds exactly its producers' out-channels and its consumers'
            # in-channels (checked in `build`), so these cuts are the whole group
            for m in group.dg_out:
                tp.prune_linear_out_channels(m, idxs) if isinstance(m, nn.Linear) else tp.prune_conv_out_channels(m, idxs)
            for m in group.dg_in:
                tp.prune_linear_in_channels(m, idxs) if isinstance(m, nn.Linear) else tp.prune_conv_in_channels(m, idxs)
        group.n -= len(idxs)


def _module_names(model: nn.Module) -> Dict[nn.Module, str]:
    return {m: n for n, m in model.named_modules()}


@contextlib.contextmanager
def time_limit(seconds: Optional[float], what: str):
    """Raise `GraphBuildError` if the block runs longer than `seconds` (main thread only)."""
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def handler(signum, frame):
        raise GraphBuildError(what)

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


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


def build(model: nn.Module, example_inputs, *, ignore: Iterable = (), heads: Optional[dict] = None,
          protected: Optional[Sequence[nn.Module]] = None, prune_heads: bool = True,
          time_limit_s: float = 120.0, verbose: bool = False) -> PruningGraph:
    """Trace `model` and collect its FFN and attention-head unit groups.

    Args:
        model: the model (it is modified only by swapping `nn.MultiheadAttention` for the
            equivalent prunable module when `prune_heads`).
        example_inputs: inputs for one forward (Tensor, tuple or dict).
        ignore: modules (or their qualified names) never to prune.
        heads: `{module_or_name: n_heads}` for attention modules whose head count is not
            an attribute the engine knows, or `{module_or_name: "attr"}` naming the
            attribute that holds it (it is then updated after pruning).
        protected: modules left dense (input embedding, head); inferred if None.
        prune_heads: find attention-head groups.
        time_limit_s: abort graph building after this many seconds.
    """
    t0 = time.perf_counter()
    # tracing keeps every activation for a backward pass: two samples show the same graph
    if isinstance(example_inputs, torch.Tensor) and example_inputs.dim() > 1 and example_inputs.shape[0] > 2:
        example_inputs = example_inputs[:2]
    names = _module_names(model)
    by_name = {n: m for m, n in names.items()}

    def resolve(x):
        if isinstance(x, str):
            if x not in by_name:
                raise ValueError(f"ignore/heads names unknown module {x!r}")
            return by_name[x]
        return x

    ignored = [resolve(x) for x in ignore]
    hints, head_attr = {}, {}
    for k, v in (heads or {}).items():
        m = resolve(k)
        if isinstance(v, str):  # the name of the attribute that holds the head count
            if not isinstance(getattr(m, v, None), int):
                raise ValueError(f"heads= names attribute {v!r} of {type(m).__name__}, which holds no integer")
            head_attr[m], v = v, getattr(m, v)
        hints[m] = int(v)

    by_name.clear()  # it holds modules the MHA swap replaces: let them go
    if prune_heads:
        swap_torch_mha(model)
        names = _module_names(model)
    ignored_ids = {id(m) for m in ignored}
    specs: List[AttentionSpec] = []
    for m in model.modules():
        if id(m) in ignored_ids:
            continue
        spec = recognize(m, hints.get(m))
        if spec is not None:
            if m in head_attr:
                spec.fix = _attr_fix(head_attr[m])
            specs.append(spec)
        elif m in hints:
            raise GraphBuildError(f"heads= names {names.get(m)} ({type(m).__name__}) but no q/k/v/output "
                                  "projections were recognised in it; register a recogniser with "
                                  "compress.graph.register_attention or use a model adapter")
    # nested specs (an attention inside another recognised attention): keep outermost
    inner = {id(sub) for s in specs for sub in s.module.modules() if sub is not s.module}
    specs = [s for s in specs if id(s.module) not in inner]

    opaque = _OpaqueAttentionPruner({id(s.module): s for s in specs})
    customized = {type(s.module): opaque for s in specs}
    dg = tp.DependencyGraph()
    was_training = model.training
    requires = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(True)  # the tracer follows autograd: frozen weights are invisible
    # registered before torch-pruning's own hooks, so they see the opaque output
    opaque_hooks = [s.module.register_forward_hook(_opaque_output, with_kwargs=True) for s in specs]
    try:
        with module_trail(model) as trail, time_limit(
                time_limit_s, f"building the dependency graph of {type(model).__name__} took longer than "
                              f"{time_limit_s:.0f}s; exclude the slow part with ignore=[...], give head counts "
                              "with heads={...}, or use a compress.models adapter"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                dg.build_dependency(
                    model, example_inputs=example_inputs,
                    forward_fn=lambda m, x: run_model(m, x),
                    output_transform=_first_tensor,
                    customized_pruners=customized,
                    unwrapped_parameters=_unwrapped_parameters(model, specs),
                    ignored_layers=None, verbose=verbose)
            except GraphBuildError:
                raise
            except Exception as e:  # name the module that failed
                if not trail:  # the forward ran: torch-pruning's grouping itself failed
                    raise GraphBuildError(
                        f"torch-pruning could not group the traced graph of {type(model).__name__} "
                        f"({type(e).__name__}: {e}); exclude the offending modules with ignore=[...], or load the "
                        "model through a compress.models adapter that registers its attention") from e
                where = trail[-1]
                raise GraphBuildError(
                    f"could not trace {type(model).__name__}: module {where!r} raised "
                    f"{type(e).__name__}: {e}. Exclude it with ignore=[{where!r}], give its head count "
                    f"with heads={{{where!r}: n}}, or load the model through a compress.models adapter") from e
    finally:
        for h in opaque_hooks:
            h.remove()
        for p, r in requires.items():
            p.requires_grad_(r)
        model.train(was_training)

    if protected is None:
        protected = infer_protected(model, dg)
    protected_ids = {id(m) for m in protected} | ignored_ids
    for m in list(protected) + ignored:
        protected_ids.update(id(sub) for sub in m.modules())

    groups: List[UnitGroup] = []
    names = _module_names(model)
    for s in specs:
        if any(id(x) in protected_ids for x in (s.module, s.q, s.k, s.v, s.o)):
            continue
        groups.append(UnitGroup(names.get(s.module, "?") + ".heads", "heads", s.n_heads, s.o, s.v_dim, attention=s))

    roots = [m for m in dg.module2node if isinstance(m, (nn.Linear, nn.Conv1d)) and id(m) not in protected_ids]
    grouped = set()
    for m in roots:
        if id(m) in grouped or (isinstance(m, nn.Conv1d) and m.groups != 1):
            continue
        pruner = dg.get_pruner_of_module(m)
        group = dg.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
        outs, ins, ok = [m], [], True
        for dep, _ in group:
            t = dep.target.module
            if t is m:
                continue
            if isinstance(t, (nn.Linear, nn.Conv1d)):
                if id(t) in protected_ids or (isinstance(t, nn.Conv1d) and t.groups != 1):
                    ok = False
                (ins if dg.is_in_channel_pruning_fn(dep.handler) else outs).append(t)
            elif isinstance(t, tp.ops._OutputOp) or not _is_op(t):
                ok = False  # norm, embedding, attention, a parameter, the output: the residual stream
        outs = list({id(o): o for o in outs}.values())
        ins = list({id(i): i for i in ins}.values())
        grouped.update(id(o) for o in outs)
        # one producer, or a gated pair (GLU: act(x W0) * (x W1)) that share a parent and
        # an input; three or more coupled producers are attention-like: not an FFN
        gated = len(outs) == 2 and _parent(names, outs[0]) == _parent(names, outs[1]) and \
            _in_width(outs[0]) == _in_width(outs[1])
        if not ok or len(ins) != 1 or not (len(outs) == 1 or gated):
            continue  # fan-out FFNs (several consumers) are left alone too
        n = m.out_channels if isinstance(m, nn.Conv1d) else m.out_features
        groups.append(UnitGroup(names.get(m, "?") + ".ffn", "ffn", n, ins[0], 1, dg_out=outs, dg_in=ins))
    del dg  # see PruningGraph
    release_memory(model)
    return PruningGraph(model, groups, specs, list(protected), time.perf_counter() - t0)


def _parent(names: Dict[nn.Module, str], m: nn.Module) -> str:
    return names.get(m, "").rpartition(".")[0]


def _in_width(m: nn.Module) -> int:
    return m.in_channels if isinstance(m, nn.Conv1d) else m.in_features


def _is_op(t) -> bool:
    return type(t).__module__.startswith("torch_pruning")


def release_memory(model: Optional[nn.Module] = None, min_mb: float = 64.0) -> None:
    """Hand freed tensor memory back to the OS (glibc keeps freed blocks otherwise).

    Tracing and calibration allocate activations that are freed before the cut; without
    this the cut's new, smaller weights land on top of them and peak RSS grows. Skipped
    for models under `min_mb` (a garbage-collection pass costs ~0.1 s).
    """
    import ctypes
    import gc

    if model is not None and sum(p.numel() * p.element_size() for p in model.parameters()) < min_mb * 2**20:
        return
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def describe_sizes(model: nn.Module) -> dict:
    """Sizes of every Linear/Conv1d and head count, by qualified name (for configs)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            out[name] = [m.in_features, m.out_features]
        elif isinstance(m, nn.Conv1d):
            out[name] = [m.in_channels, m.out_channels]
        else:
            n = head_count(m) if recognize(m) is not None else None
            if n is not None:
                out[name] = {"heads": n}
    return out
