"""Taylor: loss-guided importance from calibration gradients.

Two estimates of how much the loss rises when a unit (or weight) is removed:

* ``order=1``: |Σ g·w| over the unit's weights in all coupled layers (first-order
  Taylor expansion of the loss around the current weights).
* ``order=2``: the estimate the prune-then-finetune paper uses on unit masks m (all
  ones): removing a unit moves m from 1 to 0, so ΔL ≈ -g_m + g_m²/2, with the squared
  per-sample gradient as the Hessian diagonal (empirical Fisher). Per-sample mask
  gradients come from one backward pass by giving every sample (every row of the
  site's input: a series, or a channel of a channel-independent model) its own mask.
  For unstructured pruning the mask is per weight and the batch gradient stands in for
  the per-sample one.

Scores accumulate over calibration batches, optionally as an exponential moving
average (``ema=β``: s ← β·s + (1-β)·s_batch) as the paper smooths them across
macro-batches.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from .base import Criterion, WeightGroup, default_loss, forward_loss, register, site_channel_dim, split_batch


def _chunks(batch, size: Optional[int], order: int):
    """Slices of a calibration batch along dim 0, with the loss weight that keeps the
    first-order gradient equal to the whole batch's (order 2 uses each slice's own loss)."""
    inputs, target = split_batch(batch)
    n = target.shape[0]
    if size is None or size >= n or not isinstance(inputs, torch.Tensor):
        yield batch, 1.0
        return
    for i in range(0, n, size):
        j = min(i + size, n)
        yield (inputs[i:j], target[i:j]), ((j - i) / n if order == 1 else 1.0)


@register
class Taylor(Criterion):
    """Loss-guided importance (first- or second-order Taylor).

    Args:
        order: 1 for |Σ g·w|, 2 for Σ_samples (-g_m + g_m²/2) on unit masks.
        ema: None to sum over batches, or β in [0, 1) for an exponential moving average.
        micro_batch: run each calibration batch in slices of this many samples (less
            activation memory; same first-order scores; for order 2 on single weights each
            slice counts as one sample).

    Example:
        >>> compress.prune(model, criterion="taylor", ratio=0.3, calibration=batches)  # doctest: +SKIP
        >>> import compress
        >>> compress.criteria.get("taylor", order=2, ema=0.9)
        Taylor(order=2, ema=0.9, micro_batch=None)
    """

    name = "taylor"
    requires_data = True

    def __init__(self, order: int = 1, ema: Optional[float] = None, micro_batch: Optional[int] = None):
        if order not in (1, 2):
            raise ValueError(f"taylor criterion supports order=1 or order=2, got {order!r}")
        if ema is not None and not 0.0 <= ema < 1.0:
            raise ValueError(f"taylor ema must be in [0, 1) or None, got {ema!r}")
        if micro_batch is not None and (not isinstance(micro_batch, int) or micro_batch < 1):
            raise ValueError(f"taylor micro_batch must be a positive integer or None, got {micro_batch!r}")
        self.order = order
        self.ema = ema
        self.micro_batch = micro_batch
        self._scores: Dict[int, torch.Tensor] = {}

    def calibrate(self, model, batches=None, *, groups=(), loss_fn: Optional[Callable] = None):
        super().calibrate(model, batches, groups=groups, loss_fn=loss_fn)
        loss_fn = loss_fn or default_loss
        units = [g for g in groups if not isinstance(g, WeightGroup)]
        weights = [g for g in groups if isinstance(g, WeightGroup)]
        use_masks = self.order == 2 and bool(units)
        # every parameter whose g·w is needed, with the groups that read it
        readers: Dict[int, list] = {}
        for g in weights:
            readers.setdefault(id(g.param), []).append((g, None, None))
        if not use_masks:
            for g in units:
                for p, dim, width in g.slices():
                    readers.setdefault(id(p), []).append((g, dim, width))
        was_training = model.training
        model.eval()  # no dropout: scores should not depend on it
        params = list(model.parameters())
        requires = [p.requires_grad for p in params]
        grads = [p.grad for p in params]
        batch_scores: Dict[int, torch.Tensor] = {}

        def on_grad(p):
            # called as soon as p's gradient is ready: fold g·w into the scores and drop the
            # gradient at once, so calibration never holds a full copy of the gradients
            gw = p.grad.detach() * p.detach()
            for g, dim, width in readers[id(p)]:
                if dim is None:
                    contrib = gw.flatten().float().cpu()
                    if self.order == 2:
                        contrib = -contrib + contrib.pow(2) / 2
                else:
                    contrib = g.unit_view(gw, dim, width).float().sum(1).cpu()
                batch_scores[id(g)] = batch_scores.get(id(g), 0) + contrib
            p.grad = None

        hooks = []
        for p in params:
            p.grad = None
            p.requires_grad_(id(p) in readers)
            if id(p) in readers:
                hooks.append(p.register_post_accumulate_grad_hook(on_grad))
        masks: Dict[int, list] = {id(g): [] for g in units}
        if use_masks:
            for g in units:
                hooks.append(g.site.register_forward_pre_hook(self._mask_hook(g, masks[id(g)])))
        self._scores = {}
        n_batches = 0
        try:
            for batch in batches:
                n_batches += 1
                batch_scores.clear()
                for chunk, weight in _chunks(batch, self.micro_batch, self.order):
                    for lst in masks.values():
                        lst.clear()
                    loss = forward_loss(model, chunk, loss_fn) * weight
                    if not loss.requires_grad:
                        raise ValueError("the calibration loss does not depend on any prunable unit")
                    loss.backward()
                    if use_masks:
                        for g in units:
                            s = batch_scores.get(id(g), torch.zeros(g.n))
                            for m in masks[id(g)]:
                                if m.grad is not None:
                                    gs = m.grad.float().cpu() * m.shape[0]  # [S, n] per-sample mask gradients
                                    s = s + (-gs + gs.pow(2) / 2).sum(0)
                            batch_scores[id(g)] = s
                for g in groups:
                    s = batch_scores.get(id(g))
                    self._accumulate(id(g), torch.zeros(g.n) if s is None else s)
        finally:
            for h in hooks:
                h.remove()
            for p, r, gr in zip(params, requires, grads):
                p.requires_grad_(r)
                p.grad = gr
            model.train(was_training)
        if n_batches == 0:
            raise ValueError("calibration is empty: pass at least one (inputs, target) batch")
        if self.order == 1:
            self._scores = {k: v.abs() for k, v in self._scores.items()}
        return self

    def _accumulate(self, key: int, s: torch.Tensor) -> None:
        prev = self._scores.get(key)
        if prev is None:
            self._scores[key] = s
        elif self.ema is None:
            self._scores[key] = prev + s
        else:
            self._scores[key] = self.ema * prev + (1 - self.ema) * s

    @staticmethod
    def _mask_hook(group, store: list):
        def hook(module, args):
            x = args[0]
            cdim = site_channel_dim(module) % x.dim()
            S = x.shape[0]
            m = torch.ones(S, group.n, dtype=x.dtype, device=x.device, requires_grad=True)
            store.append(m)
            full = m.repeat_interleave(group.width, dim=1)  # [S, n*width]
            shape = [S] + [1] * (x.dim() - 1)
            shape[cdim] = full.shape[1]
            return (x * full.view(shape),) + tuple(args[1:])

        return hook

    def score(self, group) -> torch.Tensor:
        try:
            return self._scores[id(group)].clone()
        except KeyError:
            raise RuntimeError("taylor.score() before calibrate(): call calibrate(model, batches, groups=[...]) "
                               "with this group first") from None
