"""The `Forecaster` contract and the adapter registry.

Every criterion, strategy, report and benchmark works on one shape of model: an
`nn.Module` whose `forward(past[B, L, C]) -> forecast[B, H, C]` gives a point forecast.
An adapter wraps a family's real model (the library's own class, or one written here
from the paper) so that everything architecture-specific lives in exactly one file under
`compress/models/`, registered with `@register("name")`.
"""
from __future__ import annotations

import json
import os
from typing import Callable, ClassVar, Dict, List, Optional

import torch
from torch import nn

__all__ = ["Forecaster", "register", "available", "load", "get_adapter", "build_record"]

_REGISTRY: Dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Register a `Forecaster` subclass under `name` (one line per family).

    Example:
        >>> @register("toy")                                   # doctest: +SKIP
        ... class Toy(Forecaster): ...
    """

    def deco(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model family {name!r} is already registered by {_REGISTRY[name].__name__}")
        cls.family = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _import_adapters() -> None:
    # Adapter files register themselves on import; each imports its model package lazily
    # inside `build`, so importing them here stays cheap.
    from . import _zoo  # noqa: F401


def available() -> List[str]:
    """Names of the registered model families.

    Example:
        >>> import compress
        >>> "transformer" in compress.models.available()    # doctest: +SKIP
        True
    """
    _import_adapters()
    return sorted(_REGISTRY)


def get_adapter(name: str) -> type:
    _import_adapters()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def load(name: str, pretrained: Optional[str] = None, size: str = "small", **config) -> "Forecaster":
    """Build a forecaster by family name, or load one saved with `Forecaster.save(dir)`.

    Args:
        name: a family from `available()`, or a directory written by `Forecaster.save`.
        pretrained: local path to the family's pretrained weights (never a hub id: nothing
            is downloaded at run time).
        size: "tiny" (builds and runs in well under a second, for tests) or "small" (the
            reference configuration of the family).
        **config: overrides of the family's configuration (context_length, horizon, ...).

    Example:
        >>> m = compress.models.load("transformer", size="tiny")   # doctest: +SKIP
        >>> m(torch.randn(2, m.context_length, 7)).shape            # doctest: +SKIP
    """
    if os.path.isdir(name) and os.path.exists(os.path.join(name, Forecaster.CONFIG_FILE)):
        return Forecaster.load_dir(name)
    cls = get_adapter(name)
    return cls.build(pretrained=pretrained, size=size, **config)


def build_record(size: str, pretrained: Optional[str], overrides: dict) -> dict:
    """The part of a Forecaster's `config` every adapter records: size, weights path, overrides."""
    return {"size": size, "pretrained": None if pretrained is None else os.path.abspath(pretrained),
            "overrides": overrides}


class Forecaster(nn.Module):
    """A point forecaster: `forward(past[B, L, C]) -> forecast[B, H, C]`.

    Subclasses implement `build(pretrained, size, **config)` and `_forecast(past)`, and
    may name the modules that default pruning leaves dense (`protected_modules`: the
    input embedding and the forecasting head).

    Attributes:
        context_length: L, the number of past steps the model reads.
        horizon: H, the number of future steps it predicts.
        n_channels: C when the model is built for a fixed channel count, else None.
        model: the family's real model inside.
        config: the (JSON-serialisable) configuration that built it.
    """

    family: ClassVar[str] = "forecaster"
    CONFIG_FILE: ClassVar[str] = "compress_config.json"
    WEIGHTS_FILE: ClassVar[str] = "model.pt"

    def __init__(self, model: nn.Module, context_length: int, horizon: int,
                 n_channels: Optional[int] = None, config: Optional[dict] = None):
        super().__init__()
        self.model = model
        self.context_length = int(context_length)
        self.horizon = int(horizon)
        self.n_channels = n_channels
        self.config = dict(config or {})

    @classmethod
    def build(cls, pretrained: Optional[str] = None, size: str = "small", **config) -> "Forecaster":
        raise NotImplementedError

    def forward(self, past: torch.Tensor) -> torch.Tensor:  # [B, L, C] -> [B, H, C]
        if past.dim() != 3:
            raise ValueError(f"{type(self).__name__} expects past values shaped [batch, length, channels], got {tuple(past.shape)}")
        if self.n_channels is not None and past.shape[-1] != self.n_channels:
            raise ValueError(f"{type(self).__name__} was built for {self.n_channels} channels, got {past.shape[-1]}")
        return self._forecast(past)

    def _forecast(self, past: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def prepare_for_pruning(self) -> None:
        """Called on the copy before structured pruning traces it (untie shared per-head tables...)."""

    def after_prune(self) -> None:
        """Called after a cut: bring config fields in line with the new sizes."""

    def protected_modules(self) -> List[nn.Module]:
        """Modules default pruning leaves alone (input embedding, forecasting head)."""
        return []

    def example_inputs(self, batch_size: int = 2, n_channels: Optional[int] = None) -> torch.Tensor:
        c = self.n_channels or n_channels or 3
        return torch.randn(batch_size, self.context_length, c)

    # --- persistence -------------------------------------------------------------
    def sizes(self) -> dict:
        """Current sizes (after pruning) of every Linear / Conv1d and head count."""
        from ..graph import describe_sizes

        return describe_sizes(self)

    def save(self, directory: str) -> None:
        """Write the model and a config that states its (possibly pruned) sizes.

        Example:
            >>> small.save("runs/ttm-pruned"); again = compress.models.load("runs/ttm-pruned")  # doctest: +SKIP
        """
        os.makedirs(directory, exist_ok=True)
        meta = {
            "family": self.family,
            "context_length": self.context_length,
            "horizon": self.horizon,
            "n_channels": self.n_channels,
            "config": self.config,
            "parameters": sum(p.numel() for p in self.parameters()),
            "sizes": self.sizes(),
        }
        with open(os.path.join(directory, self.CONFIG_FILE), "w") as f:
            json.dump(meta, f, indent=2, default=str)
        torch.save(self, os.path.join(directory, self.WEIGHTS_FILE))

    @classmethod
    def load_dir(cls, directory: str) -> "Forecaster":
        _import_adapters()
        model = torch.load(os.path.join(directory, cls.WEIGHTS_FILE), weights_only=False)
        model.eval()
        return model
