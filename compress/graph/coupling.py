"""Per-head state that crosses layers (residual attention), found while tracing.

PatchTST-style residual attention (`res_attention=True`) hands each layer's pre-softmax
scores [B, h, L, L] to the next layer, which adds them to its own. Cutting different heads
in two such layers would feed the second layer's kept heads with the scores of the first
layer's other heads: the result would no longer be a sub-network. The tracing hooks record
which per-head tensors each recognised attention module returns and receives
(`tracing.TraceRecord`); coupled modules become one head group, cut in the same positions.
"""
from __future__ import annotations

import warnings
from typing import Dict, List

from .attention import AttentionSpec
from .tracing import TraceRecord

__all__ = ["coupled_attention"]


def coupled_attention(specs: List[AttentionSpec], record: TraceRecord, names, not_prunable) -> List[List[AttentionSpec]]:
    """Attention modules in groups that must lose the same heads (model order kept).

    Module B is coupled to A when B receives a per-head tensor that A returned (residual
    attention hands the pre-softmax scores [B, h, L, L] on): cutting different heads in A
    and B would feed B's kept heads with scores of A's other heads.
    """
    parent = {id(s): id(s) for s in specs}

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner = {}
    for s in specs:
        for t in record.side_outputs.get(id(s.module), []):
            if s.n_heads in t.shape:
                owner[id(t)] = s
    for s in specs:
        for t in record.inputs.get(id(s.module), []):
            a = owner.get(id(t))
            if a is not None and a is not s:
                parent[find(id(s))] = find(id(a))
    comps: Dict[int, List[AttentionSpec]] = {}
    for s in specs:
        comps.setdefault(find(id(s)), []).append(s)
    out = []
    for members in comps.values():
        if len(members) > 1:
            listed = ", ".join(repr(names.get(m.module, "?")) for m in members)
            if len({m.n_heads for m in members}) > 1 or len({m.v_dim for m in members}) > 1:
                for m in members:
                    not_prunable[names.get(m.module, "?") + ".heads"] = f"per-head state crosses layers ({listed}) " \
                        "with different head layouts"
                warnings.warn(f"per-head state crosses layers (residual attention) between {listed}, whose head "
                              "layouts differ: their heads are left uncut", stacklevel=4)
                continue
            warnings.warn(f"per-head state crosses layers (residual attention) between {listed}: heads are cut "
                          "in the same positions across these coupled layers, so the result stays a sub-network",
                          stacklevel=4)
        out.append(members)
    return out
