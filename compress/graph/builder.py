"""`build`: trace a model and collect its FFN and attention-head unit groups.

torch-pruning's `DependencyGraph` does the tracing; every recognised attention module is
registered as one opaque node (its inside is never split into channel groups), FFN groups
are read from the graph (`ffn.py`), and the graph itself is dropped (see `PruningGraph`).
Graph building runs under a time limit (it can spin for minutes on some attention code),
and a model that fails to run is reported with the module that raised and what to do.
"""
from __future__ import annotations

import time
import warnings
from typing import Iterable, List, Optional, Sequence

import torch
import torch_pruning as tp
from torch import nn

from .attention import AttentionSpec, _attr_fix, recognize
from .errors import GraphBuildError
from .kinds import FindContext, available_kinds, get_kind
from .memory import release_memory
from .mha import swap_torch_mha
from .surgery import PruningGraph
from .timelimit import time_limit
from .tracing import (_OpaqueAttentionPruner, _first_tensor, _module_names, _opaque_output, _unwrapped_parameters,
                      infer_protected, module_trail, run_model)
from .units import UnitGroup

__all__ = ["build"]


def build(model: nn.Module, example_inputs, *, ignore: Iterable = (), heads: Optional[dict] = None,
          protected: Optional[Sequence[nn.Module]] = None, prune_heads: bool = True,
          time_limit_s: float = 120.0, verbose: bool = False, units: Optional[Sequence[str]] = None,
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
            kind that is found by default, less "heads" unless `prune_heads`.
        hooks: the model's `PruningHooks` (handed to each kind's `find`).
        time_limit_s: abort graph building after this many seconds.
    """
    t0 = time.perf_counter()
    # tracing keeps every activation for a backward pass: two samples show the same graph
    if isinstance(example_inputs, torch.Tensor) and example_inputs.dim() > 1 and example_inputs.shape[0] > 2:
        example_inputs = example_inputs[:2]
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
        units = [k for k in available_kinds(default_only=True) if k != "heads" or prune_heads]
    units = [get_kind(k).name for k in units]  # unknown names fail here, clearly
    swapped: list = []
    if "heads" in units:
        swap_torch_mha(model, swapped)
        names = _module_names(model)
    ignored_ids = {id(m) for m in ignored}
    specs: List[AttentionSpec] = []
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
                                  "projections were recognised in it; register a recogniser with "
                                  "compress.graph.register_attention or use a model adapter")
    # nested specs (an attention inside another recognised attention): keep outermost
    inner = {id(sub) for s in specs for sub in s.module.modules() if sub is not s.module}
    specs = [s for s in specs if id(s.module) not in inner]

    opaque = _OpaqueAttentionPruner({id(s.module): s for s in specs})
    customized = {type(s.module): opaque for s in specs}
    dg = tp.DependencyGraph()
    was_training = model.training
    requires = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(True)  # the tracer follows autograd: frozen weights are invisible
    # registered before torch-pruning's own hooks, so they see the opaque output
    opaque_hooks = [s.module.register_forward_hook(_opaque_output, with_kwargs=True) for s in specs]
    try:
        with module_trail(model) as trail, time_limit(
                time_limit_s, f"building the dependency graph of {type(model).__name__} took longer than "
                              f"{time_limit_s or 0:g}s; exclude the slow part with ignore=[...], give head counts "
                              "with heads={...}, or use a compress.models adapter"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                dg.build_dependency(
                    model, example_inputs=example_inputs,
                    forward_fn=lambda m, x: run_model(m, x),
                    output_transform=_first_tensor,
                    customized_pruners=customized,
                    unwrapped_parameters=_unwrapped_parameters(model, specs),
                    ignored_layers=None, verbose=verbose)
            except GraphBuildError:
                raise
            except Exception as e:  # name the module that failed
                if not trail:  # the forward ran: torch-pruning's grouping itself failed
                    raise GraphBuildError(
                        f"torch-pruning could not group the traced graph of {type(model).__name__} "
                        f"({type(e).__name__}: {e}); exclude the offending modules with ignore=[...], or load the "
                        "model through a compress.models adapter that registers its attention") from e
                where = trail[-1]
                raise GraphBuildError(
                    f"could not trace {type(model).__name__}: module {where!r} raised "
                    f"{type(e).__name__}: {e}. Exclude it with ignore=[{where!r}], give its head count "
                    f"with heads={{{where!r}: n}}, or load the model through a compress.models adapter") from e
    finally:
        for h in opaque_hooks:
            h.remove()
        for p, r in requires.items():
            p.requires_grad_(r)
        model.train(was_training)

    if protected is None:
        protected = infer_protected(model, dg)
    protected_ids = {id(m) for m in protected} | ignored_ids
    for m in list(protected) + ignored:
        protected_ids.update(id(sub) for sub in m.modules())

    names = _module_names(model)
    ctx = FindContext(model, names, dg, specs, protected_ids, hooks)
    groups: List[UnitGroup] = []
    for kind in units:
        groups += get_kind(kind).find(ctx)
    ctx.dg = None
    del dg  # see PruningGraph
    release_memory(model)
    return PruningGraph(model, groups, specs, list(protected), time.perf_counter() - t0, swapped)

