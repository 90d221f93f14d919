"""`prune_then_finetune`: the prune-then-finetune method as one call, built from the
library's own pieces (criterion `taylor`, strategy `progressive`, `finetune`)."""
from __future__ import annotations

import inspect
import sys
from typing import Callable, Optional

from torch import nn

from . import _checks
from .trainer import FinetuneConfig, _check_data, evaluate, finetune

__all__ = ["prune_then_finetune"]

#: keys of **options that go to the progressive strategy; the rest go to `finetune`
_PRUNE_OPTIONS = ("max_rounds", "normalize", "tolerance", "ranking")
_PRUNE_ARGS = ("units", "ignore", "heads", "example_inputs", "time_limit_s")
#: `finetune` keywords this function sets itself: passing them in **options is refused
#: (with the argument to use instead) before pruning, not a TypeError after it
_SET_HERE = {"epochs": "finetune_epochs", "method": "finetune_method", "inplace": None, "config": None}


def prune_then_finetune(model: nn.Module, train, val, *, criterion="taylor", max_ratio: float = 0.7,
                        step_fraction: float = 0.1, patience: int = 3, calibration_batches: int = 16,
                        validation_batches: Optional[int] = 16, batch_size: int = 32, finetune_epochs: int = 10,
                        lr: float = 1e-4, finetune_patience: int = 3, loss_fn: Optional[Callable] = None,
                        seed: int = 0, progress: bool = True, finetune_method: str = "full", **options) -> nn.Module:
    """Prune a pretrained forecaster for a downstream task, then fine-tune the smaller model.

    The method of Zhao et al. (NeurIPS 2025): unit masks on FFN channels and attention
    heads, scored with the second-order Taylor estimate on training windows (EMA across
    batches), weights frozen; each round masks `step_fraction` of the surviving units
    ranked across layers, until the validation loss stops improving (`patience`) or
    `max_ratio` is masked; the best round is cut out physically
    (`compress.prune(..., strategy="progressive")`), then the pruned model is fully
    fine-tuned with early stopping (`compress.finetune`).

    Args:
        model: the (pretrained) forecaster; it is not modified.
        train, val: `compress.data.load(...)` datasets (training and validation splits).
        criterion: a criterion name or instance; "taylor" means
            `compress.criteria.get("taylor", order=2, ema=0.9)` (set `order=`/`ema=` through
            **options to change them).
        max_ratio: the largest fraction of FFN channels and of heads that may be removed.
        step_fraction: share of the surviving units masked per round.
        patience: pruning rounds without a lower validation loss before stopping. Default 3:
            a cut of a few heads can raise the validation loss for one round and the next
            rounds bring it below the earlier best (PatchTST on ETTm1: 0.574, 0.683, then
            0.537 ... 0.48; `benchmarks/results/ptf.jsonl`); 1 stops at that first bump.
        calibration_batches: shuffled training batches that score the units each round.
        validation_batches: validation batches for the stopping rule, a fixed seeded sample
            of windows drawn across the whole split (None: the whole split).
        batch_size: windows per batch, for pruning and fine-tuning.
        finetune_epochs, lr, finetune_patience: `compress.finetune` settings.
        loss_fn: `loss_fn(prediction, target)`, MSE by default.
        seed: seeds the calibration sample and fine-tuning.
        progress: print pruning rounds and fine-tuning epochs.
        finetune_method: how the pruned model is fine-tuned, `compress.finetune(...,
            method=)`: "full" (the paper's), "linear_probe", "lora" or "trace" (LoRA +
            Gated DSIC + reconstructed head; its options `rank`, `alpha`, `targets`,
            `trace`, `head`, ... go through **options).
        **options: `order`, `ema` (taylor); `max_rounds`, `normalize`, `tolerance`
            (progressive strategy); `units`, `ignore`, `heads`, `example_inputs`,
            `time_limit_s` (`compress.prune`); anything else goes to `compress.finetune`
            (`weight_decay`, `max_steps`, `max_train_batches`, `max_val_batches`, ...).

    Returns:
        The fine-tuned pruned model. `model.compress_pruning[-1]` records the pruning
        rounds (validation loss per round, chosen round, units kept per group) plus
        `val_mse_after_pruning`; `model.finetune_history` the fine-tuning epochs.

    Example:
        >>> train = compress.data.load("ETTh1", 512, 96, "train")          # doctest: +SKIP
        >>> val = compress.data.load("ETTh1", 512, 96, "val")              # doctest: +SKIP
        >>> small = compress.prune_then_finetune(compress.models.load("ttm"), train, val)  # doctest: +SKIP
    """
    from .. import criteria as _criteria
    from ..api import prune

    _check_data("train", train)
    _check_data("val", val)
    for name, v in (("calibration_batches", calibration_batches), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"prune_then_finetune: {name}={v!r} must be a positive integer")
    taylor_kw = {k: options.pop(k) for k in ("order", "ema", "grad_scale") if k in options}
    if criterion == "taylor":
        criterion = _criteria.get("taylor", **{"order": 2, "ema": 0.9, **taylor_kw})
    elif taylor_kw:
        raise ValueError("order=/ema=/grad_scale= only apply to criterion='taylor'")
    strategy_options = {"step_fraction": step_fraction, "patience": patience,
                        **{k: options.pop(k) for k in _PRUNE_OPTIONS if k in options}}
    prune_kw = {k: options.pop(k) for k in _PRUNE_ARGS if k in options}
    _check_finetune_options(options, finetune_epochs=finetune_epochs, lr=lr, finetune_patience=finetune_patience,
                            batch_size=batch_size, seed=seed, progress=progress)

    calibration = _as_batches(train, batch_size, calibration_batches, shuffle=True, seed=seed)
    # a capped validation set is a fixed random sample of the whole split, not its first windows
    validation = _as_batches(val, batch_size, validation_batches, shuffle=validation_batches is not None, seed=0)
    pruned = prune(model, criterion, ratio=max_ratio, strategy="progressive", calibration=calibration,
                   validation=validation, loss_fn=loss_fn, options=strategy_options, verbose=progress, **prune_kw)
    record = pruned.compress_pruning[-1]
    record["val_mse_after_pruning"] = evaluate(pruned, val, batch_size=batch_size,
                                               limit=options.get("max_val_batches"))["mse"]
    if progress:
        kinds = sorted({g["kind"] for g in record["groups"].values()})
        kept = {k: sum(g["after"] for g in record["groups"].values() if g["kind"] == k) for k in kinds}
        before = {k: sum(g["before"] for g in record["groups"].values() if g["kind"] == k) for k in kinds}
        print(f"[compress.prune_then_finetune] pruned at round {record['chosen_round']}: "
              + ", ".join(f"{k} {kept[k]}/{before[k]}" for k in kinds) + "; "
              f"val MSE {record['val_mse_after_pruning']:.4f}; fine-tuning", file=sys.stderr)
    tuned = finetune(pruned, train, val, method=finetune_method, epochs=finetune_epochs, lr=lr, patience=finetune_patience,
                     batch_size=batch_size, loss_fn=loss_fn, inplace=True, seed=seed, progress=progress, **options)
    return tuned


