"""Random: the baseline every comparison needs."""
import torch

from .base import Criterion, register


@register
class Random(Criterion):
    """Uniform random scores, reproducible through `seed`.

    Example:
        >>> compress.prune(model, criterion="random", ratio=0.5)   # doctest: +SKIP
    """

    name = "random"
    kinds = ("ffn", "heads", "weights", "layers")

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._gen = torch.Generator().manual_seed(seed)

    def calibrate(self, model, batches=None, *, groups=(), loss_fn=None, masks=None):
        self._gen = torch.Generator().manual_seed(self.seed)
        return self

    def score(self, group) -> torch.Tensor:
        return torch.rand(group.n, generator=self._gen)
