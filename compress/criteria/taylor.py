"""Taylor: loss-guided importance from calibration gradients.

Two estimates of how much the loss rises when a unit (or weight) is removed:

* ``order=1``: |Σ g·w| over the unit's weights in all coupled layers (first-order
  Taylor expansion of the loss around the current weights).
* ``order=2``: the estimate the prune-then-finetune paper uses on unit masks m (all
  ones): removing a unit moves m from 1 to 0, so ΔL ≈ Σ_samples (-g_s + g_s²/2), with the
  squared per-sample gradient as the Hessian diagonal (empirical Fisher).

Per-sample mask gradients come from one backward pass: the mask at a unit group's site
(the input of the down / output projection) is given one row per index of the site
input's *sample dimension*, and the row gradients of each sample are summed (over rows
and over every call of the site) before squaring. Which dimension holds the samples, and
whether they are its outer or inner factor (`[B*C, ...]` vs `[C*B, ...]`), is found per
site by a probe (`probe_sample_layouts`: a batch-3 forward, and a batch-2 forward with two
backward passes showing which rows feed which output sample), so batch-first, seq-first (`[L, B, D]`) and channel-flattened layouts
(Crossformer's `[(B·segments), C, D]`) all score per sample; a site whose rows mix
samples falls back to one sample per row with a warning. For unstructured pruning the
mask is per weight and the batch gradient stands in for the per-sample one.

`g_s` is the gradient of sample s's own loss by default (`grad_scale="sample"`); the
authors' code differentiates the batch-mean loss, so their g_s is 1/B of this and the g²
term 1/B² (`grad_scale="batch_mean"` reproduces that; the first-order term then shrinks
by 1/B and the second-order term by 1/B², which changes the ranking).

Which is the default, from measurement (`benchmarks/results/ptf_v2_authors.jsonl` beside
`ptf_v2.jsonl`, `benchmarks/results/ptf_report.md`): `prune_then_finetune` with the authors'
gradients and ranking (`grad_scale="batch_mean"`, progressive `ranking="authors"`: |score|
in one pool across kinds) against ours (`grad_scale="sample"`, signed scores ranked per
kind), same settings otherwise, horizon 96. PatchTST, ETTh1: the authors' first round
raised the validation loss (0.829 -> 0.837), so nothing was cut (100% kept, test MSE 0.4141,
the fine-tuned unpruned model); ours cut to 75% with the validation loss at 0.683 (test MSE
0.4401). TTM, ETTh1 (FFN only): ours cut nothing (0.3616), the authors' cut to 93% (0.3613).
The default stays ours: each pruned where the other did not, ours far more (25% against 7%),
the authors' lower test MSE comes from pruning nothing or is 0.1% on one seed, and the signed
score keeps the estimate's meaning (a unit whose removal is estimated to lower the loss goes
first, where |score| would keep it). On ETTm1 the authors' variant cut nothing in either model
(PatchTST 0.3285 where ours kept 80% at 0.3273; TTM: neither cuts).

Scores accumulate over calibration batches: summed (``ema=None``), or as an exponential
moving average with bias correction (``ema=β``: m ← β·m + (1-β)·s_batch, score =
m / (1-β^t) after t batches). The EMA state is carried across `calibrate` calls on the
same groups (the rounds of the progressive strategy), as the authors' code carries its
importance across pruning steps; a group whose unit count changed (a structured cut)
starts afresh, and `reset()` drops the state. The authors' recursion is the same with
their ``prune_ema`` = 1-β (their weight on the newest score) and the first score as the
initial state instead of a bias correction.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ..graph.masks import MaskSet
from .base import (Criterion, ScoreTable, WeightGroup, default_loss, forward_loss, register, site_channel_dim,
                   split_batch)


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


# ---------------------------------------------------------------------------------
# Where the samples are in a site's input
# ---------------------------------------------------------------------------------
@dataclass
class SampleLayout:
    """Which dim of a site input holds the samples, and how.

    `mode` is "outer" (index = sample * k + r: batch-first, `[B*C, ...]`), "inner"
    (index = r * B + sample: `[L, B, D]` has B alone on its dim, which is both) or
    "rows" (unknown: every index of `dim` counts as one sample, the fallback).
    """

    dim: int = 0
    mode: str = "rows"

    def per_sample(self, g: torch.Tensor, batch: int) -> torch.Tensor:
        """Row gradients [R, n] -> per-sample gradients [S, n]."""
        R = g.shape[0]
        if self.mode == "rows" or R % batch:
            return g
        k = R // batch
        if self.mode == "outer":
            return g.reshape(batch, k, -1).sum(1)
        return g.reshape(k, batch, -1).sum(0)


def _subset(inputs, idx: List[int], batch: int):
    """`inputs` with samples `idx` (of every tensor whose dim 0 is the batch)."""
    if isinstance(inputs, torch.Tensor):
        return inputs[idx] if inputs.dim() and inputs.shape[0] == batch else inputs
    if isinstance(inputs, dict):
        return {k: _subset(v, idx, batch) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_subset(v, idx, batch) for v in inputs)
    return inputs


def _leading_dims(x: torch.Tensor, site) -> List[int]:
    cdim = site_channel_dim(site) % x.dim()
    return [d for d in range(x.dim()) if d != cdim]


def probe_sample_layouts(model, inputs, batch: int, groups) -> Dict[int, List[SampleLayout]]:
    """Per group (by id), the `SampleLayout` of every call of its site in one forward.

    Two small forwards: batch 3 (no gradients) shows which dim of each site input grows
    with the batch; batch 2 with a zero leaf added to every site input shows, through two backward
    passes (of output sample 0 and of output sample 1), which rows feed which sample.
    Dependence is read backwards because some rows do not depend on the input at all
    (a decoder's learned queries) but still feed one sample's forecast.
    """
    from ..graph import _first_tensor, run_model

    from ..graph.masks import group_sites

    sites = {}
    for g in groups:
        for site, _ in group_sites(g):  # coupled groups: every layer's site
            sites.setdefault(id(site), (site, []))[1].append(g)
    records: Dict[int, list] = {}
    order: List[Tuple[int, int]] = []  # (site key, call) of every site call of the leaf run, in call order

    def recorder(key, leaf):
        def hook(module, args):
            x = args[0]
            if leaf:
                order.append((key, len(records.get(key, []))))
            if leaf:  # x + a zero leaf: its gradient is x's, and the path upstream stays intact
                z = torch.zeros_like(x, requires_grad=True)
                records.setdefault(key, []).append(z)
                return (x + z,) + tuple(args[1:])
            records.setdefault(key, []).append(x.shape)
        return hook

    def run(x, leaf):
        records.clear()
        order.clear()
        hooks = [site.register_forward_pre_hook(recorder(k, leaf)) for k, (site, _) in sites.items()]
        try:
            with torch.enable_grad() if leaf else torch.no_grad():
                out = _first_tensor(run_model(model, x))
        finally:
            for h in hooks:
                h.remove()
        return out, {k: list(v) for k, v in records.items()}

    two = [0, min(1, batch - 1)]
    _, grown = run(_subset(inputs, two + [0], batch), leaf=False)
    out, leaves = run(_subset(inputs, two, batch), leaf=True)
    feeds = {}  # (key, call) -> ([R] feeds sample 0, [R] feeds sample 1)
    flat = [(k, c, x) for k, xs in leaves.items() for c, x in enumerate(xs)]
    if out is not None and out.dim() >= 1 and out.shape[0] == 2 and out.requires_grad and flat:
        gen = torch.Generator().manual_seed(0)
        w = torch.rand(out.shape[1:], generator=gen, dtype=out.dtype).to(out.device) + 0.5
        for s in (0, 1):
            grads = torch.autograd.grad((out[s] * w).sum(), [x for _, _, x in flat], retain_graph=s == 0,
                                        allow_unused=True)
            for (k, c, x), gr in zip(flat, grads):
                feeds.setdefault((k, c), [None, None])[s] = gr
    by_call = {}
    for key, (site, _) in sites.items():
        shape3 = grown.get(key, [])
        for call, x in enumerate(leaves.get(key, [])):
            g0, g1 = feeds.get((key, call), (None, None))
            by_call[key, call] = _layout_of(x, shape3[call] if call < len(shape3) else None, g0, g1, site)
    # a group's layouts follow the order in which its sites are called (as MaskSet records them)
    result: Dict[int, List[SampleLayout]] = {}
    for g in groups:
        keys = {id(site) for site, _ in group_sites(g)}
        result[id(g)] = [by_call[kc] for kc in list(order) if kc[0] in keys]
    return result


def _layout_of(x, shape3, g0, g1, site) -> SampleLayout:
    """From the site input at batch 2, its shape at batch 3, and its gradients from output samples 0 and 1."""
    if shape3 is None or len(shape3) != x.dim():
        return SampleLayout()
    lead = _leading_dims(x, site)
    grow = [d for d in lead if shape3[d] != x.shape[d]]
    if len(grow) != 1:
        return SampleLayout()
    d = grow[0]
    R = x.shape[d]
    if R % 2 or shape3[d] != R // 2 * 3:
        return SampleLayout(d)

    def reached(g):
        if g is None:
            return torch.zeros(R, dtype=torch.bool)
        return g.detach().abs().movedim(d, 0).reshape(R, -1).amax(1) > 0

    r0, r1 = reached(g0), reached(g1)
    if (r0 & r1).any() or not (r0 | r1).any():
        return SampleLayout(d)  # rows that feed both samples (or none): no per-sample split
    k = R // 2
    idx = torch.arange(R)
    used = r0 | r1
    for mode, owner in (("outer", idx // k), ("inner", idx % 2)):
        if torch.equal(r1[used], (owner == 1)[used]):
            return SampleLayout(d, mode)
    return SampleLayout(d)


@register
class Taylor(Criterion):
    """Loss-guided importance (first- or second-order Taylor).

    Args:
        order: 1 for |Σ g·w|, 2 for Σ_samples (-g_s + g_s²/2) on unit masks.
        ema: None to sum over batches, or β in [0, 1) for a bias-corrected exponential
            moving average carried across `calibrate` calls on the same groups.
        micro_batch: run each calibration batch in slices of this many samples (less
            activation memory; same first-order scores; for order 2 on single weights each
            slice counts as one sample).
        grad_scale: "sample" (g_s is the gradient of sample s's own loss) or "batch_mean"
            (of the batch-mean loss, as the authors' code: 1/B of it).

    Example:
        >>> import compress
        >>> compress.criteria.get("taylor", order=2, ema=0.9)
        Taylor(order=2, ema=0.9, micro_batch=None, grad_scale='sample')
    """

    name = "taylor"
    requires_data = True

    def __init__(self, order: int = 1, ema: Optional[float] = None, micro_batch: Optional[int] = None,
                 grad_scale: str = "sample"):
        if order not in (1, 2):
            raise ValueError(f"taylor criterion supports order=1 or order=2, got {order!r}")
        if ema is not None and (isinstance(ema, bool) or not 0.0 <= ema < 1.0):
            raise ValueError(f"taylor ema must be in [0, 1) or None, got {ema!r}")
        if micro_batch is not None and (not isinstance(micro_batch, int) or micro_batch < 1):
            raise ValueError(f"taylor micro_batch must be a positive integer or None, got {micro_batch!r}")
        if grad_scale not in ("sample", "batch_mean"):
            raise ValueError(f"taylor grad_scale must be 'sample' or 'batch_mean', got {grad_scale!r}")
        self.order = order
        self.ema = ema
        self.micro_batch = micro_batch
        self.grad_scale = grad_scale
        self._scores = ScoreTable()
        self._state = ScoreTable()  # EMA: (m, t) per group, carried across calibrate calls

    def reset(self) -> "Taylor":
        """Forget the EMA state carried across `calibrate` calls."""
        self._state.clear()
        return self

    def calibrate(self, model, batches=None, *, groups=(), loss_fn: Optional[Callable] = None, masks=None):
        super().calibrate(model, batches, groups=groups, loss_fn=loss_fn, masks=masks)
        batches = list(batches)
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

        layouts: Dict[int, List[SampleLayout]] = {}
        if use_masks and batches:
            inputs, target = split_batch(batches[0])
            layouts = probe_sample_layouts(model, inputs, target.shape[0], units)
            self._warn_rows(units, layouts)
        hooks = []
        for p in params:
            p.grad = None
            p.requires_grad_(id(p) in readers)
            if id(p) in readers:
                hooks.append(p.register_post_accumulate_grad_hook(on_grad))
        # the gradients are taken with respect to the masks in use (the progressive strategy's
        # MaskSet, which is installed), or to a MaskSet of ones made for this calibration
        own = masks is None or not all(id(g) in masks.values for g in units)
        mask_set = MaskSet(units) if own else masks
        self._scores = ScoreTable()
        totals: Dict[int, torch.Tensor] = {}
        n_batches = 0
        try:
            for batch in batches:
                n_batches += 1
                batch_scores.clear()
                for chunk, weight in _chunks(batch, self.micro_batch, self.order):
                    with mask_set.tracking(layouts) if use_masks else contextlib.nullcontext():
                        loss = forward_loss(model, chunk, loss_fn) * weight
                    if not loss.requires_grad:
                        raise ValueError("the calibration loss does not depend on any prunable unit")
                    loss.backward()
                    if use_masks:
                        B = split_batch(chunk)[1].shape[0]
                        for g in units:
                            s = batch_scores.get(id(g), torch.zeros(g.n))
                            gs = self._per_sample(mask_set.records.get(id(g), []), B)
                            if gs is not None:
                                if self.grad_scale == "sample":
                                    gs = gs * B  # the loss is the batch mean: B·∂L/∂m_s = ∂ℓ_s/∂m_s
                                s = s + (-gs + gs.pow(2) / 2).sum(0)
                            batch_scores[id(g)] = s
                for g in groups:
                    s = batch_scores.get(id(g))
                    s = torch.zeros(g.n) if s is None else s
                    if self.ema is None:
                        totals[id(g)] = totals.get(id(g), 0) + s
                    else:
                        self._ema_step(g, s)
        finally:
            for h in hooks:
                h.remove()
            for p, r, gr in zip(params, requires, grads):
                p.requires_grad_(r)
                p.grad = gr
            model.train(was_training)
        if n_batches == 0:
            raise ValueError("calibration is empty: pass at least one (inputs, target) batch")
        for g in groups:
            if self.ema is None:
                s = totals[id(g)]
            else:
                m, t = self._state.get(g)
                s = m / (1.0 - self.ema ** t)
            self._scores.set(g, s.abs() if self.order == 1 else s)
        return self

    def _ema_step(self, g, s: torch.Tensor) -> None:
        m, t = self._state.get(g) or (torch.zeros(g.n), 0)
        self._state.set(g, (self.ema * m + (1.0 - self.ema) * s, t + 1))

    @staticmethod
    def _per_sample(masks: list, batch: int) -> Optional[torch.Tensor]:
        """Sum of the mask gradients of every call of a site, per sample -> [S, n]."""
        total = None
        for m, layout in masks:
            if m.grad is None:
                continue
            g = (layout or SampleLayout()).per_sample(m.grad.float().cpu(), batch)
            if total is not None and total.shape != g.shape:
                return None  # calls with different sample layouts cannot be added up
            total = g if total is None else total + g
        return total

    @staticmethod
    def _warn_rows(units, layouts) -> None:
        bad = [g.name for g in units if any(lay.mode == "rows" for lay in layouts.get(id(g), []))]
        if bad:
            warnings.warn(f"taylor order 2: could not tell which rows of the site input belong to which sample for "
                          f"{', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}; every row of its first varying "
                          "dimension is scored as one sample there", RuntimeWarning, stacklevel=3)

    def score(self, group) -> torch.Tensor:
        s = self._scores.get(group)
        if s is None:
            raise RuntimeError("taylor.score() for a group it was not calibrated on: call "
                               "calibrate(model, batches, groups=[...]) with this group first")
        return s.clone()