def _check_finetune_options(options: dict, *, finetune_epochs, lr, finetune_patience, batch_size, seed,
                            progress) -> None:
    """Everything left in **options goes to `finetune`: check names and values now, before
    the pruning search (minutes to hours), not when fine-tuning starts."""
    where = "prune_then_finetune"
    for k in options:
        if k in _SET_HERE:
            use = _SET_HERE[k]
            raise ValueError(f"{where}: {k}= is set by prune_then_finetune itself; "
                             + (f"pass {use}= instead" if use else "it cannot be changed here"))
    own = set(inspect.signature(prune_then_finetune).parameters)  # named arguments bind there, never here
    known = (_checks.finetune_option_names(finetune, FinetuneConfig) - set(_SET_HERE) - own) | set(_PRUNE_OPTIONS) \
        | set(_PRUNE_ARGS) | {"order", "ema", "grad_scale"}
    _checks.check_finetune_options(where, options, known)
    fields = {f for f in FinetuneConfig.__dataclass_fields__}
    FinetuneConfig(epochs=finetune_epochs, lr=lr, patience=finetune_patience, batch_size=batch_size, seed=seed,
                   progress=progress, **{k: v for k, v in options.items() if k in fields})  # raises on bad values


def _as_batches(data, batch_size: int, limit: Optional[int], *, shuffle: bool, seed: int) -> list:
    """A list of (past, future) batches from a `compress.data` dataset (or a list of batches)."""
    if hasattr(data, "batches"):
        return data.batches(batch_size, limit=limit, shuffle=shuffle, seed=seed)
    out = list(data)
    return out if limit is None else out[:limit]
