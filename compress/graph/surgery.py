"""Physically removing units: `PruningGraph` and its `prune_group`.

The cuts themselves are torch-pruning's layer pruning functions; this module decides which
tensors of a group they are applied to.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence, Tuple

from torch import nn

from .attention import AttentionSpec
from .checks import CutReport, cut_checked
from .errors import GraphBuildError
from .units import UnitGroup

__all__ = ["PruningGraph"]


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
    #: (parent, attribute, original nn.MultiheadAttention, drop-in) for every swap `build` made
    swapped: List[tuple] = field(default_factory=list)
    slow_roots: List[str] = field(default_factory=list)  # grouping calls past their budget
    not_prunable: Dict[str, str] = field(default_factory=dict)  # unit group / layer name -> why

    def of_kind(self, kind: str) -> List[UnitGroup]:
        return [g for g in self.groups if g.kind == kind]

    def prune_group(self, group: UnitGroup, idxs: Sequence[int]) -> None:
        """Physically remove units `idxs` of `group` (its kind's `cut`, torch-pruning's layer
        pruners underneath), then let the kind fix attributes (`after_cut`)."""
        from .kinds import get_kind

        idxs = sorted(set(int(i) for i in idxs))
        if not idxs:
            return
        if len(idxs) >= group.n:
            raise ValueError(f"cannot remove all {group.n} units of {group.name}")
        kind = get_kind(group.kind)
        kind.cut(group, idxs)
        group.n -= len(idxs)
        kind.after_cut(group, self.model)

    def restore_unpruned_attention(self) -> int:
        """Put back the original `nn.MultiheadAttention` of every swapped module whose heads
        were not cut (it shares their weights), so an uncut model stays bit-identical and
        keeps torch's fused fast path. Returns how many were put back."""
        back = 0
        for parent, name, original, dropin in self.swapped:
            if getattr(parent, name) is dropin and dropin.num_heads == original.num_heads:
                setattr(parent, name, original)
                back += 1
        self.swapped = []
        return back

    def apply(self, plan: Sequence[Tuple[UnitGroup, Sequence[int]]], example_inputs, *,
              log: Callable[[str], None] = lambda msg: None) -> CutReport:
        """Cut `plan` ([(group, unit indices)]) and check the model by a forward pass.

        The pruned model must compute what the original computes with the removed units
        masked; a group whose cut fails that is restored, dropped from `groups` and listed
        in `not_prunable` (see `checks.cut_checked`). If no group can be cut, GraphBuildError.

        Example:
            >>> pg = compress.graph.build(model, x)                       # doctest: +SKIP
            >>> report = pg.apply([(g, [0]) for g in pg.groups], x)       # doctest: +SKIP
        """
        report = cut_checked(self.prune_group, self.model, example_inputs, plan, log=log)
        for name, why in report.failed.items():
            warnings.warn(f"{name} not pruned: {why}", stacklevel=3)
        if report.failed and not report.removed:
            raise GraphBuildError("no unit group could be cut without breaking the model: " +
                                  "; ".join(f"{k}: {v}" for k, v in report.failed.items()))
        if report.failed:
            self.groups = [g for g in self.groups if g.name not in report.failed]
            self.not_prunable.update(report.failed)
        return report
