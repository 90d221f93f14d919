"""`build`: trace a model and collect its FFN and attention-head unit groups.

torch-pruning's `DependencyGraph` does the tracing; every recognised attention module is
registered as one opaque node (its inside is never split into channel groups), FFN groups
are read from the graph (`ffn.py`), and the graph itself is dropped (see `PruningGraph`).
The whole build - tracing and grouping - runs under one time limit, and every grouping
call under its own budget (a slow root is listed and skipped, the rest still prunes).
A model that fails to trace is reported with the innermost module that raised and a fix
that works for that case. While tracing, the engine also looks for what it cannot cut
correctly and says so: attention-like modules it does not recognise (FFN only there),
and per-head state that crosses layers (residual attention), whose layers are then
coupled so that the same heads go in all of them.
"""
from __future__ import annotations

import time
import warnings
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
import torch_pruning as tp
from torch import nn

from .attention import AttentionSpec, _attr_fix, recognize, unrecognised_reason
from .errors import GraphBuildError
from .kinds import FindContext, available_kinds, get_kind
from .memory import release_memory
from .mha import swap_torch_mha
from .surgery import PruningGraph
from .timelimit import TimeLimitExceeded, time_limit
from .tracing import (TraceRecord, _OpaqueAttentionPruner, _first_tensor, _module_names, _unwrapped_parameters,
                      infer_protected, module_trail, opaque_hook, run_model)
from .units import UnitGroup

__all__ = ["build", "trace_protected"]

def build(model: nn.Module, example_inputs, *, ignore: Iterable = (), heads: Optional[dict] = None,
          protected: Optional[Sequence[nn.Module]] = None, prune_heads: bool = True,
          time_limit_s: float = 120.0, root_time_limit_s: Optional[float] = None, verbose: bool = False,
          log: Optional[Callable[[str], None]] = None, units: Optional[Sequence[str]] = None,
          hooks=None) -> PruningGraph:
    """Trace `model` and collect its FFN and attention-head unit groups.

    Args:
        model: the model (it is modified only by swapping `nn.MultiheadAttention` for the
            equivalent prunable module when `prune_heads`).
        example_inputs: inputs for one forward (Tensor, tuple or dict).
        ignore: modules (or their qualified names) never to prune.
        heads: `{module_or_name: n_heads}` for attention modules whose head count is not
            an attribute the engine knows, or `{module_or_name: "attr"}` naming the
            attribute that holds it (it is then updated after pruning).
        protected: modules left dense (input embedding, head); inferred if None.
        prune_heads: find attention-head groups (and swap `nn.MultiheadAttention`).
        units: the unit kinds to find (`compress.graph.available_kinds()`); None: every
            kind that is found by default, less the attention kinds ("heads") unless `prune_heads`.
        hooks: the model's `PruningHooks` (handed to each kind's `find`).
        time_limit_s: the limit of the whole build (tracing and grouping).
        root_time_limit_s: the budget of each grouping call (default: a quarter of
            `time_limit_s`, at most 10 s); a root past it is listed in `slow_roots`.
        verbose: print torch-pruning's progress.
        log: where progress notes go (default: nowhere).

    Example:
        >>> import torch, compress
        >>> layer = torch.nn.TransformerEncoderLayer(16, 4, 32, batch_first=True)
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 16), layer, torch.nn.Linear(16, 3))
        >>> pg = compress.graph.build(model, torch.randn(2, 8, 3))
        >>> sorted(g.kind for g in pg.groups)
        ['ffn', 'heads']
    """
    log = log or (lambda msg: None)
    if root_time_limit_s is None and time_limit_s:
        root_time_limit_s = min(10.0, time_limit_s / 4)
    message = (f"building the dependency graph of {type(model).__name__} took longer than {time_limit_s:.3g}s "
               "(time_limit_s); prune FFN only with units=('ffn',), give head counts with heads={...}, "
               "use a compress.models adapter, or raise time_limit_s")
    with time_limit(time_limit_s, "graph build", message):
        return _build(model, example_inputs, ignore, heads, protected, prune_heads, time_limit_s,
                      root_time_limit_s, verbose, log, units, hooks)


