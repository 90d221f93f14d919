"""A prunable drop-in for `nn.MultiheadAttention`.

`nn.MultiheadAttention` keeps q/k/v in one fused `in_proj_weight` and assumes their width
equals `embed_dim`, so its heads cannot be removed in place. `build` swaps every instance
for `MultiheadAttention` below (separate q/k/v/out Linears, same outputs), which the
generic q/k/v/o recogniser of `attention.py` then describes. Without `need_weights` (how
`nn.TransformerEncoderLayer` calls it) the drop-in runs `F.scaled_dot_product_attention`,
so swapping it in costs no speed and keeps the fused kernels (measure counts their FLOPs);
with `need_weights` the weights are materialised, as `nn.MultiheadAttention` does.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .errors import GraphBuildError

__all__ = ["MultiheadAttention", "swap_torch_mha"]


class MultiheadAttention(nn.Module):
    """Drop-in for `nn.MultiheadAttention` whose heads can be removed.

    Same call signature and outputs, but with separate q/k/v/out Linears so that the
    inner width (heads x head_dim) may differ from `embed_dim` after pruning. Built from
    an existing module with `from_torch`; outputs match it to float rounding.

    Example:
        >>> mha = compress.graph.MultiheadAttention.from_torch(nn.MultiheadAttention(16, 4))  # doctest: +SKIP
    """

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, bias: bool = True,
                 dropout: float = 0.0, batch_first: bool = False, kdim: Optional[int] = None,
                 vdim: Optional[int] = None, device=None, dtype=None):
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.dropout, self.batch_first = dropout, batch_first
        inner = num_heads * head_dim
        kw = dict(bias=bias, device=device, dtype=dtype)
        self.q_proj = nn.Linear(embed_dim, inner, **kw)
        self.k_proj = nn.Linear(kdim or embed_dim, inner, **kw)
        self.v_proj = nn.Linear(vdim or embed_dim, inner, **kw)
        self.out_proj = nn.Linear(inner, embed_dim, **kw)
        # nn.TransformerEncoder(Layer) read these to decide on their fused fast path; the
        # values below make them take the plain path that calls this module.
        self._qkv_same_embed_dim = False
        self.in_proj_bias = None
        self.in_proj_weight = None

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> "MultiheadAttention":
        if mha.bias_k is not None or mha.add_zero_attn:
            raise GraphBuildError("nn.MultiheadAttention with add_bias_kv/add_zero_attn is not supported for head pruning")
        d, h = mha.embed_dim, mha.num_heads
        # built on the meta device and given the original tensors: no throw-away init
        new = cls(d, h, d // h, bias=mha.in_proj_bias is not None, dropout=mha.dropout,
                  batch_first=mha.batch_first, kdim=mha.kdim, vdim=mha.vdim, device="meta")

        def param(t):  # shares storage with the original (views of in_proj_weight): no copy
            return nn.Parameter(t.detach(), requires_grad=t.requires_grad)

        ws = (mha.in_proj_weight.chunk(3) if mha._qkv_same_embed_dim
              else (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight))
        bs = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None,) * 3
        for lin, w, b in zip((new.q_proj, new.k_proj, new.v_proj), ws, bs):
            lin.weight = param(w)
            if b is not None:
                lin.bias = param(b)
        new.out_proj.weight = param(mha.out_proj.weight)
        if mha.out_proj.bias is not None:
            new.out_proj.bias = param(mha.out_proj.bias)
        new.train(mha.training)
        return new

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if not self.batch_first:  # [L, B, D] -> [B, L, D]
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        B, Lq, _ = query.shape
        Lk = key.shape[1]
        q = self.q_proj(query).view(B, Lq, self.num_heads, self.head_dim).transpose(1, 2)  # [B, h, Lq, dh]
        k = self.k_proj(key).view(B, Lk, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(value).view(B, Lk, self.num_heads, -1).transpose(1, 2)
        mask = _merge_masks(attn_mask, key_padding_mask, B, self.num_heads, Lq, Lk, q.dtype)
        causal = is_causal and mask is None
        p = self.dropout if self.training else 0.0
        if not need_weights:  # the fused kernel (flash / memory-efficient where available)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
            weights = None
        else:  # the weights are asked for: they must be materialised
            if causal:
                mask = torch.zeros(Lq, Lk, dtype=q.dtype, device=q.device).masked_fill(
                    torch.ones(Lq, Lk, dtype=torch.bool, device=q.device).tril().logical_not(), float("-inf"))
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # [B, h, Lq, Lk]
            if mask is not None:
                scores = scores + mask
            attn = torch.softmax(scores, dim=-1)
            if p > 0:
                attn = F.dropout(attn, p)
            weights = attn.mean(1) if average_attn_weights else attn  # after dropout, as torch's
            out = attn @ v
        out = self.out_proj(out.transpose(1, 2).reshape(B, Lq, -1))  # [B, Lq, h*dv] -> [B, Lq, D]
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


def _merge_masks(attn_mask, key_padding_mask, B, h, Lq, Lk, dtype):
    mask = None
    if attn_mask is not None:
        m = attn_mask
        if m.dtype == torch.bool:
            m = torch.zeros_like(m, dtype=dtype).masked_fill(m, float("-inf"))
        if m.dim() == 3:  # [B*h, Lq, Lk]
            m = m.view(B, -1, Lq, Lk)
        mask = m.to(dtype)
    if key_padding_mask is not None:
        kp = key_padding_mask
        if kp.dtype == torch.bool:
            kp = torch.zeros_like(kp, dtype=dtype).masked_fill(kp, float("-inf"))
        kp = kp.to(dtype).view(B, 1, 1, Lk)
        mask = kp if mask is None else mask + kp
    return mask


def swap_torch_mha(model: nn.Module, record: Optional[list] = None) -> int:
    """Replace every `nn.MultiheadAttention` in `model` by the prunable drop-in.

    Args:
        model: the model, changed in place.
        record: if given, `(parent, name, original, drop-in)` is appended for every swap
            (the drop-in shares the original's weights, so keeping it costs no memory).

    Returns:
        How many modules were swapped.
    """
    targets = [(parent, name) for parent in model.modules() for name, child in parent.named_children()
               if type(child) is nn.MultiheadAttention]
    for parent, name in targets:
        original = getattr(parent, name)
        new = MultiheadAttention.from_torch(original)
        setattr(parent, name, new)
        if record is not None:
            record.append((parent, name, original, new))
    return len(targets)

