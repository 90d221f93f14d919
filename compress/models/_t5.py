"""Head pruning glue shared by the T5-based families (chronos_bolt, moment).

T5 attention keeps a relative-position bias table with one column per head, and only the
first layer of a stack owns it: the bias it computes (and the zero bias of the first
cross-attention) is handed to every later layer. Cutting different heads in different
layers then breaks the shapes. `untie_position_bias` gives every attention layer its own
copy of its stack's table and makes it compute its own bias (a forward pre-hook drops the
one handed down), which is numerically identical; the recogniser below then lists each
table as a per-head tensor so its columns go with their heads.
"""
from __future__ import annotations

import copy
import sys
from typing import Optional

from torch import nn

from ..graph import AttentionSpec, register_attention


def _is_t5_attention(module: nn.Module) -> bool:
    return type(module).__name__ == "T5Attention" and all(hasattr(module, a) for a in ("q", "k", "v", "o", "n_heads"))


def _own_position_bias(module, args, kwargs):
    """Forward pre-hook: ignore the bias handed down by the stack's first layer."""
    if "position_bias" in kwargs:
        kwargs["position_bias"] = None
    return args, kwargs


def untie_position_bias(root: nn.Module) -> int:
    """Give every T5 attention layer its own relative-bias table; returns how many were untied."""
    count = 0
    for stack in root.modules():
        blocks = getattr(stack, "block", None)
        if not isinstance(blocks, nn.ModuleList) or not len(blocks):
            continue
        first = blocks[0].layer[0].SelfAttention
        table = getattr(first, "relative_attention_bias", None)
        for block in blocks:
            for layer in block.layer:
                for name in ("SelfAttention", "EncDecAttention"):
                    att = getattr(layer, name, None)
                    if att is None or not _is_t5_attention(att) or getattr(att, "_compress_untied", False):
                        continue
                    if name == "SelfAttention" and table is not None and not att.has_relative_attention_bias:
                        att.relative_attention_bias = copy.deepcopy(table)
                        att.has_relative_attention_bias = True
                        count += 1
                    att.register_forward_pre_hook(_own_position_bias, with_kwargs=True)
                    att._compress_untied = True
    return count


@register_attention
def _t5_attention(module: nn.Module, hint: Optional[int]) -> Optional[AttentionSpec]:
    if "transformers" not in sys.modules or not _is_t5_attention(module):
        return None
    per_head = []
    if getattr(module, "has_relative_attention_bias", False):
        per_head.append((module.relative_attention_bias, "weight", 1))  # [buckets, n_heads]
    return AttentionSpec(module, module.n_heads, module.q, module.k, module.v, module.o, per_head)


# --- depth pruning ---------------------------------------------------------------------------
def move_position_bias(old_blocks, kept) -> bool:
    """After blocks were removed from a T5 stack: if its first block (the owner of the
    relative-bias table, which hands the bias to every later block) was removed, the new
    first block takes the table over. Returns True if a table moved.

    Without this the new first block would compute a zero bias (it has no table) and every
    block would attend without relative positions.
    """
    if not kept or kept[0] == 0:
        return False
    owner = old_blocks[0].layer[0].SelfAttention
    heir = old_blocks[kept[0]].layer[0].SelfAttention
    if not getattr(owner, "has_relative_attention_bias", False) or heir.has_relative_attention_bias:
        return False  # nothing owned, or already untied (every layer has its own table)
    heir.relative_attention_bias = owner.relative_attention_bias
    heir.has_relative_attention_bias = True
    return True


def t5_block_stack(path: str, set_count):
    """A `BlockStack` for the `block` list of a T5 stack: `set_count(forecaster, n)` updates the
    config's layer count after a removal, and the relative-bias table follows the first block."""
    from ..strategies.layers import BlockStack

    def fix(forecaster, old, kept):
        move_position_bias(old, kept)
        set_count(forecaster, len(kept))

    return BlockStack(path, fix=fix)
