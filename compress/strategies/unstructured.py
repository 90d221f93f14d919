"""Unstructured pruning: single weights are set to exact zeros (global ranking).

The model keeps its shape; `sparse_state_dict` stores the zeros compactly. It needs only
the weight layers (Linear, Conv1d/2d/3d) and what to leave dense (the input embedding and
the forecasting head): one trace finds those (`graph.trace_protected`), never the
structured grouping, which can spin for minutes on some models. When that trace fails the
first and last weight layers to run are protected instead, with a warning. A warning also
says when the eligible weights are a small share of the model, so `ratio=0.5` zeroes far
less than half of it.
"""
from __future__ import annotations

import warnings
from typing import Dict

import torch
from torch import nn

from .. import graph as G
from ..criteria.base import WeightGroup
from .base import PruneContext, Strategy, checked_scores, register


#: the layers whose weights unstructured pruning zeroes
WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: warn when the eligible weights are less than this share of all parameters
ELIGIBLE_WARN = 0.5


def prunable_weights(model: nn.Module, protected, ignore) -> list:
    skip = set()
    for m in list(protected or []) + list(ignore or []):
        skip.update(id(s) for s in m.modules())
    out = []
    for name, m in model.named_modules():
        if id(m) in skip:
            continue
        if isinstance(m, WEIGHT_LAYERS):
            out.append(WeightGroup(name, m))
        elif isinstance(m, nn.MultiheadAttention):  # its q/k/v weights are no Linear
            for p in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                if getattr(m, p, None) is not None:
                    out.append(WeightGroup(f"{name}.{p}", m, p))
    return out


def _first_and_last_layers(model: nn.Module, example_inputs) -> list:
    """The first and the last weight layer to run: the embedding and head, by call order."""
    order = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: order.append(mod))
             for m in model.modules() if isinstance(m, WEIGHT_LAYERS + (nn.Embedding,))]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            G.run_model(model, example_inputs)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return list({id(m): m for m in (order[:1] + order[-1:])}.values())


@register
class Unstructured(Strategy):
    """Zero the `ratio` lowest-scored weights of all prunable Linear/Conv1d layers."""

    name = "unstructured"
    writes_in_place = True  # zeros are written into the weights

    def run(self, model, criterion, ctx: PruneContext) -> dict:
        cfg = ctx.config
        protected = ctx.protected
        if protected is None:  # infer the input embedding and forecasting head from one trace
            try:
                protected = G.trace_protected(model, ctx.example_inputs, ignore=ctx.ignore,
                                              time_limit_s=cfg.time_limit_s)
            except G.GraphBuildError as e:
                protected = _first_and_last_layers(model, ctx.example_inputs)
                names = {m: n for n, m in model.named_modules()}
                warnings.warn(f"{type(model).__name__} could not be traced ({e}); left dense instead: the first and "
                              f"last weight layers to run ({', '.join(names[m] for m in protected)})", stacklevel=3)
        groups = prunable_weights(model, protected, ctx.ignore)
        if not groups:
            raise ValueError(f"{type(model).__name__} has no prunable Linear/Conv weights outside the "
                             "protected embedding/head and ignore=")
        total = sum(g.n for g in groups)
        n_params = sum(p.numel() for p in model.parameters())
        eligible = total / max(n_params, 1)
        if eligible < ELIGIBLE_WARN:
            warnings.warn(f"only {eligible:.1%} of the weights of {type(model).__name__} were eligible for "
                          f"unstructured pruning (Linear/Conv layers outside the embedding, head and ignore=): "
                          f"ratio={cfg.ratio:g} zeroes {cfg.ratio * eligible:.1%} of all parameters", stacklevel=3)
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
        return {"layers": {g.name: float((g.param == 0).float().mean()) for g in groups},
                "eligible_share": eligible}


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
