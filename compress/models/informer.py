"""Informer (Zhou et al., AAAI 2021): ProbSparse attention, self-attention distilling,
generative-style decoder.

Structure as in the authors' Informer2020 code: encoder of ``e_layers`` ProbSparse
self-attention layers with ``e_layers - 1`` distilling `ConvLayer`s between them (each
halves the length), LayerNorm; decoder of ``d_layers`` layers with masked ProbSparse
self-attention and full cross-attention, LayerNorm, ``projection`` Linear(d_model -> C).
The decoder input is the last ``label_len`` past steps followed by ``horizon`` zeros; the
forecast is the decoder's last ``horizon`` outputs, all produced in one forward pass.

Embedding: value (circular Conv1d k=3) + fixed sine/cosine positions; the paper's
calendar (time-feature) embedding is left out because only past values are given.

Differences from the reference code, and why:
* ProbSparse key sampling uses a fixed-seed generator in eval mode (deterministic
  forecasts, and the same sampled keys before and after pruning); in training mode it
  samples from the global RNG as the reference does.
* No ``mix`` of heads and time in the decoder self-attention output (the reference's
  ``mix=True`` reshapes [B, H, L, D] as [B, L, H*D], which mixes time steps into the
  channels of ``out_projection`` and cannot survive head removal; Time-Series-Library
  drops it too).
* ``squeeze(-2)`` instead of ``squeeze()`` in the sampled scores, so one head or a batch
  of one still works.
"""
from __future__ import annotations

import dataclasses
import math
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from ._blocks import (AttentionLayer, ClassicConfig, ClassicForecaster, ConvLayer, DataEmbedding, Decoder,
                      DecoderLayer, Encoder, EncoderLayer, FullAttention)
from .base import register

__all__ = ["InformerConfig", "ProbAttention", "InformerNet", "InformerForecaster"]


@dataclasses.dataclass
class InformerConfig(ClassicConfig):
    """`ClassicConfig` plus Informer's fields.

    Args:
        factor: ProbSparse sampling factor c (``c * ceil(ln L)`` keys sampled / queries kept).
        attn: "prob" (ProbSparse) or "full" for the encoder and decoder self-attention.
        distil: whether distilling `ConvLayer`s halve the length between encoder layers.
        sample_seed: seed of the eval-mode key sampling.
    """

    factor: int = 5
    attn: str = "prob"
    distil: bool = True
    sample_seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.attn not in ("prob", "full"):
            raise ValueError(f"attn must be 'prob' or 'full', got {self.attn!r}")
        if self.factor < 1:
            raise ValueError(f"factor must be >= 1, got {self.factor}")


