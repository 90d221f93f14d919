"""Unit kinds: what can be removed, as a registry.

A kind of unit (FFN channels, attention heads; next: layers, experts, d_model) is one
small class registered with `register_kind`. It says

* how to **find** its groups in a traced model (`find`, given a `FindContext`),
* which tensors hold one unit (`slices`: criteria score them),
* how to **mask** a unit: by default the activations at `group.site` (the input of the
  down / output projection) are multiplied by a 0/1 mask repeated `group.width` times
  along the site's channel dim (`mask_site`; a kind whose units are not channels of one
  site's input, such as whole layers, overrides it),
* how to **cut** units physically (`cut`), and
* how to **fix up** attributes and configs afterwards (`after_cut`; heads update their
  head-count attributes there, through `AttentionSpec`),
* which module state a cut changes (`touched`: the forward check snapshots it), how to
  **repair** a cut that broke the forward (`cut_state` / `repair`: heads update stale
  width attributes) and how to **explain** one that could not be repaired
  (`explain_failure`), and
* whether its units are attention heads (`attention`: finding them needs the attention
  recognisers and the `nn.MultiheadAttention` drop-in; `build(prune_heads=False)` skips them).

Strategies and criteria iterate over groups and ask their kind; no file outside this
one needs to know the names "ffn" or "heads".

Example:
    >>> from compress.graph import UnitKind, register_kind, available_kinds
    >>> @register_kind
    ... class Experts(UnitKind):
    ...     name = "experts_doc_example"
    ...     opt_in = True               # found only when asked for: units=("experts_doc_example",)
    ...     def find(self, ctx):
    ...         return []
    >>> "experts_doc_example" in available_kinds()
    True
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Dict, List, Optional, Sequence, Set, Tuple

import torch
import torch_pruning as tp
from torch import nn

from .attention import AttentionSpec
from .units import UnitGroup

__all__ = ["UnitKind", "FindContext", "register_kind", "get_kind", "available_kinds"]

_KINDS: Dict[str, "UnitKind"] = {}


@dataclass
class FindContext:
    """What `UnitKind.find` may use.

    Args:
        model: the traced model.
        names: `{module: qualified name}` of the model.
        dg: torch-pruning's dependency graph (only during `build`; do not keep it).
        attention: the recognised attention modules.
        protected_ids: ids of modules that must stay dense (protected, ignored, their children).
        hooks: the model's `compress.models.base.PruningHooks` (adapter declarations).
        record: what the tracing hooks saw (per-head tensors handed between attention modules).
        root_time_limit_s: the budget of each torch-pruning grouping call.
        log: where progress notes go.
        not_prunable: filled by `find` with `{name: why}` of what it had to leave whole.
        slow_roots: filled by `find` with the roots whose grouping ran past its budget.
    """

    model: nn.Module
    names: Dict[nn.Module, str]
    dg: Optional[tp.DependencyGraph] = None
    attention: List[AttentionSpec] = field(default_factory=list)
    protected_ids: Set[int] = field(default_factory=set)
    hooks: object = None
    record: object = None
    root_time_limit_s: Optional[float] = None
    log: object = None
    not_prunable: Dict[str, str] = field(default_factory=dict)
    slow_roots: List[str] = field(default_factory=list)


class UnitKind:
    """One kind of removable unit. Subclass, set `name`, implement `find` (and `cut` /
    `slices` unless the group's `dg_out` / `dg_in` channel layout fits), register."""

    name: ClassVar[str] = "base"
    #: found only when asked for explicitly (e.g. `units=("layers",)`), not by default
    opt_in: ClassVar[bool] = False
    #: its groups are attention heads (`group.attention` is an `AttentionSpec`): `build`
    #: recognises attention modules (and swaps `nn.MultiheadAttention`) only for such kinds
    attention: ClassVar[bool] = False
    #: how plots and summaries name its units
    label: ClassVar[str] = "units"

    def find(self, ctx: FindContext) -> List[UnitGroup]:
        raise NotImplementedError

    def slices(self, group: UnitGroup) -> List[Tuple[torch.Tensor, int, int]]:
        """(tensor, dim, width) for every tensor holding the units: unit j is block j along dim."""
        out = []
        for m in group.dg_out:
            out.append((m.weight, 0, 1))
            if m.bias is not None:
                out.append((m.bias, 0, 1))
        for m in group.dg_in:
            out.append((m.weight, 1, 1))
        return out

    def mask_site(self, group: UnitGroup) -> Tuple[nn.Module, int]:
        """(module whose input carries the units, width of one unit there)."""
        return group.site, group.width

    def cut(self, group: UnitGroup, idxs: Sequence[int]) -> None:
        """Remove units `idxs` (sorted, unique, not all) physically."""
        for m in group.dg_out:
            tp.prune_linear_out_channels(m, idxs) if isinstance(m, nn.Linear) else tp.prune_conv_out_channels(m, idxs)
        for m in group.dg_in:
            tp.prune_linear_in_channels(m, idxs) if isinstance(m, nn.Linear) else tp.prune_conv_in_channels(m, idxs)

    def after_cut(self, group: UnitGroup, model: nn.Module) -> None:
        """Bring attributes and configs in line with the new sizes (default: nothing)."""

    def touched(self, group: UnitGroup) -> Tuple[List[nn.Module], List[object]]:
        """(modules, other objects) whose state a cut of `group` changes (snapshotted by the
        forward check, restored exactly when the cut fails)."""
        return list(group.dg_out) + list(group.dg_in), [group]

    def cut_state(self, group: UnitGroup) -> object:
        """What `repair` needs to know about `group` from before its cut (default: nothing)."""
        return None

    def repair(self, group: UnitGroup, state: object) -> List[str]:
        """After a cut of `group` broke the forward: try to fix it; return what was changed
        (empty: nothing to try, the cut is undone)."""
        return []

    def explain_failure(self, group: UnitGroup, problem: str, tried: List[str], names: Dict[nn.Module, str]) -> str:
        """Why a cut of `group` was undone, and what the user can do about it."""
        return (f"cutting {group.name} breaks the model ({problem}); it is left unpruned. Exclude its layers "
                f"with ignore=[...] or prune the other units only")


def register_kind(cls: type) -> type:
    """Class decorator: register a `UnitKind` subclass under its `name`."""
    if not cls.name or cls.name == "base":
        raise ValueError(f"{cls.__name__} needs a `name`")
    _KINDS[cls.name] = cls()
    return cls


def get_kind(name: str) -> UnitKind:
    try:
        return _KINDS[name]
    except KeyError:
        raise ValueError(f"unknown unit kind {name!r}; available: {', '.join(available_kinds())}") from None


def available_kinds(default_only: bool = False) -> List[str]:
    """Registered unit kinds in registration order (`default_only`: those found unless asked otherwise)."""
    return [k for k, v in _KINDS.items() if not (default_only and v.opt_in)]


@register_kind
class FFN(UnitKind):
    """Intermediate channels of a feed-forward block (one producer or a gated pair, one consumer)."""

    name = "ffn"
    label = "FFN channels"

    def find(self, ctx: FindContext) -> List[UnitGroup]:
        from .ffn import find_ffn_groups

        groups, slow, failed = find_ffn_groups(ctx.dg, ctx.names, ctx.protected_ids,
                                               root_time_limit_s=ctx.root_time_limit_s,
                                               log=ctx.log or (lambda msg: None))
        ctx.slow_roots += slow
        ctx.not_prunable.update(failed)
        for name in slow:
            ctx.not_prunable[name] = (f"grouping its out-channels took longer than its budget of "
                                      f"{ctx.root_time_limit_s:.3g}s (root_time_limit_s): treated as not prunable")
        return groups


@register_kind
class Heads(UnitKind):
    """Whole attention heads of a recognised attention module (`AttentionSpec`)."""

    name = "heads"
    attention = True
    label = "heads"

    def find(self, ctx: FindContext) -> List[UnitGroup]:
        from .coupling import coupled_attention
        from .tracing import TraceRecord

        specs = [s for s in ctx.attention if not any(id(x) in ctx.protected_ids for x in (s.module, s.q, s.k, s.v, s.o))]
        out = []
        for members in coupled_attention(specs, ctx.record or TraceRecord(), ctx.names, ctx.not_prunable):
            s, rest = members[0], members[1:]
            out.append(UnitGroup(ctx.names.get(s.module, "?") + ".heads", self.name, s.n_heads, s.o, s.v_dim,
                                 attention=s, coupled=rest))
        return out

    def slices(self, group: UnitGroup):
        return [sl for s in group.specs() for sl in s.slices()]

    def cut(self, group: UnitGroup, idxs: Sequence[int]) -> None:
        for spec in group.specs():  # coupled layers (residual attention) lose the same heads
            spec.prune_heads(idxs)  # fixes the head-count attributes too

    def touched(self, group: UnitGroup) -> Tuple[List[nn.Module], List[object]]:
        mods: List[nn.Module] = []
        extra: List[object] = [group]
        for spec in group.specs():
            mods += list(spec.module.modules())
            mods += [owner for owner, _, _ in spec.per_head if isinstance(owner, nn.Module)]
            extra.append(spec)
        return mods, extra

    def cut_state(self, group: UnitGroup) -> Dict[int, int]:
        return {id(s): s.v.out_features for s in group.specs()}  # the old inner width per layer

    def repair(self, group: UnitGroup, state: Dict[int, int]) -> List[str]:
        from .checks import update_width_attrs

        return update_width_attrs(group, state)

    def explain_failure(self, group: UnitGroup, problem: str, tried: List[str], names: Dict[nn.Module, str]) -> str:
        mod = group.attention.module
        name, cls = names.get(mod, "?"), type(mod).__name__
        attrs = ("updated " + ", ".join(tried) + " and still failed") if tried else \
            "no width attribute held the old inner width"
        return (f"cutting heads of {name!r} ({cls}) breaks the model ({problem}); {attrs}. The module keeps its "
                f"head count or inner width somewhere the engine does not update, or its heads are not separable "
                f"(a shared value projection): it is left unpruned. Name the head-count attribute with "
                f"heads={{{name!r}: 'attr'}}, teach the engine its layout with compress.graph.register_attention "
                f"(an AttentionSpec with fix=...), or prune FFN only with units=('ffn',)")
