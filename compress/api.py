"""`compress.prune`: resolve names, copy the model, check the inputs, run a strategy."""
from __future__ import annotations

import sys
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import nn

from . import criteria as _criteria
from . import guards
from . import strategies as _strategies
from .criteria.base import split_batch
from .models.base import pruning_hooks
from .strategies.base import PruneConfig, PruneContext

__all__ = ["prune"]


def prune(model: nn.Module, criterion="magnitude", ratio: float = 0.5, strategy: str = "structured",
          example_inputs=None, calibration: Optional[Iterable] = None, loss_fn: Optional[Callable] = None,
          steps: int = 1, scope: str = "layer", ignore: Sequence = (), heads: Optional[dict] = None,
          inplace: bool = False, *, units: Sequence[str] = ("ffn", "heads"), time_limit_s: float = 120.0,
          verbose: bool = False, validation: Optional[Iterable] = None,
          options: Optional[dict] = None, round_to=None) -> nn.Module:
    """Prune a forecaster with one call.

    Args:
        model: any `nn.Module` forecaster (a `compress.models.Forecaster` or your own).
        criterion: a name from `compress.criteria.available()` or a `Criterion` instance.
        ratio: fraction to remove, in [0, 1): of FFN channels and of heads ("structured"),
            or of the prunable weights ("unstructured"); with "progressive" the *maximum*
            fraction of each kind of unit that may be removed.
        strategy: "structured" (the model really shrinks), "unstructured" (exact zeros) or
            "progressive" (the prune-then-finetune paper's method: masks a fraction of the
            surviving units per round, ranked globally, weights frozen, stops when the
            validation loss stops improving, keeps the best round and cuts it out).
        example_inputs: inputs for tracing; defaults to the Forecaster's own example or
            the first calibration batch.
        calibration: `(inputs, target)` pairs for data-driven criteria (taylor, activation).
        loss_fn: `loss_fn(prediction, target) -> scalar` for loss-guided criteria (MSE).
        steps: prune in this many equal steps, re-scoring between them.
        scope: "layer" (same fraction per layer) or "global" (ranked across layers).
        ignore: modules or qualified names never to prune.
        heads: `{module_or_name: n_heads}` for attention modules with an unknown head count,
            or `{module_or_name: "attr"}` naming the attribute that holds it.
        inplace: modify `model` itself instead of a copy.
        units: structured unit kinds to cut (`compress.graph.available_kinds()`: "ffn", "heads").
        time_limit_s: abort graph building after this many seconds.
        verbose: print progress.
        validation: `(inputs, target)` pairs whose loss (`loss_fn`, MSE by default) guides
            strategies that stop on validation loss; required by "progressive".
        options: strategy settings. "progressive": `step_fraction` (share of the surviving
            units masked per round, 0.1), `patience` (rounds without a lower validation loss
            before stopping, 1), `max_rounds` (None), `normalize` (None: raw scores ranked
            across layers; "mean": each layer's scores divided by their mean absolute value),
            `tolerance` (0.0: a round within this relative margin of the lowest validation
            loss counts as a tie, and ties go to the more pruned round). The other
            strategies take none.
        round_to: "structured" / "progressive": keep FFN channel counts at multiples of this
            (e.g. 8), rounding the kept count up; a dict sets it per kind
            (``{"ffn": 16, "heads": 2}``). None keeps the counts the ratio gives.

    Returns:
        The pruned model (a copy unless `inplace`). Its `compress_pruning` attribute
        records what was removed.

    Example:
        >>> import torch, compress
        >>> layer = torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 32), layer, torch.nn.Linear(32, 3))
        >>> small = compress.prune(model, "magnitude", ratio=0.5, example_inputs=torch.randn(2, 16, 3))
        >>> small[1].linear1.out_features, small[1].self_attn.num_heads
        (32, 2)
    """
    config = PruneConfig(ratio=ratio, steps=steps, scope=scope, units=units, time_limit_s=time_limit_s,
                         verbose=verbose, round_to=round_to)
    crit = _criteria.get(criterion)
    strat = _strategies.get(strategy)
    if not isinstance(model, nn.Module):
        raise TypeError(f"prune() needs an nn.Module, got {type(model).__name__}")
    dtype, device = guards.model_dtype_device(model)
    past_values = _is_forecaster(model)  # its inputs are values: integer batches are converted too
    calibration = _checked_batches("calibration", calibration, dtype, device, past_values)
    validation = _checked_batches("validation", validation, dtype, device, past_values)
    if example_inputs is not None:
        example_inputs = guards.conform("example_inputs", example_inputs, dtype, device, past_values)
    if strat.requires_validation and not validation:
        raise ValueError(f"strategy {strat.name!r} stops on validation loss: pass validation=[(inputs, target), ...] "
                         "(e.g. compress.data.load(..., split='val').batches(32, limit=8))")
    if config.round_to and not strat.rounds_widths:
        raise ValueError(f"round_to applies to strategies that cut widths (structured, progressive), not {strat.name!r}")
    options = dict(options or {})
    strat.check_options(options, config)
    if crit.requires_data and not calibration:
        raise ValueError(f"criterion {crit.name!r} is data-driven: pass calibration=[(inputs, target), ...] "
                         "(e.g. compress.data.load(...).batches(32, limit=8))")

    # names refer to the user's model; map modules to names before copying
    names = {m: n for n, m in model.named_modules()}
    known = list(names.values())

    def as_name(x):
        if isinstance(x, str):
            return guards.resolve_name(known, x, "ignore=/heads=")
        if x not in names:
            raise ValueError(f"ignore/heads refers to a {type(x).__name__} that is not part of the model")
        return names[x]

    ignore_names = [as_name(x) for x in ignore]
    head_names = {as_name(k): v for k, v in (heads or {}).items()}
    # one Parameter used by several modules: cutting one of them would untie it, so they stay dense
    tied = guards.tied_parameters(model)
    ignore_names += [n for n in guards.tied_owner_names(tied) if n not in ignore_names]

    if not inplace:
        model = guards.deepcopy_model(model)
    # ratio 0 goes through the whole path too (graph, calibration, an empty cut): the
    # result must then equal the input bit for bit, which the tests check
    hooks = pruning_hooks(model)
    if example_inputs is None:
        example_inputs = hooks.example_inputs()
    if example_inputs is None:
        if calibration or validation:
            example_inputs = split_batch((calibration or validation)[0])[0]
        else:
            raise ValueError("pass example_inputs (one input batch) so the model can be traced")

    by_name = dict(model.named_modules())
    protected = list(hooks.protected_modules()) or None
    log = (lambda msg: print(f"[compress.prune] {msg}", file=sys.stderr)) if verbose else (lambda msg: None)
    ctx = PruneContext(config=config, example_inputs=example_inputs, calibration=calibration, loss_fn=loss_fn,
                       ignore=[by_name[n] for n in ignore_names],
                       heads={by_name[n]: v for n, v in head_names.items()}, protected=protected, log=log,
                       validation=validation, options=options)
    del by_name  # holds modules a strategy may replace (nn.MultiheadAttention): let them go
    frozen = guards.requires_grad_record(model)
    # inplace: a failure (any exception, Ctrl-C) puts every module back as it was
    snapshot = guards.Snapshot(model, values=strat.writes_in_place) if inplace else None
    try:
        summary = strat.run(model, crit, ctx)
        guards.restore_requires_grad(model, frozen)  # torch-pruning's new Parameters require grad
        guards.check_tied(model, tied)
        history = list(getattr(model, "compress_pruning", []))
        history.append({"strategy": strat.name, "criterion": repr(crit), "ratio": config.ratio,
                        "steps": config.steps, "scope": config.scope,
                        **({"round_to": config.round_to} if config.round_to else {}), **summary})
        model.compress_pruning = history
        hooks.after_prune()
    except BaseException:
        if snapshot is not None:
            snapshot.restore()
        raise
    return model


def _is_forecaster(model: nn.Module) -> bool:
    from .models.base import Forecaster

    return isinstance(model, Forecaster)


def _checked_batches(name: str, batches: Optional[Iterable], dtype=torch.float32, device=None,
                     convert_ints: bool = False) -> Optional[list]:
    """`batches` as a list of (inputs, target) pairs with finite values in the model's dtype, or None."""
    if batches is None:
        return None
    if isinstance(batches, torch.Tensor):
        raise ValueError(f"{name} must be a list of (inputs, target) pairs, not one tensor; e.g. [(x, y)]")
    batches = [guards.conform(f"{name} batch {i}", b, dtype, device, convert_ints) for i, b in enumerate(batches)]
    if not batches:
        raise ValueError(f"{name} is empty: pass at least one (inputs, target) batch")
    for i, batch in enumerate(batches):
        for t in split_batch(batch):
            tensors = t.values() if isinstance(t, dict) else (t if isinstance(t, (tuple, list)) else [t])
            for x in tensors:
                if isinstance(x, torch.Tensor) and x.is_floating_point() and not torch.isfinite(x).all():
                    raise ValueError(f"{name} batch {i} contains NaN or Inf values; clean or drop them")
    return batches
