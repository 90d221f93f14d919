"""Autoformer (Wu et al., NeurIPS 2021): series decomposition blocks, Auto-Correlation,
progressive trend accumulation.

Structure as in the authors' code: the input is split into seasonal and trend parts
(moving average, kernel ``moving_avg``); the encoder refines the seasonal part
(Auto-Correlation, decomposition, bias-free Conv1d FFN, decomposition; ``my_Layernorm``);
the decoder starts from the last ``label_len`` seasonal steps + zeros and the last
``label_len`` trend steps + the input mean, and accumulates each layer's three extracted
trends (projected by a circular Conv1d k=3) onto the trend. Forecast = trend + Linear
projection of the seasonal part, last ``horizon`` steps.

Embedding: value only (circular Conv1d k=3), as the reference's ``DataEmbedding_wo_pos``
minus its calendar embedding (only past values are given). ``positional=True`` adds the
fixed sine/cosine positions.

Differences from the reference code, and why:
* Each head picks its own top-k delays from its own auto-correlation (averaged over the
  head's channels), as in the paper's multi-head formula
  ``head_i = AutoCorrelation(Q_i, K_i, V_i)``. The reference code averages the correlation
  over all heads (and, in training, over the batch) before choosing delays, which couples
  the heads: removing one would change the delays of the others.
* Delay aggregation is one gather for train and eval (same result as the reference's roll).
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ._blocks import (AttentionLayer, DecompositionNet, ClassicConfig, ClassicForecaster, DataEmbedding, DecompDecoder,
                      DecompDecoderLayer, DecompEncoderLayer, Encoder, MyLayerNorm, SeriesDecomp)
from .base import register

__all__ = ["AutoformerConfig", "AutoCorrelation", "AutoformerNet", "AutoformerForecaster"]


@dataclasses.dataclass
class AutoformerConfig(ClassicConfig):
    """`ClassicConfig` plus Autoformer's fields.

    Args:
        factor: top-k delays per head = ``int(factor * ln L)`` (the authors' scripts use 3).
        moving_avg: kernel of the decomposition's moving average.
        positional: add fixed positions to the value embedding (the reference does not).
    """

    TINY = dict(ClassicConfig.TINY, moving_avg=5)

    factor: int = 3
    moving_avg: int = 25
    positional: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.factor < 1 or self.moving_avg < 1:
            raise ValueError("factor and moving_avg must be >= 1")


class AutoCorrelation(nn.Module):
    """Auto-Correlation: period-based dependencies found by FFT, time-delay aggregation.

    On ``[B, L, H, E]`` tensors; H, E come from the shapes. Per head: the correlation
    ``R(tau)`` of queries and keys (FFT), averaged over the head's channels, picks the
    top ``int(factor * ln L)`` delays; the output is the softmax(R)-weighted sum of the
    values rolled by those delays. In training the delays are shared by the batch
    (reference speed-up), in eval they are chosen per sample.
    """

    def __init__(self, mask_flag: bool = True, factor: int = 1, scale=None, attention_dropout: float = 0.1):
        super().__init__()
        self.factor = factor
        self.scale = scale
        self.mask_flag = mask_flag  # unused: auto-correlation is never masked (as in the reference)
        self.dropout = nn.Dropout(attention_dropout)  # defined, never applied (as in the reference)

    def time_delay_agg(self, values: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        # values [B, H, D, L], corr [B, H, E, L] -> [B, H, D, L]
        B, H, D, L = values.shape
        top_k = max(1, min(int(self.factor * math.log(L)), L))
        mean_value = corr.mean(dim=2)                                    # [B, H, L]
        if self.training:
            delay = torch.topk(mean_value.mean(dim=0), top_k, dim=-1)[1]  # [H, k]
            delay = delay.unsqueeze(0).expand(B, H, top_k)
            weights = torch.gather(mean_value, -1, delay)                # [B, H, k]
        else:
            weights, delay = torch.topk(mean_value, top_k, dim=-1)       # [B, H, k]
        tmp_corr = torch.softmax(weights, dim=-1)
        init_index = torch.arange(L, device=values.device).view(1, 1, 1, L)
        delays_agg = torch.zeros_like(values)
        for i in range(top_k):
            index = ((init_index + delay[:, :, i].view(B, H, 1, 1)) % L).expand(B, H, D, L)
            pattern = torch.gather(values, dim=-1, index=index)          # values rolled by -delay
            delays_agg = delays_agg + pattern * tmp_corr[:, :, i].view(B, H, 1, 1)
        return delays_agg

    def forward(self, queries, keys, values, attn_mask=None):
        # queries [B, L, H, E], keys [B, S, H, E], values [B, S, H, D] -> [B, L, H, D]
        B, L, H, E = queries.shape
        S = values.shape[1]
        if L > S:  # zero-pad keys and values to the query length
            keys = F.pad(keys, (0, 0, 0, 0, 0, L - S))
            values = F.pad(values, (0, 0, 0, 0, 0, L - S))
        else:
            keys = keys[:, :L]
            values = values[:, :L]
        q_fft = torch.fft.rfft(queries.permute(0, 2, 3, 1).contiguous(), dim=-1)  # [B, H, E, L//2+1]
        k_fft = torch.fft.rfft(keys.permute(0, 2, 3, 1).contiguous(), dim=-1)
        corr = torch.fft.irfft(q_fft * torch.conj(k_fft), n=L, dim=-1)            # [B, H, E, L]
        out = self.time_delay_agg(values.permute(0, 2, 3, 1).contiguous(), corr)  # [B, H, D, L]
        return out.permute(0, 3, 1, 2).contiguous()


class AutoformerNet(DecompositionNet):
    """Autoformer: ``forward(past[B, L, C]) -> forecast[B, H, C]``."""

    def __init__(self, cfg: AutoformerConfig):
        super().__init__()
        self.label_len = cfg.label_len
        self.pred_len = cfg.horizon
        d, h = cfg.d_model, cfg.n_heads
        max_len = max(cfg.context_length, cfg.label_len + cfg.horizon)
        self.decomp = SeriesDecomp(cfg.moving_avg)
        self.enc_embedding = DataEmbedding(cfg.n_channels, d, cfg.dropout, positional=cfg.positional, max_len=max_len)
        self.dec_embedding = DataEmbedding(cfg.n_channels, d, cfg.dropout, positional=cfg.positional, max_len=max_len)

        def corr(mask_flag: bool) -> AttentionLayer:
            return AttentionLayer(AutoCorrelation(mask_flag, cfg.factor, attention_dropout=cfg.dropout), d, h)

        self.encoder = Encoder(
            [DecompEncoderLayer(corr(False), d, cfg.d_ff, moving_avg=cfg.moving_avg, dropout=cfg.dropout,
                                activation=cfg.activation) for _ in range(cfg.e_layers)],
            norm_layer=MyLayerNorm(d))
        self.decoder = DecompDecoder(
            [DecompDecoderLayer(corr(True), corr(False), d, cfg.n_channels, cfg.d_ff, moving_avg=cfg.moving_avg,
                                dropout=cfg.dropout, activation=cfg.activation) for _ in range(cfg.d_layers)],
            norm_layer=MyLayerNorm(d),
            projection=nn.Linear(d, cfg.n_channels, bias=True))


@register("autoformer")
class AutoformerForecaster(ClassicForecaster):
    """Autoformer as a `Forecaster`.

    ``size="small"``: d_model 512, 8 heads, d_ff 2048, 2+1 layers, factor 3, moving_avg 25,
    input 96, label 48, horizon 96, 7 channels, dropout 0.05. ``size="tiny"``: d_model 16,
    2 heads, moving_avg 5, input 32, label 16, horizon 8, 3 channels.

    Example:
        >>> m = AutoformerForecaster.build(size="tiny")
        >>> m.eval()(torch.randn(2, m.context_length, m.n_channels)).shape
        torch.Size([2, 8, 3])
    """

    config_class = AutoformerConfig
    network_class = AutoformerNet
