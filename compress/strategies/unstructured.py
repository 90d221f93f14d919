"""Unstructured pruning: single weights are set to exact zeros (global ranking).

The model keeps its shape; `sparse_state_dict` stores the zeros compactly.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from .. import graph as G
from ..criteria.base import WeightGroup
from .base import PruneContext, Strategy, checked_scores, register


def prunable_weights(model: nn.Module, protected, ignore) -> list:
    skip = set()
    for m in list(protected or []) + list(ignore or []):
        skip.update(id(s) for s in m.modules())
    return [WeightGroup(name, m) for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv1d)) and id(m) not in skip]


@register
class Unstructured(Strategy):
    """Zero the `ratio` lowest-scored weights of all prunable Linear/Conv1d layers."""

    name = "unstructured"
    writes_in_place = True  # zeros are written into the weights

    def run(self, model, criterion, ctx: PruneContext) -> dict:
        cfg = ctx.config
        protected = ctx.protected
        if protected is None:  # infer the input embedding and forecasting head from the graph
            protected = G.build(model, ctx.example_inputs, ignore=ctx.ignore, units=(),
                                time_limit_s=cfg.time_limit_s).protected
        groups = prunable_weights(model, protected, ctx.ignore)
        if not groups:
            raise ValueError(f"{type(model).__name__} has no prunable Linear/Conv1d weights outside the "
                             "protected embedding/head and ignore=")
        total = sum(g.n for g in groups)
        for step in range(1, cfg.steps + 1):
            criterion.calibrate(model, ctx.calibration, groups=groups, loss_fn=ctx.loss_fn)
            scores = []
            for g in groups:
                s = checked_scores(criterion, g)
                s[g.param.detach().flatten().cpu() == 0] = -float("inf")  # already pruned stays pruned
                scores.append(s)
            flat = torch.cat(scores)
            k = int(round(total * cfg.fraction_after(step)))
            drop = torch.zeros(total, dtype=torch.bool)
            if k > 0:
                drop[torch.argsort(flat, stable=True)[:k]] = True
            offset = 0
            with torch.no_grad():
                for g in groups:
                    m = drop[offset:offset + g.n].view_as(g.param).to(g.param.device)
                    g.param.masked_fill_(m, 0.0)
                    offset += g.n
            ctx.log(f"step {step}/{cfg.steps}: {k}/{total} weights zeroed")
        return {"layers": {g.name: float((g.param == 0).float().mean()) for g in groups}}


def sparse_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The state dict with every tensor that is at least half zeros stored as a sparse COO tensor.

    Example:
        >>> torch.save(sparse_state_dict(small), "small.pt")   # doctest: +SKIP
    """
    out = {}
    for k, v in model.state_dict().items():
        if v.is_floating_point() and v.dim() >= 1 and v.numel() and (v == 0).float().mean() >= 0.5:
            out[k] = v.to_sparse()
        else:
            out[k] = v
    return out


def load_sparse_state_dict(model: nn.Module, state: Dict[str, torch.Tensor]) -> nn.Module:
    """Load a `sparse_state_dict` back into a model of the same shape."""
    model.load_state_dict({k: v.to_dense() if v.is_sparse else v for k, v in state.items()})
    return model
