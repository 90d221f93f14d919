"""FFN unit groups from torch-pruning's dependency graph.

A torch-pruning group rooted at a Linear/Conv1d whose out-channels reach only the
in-channels of other Linear/Conv1d layers (nothing on the residual stream: no norm, no
embedding, no head, no attention) is an FFN group: one producer (or a gated pair) and one
consumer, all with the same number of channels.

torch-pruning's grouping call (`get_pruning_group`) can spin for minutes on roots whose
out-channels reach the residual stream through some patterns (a circular-padded Conv1d,
series-decomposition padding): its index mappings grow on every visit. Two guards keep
that out of a build:

* a cheap walk along the traced graph first (`_reaches_stream`): a root whose output
  reaches a norm, an attention module, a parameter or the model output through
  element-wise ops only is on the residual stream, and torch-pruning's group would
  contain that node anyway, so it is rejected without calling `get_pruning_group`;
* every remaining grouping call runs under its own time budget; a root that exceeds it
  is reported back (`slow`) and treated as not prunable, so the rest of the model still
  prunes.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Set, Tuple

import torch_pruning as tp
from torch import nn

from .timelimit import TimeLimitExceeded, time_limit
from .units import UnitGroup

__all__ = ["find_ffn_groups"]

_OP = tp.ops.OPTYPE
# node types that carry channels unchanged from input to output in torch-pruning's view
_PASS = {_OP.ELEMENTWISE}
# node types whose channels are the residual stream (or the model output): never an FFN
_STREAM = {_OP.LN, _OP.BN, _OP.GN, _OP.IN, _OP.OUTPUT, _OP.CUSTOMIZED, _OP.EMBED, _OP.PARAMETER, _OP.MHA,
           _OP.LSTM, _OP.PRELU, _OP.DEPTHWISE_CONV}


def find_ffn_groups(dg: tp.DependencyGraph, names: Dict[nn.Module, str], protected_ids: Set[int], *,
                    root_time_limit_s: Optional[float] = None,
                    log: Callable[[str], None] = lambda msg: None
                    ) -> Tuple[List[UnitGroup], List[str], Dict[str, str]]:
    """The FFN groups of a traced model (modules in `protected_ids` are never part of one).

    Args:
        dg: torch-pruning's dependency graph of the model.
        names: module -> qualified name.
        protected_ids: ids of modules that must stay dense.
        root_time_limit_s: budget of each grouping call; a root that exceeds it is skipped.
        log: where to report skipped roots.

    Returns:
        (groups, slow, failed): the FFN groups, the names of the roots whose grouping call
        ran past its budget, and {name: why} of roots torch-pruning failed to group or whose
        channels pass a concat / split before the consumer (all not prunable; the rest of the
        model is unaffected).
    """
    groups: List[UnitGroup] = []
    slow: List[str] = []
    failed: Dict[str, str] = {}
    roots = [m for m in dg.module2node if isinstance(m, (nn.Linear, nn.Conv1d)) and id(m) not in protected_ids]
    grouped = set()
    for m in roots:
        if id(m) in grouped or (isinstance(m, nn.Conv1d) and m.groups != 1):
            continue
        if _reaches_stream(dg, m, protected_ids):
            continue  # certainly on the residual stream: no need to ask torch-pruning
        pruner = dg.get_pruner_of_module(m)
        name = names.get(m, type(m).__name__)
        try:
            with time_limit(root_time_limit_s, f"grouping the out-channels of {name}"):
                group = dg.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
        except TimeLimitExceeded as e:
            if e.what != f"grouping the out-channels of {name}":
                raise  # an outer limit (the whole build) ran out: not this root's budget
            slow.append(name)
            log(f"grouping {name} took longer than {root_time_limit_s:.3g}s: treated as not prunable")
            continue
        except Exception as e:  # noqa: BLE001 - torch-pruning's index mapping (cat/split) failed on this root
            failed[name] = f"torch-pruning could not group its out-channels ({type(e).__name__}: {e})"
            log(f"{name}: {failed[name]}; treated as not prunable")
            continue
        outs, ins, ok = [m], [], True
        for dep, _ in group:
            t = dep.target.module
            if t is m:
                continue
            if isinstance(t, (nn.Linear, nn.Conv1d)):
                if id(t) in protected_ids or (isinstance(t, nn.Conv1d) and t.groups != 1):
                    ok = False
                (ins if dg.is_in_channel_pruning_fn(dep.handler) else outs).append(t)
            elif isinstance(t, tp.ops._OutputOp) or not _is_op(t):
                ok = False  # norm, embedding, attention, a parameter, the output: the residual stream
        outs = list({id(o): o for o in outs}.values())
        ins = list({id(i): i for i in ins}.values())
        grouped.update(id(o) for o in outs)
        # one producer, or a gated pair (GLU: act(x W0) * (x W1)) that share a parent and
        # an input; three or more coupled producers are attention-like: not an FFN
        gated = len(outs) == 2 and _parent(names, outs[0]) == _parent(names, outs[1]) and \
            _in_width(outs[0]) == _in_width(outs[1])
        if not ok or len(ins) != 1 or not (len(outs) == 1 or gated):
            continue  # fan-out FFNs (several consumers) are left alone too
        n = _out_width(m)
        # torch-pruning maps channels one to one through ops it does not know (F.glu halves
        # the width, a reshape folds it): such a "group" would cut the wrong channels
        if any(_out_width(o) != n for o in outs) or _in_width(ins[0]) != n:
            failed[name] = (f"{n} producer channels but {_in_width(ins[0])} consumer channels "
                            f"({names.get(ins[0], '?')}): they pass a concat, split or reshape in between "
                            "(a fused GLU's chunk(2), cat([side, fc1(x)])), not one FFN group; left unpruned")
            log(f"{name}: {failed[name]}")
            continue
        groups.append(UnitGroup(names.get(m, "?") + ".ffn", "ffn", n, ins[0], 1, dg_out=outs, dg_in=ins))
    return groups, slow, failed


def _reaches_stream(dg: tp.DependencyGraph, root: nn.Module, protected_ids: Set[int]) -> bool:
    """True if `root`'s out-channels reach a residual-stream node through element-wise ops only.

    Such a node is in torch-pruning's group of `root` (element-wise ops pass every channel
    on), so the group is no FFN; walking the traced graph costs microseconds where the
    grouping call can spin. Anything else (a reshape, cat, split...) is left undecided.
    """
    stack, seen = list(dg.module2node[root].outputs), set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        mod = node.module
        if isinstance(mod, (nn.Linear, nn.Conv1d)) and node.type in (_OP.LINEAR, _OP.CONV):
            if id(mod) in protected_ids:
                return True  # the head or embedding reads it
            continue  # a consumer: its in-channels end the walk
        if node.type in _STREAM or isinstance(mod, nn.Module) and not _is_op(mod):
            return True
        if node.type in _PASS:
            stack.extend(node.outputs)
    return False


def _parent(names: Dict[nn.Module, str], m: nn.Module) -> str:
    return names.get(m, "").rpartition(".")[0]


def _in_width(m: nn.Module) -> int:
    return m.in_channels if isinstance(m, nn.Conv1d) else m.in_features


def _out_width(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.Conv1d) else m.out_features


def _is_op(t) -> bool:
    return type(t).__module__.startswith("torch_pruning")
