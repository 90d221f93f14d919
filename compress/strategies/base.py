"""The strategy registry and the settings every strategy receives."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

_REGISTRY: Dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: register a strategy under its `name`."""
    _REGISTRY[cls.name] = cls
    return cls


def available() -> List[str]:
    return sorted(_REGISTRY)


def get(name: str) -> "Strategy":
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; available: {', '.join(available())}") from None


def scalar(value, name: str) -> float:
    """A plain float from a Python number, a numpy scalar or a one-element (0-d) tensor / array.

    Example:
        >>> scalar(torch.tensor(0.25), "ratio")
        0.25
    """
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be a number, not a bool")
    if isinstance(value, (int, float)):
        return float(value)
    shape = getattr(value, "shape", None)
    if shape is not None and tuple(shape) == () and hasattr(value, "item"):  # 0-d tensor / numpy scalar
        value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    raise ValueError(f"{name}={value!r} must be a number (a Python or numpy scalar, or a 0-d tensor), "
                    f"got {type(value).__name__}")


@dataclass
class PruneConfig:
    """Settings of one `compress.prune` call, validated on construction.

    Args:
        ratio: fraction of units (structured) or weights (unstructured) to remove, in [0, 1).
        steps: prune in this many equal steps, re-scoring in between.
        scope: "layer" (the same fraction in every group) or "global" (ranked across layers).
        units: which structured units to cut: registered unit kinds
            (`compress.graph.available_kinds()`: "ffn", "heads", ...).
        time_limit_s: abort graph building after this long (seconds > 0, or None: no limit).
        verbose: print progress.
        round_to: keep counts rounded *up* to a multiple of this (never above the layer's
            original count; groups smaller than the multiple are left as planned), so
            pruned widths suit the hardware's vector and tile sizes. An int applies to
            FFN channels; a dict sets it per unit kind (``{"ffn": 16, "heads": 2}``).
            None: no rounding.
    """

    ratio: float = 0.5
    steps: int = 1
    scope: str = "layer"
    units: Sequence[str] = ("ffn", "heads")
    time_limit_s: Optional[float] = 120.0
    verbose: bool = False
    round_to: Optional[Union[int, Dict[str, int]]] = None

    def __post_init__(self):
        self.ratio = scalar(self.ratio, "ratio")
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"ratio={self.ratio!r} is out of range: it is the fraction to remove and must be in [0, 1)")
        steps = scalar(self.steps, "steps")
        if steps != int(steps) or steps < 1:
            raise ValueError(f"steps={self.steps!r} must be a positive integer")
        self.steps = int(steps)
        if self.time_limit_s is not None:
            t = scalar(self.time_limit_s, "time_limit_s")
            if not t > 0:  # also NaN
                raise ValueError(f"time_limit_s={self.time_limit_s!r} must be a positive number of seconds "
                                 "(or None for no limit)")
            self.time_limit_s = t
        if self.scope not in ("layer", "global"):
            raise ValueError(f"scope={self.scope!r} must be 'layer' or 'global'")
        from ..graph import available_kinds

        if isinstance(self.units, str):
            self.units = (self.units,)
        bad = set(self.units) - set(available_kinds())
        if bad or not self.units:
            raise ValueError(f"units={tuple(self.units)!r}: choose from {', '.join(map(repr, available_kinds()))}")
        self.units = tuple(self.units)
        if self.round_to is not None:
            per_kind = self.round_to if isinstance(self.round_to, dict) else {"ffn": self.round_to}
            for kind, m in per_kind.items():
                if kind not in available_kinds(default_only=True):
                    raise ValueError(f"round_to: unknown unit kind {kind!r}; use "
                                     f"{' and/or '.join(map(repr, available_kinds(default_only=True)))}")
                if isinstance(m, bool) or not isinstance(m, int) or m < 1:
                    raise ValueError(f"round_to={self.round_to!r}: multiples must be positive integers (e.g. 8)")
            self.round_to = dict(per_kind)

    def multiple_for(self, kind: str) -> int:
        """The multiple keep counts of `kind` are rounded up to (1: none)."""
        return (self.round_to or {}).get(kind, 1)

    def fraction_after(self, step: int) -> float:
        """Cumulative fraction removed after `step` (1-based) of `steps`."""
        return self.ratio * step / self.steps


@dataclass
class PruneContext:
    """Everything a strategy needs besides the model and the criterion."""

    config: PruneConfig
    example_inputs: object
    calibration: Optional[list] = None
    loss_fn: Optional[Callable] = None
    ignore: Sequence[nn.Module] = ()
    heads: Optional[dict] = None
    protected: Optional[List[nn.Module]] = None
    log: Callable[[str], None] = field(default=lambda msg: None)
    validation: Optional[list] = None  # (inputs, target) pairs, for strategies that stop on validation loss
    options: dict = field(default_factory=dict)  # strategy-specific settings (`Strategy.check_options`)