def _build(model, example_inputs, ignore, heads, protected, prune_heads, time_limit_s, root_time_limit_s,
           verbose, log, units, hooks) -> PruningGraph:
    t0 = time.perf_counter()
    example_inputs = _two_samples(example_inputs)
    names = _module_names(model)
    by_name = {n: m for m, n in names.items()}

    def resolve(x):
        if isinstance(x, str):
            if x not in by_name:
                raise ValueError(f"ignore/heads names unknown module {x!r}")
            return by_name[x]
        return x

    ignored = [resolve(x) for x in ignore]
    hints, head_attr = {}, {}
    for k, v in (heads or {}).items():
        m = resolve(k)
        if isinstance(v, str):  # the name of the attribute that holds the head count
            if not isinstance(getattr(m, v, None), int):
                raise ValueError(f"heads= names attribute {v!r} of {type(m).__name__}, which holds no integer")
            head_attr[m], v = v, getattr(m, v)
        hints[m] = int(v)

    by_name.clear()  # it holds modules the MHA swap replaces: let them go
    if units is None:
        units = [k for k in available_kinds(default_only=True) if prune_heads or not get_kind(k).attention]
    units = [get_kind(k).name for k in units]  # unknown names fail here, clearly
    wants_attention = any(get_kind(k).attention for k in units)  # head kinds need the recognised attention
    swapped: list = []
    if wants_attention:
        swap_torch_mha(model, swapped)
        names = _module_names(model)
    ignored_ids = {id(m) for m in ignored}
    specs: List[AttentionSpec] = []
    if wants_attention:
        for m in model.modules():
            if id(m) in ignored_ids:
                continue
            spec = recognize(m, hints.get(m))
            if spec is not None:
                if m in head_attr:
                    spec.fix = _attr_fix(head_attr[m])
                specs.append(spec)
            elif m in hints:
                raise GraphBuildError(f"heads= names {names.get(m)} ({type(m).__name__}) but no q/k/v/output "
                                      f"projections were recognised in it ({unrecognised_reason(m, hints[m])}); "
                                      "register a recogniser with compress.graph.register_attention or use a "
                                      "model adapter")
        # nested specs (an attention inside another recognised attention): keep outermost
        inner = {id(sub) for s in specs for sub in s.module.modules() if sub is not s.module}
        specs = [s for s in specs if id(s.module) not in inner]
        _warn_unrecognised(model, specs, ignored_ids, hints, names)

    record = TraceRecord()
    try:
        dg = _trace(model, example_inputs, specs, verbose, record, names)
    except _TraceFailure as e:
        raise GraphBuildError(e.explain(_traces_without(model, example_inputs, verbose, names) if specs else False)) \
            from e.__cause__

    if protected is None:
        protected = infer_protected(model, dg)
    protected_ids = {id(m) for m in protected} | ignored_ids
    for m in list(protected) + ignored:
        protected_ids.update(id(sub) for sub in m.modules())

    names = _module_names(model)
    ctx = FindContext(model, names, dg, specs, protected_ids, hooks, record=record,
                      root_time_limit_s=root_time_limit_s, log=log)
    groups: List[UnitGroup] = []
    for kind in units:
        groups += get_kind(kind).find(ctx)
    ctx.dg = ctx.record = None
    del record
    slow, not_prunable = ctx.slow_roots, ctx.not_prunable
    if slow:
        warnings.warn(f"{len(slow)} layer(s) of {type(model).__name__} could not be grouped within "
                      f"{root_time_limit_s:.3g}s each and are left unpruned: {', '.join(slow)}", stacklevel=3)
    failed = {k: v for k, v in not_prunable.items() if "torch-pruning could not group" in v}
    if failed:
        warnings.warn(f"torch-pruning could not group {len(failed)} layer(s) of {type(model).__name__}, left "
                      "unpruned: " + "; ".join(f"{k}: {v}" for k, v in failed.items()), stacklevel=3)
    del dg  # see PruningGraph
    release_memory(model)
    return PruningGraph(model, groups, specs, list(protected), time.perf_counter() - t0, swapped,
                        slow_roots=slow, not_prunable=not_prunable)


def trace_protected(model: nn.Module, example_inputs, *, ignore: Iterable = (), time_limit_s: float = 120.0,
                    verbose: bool = False) -> List[nn.Module]:
    """The input embeddings and forecasting heads of `model`, from one trace (no grouping).

    Unstructured pruning needs only these; it never pays for (or hangs in) the grouping.

    Example:
        >>> import torch, compress
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> [type(m).__name__ for m in compress.graph.trace_protected(model, torch.randn(2, 3))]
        ['Linear', 'Linear']
    """
    message = (f"tracing {type(model).__name__} took longer than {time_limit_s:.3g}s (time_limit_s); "
               "raise time_limit_s or use a compress.models adapter that names its embedding and head")
    with time_limit(time_limit_s, "graph build", message):
        dg = _trace(model, _two_samples(example_inputs), [], verbose, None, _module_names(model))
        protected = infer_protected(model, dg)
    del dg
    return protected


