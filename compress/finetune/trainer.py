"""Recovery training after pruning, and evaluation.

`finetune` is a plain, deterministic PyTorch loop (AdamW, early stopping on validation
loss, best weights restored, a tqdm progress bar): small enough that a wrapper library
would add more than it saves, and it must keep the zeros of unstructured pruning in place
(`keep_sparsity`), which generic trainers do not.
"""
from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import nn

from . import _checks

__all__ = ["FinetuneConfig", "finetune", "evaluate"]


@dataclass
class FinetuneConfig:
    """Settings of `finetune`, validated on construction.

    Args:
        epochs: maximum passes over the training windows.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        batch_size: windows per step.
        patience: stop after this many epochs without a better validation loss.
        max_steps: stop after this many optimiser steps in total (None: no limit).
        max_train_batches: batches per epoch (None: the whole training split).
        max_val_batches: validation batches per check, a fixed seeded sample of windows drawn
            across the whole split, the same at every check (None: the whole split).
        seed: seeds shuffling and initialisation of anything random.
        keep_sparsity: weights that are exactly zero before training stay zero.
        progress: show a progress bar.
    """

    epochs: int = 10
    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 32
    patience: int = 3
    max_steps: Optional[int] = None
    max_train_batches: Optional[int] = None
    max_val_batches: Optional[int] = None
    seed: int = 0
    keep_sparsity: bool = True
    progress: bool = True

    def __post_init__(self):
        for name in ("epochs", "batch_size", "patience"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"finetune: {name}={v!r} must be a positive integer")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"finetune: lr={self.lr!r} must be a positive number")
        for name in ("max_steps", "max_train_batches", "max_val_batches"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"finetune: {name}={v!r} must be a positive integer or None")


def _batches(data, batch_size: int, shuffle: bool, seed: int, limit: Optional[int]):
    if hasattr(data, "loader"):  # a compress.data.WindowDataset
        it = data.loader(batch_size=batch_size, shuffle=shuffle, seed=seed)
    elif isinstance(data, torch.utils.data.Dataset):
        g = torch.Generator().manual_seed(seed)
        it = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=g)
    else:  # an iterable of (past, future) batches
        it = data
    for i, batch in enumerate(it):
        if limit is not None and i >= limit:
            break
        yield batch


def _eval_batches(data, batch_size: int, limit: Optional[int]):
    """Batches for evaluation: every window in order, or, when capped at `limit` batches, a
    fixed seeded sample drawn across the whole split (the first windows of a split can be a
    few days of one regime)."""
    return _batches(data, batch_size, limit is not None, 0, limit)


def _check_data(name: str, data, reusable: bool = True) -> None:
    if data is None:
        raise ValueError(f"{name} data is missing: pass compress.data.load(..., split={name!r}) or (past, future) batches")
    if reusable:  # read more than once (every epoch, every validation check)
        _checks.check_reusable(name, data)
    try:
        n = len(data)
    except TypeError:
        return
    if n == 0:
        raise ValueError(f"{name} data is empty (0 windows): check context_length + horizon against the split length")


@torch.no_grad()
def evaluate(model: nn.Module, data, *, batch_size: int = 64, limit: Optional[int] = None) -> Dict[str, float]:
    """MSE and MAE of the point forecast on (scaled) windows.

    Args:
        model: a forecaster `past[B, L, C] -> [B, H, C]`.
        data: a `compress.data` dataset, a torch Dataset of (past, future), or batches.
        batch_size: windows per forward.
        limit: evaluate at most this many batches, a fixed seeded sample of windows drawn
            across the whole split (not its first windows); None: every window in order.

    Returns:
        {"mse": ..., "mae": ..., "n_windows": ...}, averaged over every value.

    Example:
        >>> test = compress.data.load("ETTh1", 512, 96, "test")       # doctest: +SKIP
        >>> compress.evaluate(compress.models.load("ttm"), test)["mse"]  # doctest: +SKIP
        0.3628...
    """
    _check_data("test", data, reusable=False)  # read once: a generator is fine
    was = model.training
    model.eval()
    se = ae = count = windows = 0.0
    try:
        for past, future in _eval_batches(data, batch_size, limit):
            pred = model(past)
            if pred.shape != future.shape:
                raise ValueError(f"model predicts {tuple(pred.shape)} but the data's targets are {tuple(future.shape)}: "
                                 "load the data with the model's context_length and horizon")
            err = pred.float() - future.float()
            se += float(err.pow(2).sum())
            ae += float(err.abs().sum())
            count += err.numel()
            windows += past.shape[0]
    finally:
        model.train(was)
    if count == 0:
        raise ValueError("evaluation saw no windows")
    return {"mse": se / count, "mae": ae / count, "n_windows": int(windows)}


