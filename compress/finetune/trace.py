"""Gated DSIC: choose which LoRA modules to keep, after TRACE (Li and Zhu, arXiv 2503.16991).

Why this module exists: plain LoRA adapts every target module; TRACE keeps only the modules
whose update matters for the task, so the fine-tune trains (and a merge=False model keeps)
fewer adapter parameters. `select_modules` is that selection; `compress.finetune(...,
method="trace")` runs it on LoRA-injected models (and adds the reconstructed head).

What comes from the paper:
    * one scalar gate per LoRA module that scales its update (`W x + g * B A x`);
    * importance from the gradient of the loss with respect to the gate, measured after a
      warm-up (with all gates at 1, a fresh LoRA update is zero, B = 0, and every gradient
      is zero);
    * Monte Carlo masking of the *other* modules: the gradient is averaged over random masks
      so that a module's score reflects the conditions after the others are dropped (the
      paper's "conditional parameter consistency"), on validation windows;
    * iterative dropping of the least important modules until a budget is met.

Where this implementation chooses or deviates (the paper leaves these open or differs):
    * one Monte Carlo sample scores every module it leaves active: mask m ~ Bernoulli over
      all surviving modules, gates g = m, and for each active module (g_i = 1) the sample's
      dL/dg_i is one draw of its gradient under a random mask of the others. Modules never
      active in `mc_samples` draws get one extra draw with all gates at 1.
    * importance = |mean of those gradients| (a first-order estimate of the loss change
      when g_i goes 1 -> 0); the sign is not used.
    * gates are fixed at 1 outside the scoring (they are not trained), and exist only as
      forward hooks during scoring: nothing is added to the model.
    * dropped modules are removed (`lora.remove_lora`: the plain base layer returns), not
      zeroed; `round_steps` optional training steps between rounds (default 0: rescoring
      only, since the removal changes the conditions the others are scored under).
    * budget in modules or in LoRA parameters (`budget_kind`), as a share of what was
      injected; the forecasting head is not part of it.
"""
from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from .lora import _ADAPTER, lora_layers, remove_lora

__all__ = ["TraceConfig", "select_modules"]


@dataclass
class TraceConfig:
    """Knobs of Gated DSIC (`compress.finetune(..., method="trace", trace=TraceConfig(...))`).

    Args:
        warmup_steps: training steps of all LoRA modules (and the head) before the first
            scoring (default 50). They count towards `max_steps` of the fine-tune.
        mc_samples: Monte Carlo masks per scoring round (default 8).
        mask_prob: chance that a module is masked (gate 0) in one sample (default 0.5).
        drop_fraction: share of the surviving modules dropped per round (default 0.25;
            at least one module, never more than the budget needs).
        budget: what to keep, a share in (0, 1] of the injected modules or of their LoRA
            parameters (default 0.5).
        budget_kind: "modules" or "params" (default "modules").
        score_batches: validation batches the samples cycle through (default 4).
        round_steps: training steps between rounds (default 0).
        lr: learning rate of the warm-up and round steps (None: the fine-tune's `lr`).
    """

    warmup_steps: int = 50
    mc_samples: int = 8
    mask_prob: float = 0.5
    drop_fraction: float = 0.25
    budget: float = 0.5
    budget_kind: str = "modules"
    score_batches: int = 4
    round_steps: int = 0
    lr: Optional[float] = None

    def __post_init__(self):
        for name in ("warmup_steps", "round_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"TraceConfig: {name}={v!r} must be a non-negative integer")
        for name in ("mc_samples", "score_batches"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"TraceConfig: {name}={v!r} must be a positive integer")
        if not 0 < self.mask_prob < 1:
            raise ValueError(f"TraceConfig: mask_prob={self.mask_prob!r} must be in (0, 1)")
        if not 0 < self.drop_fraction <= 1:
            raise ValueError(f"TraceConfig: drop_fraction={self.drop_fraction!r} must be in (0, 1]")
        if not 0 < self.budget <= 1:
            raise ValueError(f"TraceConfig: budget={self.budget!r} must be a share in (0, 1]")
        if self.budget_kind not in ("modules", "params"):
            raise ValueError(f"TraceConfig: budget_kind={self.budget_kind!r}: choose 'modules' or 'params'")


def _lora_params(layer: nn.Module) -> int:
    return sum(p.numel() for n, p in layer.named_parameters() if "lora_" in n)


def _cycle(make: Callable):
    while True:
        empty = True
        for batch in make():
            empty = False
            yield batch
        if empty:
            raise ValueError("Gated DSIC: the training data gave no batches")


def _train_steps(model, params, batches, steps: int, lr: float, loss_fn) -> None:
    if steps == 0:
        return
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    for _ in range(steps):
        past, future = next(batches)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(past), future)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"Gated DSIC warm-up: the training loss became {loss.item()}; lower lr")
        loss.backward()
        opt.step()


