"""The `Criterion` contract and the criterion registry.

A criterion is a small class: `__init__` only stores hyper-parameters; data enters
through an explicit `calibrate(model, batches, groups=..., loss_fn=...)`; then
`score(group)` returns a 1-D tensor with one importance per unit (higher = keep).
Groups are `compress.graph.UnitGroup` (FFN channels, attention heads: one score per
unit) or `WeightGroup` (one weight tensor for unstructured pruning: one score per entry).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Dict, Iterable, List, Optional, Sequence

import weakref

import torch
from torch import nn

from ..graph.masks import site_channel_dim  # noqa: F401  (re-exported: criteria use it)

__all__ = ["Criterion", "WeightGroup", "register", "available", "get", "default_loss", "ScoreTable"]

_REGISTRY: Dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: register a criterion under its `name` attribute."""
    _REGISTRY[cls.name] = cls
    return cls


def available() -> List[str]:
    """Names of the registered criteria.

    Example:
        >>> import compress
        >>> compress.criteria.available()
        ['activation', 'dominance', 'magnitude', 'random', 'taylor']
    """
    return sorted(_REGISTRY)


def get(name, **kwargs) -> "Criterion":
    """A criterion instance by name (or pass an instance through).

    Args:
        name: one of `available()`, or a `Criterion` instance.
        **kwargs: its hyper-parameters (e.g. `p=1` for magnitude, `order=2` for taylor).

    Example:
        >>> import compress
        >>> compress.criteria.get("magnitude", p=1)
        Magnitude(p=1)
    """
    if isinstance(name, Criterion):
        if kwargs:
            raise ValueError("hyper-parameters can only be given with a criterion name, not an instance")
        return name
    try:
        cls = _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown criterion {name!r}; available: {', '.join(available())}") from None
    return cls(**kwargs)


@dataclass
class WeightGroup:
    """One weight tensor whose entries are scored individually (unstructured pruning)."""

    name: str
    module: nn.Module
    param_name: str = "weight"

    @property
    def param(self) -> nn.Parameter:
        return getattr(self.module, self.param_name)

    @property
    def n(self) -> int:
        return self.param.numel()


class ScoreTable:
    """Scores (or running state) per group, that never serve one group's values for another.

    Keyed by `id(group)` but storing a weak reference to the group and its unit count: a
    lookup for a different object that happens to reuse a freed group's id, or for a group
    whose unit count changed since (a structured cut), finds nothing instead of stale scores.
    """

    def __init__(self):
        self._d: Dict[int, tuple] = {}

    def get(self, group):
        entry = self._d.get(id(group))
        if entry is None or entry[0]() is not group or entry[1] != group.n:
            return None
        return entry[2]

    def set(self, group, value) -> None:
        self._d[id(group)] = (weakref.ref(group), group.n, value)

    def clear(self) -> None:
        self._d.clear()

    def __len__(self) -> int:
        return len(self._d)


def default_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(prediction, target)


class Criterion:
    """Base class. Subclasses set `name`, and `requires_data` if they need calibration."""

    name: ClassVar[str] = "base"
    requires_data: ClassVar[bool] = False
    #: the unit kinds it scores: "ffn"/"heads" (UnitGroup), "weights" (WeightGroup), "layers"
    #: (whole blocks: `compress.strategies.layers.BlockStack`, for strategy="layers")
    kinds: ClassVar[tuple] = ("ffn", "heads", "weights")

    def calibrate(self, model: nn.Module, batches: Optional[Iterable] = None, *, groups: Sequence = (),
                  loss_fn: Optional[Callable] = None, masks=None) -> "Criterion":
        """Collect whatever statistics `score` needs. Data-free criteria do nothing.

        Args:
            model: the model (its weights are never changed).
            batches: calibration `(inputs, target)` pairs.
            groups: the `UnitGroup`s / `WeightGroup`s to score.
            loss_fn: `loss_fn(prediction, target)` for loss-guided criteria (MSE).
            masks: the `compress.graph.MaskSet` currently installed on `groups` (the
                progressive strategy's), or None. Loss-guided mask criteria differentiate
                with respect to it; the others see the masked activations through its hooks.
        """
        if self.requires_data and not batches:
            raise ValueError(f"criterion {self.name!r} is data-driven: pass calibration=[(inputs, target), ...] "
                             "(a few batches of training windows)")
        return self

    def score(self, group) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def split_batch(batch):
    """(inputs, target) from a calibration item; inputs may be a tensor, tuple or dict."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise ValueError("calibration batches must be (inputs, target) pairs, e.g. the items of "
                     "compress.data.load(...).batches(32)")


def channels_last(x: torch.Tensor, site: nn.Module) -> torch.Tensor:
    """`site`'s input as [tokens, channels]."""
    if site_channel_dim(site) == 1:
        x = x.movedim(1, -1)
    return x.reshape(-1, x.shape[-1])


def forward_loss(model: nn.Module, batch, loss_fn: Callable) -> torch.Tensor:
    from ..graph import _first_tensor, run_model

    inputs, target = split_batch(batch)
    pred = _first_tensor(run_model(model, inputs))
    if pred.shape != target.shape:
        raise ValueError(f"calibration target shaped {tuple(target.shape)} but the model predicts "
                         f"{tuple(pred.shape)}; pass matching (inputs, target) pairs or a loss_fn that handles them")
    loss = loss_fn(pred, target)
    if not torch.isfinite(loss):
        raise ValueError("calibration loss is not finite: check the calibration data for NaNs/Infs")
    return loss
