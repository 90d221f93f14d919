"""FFN unit groups from torch-pruning's dependency graph.

A torch-pruning group rooted at a Linear/Conv1d whose out-channels reach only the
in-channels of other Linear/Conv1d layers (nothing on the residual stream: no norm, no
embedding, no head, no attention) is an FFN group: one producer (or a gated pair) and one
consumer, all of the group's width. Groups whose channels pass a concat or split between
producer and consumer (a fused GLU's `chunk(2)`, `cat([side, fc1(x)])`) are left out:
torch-pruning maps indices through those ops, but `prune_group` cuts the same indices on
every member, which is only right when every member's width is the unit count.
"""
from __future__ import annotations

from typing import Dict, List, Set

import torch_pruning as tp
from torch import nn

from .units import UnitGroup

__all__ = ["find_ffn_groups"]


def find_ffn_groups(dg: tp.DependencyGraph, names: Dict[nn.Module, str], protected_ids: Set[int]) -> List[UnitGroup]:
    """The FFN groups of a traced model (modules in `protected_ids` are never part of one)."""
    groups: List[UnitGroup] = []
    roots = [m for m in dg.module2node if isinstance(m, (nn.Linear, nn.Conv1d)) and id(m) not in protected_ids]
    grouped = set()
    for m in roots:
        if id(m) in grouped or (isinstance(m, nn.Conv1d) and m.groups != 1):
            continue
        pruner = dg.get_pruner_of_module(m)
        group = dg.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
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
        if any(_out_width(o) != n for o in outs) or any(_in_width(i) != n for i in ins):
            # the channels pass a concat or split on the way (a fused GLU's chunk(2), a
            # cat([side, fc1(x)])): unit j of the producer is not column j of the consumer,
            # so the raw indices would cut the wrong columns; such groups are not prunable
            continue
        groups.append(UnitGroup(names.get(m, "?") + ".ffn", "ffn", n, ins[0], 1, dg_out=outs, dg_in=ins))
    return groups


def _parent(names: Dict[nn.Module, str], m: nn.Module) -> str:
    return names.get(m, "").rpartition(".")[0]


def _in_width(m: nn.Module) -> int:
    return m.in_channels if isinstance(m, nn.Conv1d) else m.in_features


def _out_width(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.Conv1d) else m.out_features


def _is_op(t) -> bool:
    return type(t).__module__.startswith("torch_pruning")

