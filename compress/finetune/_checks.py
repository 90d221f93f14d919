"""Checks that keep fine-tuning from failing silently.

Why this module exists: the training loop (`trainer.finetune`) used to return the initial
weights when the validation loss became NaN (NaN is never "better", so early stopping
kept the start), trained later epochs on nothing when given a generator (consumed by the
first epoch), and `prune_then_finetune` only found a misspelt fine-tuning option after the
whole pruning search. These checks live apart from the loop so that the loop stays short
and the fine-tuning methods (`method=`) share them.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import inspect
import math
from typing import Iterable, Optional

__all__ = ["check_reusable", "check_finite", "check_not_empty", "check_finetune_options"]


def check_reusable(name: str, data) -> None:
    """Refuse a one-shot iterator (a generator, `iter(list)`, `map(...)`): it is empty
    after its first pass, so every later epoch / validation check would see nothing."""
    if isinstance(data, collections.abc.Iterator):  # has __next__: iter(data) is data, one pass only
        raise ValueError(f"{name} data is a one-shot iterator ({type(data).__name__}): it would be empty after the "
                         f"first pass, so later epochs would train / validate on nothing. Fix: pass a list "
                         f"(list({name}_batches)), a torch Dataset or compress.data.load(...)")


def check_finite(kind: str, loss: float, *, epoch: int, lr: float, batch: Optional[int] = None,
                 history: Optional[list] = None) -> None:
    """Stop with a clear error when a loss is NaN or infinite (`kind`: "training" or
    "validation"; epoch 0 is the check before any training; `history`: the finished
    epochs, to name the best one so far)."""
    if math.isfinite(loss):
        return
    done = [e for e in history or [] if e.get("val") is not None and math.isfinite(e["val"])]
    best = min(done, key=lambda e: e["val"]) if done else None
    where = f"at batch {batch} (0-based) of epoch {epoch}" if batch is not None else (
        "before training" if epoch == 0 else f"after epoch {epoch}")
    if epoch == 0 and batch is None:
        fix = ("the model or the validation data gives non-finite values before any training: check the data "
               "for NaN/Inf and the model (a broken or diverged checkpoint)")
    elif batch is None:
        fix = f"training diverged: lower lr (e.g. lr={lr / 10:g}), or check the validation data for NaN/Inf"
    else:
        fix = f"training diverged: lower lr (e.g. lr={lr / 10:g}), or check that batch for NaN/Inf"
    so_far = f"; best validation loss so far {best['val']:.6g} (epoch {best['epoch']})" if best else ""
    raise FloatingPointError(f"finetune: the {kind} loss is {loss} {where} (lr={lr:g}){so_far}: {fix}")


def check_not_empty(kind: str, n: int, epoch: int) -> None:
    """An epoch (or a validation pass) that saw no windows is an error, never a loss of 0."""
    if n == 0:
        raise ValueError(f"finetune: epoch {epoch} saw no {kind} windows: the {kind} data yielded no batches "
                         "(an exhausted iterator, or an iterable that is empty on a second pass); pass a list of "
                         "(past, future) batches or compress.data.load(...)")


def finetune_option_names(finetune_fn, config_cls) -> set:
    """Every keyword `finetune` accepts: its keyword parameters plus the config's fields."""
    params = inspect.signature(finetune_fn).parameters.values()
    named = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return (named | {f.name for f in dataclasses.fields(config_cls)}) - {"model", "train", "val", "options"}


def check_finetune_options(where: str, options: Iterable[str], known: Iterable[str]) -> None:
    """Unknown option names are a `ValueError` naming each with its closest known name."""
    known = sorted(set(known))
    bad = [k for k in options if k not in known]
    if not bad:
        return
    parts = []
    for k in bad:
        close = difflib.get_close_matches(k, known, n=1)
        parts.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ValueError(f"{where}: unknown option{'s' if len(bad) > 1 else ''} {', '.join(parts)}; "
                     f"options it accepts besides its named arguments: {', '.join(known)}")
