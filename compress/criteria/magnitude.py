"""Magnitude: the Lp norm of each unit's weights across its whole dependency group."""
import torch

from .base import Criterion, WeightGroup, register


@register
class Magnitude(Criterion):
    """Lp norm of every weight that belongs to a unit (all coupled layers together).

    Args:
        p: 1 or 2.

    Example:
        >>> small = compress.prune(model, criterion="magnitude", ratio=0.5)   # doctest: +SKIP
    """

    name = "magnitude"

    def __init__(self, p: int = 2):
        if p not in (1, 2):
            raise ValueError(f"magnitude criterion supports p=1 or p=2, got p={p!r}")
        self.p = p

    def score(self, group) -> torch.Tensor:
        if isinstance(group, WeightGroup):
            return group.param.detach().abs().flatten().float().cpu()
        total = group.reduce(lambda w, g: w.abs().float().pow(self.p).sum(1))
        return total.pow(1.0 / self.p)
