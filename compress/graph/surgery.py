"""Physically removing units: `PruningGraph` and its `prune_group`.

The cuts themselves are torch-pruning's layer pruning functions; this module decides which
tensors of a group they are applied to.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import torch_pruning as tp
from torch import nn

from .attention import AttentionSpec
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