class ProbAttention(nn.Module):
    """ProbSparse self-attention: only the top-u "active" queries attend; the others output
    the mean of the values (or, when causal, their cumulative sum).

    Works per head on ``[B, L, H, E]`` tensors: H and E come from the shapes, and the key
    sample (``[L_Q, sample_k]`` indices) is shared by every batch element and head, so the
    heads stay independent of each other.
    """

    def __init__(self, mask_flag: bool = True, factor: int = 5, scale=None, attention_dropout: float = 0.1,
                 sample_seed: int = 0):
        super().__init__()
        self.factor = int(factor)
        self.scale = scale
        self.mask_flag = mask_flag
        self.sample_seed = int(sample_seed)
        self.dropout = nn.Dropout(attention_dropout)  # defined, never applied (as in the reference)

    def _sample_index(self, L_Q: int, L_K: int, sample_k: int, device) -> torch.Tensor:
        if self.training:
            index = torch.randint(L_K, (L_Q, sample_k))
        else:
            gen = torch.Generator().manual_seed(self.sample_seed)
            index = torch.randint(L_K, (L_Q, sample_k), generator=gen)
        return index.to(device)

    def forward(self, queries, keys, values, attn_mask=None):
        # queries [B, L_Q, H, E], keys [B, L_K, H, E], values [B, L_K, H, D] -> [B, L_Q, H, D]
        B, L_Q, H, E = queries.shape
        L_K = keys.shape[1]
        q = queries.transpose(2, 1)  # [B, H, L_Q, E]
        k = keys.transpose(2, 1)     # [B, H, L_K, E]
        v = values.transpose(2, 1)   # [B, H, L_K, D]

        sample_k = min(self.factor * int(math.ceil(math.log(L_K))), L_K)  # c*ln(L_K)
        n_top = min(self.factor * int(math.ceil(math.log(L_Q))), L_Q)     # c*ln(L_Q)

        # sparsity measurement M(q, K) = max - mean of the sampled scores
        index_sample = self._sample_index(L_Q, L_K, sample_k, q.device)       # [L_Q, sample_k]
        k_sample = k[:, :, index_sample, :]                                      # [B, H, L_Q, sample_k, E]
        qk_sample = torch.matmul(q.unsqueeze(-2), k_sample.transpose(-2, -1)).squeeze(-2)  # [B, H, L_Q, sample_k]
        m = qk_sample.max(-1)[0] - qk_sample.sum(-1) / L_K                       # [B, H, L_Q]
        m_top = m.topk(n_top, sorted=False)[1]                                   # [B, H, u]

        b_idx = torch.arange(B, device=q.device)[:, None, None]
        h_idx = torch.arange(H, device=q.device)[None, :, None]
        q_reduce = q[b_idx, h_idx, m_top]                                        # [B, H, u, E]
        scale = self.scale or 1.0 / math.sqrt(E)
        scores = torch.matmul(q_reduce, k.transpose(-2, -1)) * scale             # [B, H, u, L_K]

        if self.mask_flag:
            if L_Q != L_K:
                raise ValueError("masked ProbAttention needs as many queries as keys (self-attention)")
            context = v.cumsum(dim=-2)                                           # [B, H, L_Q, D]
            causal = torch.ones(L_Q, L_K, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(causal[m_top], float("-inf"))
        else:
            context = v.mean(dim=-2, keepdim=True).expand(B, H, L_Q, v.shape[-1]).clone()
        attn = torch.softmax(scores, dim=-1)
        context = context.index_put((b_idx, h_idx, m_top), torch.matmul(attn, v).type_as(context))
        return context.transpose(2, 1).contiguous()                              # [B, L_Q, H, D]


class InformerNet(nn.Module):
    """Informer: ``forward(past[B, L, C]) -> forecast[B, H, C]``."""

    def __init__(self, cfg: InformerConfig):
        super().__init__()
        self.label_len = cfg.label_len
        self.pred_len = cfg.horizon
        max_len = max(cfg.context_length, cfg.label_len + cfg.horizon)
        d, h = cfg.d_model, cfg.n_heads

        def self_attn(mask_flag: bool) -> nn.Module:
            if cfg.attn == "prob":
                return ProbAttention(mask_flag, cfg.factor, attention_dropout=cfg.dropout, sample_seed=cfg.sample_seed)
            return FullAttention(mask_flag, attention_dropout=cfg.dropout)

        self.enc_embedding = DataEmbedding(cfg.n_channels, d, cfg.dropout, max_len=max_len)
        self.dec_embedding = DataEmbedding(cfg.n_channels, d, cfg.dropout, max_len=max_len)
        self.encoder = Encoder(
            [EncoderLayer(AttentionLayer(self_attn(False), d, h), d, cfg.d_ff, dropout=cfg.dropout,
                          activation=cfg.activation) for _ in range(cfg.e_layers)],
            [ConvLayer(d) for _ in range(cfg.e_layers - 1)] if cfg.distil else None,
            norm_layer=nn.LayerNorm(d))
        self.decoder = Decoder(
            [DecoderLayer(AttentionLayer(self_attn(True), d, h),
                          AttentionLayer(FullAttention(False, attention_dropout=cfg.dropout), d, h),
                          d, cfg.d_ff, dropout=cfg.dropout, activation=cfg.activation)
             for _ in range(cfg.d_layers)],
            norm_layer=nn.LayerNorm(d))
        self.projection = nn.Linear(d, cfg.n_channels, bias=True)

    def protected_modules(self) -> List[nn.Module]:
        return [self.enc_embedding.value_embedding.tokenConv, self.dec_embedding.value_embedding.tokenConv,
                self.projection]

    def forward(self, x_enc: torch.Tensor) -> torch.Tensor:  # [B, L, C] -> [B, H, C]
        x_dec = F.pad(x_enc[:, x_enc.shape[1] - self.label_len:, :], (0, 0, 0, self.pred_len))  # [B, label+H, C]
        enc_out = self.encoder(self.enc_embedding(x_enc))                 # [B, ~L / 2^(e_layers-1), D]
        dec_out = self.decoder(self.dec_embedding(x_dec), enc_out)
        return self.projection(dec_out)[:, -self.pred_len:, :]


@register("informer")
class InformerForecaster(ClassicForecaster):
    """Informer as a `Forecaster`.

    ``size="small"``: the reference configuration (d_model 512, 8 heads, d_ff 2048, 2+1
    layers, factor 5, distil, input 96, label 48, horizon 96, 7 channels, dropout 0.05).
    ``size="tiny"``: d_model 16, 2 heads, input 32, label 16, horizon 8, 3 channels.

    Example:
        >>> m = InformerForecaster.build(size="tiny")
        >>> m.eval()(torch.randn(2, m.context_length, m.n_channels)).shape
        torch.Size([2, 8, 3])
    """

    config_class = InformerConfig
    network_class = InformerNet
