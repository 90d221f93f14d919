"""Activation: how much each unit is actually used on calibration data.

* FFN channels: activation probability, the share of calibration tokens on which the
  channel's activation (the input of the down projection) is > 0. Channels that almost
  never fire are the sparse, prunable ones the prune-then-finetune paper points at.
  Ties (typically probability 0: a truly dead channel and a GELU channel that never fires
  but still outputs small negative values) are broken by the mean |activation|, added
  as a term smaller than one token's share so it never reorders distinct probabilities.
* Attention heads: the mean norm of the head's contribution through the output
  projection (W_o[:, head] @ x_head) relative to the mean norm of the attention
  module's input.
* Single weights (unstructured): |w_ij| · ||x_j||₂, the weight times the norm of the
  input feature it multiplies (as Wanda scores weights).
"""
from __future__ import annotations

from typing import Dict

import torch

from ..graph.kinds import get_kind
from .base import Criterion, ScoreTable, WeightGroup, channels_last, default_loss, forward_loss, register


@register
class Activation(Criterion):
    """Activation probability (FFN), relative output norm (heads), |w|·||x|| (weights).

    Args:
        threshold: an FFN channel counts as active where its activation > threshold.

    Example:
        >>> compress.prune(model, criterion="activation", ratio=0.5, calibration=batches)  # doctest: +SKIP
    """

    name = "activation"
    requires_data = True

    def __init__(self, threshold: float = 0.0):
        self.threshold = threshold
        self._scores = ScoreTable()

    def calibrate(self, model, batches=None, *, groups=(), loss_fn=None, masks=None):
        super().calibrate(model, batches, groups=groups, loss_fn=loss_fn, masks=masks)
        stats: Dict[int, list] = {}
        hooks = []
        for g in groups:
            stats[id(g)] = {"num": 0.0, "den": 0.0, "mag": 0.0}
            if isinstance(g, WeightGroup):
                hooks.append(g.module.register_forward_pre_hook(self._input_norm_hook(g, stats[id(g)])))
            elif get_kind(g.kind).attention:  # heads: contribution through the output projection
                for spec in g.specs():  # coupled heads: contributions of every layer add up
                    hooks.append(spec.module.register_forward_pre_hook(
                        self._block_input_hook(stats[id(g)]), with_kwargs=True))
                    hooks.append(spec.o.register_forward_pre_hook(self._head_hook(g, stats[id(g)])))
            else:
                hooks.append(g.site.register_forward_pre_hook(self._prob_hook(g, stats[id(g)])))
        was_training = model.training
        model.eval()
        n_batches = 0
        try:
            with torch.no_grad():
                for batch in batches:
                    n_batches += 1
                    forward_loss(model, batch, default_loss)
        finally:
            for h in hooks:
                h.remove()
            model.train(was_training)
        if n_batches == 0:
            raise ValueError("calibration is empty: pass at least one (inputs, target) batch")
        self._scores, self._probability = ScoreTable(), ScoreTable()
        for g in groups:
            num, den = stats[id(g)]["num"], stats[id(g)]["den"]
            if isinstance(g, WeightGroup):
                w = g.param.detach().float().cpu()
                norms = torch.as_tensor(num).sqrt()  # [in]
                shape = [1] * w.dim()
                shape[1] = -1
                self._scores.set(g, (w.abs() * norms.view(shape)).flatten())
            else:
                score = torch.as_tensor(num) / max(float(den), 1e-12)
                self._probability.set(g, score)
                if not get_kind(g.kind).attention and den:  # FFN: break ties by mean |activation| (< 1/den)
                    mag = torch.as_tensor(stats[id(g)]["mag"]) / float(den)
                    score = score + 0.5 / float(den) * mag / (1.0 + mag)
                self._scores.set(g, score)
        return self

    def _prob_hook(self, g, acc):
        def hook(module, args):
            x = channels_last(args[0].detach(), module)  # [T, n]
            acc["num"] = acc["num"] + (x > self.threshold).float().sum(0).cpu()
            acc["mag"] = acc["mag"] + x.float().abs().sum(0).cpu()
            acc["den"] += x.shape[0]
        return hook

    @staticmethod
    def _block_input_hook(acc):
        def hook(module, args, kwargs):
            x = args[0] if args else next((v for k, v in kwargs.items() if isinstance(v, torch.Tensor)), None)
            if x is not None:
                acc["block_in"] = x.detach().float().norm(dim=-1).mean().item()  # mean ||x|| per token
        return hook

    @staticmethod
    def _head_hook(g, acc):
        def hook(module, args):
            x = args[0].detach().float()
            x = x.reshape(-1, x.shape[-1])  # [T, n*dv]
            w = module.weight.detach().float()  # [d, n*dv]
            norms = torch.zeros(g.n)
            for h in range(g.n):
                sl = slice(h * g.width, (h + 1) * g.width)
                norms[h] = (x[:, sl] @ w[:, sl].T).norm(dim=-1).sum().cpu()
            acc["num"] = acc["num"] + norms / max(x.shape[0], 1)  # mean contribution norm per token
            acc["den"] += acc.pop("block_in", 1.0)  # mean input norm of the same call
        return hook

    @staticmethod
    def _input_norm_hook(g, acc):
        def hook(module, args):
            x = channels_last(args[0].detach().float(), module)  # [T, in]
            acc["num"] = acc["num"] + x.pow(2).sum(0).cpu()
            acc["den"] += x.shape[0]
        return hook

    def probability(self, group) -> torch.Tensor:
        """FFN: the plain activation probability per channel (`score` without the tie-break)."""
        p = self._probability.get(group)
        if p is None:
            raise RuntimeError("activation.probability() for a group it was not calibrated on")
        return p.clone()

    def score(self, group) -> torch.Tensor:
        s = self._scores.get(group)
        if s is None:
            raise RuntimeError("activation.score() for a group it was not calibrated on: call "
                               "calibrate(model, batches, groups=[...]) with this group first")
        return s.clone()