def _sparsity_masks(model: nn.Module) -> Dict[nn.Parameter, torch.Tensor]:
    masks = {}
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d)):
            zero = m.weight.detach() == 0
            if zero.any():
                masks[m.weight] = zero
    return masks


def finetune(model: nn.Module, train, val, *, method: str = "full", epochs: int = 10, lr: float = 1e-4,
             patience: int = 3, batch_size: int = 32, loss_fn: Optional[Callable] = None, inplace: bool = False,
             config: Optional[FinetuneConfig] = None, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
             targets: Optional[Sequence[str]] = None, merge: bool = True, head: Optional[str] = None,
             horizon: Optional[int] = None, head_options: Optional[dict] = None, trace=None,
             **options) -> nn.Module:
    """Train a (pruned) forecaster to recover accuracy, with early stopping on validation loss.

    Args:
        model: the forecaster to train.
        train, val: `compress.data.load(...)` datasets (or torch Datasets / batch lists).
        method: what trains (`compress.finetune.methods`): "full" (every parameter),
            "linear_probe" (only the forecasting head, `Forecaster.head_modules()`; a plain
            module: its last Linear), "lora" (LoRA adapters on the attention / FFN Linears
            via peft, plus the head) or "trace" (LoRA + Gated DSIC module selection + the
            reconstructed head where the backbone is patch-based; TRACE, arXiv 2503.16991).
        epochs, lr, patience, batch_size: see `FinetuneConfig` (also `weight_decay`,
            `max_steps`, `max_train_batches`, `max_val_batches`, `seed`, `keep_sparsity`,
            `progress` through **options).
        loss_fn: training loss `loss_fn(prediction, target)` (MSE).
        inplace: train `model` itself instead of a copy.
        config: a ready `FinetuneConfig` (overrides the keyword settings).
        rank, alpha, dropout: LoRA rank, scale (`alpha / rank`) and adapter dropout.
        targets: LoRA target module names or patterns (`compress.finetune.lora`); None:
            the family's defaults (`lora.DEFAULT_TARGETS`). A pattern matching nothing is
            an error.
        merge: fold the adapters into the weights when training ends (default): the result
            holds plain Linears, saves with `compress.models.saving` and costs nothing extra
            at inference. False keeps the peft adapters (base frozen, adapters and head
            trainable); merge them later with `compress.finetune.merge_lora(model)` before
            `save` (which refuses unmerged adapters).
        head: None (the method's default: "reconstructed" for "trace" where supported,
            else the model's own head), "keep", or "reconstructed" (any method).
        horizon: horizon of the reconstructed head (None: the model's).
        head_options: extra options of `compress.finetune.heads.attach_reconstructed_head`.
        trace: a `compress.finetune.trace.TraceConfig` (or its fields as a dict) for
            method="trace" (None: the defaults).

    Returns:
        The model with the weights of its best validation epoch; `finetune_history`
        records per-epoch train/val losses and `trainable_params`; `finetune_info` the
        method, parameter counts, LoRA settings and (trace) the Gated DSIC rounds.

    Example:
        >>> small = compress.finetune(small, train, val, epochs=5, lr=1e-4)   # doctest: +SKIP
        >>> tuned = compress.finetune(small, train, val, method="lora", rank=4)  # doctest: +SKIP
    """
    from .methods import Context, prepare
    from .lora import LoraSettings
    from .trace import TraceConfig

    cfg = config or FinetuneConfig(epochs=epochs, lr=lr, patience=patience, batch_size=batch_size, **options)
    if head_options and "inplace" in head_options:
        raise ValueError("finetune: head_options cannot set 'inplace' (finetune attaches the head to the model it "
                         "trains; pass inplace= to finetune itself)")
    lora_settings = LoraSettings(rank=rank, alpha=alpha, dropout=dropout, targets=targets)
    if isinstance(trace, dict):
        trace = TraceConfig(**trace)
    _check_data("train", train)
    _check_data("val", val)
    loss_fn = loss_fn or nn.functional.mse_loss
    if not inplace:
        model = copy.deepcopy(model)
    torch.manual_seed(cfg.seed)
    ctx = Context(train=train, val=val, cfg=cfg, loss_fn=loss_fn, lora=lora_settings, merge=merge,
                  head=head, horizon=horizon, head_options=dict(head_options or {}), trace=trace)
    # before the method adds anything: fresh LoRA B matrices are all zeros, not pruned weights
    masks = _sparsity_masks(model) if cfg.keep_sparsity else {}
    prepared = prepare(method, model, ctx)
    model, info = prepared.model, prepared.info
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("finetune: the model has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    best, best_state, bad, history = float("inf"), None, 0, []
    steps = int(info.get("trace", {}).get("steps", 0))  # Gated DSIC's warm-up counts towards max_steps
    tp = info["trainable_params"]
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None

    def val_loss() -> float:
        r = evaluate(model, val, batch_size=cfg.batch_size, limit=cfg.max_val_batches)
        return r["mse"] if loss_fn is nn.functional.mse_loss else _mean_loss(model, val, loss_fn, cfg)

    start = val_loss()
    history.append({"epoch": 0, "train": None, "val": start, "trainable_params": tp})
    best, best_state = start, copy.deepcopy(model.state_dict())
    _checks.check_finite("validation", start, epoch=0, lr=cfg.lr)
    for epoch in range(1, cfg.epochs + 1):
        if cfg.max_steps is not None and steps >= cfg.max_steps:
            break
        model.train()
        total, n = 0.0, 0
        batches = _batches(train, cfg.batch_size, True, cfg.seed + epoch, cfg.max_train_batches)
        bar = tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, file=sys.stderr,
                   disable=not cfg.progress) if tqdm else batches
        for batch, (past, future) in enumerate(bar):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(past), future)
            _checks.check_finite("training", float(loss.detach()), epoch=epoch, batch=batch, lr=cfg.lr,
                                 history=history)
            loss.backward()
            opt.step()
            if masks:
                with torch.no_grad():
                    for p, m in masks.items():
                        p.masked_fill_(m, 0.0)
            total += float(loss.detach()) * past.shape[0]
            n += past.shape[0]
            steps += 1
            if tqdm and cfg.progress:
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            if cfg.max_steps is not None and steps >= cfg.max_steps:
                break
        _checks.check_not_empty("training", n, epoch)
        v = val_loss()
        history.append({"epoch": epoch, "train": total / max(n, 1), "val": v, "trainable_params": tp})
        if cfg.progress:
            print(f"[compress.finetune] epoch {epoch}: train {total / max(n, 1):.4f}  val {v:.4f}", file=sys.stderr)
        _checks.check_finite("validation", v, epoch=epoch, lr=cfg.lr, history=history[:-1])
        if v < best - 1e-9:
            best, best_state, bad = v, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
        if cfg.max_steps is not None and steps >= cfg.max_steps:
            break
    model.load_state_dict(best_state)
    model = prepared.finish(model)
    if masks:  # a merged LoRA update is dense: keep the zeros of unstructured pruning
        with torch.no_grad():
            for p, m in masks.items():
                p.masked_fill_(m, 0.0)
    model.eval()
    model.finetune_history = history
    info["params_after"] = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    model.finetune_info = info
    return model


@torch.no_grad()
def _mean_loss(model, data, loss_fn, cfg) -> float:
    model.eval()
    total, n = 0.0, 0
    for past, future in _eval_batches(data, cfg.batch_size, cfg.max_val_batches):
        total += float(loss_fn(model(past), future)) * past.shape[0]
        n += past.shape[0]
    if n == 0:
        raise ValueError("finetune: the validation pass saw no windows (an exhausted or empty iterable)")
    return total / n
