"""The forward check after every cut: a pruned model is run before it is returned.

A cut is right when the pruned model computes what the original computes with the
removed units masked (zeroed at the group's site: the input of the down / output
projection). `cut_checked` cuts a plan of unit groups and verifies exactly that on the
example inputs: the same output structure, the same shapes, the same values (to float
rounding). When the whole plan fails it retries group by group; for an attention module
whose forward breaks it also updates the common width attributes (`embed_dim`,
`hidden_size`, ...) that still hold the old inner width; a group that still fails is
restored exactly as it was (`Snapshot`) and reported with the innermost module that
raised and the attributes that were tried. The result is never a model that fails to
run or computes something that is no sub-network of the original.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .kinds import get_kind
from .outputs import flatten
from .tracing import _module_names, module_trail, run_model
from .units import UnitGroup

__all__ = ["cut_checked", "CutReport", "Snapshot", "compare_outputs", "group_records", "not_prunable_summary"]

#: attributes that may hold the inner width (heads x head_dim) of an attention module and
#: are updated when they still equal the old inner width after a cut breaks the forward
WIDTH_ATTRS = ("embed_dim", "hidden_size", "all_head_size", "inner_dim", "inner_size", "proj_dim", "d_model",
               "model_dim", "hidden_dim", "dim", "d_inner", "attn_dim", "total_dim", "out_dim", "kv_dim",
               "value_dim", "qk_dim")


class Snapshot:
    """The state of some modules, restorable in place (module identities are kept).

    torch-pruning's pruning functions replace parameters by new tensors, and the head fix-up
    sets integer attributes, so a shallow copy of each module's `__dict__` (with its own
    parameter and buffer dicts) is an exact, memory-free snapshot.
    """

    def __init__(self, modules: Sequence[nn.Module], extra: Sequence[object] = ()):
        self._saved = []
        for m in list(modules) + list(extra):
            state = {k: v for k, v in vars(m).items() if k != "_modules"}
            for k in ("_parameters", "_buffers"):
                if k in state:
                    state[k] = dict(state[k])
            self._saved.append((m, state))
            cfg = getattr(m, "config", None)
            if cfg is not None and hasattr(cfg, "__dict__") and not isinstance(cfg, nn.Module):
                self._saved.append((cfg, dict(vars(cfg))))

    def restore(self) -> None:
        for obj, state in self._saved:
            vars(obj).update({k: (dict(v) if k in ("_parameters", "_buffers") else v) for k, v in state.items()})


def touched(group: UnitGroup) -> Tuple[List[nn.Module], List[object]]:
    """(modules, other objects) whose state a cut of `group` changes (its kind's `touched`)."""
    mods, extra = get_kind(group.kind).touched(group)
    return list({id(m): m for m in mods}.values()), extra


@dataclass
class CutReport:
    """What `cut_checked` did: per group name, the units removed, or why it was not cut."""

    removed: Dict[str, List[int]] = field(default_factory=dict)
    failed: Dict[str, str] = field(default_factory=dict)
    fixed_attrs: Dict[str, List[str]] = field(default_factory=dict)


def compare_outputs(ref, out, rtol: float = 1e-4) -> Optional[str]:
    """None if `out` matches `ref` (structure, shapes, values to `rtol` of the largest value)."""
    a, _ = flatten(ref)
    b, _ = flatten(out)
    ta = [x for x in a if isinstance(x, torch.Tensor)]
    tb = [x for x in b if isinstance(x, torch.Tensor)]
    if len(ta) != len(tb):
        return f"the output holds {len(tb)} tensors instead of {len(ta)}"
    for i, (x, y) in enumerate(zip(ta, tb)):
        if x.shape != y.shape:
            return f"output tensor {i} is shaped {tuple(y.shape)} instead of {tuple(x.shape)}"
        if not x.is_floating_point():
            if not torch.equal(x, y):
                return f"output tensor {i} differs"
            continue
        fx, fy = torch.isfinite(x), torch.isfinite(y)
        if not torch.equal(fx, fy):
            return f"output tensor {i} has non-finite values where the original has none"
        if fx.any():
            scale = float(x[fx].abs().max()) if fx.any() else 1.0
            err = float((x[fx].float() - y[fx].float()).abs().max())
            if err > rtol * max(scale, 1e-6) + 1e-7:
                return (f"output tensor {i} differs from the original with the removed units masked "
                        f"(max abs difference {err:.3g} at scale {scale:.3g})")
    return None


class _Runner:
    """Runs a model deterministically (eval mode, no grad, a fixed seed) and names failures."""

    def __init__(self, model: nn.Module, inputs):
        self.model, self.inputs = model, inputs

    def __call__(self, masks: Optional[Dict[int, Tuple[UnitGroup, List[int]]]] = None):
        """(output, None) or (None, "module 'x' raised ...")."""
        hooks = []
        for g, idxs in (masks or {}).values():
            for site, width in g.sites():
                hooks.append(site.register_forward_pre_hook(_zero_units(site, width, idxs)))
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]), module_trail(self.model) as trail:
                torch.manual_seed(0)  # sampling attention (ProbSparse) draws the same keys every run
                try:
                    return run_model(self.model, self.inputs), None
                except Exception as e:  # noqa: BLE001 - any failure of the pruned model is reported
                    where = trail[-1] if trail else type(self.model).__name__
                    return None, f"module {where!r} raised {type(e).__name__}: {e}"
        finally:
            self.model.train(was)
            for h in hooks:
                h.remove()


