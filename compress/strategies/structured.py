"""Structured pruning: whole FFN channels and attention heads are cut out, so the model
really shrinks (fewer parameters, smaller matmuls)."""
from __future__ import annotations

from typing import Dict, List

import torch

from .. import graph as G
from .base import PruneContext, Strategy, calibrate, checked_scores, register, round_plan, trace_units


@register
class Structured(Strategy):
    """Remove a fraction of FFN channels and of heads, per layer or ranked globally."""

    name = "structured"
    rounds_widths = True

    def run(self, model, criterion, ctx: PruneContext) -> dict:
        cfg = ctx.config
        pg, groups = trace_units(model, ctx)
        original = {id(g): g.n for g in groups}
        alive = {id(g): list(range(g.n)) for g in groups}  # original index of each surviving unit
        removed: Dict[str, List[int]] = {g.name: [] for g in groups}
        all_groups = list(groups)
        for step in range(1, cfg.steps + 1):
            frac = cfg.fraction_after(step)
            calibrate(criterion, model, ctx, groups)
            scores = {id(g): checked_scores(criterion, g) for g in groups}
            G.release_memory(model)
            plan = (self._plan_layer if cfg.scope == "layer" else self._plan_global)(groups, scores, original, frac)
            plan = round_plan(plan, groups, original, cfg)  # round_to: kept widths at hardware multiples
            # cut and run: a group whose cut breaks the forward pass is restored and dropped
            report = pg.apply([(g, plan[id(g)]) for g in groups if plan.get(id(g))], ctx.example_inputs,
                              log=ctx.log)
            for g in groups:
                drop = set(report.removed.get(g.name, []))
                removed[g.name] += [alive[id(g)][i] for i in sorted(drop)]
                alive[id(g)] = [a for j, a in enumerate(alive[id(g)]) if j not in drop]
            groups = [g for g in groups if g.name not in report.failed]
            ctx.log(f"step {step}/{cfg.steps}: removed {sum(len(v) for v in report.removed.values())} units "
                    f"(target {frac:.0%} of each kind)")
            if not groups:
                break
        pg.restore_unpruned_attention()
        return {"groups": G.group_records(model, all_groups, original, removed),
                **G.not_prunable_summary(pg, model), "graph_seconds": pg.build_seconds}

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
