"""Progressive, loss-guided pruning with validation stopping (the prune-then-finetune method).

The method of Zhao et al. (NeurIPS 2025), as its authors implement it: 0/1 masks on FFN
intermediate channels and attention heads, applied at each unit group's `site` (the
input of the down / output projection), weights frozen. Each round

1. calibrates the criterion with the current masks applied (default: second-order
   Taylor on the masks, Σ_samples(-g + g²/2), smoothed by an EMA across batches),
2. ranks the surviving units of each kind *globally* across layers and masks the
   lowest-scored `step_fraction` of them (never the last unit of a group, never more than
   `max_ratio` of a kind),
3. measures the validation loss with the masks applied.

It stops when the validation loss has not improved for `patience` rounds, when
`max_ratio` is reached or after `max_rounds`; the mask set with the lowest validation
loss (round 0 = nothing masked included; ties go to the more pruned round) is then cut
out physically with `PruningGraph.prune_group`, so the returned model computes exactly
what the masked model computed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from .. import graph as G
from ..criteria.base import default_loss, split_batch
from .base import PruneConfig, PruneContext, Strategy, calibrate, checked_scores, register, round_plan, trace_units

__all__ = ["Progressive", "ProgressiveConfig", "apply_masks", "masked_loss"]


@dataclass
class ProgressiveConfig:
    """Settings of the progressive strategy (`compress.prune(..., options={...})`).

    Args:
        max_ratio: the largest fraction of each kind of unit (FFN channels, heads) that
            may be masked; `compress.prune`'s `ratio`.
        step_fraction: share of the *surviving* units of each kind masked per round
            (at least one unit while any may still go).
        patience: stop after this many rounds in a row without a lower validation loss.
        max_rounds: stop after this many rounds (None: until patience or max_ratio).
        normalize: None ranks the raw scores across layers (a second-order Taylor score
            is an estimate of the loss change, the same unit in every layer); "mean"
            divides each group's surviving scores by their mean absolute value first.
        tolerance: rounds whose validation loss is within `tolerance` (relative) of the
            lowest count as tied with it; the most pruned of them is kept.
        ranking: "signed" (default) ranks the signed scores (an estimate of the loss change:
            negative = removing the unit lowers the loss, so it goes first) separately per
            kind of unit, `step_fraction` of each kind per round; "authors" ranks |score| of
            every kind in one pool, `step_fraction` of all surviving units per round, as the
            authors' code does (each kind still capped at `max_ratio`).
    """

    max_ratio: float = 0.5
    step_fraction: float = 0.1
    patience: int = 1
    max_rounds: Optional[int] = None
    normalize: Optional[str] = None
    tolerance: float = 0.0
    ranking: str = "signed"

    def __post_init__(self):
        def number(name, lo, hi, lo_open=False, hi_open=False):
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and \
                (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
            if not ok:
                raise ValueError(f"progressive: {name}={v!r} must be in {'(' if lo_open else '['}{lo}, "
                                 f"{hi}{')' if hi_open else ']'}")
            setattr(self, name, float(v))

        number("max_ratio", 0.0, 1.0, hi_open=True)
        number("step_fraction", 0.0, 1.0, lo_open=True)
        number("tolerance", 0.0, math.inf, hi_open=True)
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 1:
            raise ValueError(f"progressive: patience={self.patience!r} must be a positive integer")
        if self.max_rounds is not None and (isinstance(self.max_rounds, bool) or not isinstance(self.max_rounds, int)
                                            or self.max_rounds < 1):
            raise ValueError(f"progressive: max_rounds={self.max_rounds!r} must be a positive integer or None")
        if self.normalize not in (None, "mean"):
            raise ValueError(f"progressive: normalize={self.normalize!r} must be None or 'mean'")
        if self.ranking not in ("signed", "authors"):
            raise ValueError(f"progressive: ranking={self.ranking!r} must be 'signed' or 'authors'")


def apply_masks(masks: Dict[int, torch.Tensor], groups: Sequence[G.UnitGroup]) -> List:
    """Register forward pre-hooks that multiply each group's units at its `site` by its mask.

    Args:
        masks: `{id(group): 0/1 tensor [group.n]}`; groups without an entry are left alone.
        groups: the unit groups (FFN channels, heads) of one traced model.

    Returns:
        The hook handles (call `.remove()` on each to take the masks off).

    Example:
        >>> pg = compress.graph.build(model, x)                                        # doctest: +SKIP
        >>> g = pg.groups[0]
        >>> hooks = apply_masks({id(g): torch.tensor([1., 0.] + [1.] * (g.n - 2))}, [g])  # doctest: +SKIP
    """
    chosen = [g for g in groups if id(g) in masks]
    mask_set = G.MaskSet(chosen)
    mask_set.values.update({id(g): masks[id(g)] for g in chosen})  # the caller's tensors: edits apply live
    return list(mask_set.install()._handles)


@torch.no_grad()
def masked_loss(model: nn.Module, batches: Sequence, loss_fn: Optional[Callable] = None) -> float:
    """Mean loss over `batches` of (inputs, target), weighted by target size, in eval mode."""
    from ..criteria.base import forward_loss

    loss_fn = loss_fn or default_loss
    was = model.training
    model.eval()
    total = count = 0.0
    try:
        for batch in batches:
            n = split_batch(batch)[1].numel()
            total += float(forward_loss(model, batch, loss_fn)) * n
            count += n
    finally:
        model.train(was)
    return total / max(count, 1.0)


@register
class Progressive(Strategy):
    """Mask a fraction of the surviving units per round, stop on validation loss, cut the best round."""

    name = "progressive"
    rounds_widths = True
    requires_validation = True

    def check_options(self, options: dict, config: PruneConfig) -> None:
        if "max_ratio" in options:
            raise ValueError("progressive: pass the maximum ratio as prune(..., ratio=...), not in options")
        try:
            ProgressiveConfig(max_ratio=config.ratio, **options)
        except TypeError:
            known = ", ".join(f for f in ProgressiveConfig.__dataclass_fields__ if f != "max_ratio")
            unknown = ", ".join(sorted(set(options) - set(ProgressiveConfig.__dataclass_fields__)))
            raise ValueError(f"progressive: unknown option(s) {unknown}; known: {known}") from None

    def run(self, model, criterion, ctx: PruneContext) -> dict:
        cfg = ctx.config
        pcfg = ProgressiveConfig(max_ratio=cfg.ratio, **ctx.options)
        pg, groups = trace_units(model, ctx)
        kinds = sorted({g.kind for g in groups})
        total = {k: sum(g.n for g in groups if g.kind == k) for k in kinds}
        budget = {k: int(math.floor(pcfg.max_ratio * total[k] + 1e-9)) for k in kinds}  # most units maskable
        mask_set = G.MaskSet(groups).install()  # the hooks read the masks live: updating them updates the model
        masks = mask_set.values
        requires = {p: p.requires_grad for p in model.parameters()}

        def masked_of(kind):
            return sum(int((masks[id(g)] == 0).sum()) for g in groups if g.kind == kind)

        rounds = [{"round": 0, "val_loss": masked_loss(model, ctx.validation, ctx.loss_fn),
                   "masked": {k: 0 for k in kinds}}]
        snapshots = [mask_set.snapshot()]
        ctx.log(f"round 0: val loss {rounds[0]['val_loss']:.6g} (nothing masked)")
        best, bad, stop = rounds[0]["val_loss"], 0, "max_ratio"
        try:
            for p in model.parameters():
                p.requires_grad_(False)  # weights frozen: only masks move
            while True:
                if pcfg.max_rounds is not None and len(rounds) > pcfg.max_rounds:
                    stop = "max_rounds"
                    break
                calibrate(criterion, model, ctx, groups, masks=mask_set)
                scores = {id(g): checked_scores(criterion, g) for g in groups}
                room = {k: budget[k] - masked_of(k) for k in kinds}
                pools = [groups] if pcfg.ranking == "authors" else [[g for g in groups if g.kind == k] for k in kinds]
                newly = sum(self._mask_round(members, scores, masks, room, pcfg) for members in pools)
                if newly == 0:
                    stop = "max_ratio"  # the budget is spent or every group is down to one unit
                    break
                v = masked_loss(model, ctx.validation, ctx.loss_fn)
                rounds.append({"round": len(rounds), "val_loss": v, "masked": {k: masked_of(k) for k in kinds}})
                snapshots.append(mask_set.snapshot())
                ctx.log(f"round {len(rounds) - 1}: masked {rounds[-1]['masked']} of {total}, val loss {v:.6g}")
                if v < best:
                    best, bad = v, 0
                else:
                    bad += 1
                    if bad >= pcfg.patience:
                        stop = "patience"
                        break
        finally:
            mask_set.remove()
            for p, r in requires.items():
                p.requires_grad_(r)
            G.release_memory(model)

        chosen = self.choose(rounds, pcfg.tolerance)
        original = {id(g): g.n for g in groups}
        plan = {}
        for g in groups:
            idxs = torch.nonzero(snapshots[chosen][id(g)] == 0).flatten().tolist()
            # earliest masked first: round_to then restores the units masked last
            masked_in = {i: next(r for r in range(1, chosen + 1) if snapshots[r][id(g)][i] == 0) for i in idxs}
            plan[id(g)] = sorted(idxs, key=lambda i: (masked_in[i], i))
        plan = round_plan(plan, groups, original, cfg)  # round_to: kept widths at hardware multiples
        plan = [(g, sorted(plan[id(g)])) for g in groups]
        report = pg.apply(plan, ctx.example_inputs, log=ctx.log)  # cut, run, restore what breaks
        removed = {g.name: report.removed.get(g.name, []) for g in groups}
        pg.restore_unpruned_attention()
        ctx.log(f"kept round {chosen} of {len(rounds) - 1} (stopped on {stop}); "
                f"val loss {rounds[chosen]['val_loss']:.6g} vs {rounds[0]['val_loss']:.6g} unpruned")
        return {"scope": "global", "steps": len(rounds) - 1, "rounds": rounds,
                "val_loss": [r["val_loss"] for r in rounds], "chosen_round": chosen, "stopped": stop,
                "options": {"step_fraction": pcfg.step_fraction, "patience": pcfg.patience,
                            "max_rounds": pcfg.max_rounds, "normalize": pcfg.normalize,
                            "tolerance": pcfg.tolerance, "ranking": pcfg.ranking},
                "groups": G.group_records(model, groups, original, removed),
                **G.not_prunable_summary(pg, model), "graph_seconds": pg.build_seconds}

    @staticmethod
    def choose(rounds: List[dict], tolerance: float = 0.0) -> int:
        """Index of the round to keep: the most pruned among those whose validation loss is
        within `tolerance` (relative) of the lowest; with tolerance 0, the lowest loss and, on
        a tie, the later (more pruned) round."""
        low = min(r["val_loss"] for r in rounds)
        limit = low + tolerance * abs(low)
        return max(i for i, r in enumerate(rounds) if r["val_loss"] <= limit)

    @staticmethod
    def _mask_round(members, scores, masks, room: Dict[str, int], pcfg: ProgressiveConfig) -> int:
        """Mask the lowest-scored `step_fraction` of the surviving units of `members` (one kind,
        or every kind with ranking "authors"), at most `room[kind]` of each kind; return how many."""
        alive = {id(g): masks[id(g)] > 0 for g in members}
        surviving = sum(int(a.sum()) for a in alive.values())
        k = min(sum(room[kind] for kind in {g.kind for g in members}),
                max(1, math.ceil(pcfg.step_fraction * surviving - 1e-9)))
        if k <= 0:
            return 0
        pool = []
        for gi, g in enumerate(members):
            s = scores[id(g)]
            live = alive[id(g)]
            if pcfg.normalize == "mean" and live.any():
                s = s / s[live].abs().mean().clamp_min(1e-12)
            if pcfg.ranking == "authors":
                s = s.abs()
            pool += [(float(s[i]), gi, i) for i in torch.nonzero(live).flatten().tolist()]
        pool.sort(key=lambda t: (t[0], t[1], t[2]))  # stable: layer order, then unit index, on equal scores
        left = {id(g): int(alive[id(g)].sum()) for g in members}
        done = 0
        for _, gi, i in pool:
            if done == k:
                break
            g = members[gi]
            if left[id(g)] <= 1 or room[g.kind] <= 0:
                continue  # never empty a group, never pass a kind's budget
            masks[id(g)][i] = 0.0
            left[id(g)] -= 1
            room[g.kind] -= 1
            done += 1
        return done