class Strategy:
    name: ClassVar[str] = "base"
    #: True if the strategy needs `validation` batches (`compress.prune` checks it)
    requires_validation: ClassVar[bool] = False
    #: True if it changes weight values in place (an inplace prune then snapshots them for rollback)
    writes_in_place: ClassVar[bool] = False
    #: True if the strategy cuts widths and honours `PruneConfig.round_to`
    rounds_widths: ClassVar[bool] = False

    def check_options(self, options: dict, config: PruneConfig) -> None:
        """Raise `ValueError` for settings this strategy does not take (default: none)."""
        if options:
            raise ValueError(f"strategy {self.name!r} takes no options; got {', '.join(sorted(options))}")

    def run(self, model: nn.Module, criterion, ctx: PruneContext) -> dict:
        """Prune `model` in place; return a summary dict."""
        raise NotImplementedError


def rounded_keep(keep: int, n_orig: int, multiple: int) -> int:
    """`keep` rounded up to a multiple of `multiple`, at most `n_orig`; unchanged when the
    group has fewer than `multiple` units.

    Example:
        >>> rounded_keep(13, 64, 8), rounded_keep(60, 64, 8), rounded_keep(3, 6, 8)
        (16, 64, 3)
    """
    if multiple <= 1 or n_orig < multiple:
        return keep
    return min(n_orig, -(-keep // multiple) * multiple)


def round_plan(plan: Dict[int, List[int]], groups, original: Dict[int, int], config: "PruneConfig") -> Dict[int, List[int]]:
    """Shorten each group's removal list (ordered most-removable first) so the kept count
    is a multiple of ``config.round_to`` for its kind (see `rounded_keep`)."""
    if not config.round_to:
        return plan
    out = {}
    for g in groups:
        idxs = plan.get(id(g), [])
        keep = rounded_keep(g.n - len(idxs), original[id(g)], config.multiple_for(g.kind))
        out[id(g)] = list(idxs[:max(0, g.n - keep)])
    return out


def checked_scores(criterion, group) -> torch.Tensor:
    s = criterion.score(group)
    if not isinstance(s, torch.Tensor) or s.dim() != 1 or s.numel() != group.n:
        raise RuntimeError(f"criterion {criterion.name!r} returned scores shaped "
                           f"{getattr(s, 'shape', type(s))} for {group.name} with {group.n} units")
    s = s.detach().float().cpu()
    if not torch.isfinite(s).all():
        raise RuntimeError(f"criterion {criterion.name!r} returned non-finite scores for {group.name}; "
                           "check the model and calibration data for NaNs")
    return dead_first(s, group)


def dead_units(group) -> Optional[torch.Tensor]:
    """[n] bool: units all of whose weights are exactly zero (they contribute nothing), or None."""
    if not hasattr(group, "reduce") or not hasattr(group, "slices"):
        return None
    with torch.no_grad():
        return group.reduce(lambda w, g: w.abs().sum(1)) == 0


def dead_first(scores: torch.Tensor, group) -> torch.Tensor:
    """Scores with dead units (all-zero weights) below every live unit, whatever the criterion.

    A criterion can tie a dead unit with a live one (activation probability 0 for both,
    random scores); cutting the live one first changes the outputs for nothing.
    """
    dead = dead_units(group)
    if dead is None or not dead.any() or dead.all():
        return scores
    scores = scores.clone()
    live = scores[~dead]
    # below this layer's live units and below 0 (most criteria score >= 0, so globally too),
    # by a margin small enough not to distort per-layer normalisation
    scores[dead] = min(float(live.min()), 0.0) - 1e-3 * float(live.abs().max()) - 1e-12
    return scores


def trace_units(model: nn.Module, ctx: PruneContext):
    """The set-up every structured strategy shares: the adapter's `prepare_for_pruning`,
    the traced graph, and its groups of the kinds asked for (a clear error if none).

    Returns:
        `(pruning_graph, groups)`.
    """
    from .. import graph as G
    from ..models.base import pruning_hooks

    cfg = ctx.config
    hooks = pruning_hooks(model)
    hooks.prepare_for_pruning()
    pg = G.build(model, ctx.example_inputs, ignore=ctx.ignore, heads=ctx.heads, protected=ctx.protected,
                 units=cfg.units, time_limit_s=cfg.time_limit_s, hooks=hooks)
    groups = [g for g in pg.groups if g.kind in cfg.units]
    counts = ", ".join(f"{sum(1 for g in groups if g.kind == k)} {k}" for k in cfg.units)
    ctx.log(f"graph built in {pg.build_seconds:.1f}s: groups {counts}")
    if not groups:
        raise G.GraphBuildError(
            f"no prunable {' or '.join(cfg.units)} units found in {type(model).__name__}: FFN blocks must be "
            "Linear/Conv1d pairs whose channels reach the consumer unchanged (a fused GLU's chunk(2) or a "
            "cat([side, fc1(x)]) in between is not cut), and attention modules need q/k/v/output Linears and "
            "a head count (pass heads={module: n}), or load the model through a compress.models adapter")
    return pg, groups


def calibrate(criterion, model: nn.Module, ctx: PruneContext, groups, masks=None) -> None:
    """`criterion.calibrate(...)` with the context's data, passing `masks` (a `MaskSet`) to
    criteria whose `calibrate` takes it (criteria written before it existed may not)."""
    import inspect

    kw = dict(groups=groups, loss_fn=ctx.loss_fn)
    if masks is not None:
        params = inspect.signature(criterion.calibrate).parameters
        if "masks" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
            kw["masks"] = masks
    criterion.calibrate(model, ctx.calibration, **kw)
