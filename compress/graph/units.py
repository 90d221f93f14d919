"""`UnitGroup`: a set of coupled units (FFN channels, attention heads) removed together."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import torch
from torch import nn

from .attention import AttentionSpec

__all__ = ["UnitGroup"]


@dataclass
class UnitGroup:
    """A set of coupled units that are removed together.

    `kind` names a registered `compress.graph.UnitKind` ("ffn": intermediate channels of a
    feed-forward block; "heads": whole attention heads), which says how the units are
    found, masked and cut. `slices` lists every tensor holding the units as
    (parameter getter, dim, width): unit j is the block [j*width, (j+1)*width) along dim.
    `site` is the module whose *input* carries the units' activations (FFN: the down
    projection; heads: the output projection) - criteria hook it to read activations or
    to apply unit masks. `width` is the activation width of one unit at `site`.
    `coupled` (heads only) lists further attention modules whose heads are cut in the same
    positions, because per-head state crosses from one to the next (residual attention);
    `sites()` then lists every output projection.
    """

    name: str
    kind: str
    n: int
    site: nn.Module
    width: int
    attention: Optional[AttentionSpec] = None
    dg_out: List[nn.Module] = field(default_factory=list)  # FFN: Linear/Conv1d whose out-channels are the units
    dg_in: List[nn.Module] = field(default_factory=list)   # FFN: the layers that read them
    coupled: List[AttentionSpec] = field(default_factory=list)  # heads: cut in the same positions

    def specs(self) -> List[AttentionSpec]:
        """The attention modules whose heads are this group's units (heads only)."""
        return [self.attention] + list(self.coupled) if self.attention is not None else []

    def sites(self) -> List[Tuple[nn.Module, int]]:
        """(site, width) of every module whose input carries the units."""
        if self.coupled:
            return [(s.o, s.v_dim) for s in self.specs()]
        return [(self.site, self.width)]

    def slices(self) -> List[Tuple[torch.Tensor, int, int]]:
        from .kinds import get_kind

        return get_kind(self.kind).slices(self)

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