def _two_samples(example_inputs):
    # tracing keeps every activation for a backward pass: two samples show the same graph
    if isinstance(example_inputs, torch.Tensor) and example_inputs.dim() > 1 and example_inputs.shape[0] > 2:
        return example_inputs[:2]
    return example_inputs


def _trace(model: nn.Module, example_inputs, specs: List[AttentionSpec], verbose: bool,
           record: Optional[TraceRecord], names: Dict[nn.Module, str]) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of `model`, recognised attention kept opaque."""
    opaque = _OpaqueAttentionPruner({id(s.module): s for s in specs})
    customized = {type(s.module): opaque for s in specs}
    dg = tp.DependencyGraph()
    was_training = model.training
    requires = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(True)  # the tracer follows autograd: frozen weights are invisible
    # registered before torch-pruning's own hooks, so they see the opaque output
    hooks = [s.module.register_forward_hook(opaque_hook(s, record), with_kwargs=True) for s in specs]
    spec_of = {id(sub): s for s in specs for sub in s.module.modules()}
    try:
        with module_trail(model) as trail, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                dg.build_dependency(
                    model, example_inputs=example_inputs,
                    forward_fn=lambda m, x: run_model(m, x),
                    output_transform=_first_tensor,
                    customized_pruners=customized,
                    unwrapped_parameters=_unwrapped_parameters(model, specs),
                    ignored_layers=None, verbose=verbose)
            except (GraphBuildError, TimeLimitExceeded):
                raise
            except Exception as e:  # name the innermost module that failed, and what helps
                raise _TraceFailure(model, e, list(trail), names, spec_of) from e
    finally:
        for h in hooks:
            h.remove()
        for p, r in requires.items():
            p.requires_grad_(r)
        model.train(was_training)
    return dg


def _traces_without(model, example_inputs, verbose, names) -> bool:
    """True if `model` traces when no attention module is kept opaque (FFN-only pruning)."""
    try:
        del_dg = _trace(model, example_inputs, [], verbose, None, names)
    except (_TraceFailure, GraphBuildError):
        return False
    del del_dg
    return True


class _TraceFailure(GraphBuildError):
    """Tracing failed; `explain` turns it into the message with the fix that works."""

    def __init__(self, model, e, trail, names, spec_of):
        super().__init__(f"{type(e).__name__}: {e}")
        self.cls, self.err, self.trail = type(model).__name__, f"{type(e).__name__}: {e}", trail
        by_name = {n: m for m, n in names.items()}
        self.where = trail[-1] if trail else None
        mod = by_name.get(self.where)
        self.where_cls = type(mod).__name__ if mod is not None else "?"
        inside = next((spec_of[id(by_name[n])] for n in reversed(trail) if n in by_name and id(by_name[n]) in spec_of),
                      None)
        self.inside = names.get(inside.module, "?") if inside is not None else None

    def explain(self, ffn_only_traces: bool) -> str:
        if self.where is None:  # the forward ran: torch-pruning's graph construction itself failed
            text = (f"torch-pruning could not build the dependency graph of {self.cls} after a successful forward "
                    f"({self.err}). ignore= cannot help here: it does not change what is traced. ")
        else:
            text = (f"could not trace {self.cls}: module {self.where!r} ({self.where_cls}) raised {self.err}. "
                    "ignore= cannot help here: it does not change what is traced. ")
            if self.inside is not None and self.inside != self.where:
                text += f"It runs inside the attention module {self.inside!r}. "
        if ffn_only_traces:
            return text + ("The model traces when its attention modules are not kept opaque: prune FFN only with "
                           "units=('ffn',), or describe the attention class with compress.graph.register_attention")
        return text + ("Tracing needs a forward pass with gradients on every weight, which this code does not "
                       "support: prune with strategy='unstructured' (it falls back to protecting the first and last "
                       "layers), or load the model through a compress.models adapter")


def _warn_unrecognised(model, specs, ignored_ids, hints, names) -> None:
    """Warn about attention-like modules whose heads the engine will not cut."""
    covered = {id(sub) for s in specs for sub in s.module.modules()}
    parents = {id(p) for s in specs for p in model.modules() if any(c is s.module for c in p.modules())}
    for name, m in model.named_modules():
        if id(m) in covered or id(m) in parents or id(m) in ignored_ids:
            continue
        reason = unrecognised_reason(m, hints.get(m))
        if reason is not None and not any(id(c) in covered for c in m.modules()):
            warnings.warn(f"attention module {name!r} ({type(m).__name__}) not recognised ({reason}): "
                          "FFN only there; describe it with compress.graph.register_attention to cut its heads",
                          stacklevel=4)