def _zero_units(site: nn.Module, width: int, idxs: Sequence[int]):
    from .masks import site_channel_dim

    def hook(module, args):
        x = args[0]
        cdim = site_channel_dim(module) % x.dim()
        keep = torch.ones(x.shape[cdim], dtype=x.dtype, device=x.device)
        for i in idxs:
            keep[i * width:(i + 1) * width] = 0
        shape = [1] * x.dim()
        shape[cdim] = -1
        return (x * keep.view(shape),) + tuple(args[1:])
    return hook


def update_width_attrs(group: UnitGroup, old_inner: Dict[int, int]) -> List[str]:
    """Set the width attributes (`WIDTH_ATTRS`) of `group`'s attention modules that still hold
    the old inner width (`old_inner`: per spec id); return their names (the heads' `repair`)."""
    changed = []
    for spec in group.specs():
        new_inner = spec.v.out_features
        for m in spec.module.modules():
            for name in WIDTH_ATTRS:
                val = vars(m).get(name)
                if isinstance(val, int) and not isinstance(val, bool) and val == old_inner[id(spec)] != new_inner:
                    setattr(m, name, new_inner)
                    changed.append(f"{type(m).__name__}.{name}")
    return changed


def cut_checked(prune_group: Callable[[UnitGroup, Sequence[int]], None], model: nn.Module, example_inputs,
                plan: Sequence[Tuple[UnitGroup, Sequence[int]]], *, log: Callable[[str], None] = lambda m: None,
                rtol: float = 1e-4) -> CutReport:
    """Cut `plan` ([(group, unit indices)]) out of `model`, checking the result by a forward pass.

    Args:
        prune_group: the physical cut (`PruningGraph.prune_group`).
        model: the model being pruned (in place).
        example_inputs: inputs for the forward check.
        plan: the groups to cut and the units to remove from each.
        log: where to report retries and failures.
        rtol: tolerance of the value comparison, relative to the largest output value.

    Returns:
        A `CutReport`; groups in `failed` were restored to their state before the call.
    """
    plan = [(g, sorted(set(int(i) for i in idxs))) for g, idxs in plan if len(idxs)]
    report = CutReport()
    if not plan:
        return report
    run = _Runner(model, example_inputs)
    names = _module_names(model)
    ref, err = run({id(g): (g, idxs) for g, idxs in plan})
    if err is not None:
        raise RuntimeError(f"the model fails to run on the example inputs before any cut: {err}")
    snaps = [Snapshot(*touched(g)) for g, _ in plan]
    for g, idxs in plan:
        prune_group(g, idxs)
    out, err = run()
    problem = err or compare_outputs(ref, out, rtol)
    if problem is None:
        report.removed.update({g.name: idxs for g, idxs in plan})
        return report
    log(f"the pruned model failed the forward check ({problem}); cutting group by group")
    for s in reversed(snaps):
        s.restore()
    for g, idxs in plan:
        ref, err = run({id(g): (g, idxs)})
        if err is not None:  # cannot happen: every accepted cut passed this check
            raise RuntimeError(f"the model stopped running after accepted cuts: {err}")
        kind = get_kind(g.kind)
        snap = Snapshot(*touched(g))
        state = kind.cut_state(g)
        prune_group(g, idxs)
        out, err = run()
        problem = err or compare_outputs(ref, out, rtol)
        tried: List[str] = []
        if problem is not None:
            tried = kind.repair(g, state)
            if tried:
                out, err2 = run()
                p2 = err2 or compare_outputs(ref, out, rtol)
                if p2 is None:
                    report.fixed_attrs[g.name] = tried
                    log(f"{g.name}: updated {', '.join(tried)} to the new inner width")
                problem = p2
        if problem is None:
            report.removed[g.name] = idxs
            continue
        snap.restore()
        report.failed[g.name] = kind.explain_failure(g, problem, tried, names)
        log(report.failed[g.name])
    return report


def finite_outputs(out) -> bool:
    return all(torch.isfinite(t).all() for t in flatten(out)[0] if isinstance(t, torch.Tensor) and t.is_floating_point())


def group_records(model: nn.Module, groups: Sequence[UnitGroup], original: Dict[int, int],
                  removed: Dict[str, List[int]]) -> dict:
    """The `compress_pruning` entry of each group: sizes, the original indices removed, the sites."""
    names = _module_names(model)
    out = {}
    for g in groups:
        sites = [names.get(site, "?") for site, _ in g.sites()]
        rec = {"kind": g.kind, "before": original[id(g)], "after": g.n, "site": sites[0], "sites": sites,
               "width": g.width, "removed": sorted(removed.get(g.name, []))}
        if g.coupled:
            rec["coupled"] = [names.get(s.module, "?") for s in g.specs()]
        out[g.name] = rec
    return out


def not_prunable_summary(pg, model: nn.Module) -> dict:
    """`{"not_prunable": {name: why}}` for the record: slow roots and cuts that were undone."""
    return {"not_prunable": dict(pg.not_prunable)}
