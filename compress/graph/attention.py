"""Attention modules as head units: `AttentionSpec`, the recogniser registry.

torch-pruning couples q/k/v channels through the matmuls as if they were element-wise,
and its head support depends on the pruner and on a scope bug (see NOTES, cause 6). Here
every recognised attention module is described by an `AttentionSpec`, whose heads are cut
by `AttentionSpec.prune_heads`: it slices q/k/v rows, output columns and per-head tables
(relative-position bias columns, Fourier weights) with torch-pruning's own Linear pruning
functions and then fixes the head-count attributes. Adapters teach the engine about new
attention classes with `register_attention`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch_pruning as tp
from torch import nn

__all__ = ["AttentionSpec", "register_attention", "recognize", "head_count", "HEAD_ATTRS", "INNER_ATTRS"]

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
            sync_shape_attributes(owner)
        old = self.n_heads
        self.n_heads = old - len(idxs)
        (self.fix or _default_fix)(self.module, self.n_heads, old)


#: (module type, {attribute: dim of `weight` it mirrors}): the size attributes a sliced
#: per-head table must keep in line with its weight (`Embedding.embedding_dim` would
#: otherwise still name the width before the cut)
SHAPE_ATTRIBUTES = ((nn.Embedding, {"num_embeddings": 0, "embedding_dim": 1}),
                    (nn.Linear, {"out_features": 0, "in_features": 1}))


def sync_shape_attributes(module: nn.Module) -> None:
    """Set `module`'s size attributes (`SHAPE_ATTRIBUTES`) from its current `weight`."""
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor):
        return
    for cls, attrs in SHAPE_ATTRIBUTES:
        if isinstance(module, cls):
            for attr, dim in attrs.items():
                if dim < w.dim():
                    setattr(module, attr, w.shape[dim])


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


def _projections(module: nn.Module) -> dict:
    """The q/k/v/o Linears among `module`'s children, found by their usual names."""
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
    return found


def _layout_problem(found: dict, n: Optional[int]) -> Optional[str]:
    """Why q/k/v/o projections with head count `n` are not cut-able heads, or None."""
    if len(found) < 4:
        missing = ", ".join(r for r in "qkvo" if r not in found)
        return f"no {missing} projection found by name"
    if n is None:
        return "no head-count attribute (pass heads={name: n})"
    q, k, v, o = found["q"], found["k"], found["v"], found["o"]
    if n > 1 and v.out_features * n == q.out_features:
        return "shared value projection (one value head for all heads)"
    if q.out_features != k.out_features or q.out_features % n or v.out_features % n or o.in_features != v.out_features:
        return (f"projection widths q {q.out_features}, k {k.out_features}, v {v.out_features}, "
                f"o in {o.in_features} do not split into {n} heads")
    return None


def _generic_qkvo(module: nn.Module, hint: Optional[int]) -> Optional[AttentionSpec]:
    found = _projections(module)
    n = hint or head_count(module)
    if _layout_problem(found, n) is not None:
        return None
    per_head = []
    if hasattr(module, "per_head_parameters"):
        per_head = list(module.per_head_parameters())
    return AttentionSpec(module, n, found["q"], found["k"], found["v"], found["o"], per_head)


def unrecognised_reason(module: nn.Module, hint: Optional[int] = None) -> Optional[str]:
    """Why a module that looks like attention was not recognised, or None if it does not look like one.

    It looks like attention if it has at least two projection children by the usual names
    (q/k/v/o), per-head projection lists, or "Attention" in its class name, weights of its
    own and a head count.
    """
    found = _projections(module)
    lists = [n for n, c in module.named_children() if isinstance(c, nn.ModuleList) and len(c)
             and all(isinstance(x, nn.Linear) for x in c) and n.lower()[:1] in "qkv"]
    has_weights = any(True for _ in module.parameters(recurse=False)) or any(
        isinstance(c, nn.Linear) for c in module.children())
    looks = len(found) >= 2 or lists or ("attention" in type(module).__name__.lower() and has_weights
                                         and head_count(module) is not None)
    if not looks:
        return None
    if lists:
        values = [n for n, c in module.named_children() if isinstance(c, nn.Linear) and n.lower().startswith("v")]
        if values:
            return f"shared value projection ({values[0]}) with per-head {'/'.join(lists)} lists"
        return f"per-head projections in lists ({', '.join(lists)}): unknown layout"
    return _layout_problem(found, hint or head_count(module)) or "unknown layout"


_RECOGNIZERS.append(_generic_qkvo)


def recognize(module: nn.Module, hint: Optional[int] = None) -> Optional[AttentionSpec]:
    for fn in _RECOGNIZERS:
        spec = fn(module, hint)
        if spec is not None:
            return spec
    return None

