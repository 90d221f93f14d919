"""Structured pruning: whole FFN channels and attention heads are cut out, so the model
really shrinks (fewer parameters, smaller matmuls)."""
from __future__ import annotations

from typing import Dict, List

import torch

from .. import graph as G
from .base import PruneContext, Strategy, checked_scores, register


@register
class Structured(Strategy):
    """Remove a fraction of FFN channels and of heads, per layer or ranked globally."""

    name = "structured"

    def run(self, model, criterion, ctx: PruneContext) -> dict:
        cfg = ctx.config
        if hasattr(model, "prepare_for_pruning"):  # adapter hook: untie shared per-head tables...
            model.prepare_for_pruning()
        pg = G.build(model, ctx.example_inputs, ignore=ctx.ignore, heads=ctx.heads,
                     protected=ctx.protected, prune_heads="heads" in cfg.units,
                     time_limit_s=cfg.time_limit_s)
        groups = [g for g in pg.groups if g.kind in cfg.units]
        ctx.log(f"graph built in {pg.build_seconds:.1f}s: {len(pg.of_kind('ffn'))} FFN groups, "
                f"{len(pg.of_kind('heads'))} attention modules")
        if not groups:
            raise G.GraphBuildError(
                f"no prunable {' or '.join(cfg.units)} units found in {type(model).__name__}: FFN blocks must be "
                "Linear/Conv1d pairs and attention modules need q/k/v/output Linears and a head count "
                "(pass heads={module: n}), or load the model through a compress.models adapter")
        original = {id(g): g.n for g in groups}
        removed: Dict[str, int] = {}
        for step in range(1, cfg.steps + 1):
            frac = cfg.fraction_after(step)
            criterion.calibrate(model, ctx.calibration, groups=groups, loss_fn=ctx.loss_fn)
            scores = {id(g): checked_scores(criterion, g) for g in groups}
            G.release_memory(model)
            plan = (self._plan_layer if cfg.scope == "layer" else self._plan_global)(groups, scores, original, frac)
            for g in groups:
                idxs = plan.get(id(g), [])
                if idxs:
                    pg.prune_group(g, idxs)
                    removed[g.name] = removed.get(g.name, 0) + len(idxs)
            ctx.log(f"step {step}/{cfg.steps}: removed {sum(len(v) for v in plan.values())} units "
                    f"(target {frac:.0%} of each kind)")
        return {"groups": {g.name: {"kind": g.kind, "before": original[id(g)], "after": g.n} for g in groups},
                "graph_seconds": pg.build_seconds}

    @staticmethod
    def _target_keep(n_orig: int, frac: float) -> int:
        return max(1, int(round(n_orig * (1.0 - frac))))

    def _plan_layer(self, groups, scores, original, frac) -> Dict[int, List[int]]:
        plan = {}
        for g in groups:
            k = g.n - self._target_keep(original[id(g)], frac)
            if k > 0:
                plan[id(g)] = torch.argsort(scores[id(g)], stable=True)[:k].tolist()
        return plan

    def _plan_global(self, groups, scores, original, frac) -> Dict[int, List[int]]:
        plan: Dict[int, List[int]] = {}
        for kind in {g.kind for g in groups}:
            members = [g for g in groups if g.kind == kind]
            total_orig = sum(original[id(g)] for g in members)
            k = sum(g.n for g in members) - max(len(members), int(round(total_orig * (1.0 - frac))))
            if k <= 0:
                continue
            pool = [(float(s), gi, i) for gi, g in enumerate(members) for i, s in enumerate(scores[id(g)])]
            pool.sort(key=lambda t: t[0])
            left = {id(g): g.n for g in members}
            for _, gi, i in pool:
                if k == 0:
                    break
                g = members[gi]
                if left[id(g)] <= 1:
                    continue  # never empty a layer
                plan.setdefault(id(g), []).append(i)
                left[id(g)] -= 1
                k -= 1
        return plan