def _scores(model, layers: Dict[str, nn.Module], batches: List, cfg: TraceConfig, loss_fn, gen) -> Dict[str, float]:
    """|mean dL/dg_i| over Monte Carlo masks of the other modules, per surviving module."""
    names = list(layers)
    gates = torch.ones(len(names))
    gates_ref = [gates]  # the hooks read the current gate tensor from here
    hooks = []
    for i, n in enumerate(names):
        hooks.append(layers[n].lora_B[_ADAPTER].register_forward_hook(
            lambda mod, inp, out, i=i: out * gates_ref[0][i].to(out.dtype)))
    total, count = torch.zeros(len(names)), torch.zeros(len(names))
    was = model.training
    model.eval()
    try:
        draws = [(torch.rand(len(names), generator=gen) >= cfg.mask_prob).float() for _ in range(cfg.mc_samples)]
        for s, mask in enumerate(draws):
            if mask.sum() == 0:
                continue
            gates_ref = [mask.clone().requires_grad_(True)]
            past, future = batches[s % len(batches)]
            (grad,) = torch.autograd.grad(loss_fn(model(past), future), gates_ref[0])
            total += grad * mask
            count += mask
        missing = count == 0
        if missing.any():  # never active: one draw with every gate at 1
            gates_ref = [gates.clone().requires_grad_(True)]
            past, future = batches[0]
            (grad,) = torch.autograd.grad(loss_fn(model(past), future), gates_ref[0])
            total[missing] += grad[missing]
            count[missing] += 1
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return {n: float((total[i] / count[i]).abs()) for i, n in enumerate(names)}


def select_modules(model: nn.Module, train_batches: Callable, val_batches: List, cfg: TraceConfig, *, lr: float,
                   loss_fn: Optional[Callable] = None, seed: int = 0, progress: bool = False) -> dict:
    """Warm up, then drop the least important LoRA modules of `model` (in place) until the budget.

    Args:
        model: a model with LoRA adapters (`lora.add_lora`); the trainable parameters are
            the adapters and whatever else the caller left trainable (the head).
        train_batches: a function returning an iterable of (past, future) training batches
            (called again when one pass ends).
        val_batches: (past, future) validation batches for the scores.
        cfg: the `TraceConfig`.
        lr: learning rate of the warm-up (unless `cfg.lr`).
        loss_fn: loss(prediction, target), MSE by default.
        seed: seeds the masks.
        progress: print each round.

    Returns:
        A record: the config, modules and LoRA parameters before and after, each round's
        scores and dropped names, and the steps trained.
    """
    loss_fn = loss_fn or nn.functional.mse_loss
    layers = lora_layers(model)
    if not layers:
        raise ValueError("Gated DSIC: the model has no LoRA modules (add them with compress.finetune.lora.add_lora)")
    if not val_batches:
        raise ValueError("Gated DSIC: no validation batches to score the modules on")
    gen = torch.Generator().manual_seed(seed)
    batches = _cycle(train_batches)
    step_lr = cfg.lr or lr
    trainable = lambda: [p for p in model.parameters() if p.requires_grad]  # noqa: E731
    _train_steps(model, trainable(), batches, cfg.warmup_steps, step_lr, loss_fn)
    sizes = {n: _lora_params(m) for n, m in layers.items()}
    n0, p0 = len(sizes), sum(sizes.values())
    keep_modules = max(1, math.ceil(cfg.budget * n0 - 1e-9))
    keep_params = cfg.budget * p0
    rounds, steps = [], cfg.warmup_steps

    def met(alive: Dict[str, nn.Module]) -> bool:
        if cfg.budget_kind == "modules":
            return len(alive) <= keep_modules
        return sum(sizes[n] for n in alive) <= keep_params + 1e-9

    alive = dict(layers)
    while not met(alive) and len(alive) > 1:
        scores = _scores(model, alive, val_batches, cfg, loss_fn, gen)
        order = sorted(alive, key=lambda n: (scores[n], n))
        k = max(1, int(cfg.drop_fraction * len(alive)))
        drop: List[str] = []
        if cfg.budget_kind == "modules":
            drop = order[:min(k, len(alive) - keep_modules)]
        else:
            left = sum(sizes[n] for n in alive)
            for n in order[:min(k, len(alive) - 1)]:
                drop.append(n)
                left -= sizes[n]
                if left <= keep_params + 1e-9:
                    break
        remove_lora(model, drop)
        for n in drop:
            del alive[n]
        rounds.append({"scores": scores, "dropped": drop, "kept": len(alive)})
        if progress:
            print(f"[compress.finetune trace] round {len(rounds)}: dropped {len(drop)} LoRA modules, "
                  f"{len(alive)}/{n0} left", file=sys.stderr)
        if not met(alive) and cfg.round_steps:
            _train_steps(model, trainable(), batches, cfg.round_steps, step_lr, loss_fn)
            steps += cfg.round_steps
    return {"config": asdict(cfg), "modules_before": n0, "modules_after": len(alive),
            "lora_params_before": p0, "lora_params_after": sum(sizes[n] for n in alive),
            "kept": sorted(alive), "rounds": rounds, "steps": steps}
