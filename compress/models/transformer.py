"""Vanilla Transformer forecaster (the encoder-decoder baseline of the Informer/Autoformer repos).

Encoder: ``e_layers`` post-norm layers of full self-attention + Conv1d(k=1) FFN, LayerNorm.
Decoder: ``d_layers`` layers of causal self-attention, cross-attention and FFN, LayerNorm,
then ``projection`` Linear(d_model -> C). The decoder reads the last ``label_len`` past
steps followed by ``horizon`` zeros (the reference "start token") and the forecast is its
last ``horizon`` outputs.

Embedding: value (circular Conv1d k=3) + fixed sine/cosine positions. The reference also
adds a calendar (time-feature) embedding; it is left out because the forecaster receives
only past values.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from ._blocks import (AttentionLayer, ClassicConfig, ClassicForecaster, DataEmbedding, Decoder,
                      DecoderLayer, Encoder, EncoderLayer, FullAttention)
from .base import register

__all__ = ["TransformerConfig", "TransformerNet", "TransformerForecaster"]


class TransformerConfig(ClassicConfig):
    """Reference configuration (see `ClassicConfig`); no fields of its own."""


class TransformerNet(nn.Module):
    """The vanilla Transformer: ``forward(past[B, L, C]) -> forecast[B, H, C]``."""

    def __init__(self, cfg: ClassicConfig):
        super().__init__()
        self.label_len = cfg.label_len
        self.pred_len = cfg.horizon
        max_len = max(cfg.context_length, cfg.label_len + cfg.horizon)
        self.enc_embedding = DataEmbedding(cfg.n_channels, cfg.d_model, cfg.dropout, max_len=max_len)
        self.dec_embedding = DataEmbedding(cfg.n_channels, cfg.d_model, cfg.dropout, max_len=max_len)
        self.encoder = Encoder(
            [EncoderLayer(AttentionLayer(FullAttention(False, attention_dropout=cfg.dropout), cfg.d_model, cfg.n_heads),
                          cfg.d_model, cfg.d_ff, dropout=cfg.dropout, activation=cfg.activation)
             for _ in range(cfg.e_layers)],
            norm_layer=nn.LayerNorm(cfg.d_model))
        self.decoder = Decoder(
            [DecoderLayer(AttentionLayer(FullAttention(True, attention_dropout=cfg.dropout), cfg.d_model, cfg.n_heads),
                          AttentionLayer(FullAttention(False, attention_dropout=cfg.dropout), cfg.d_model, cfg.n_heads),
                          cfg.d_model, cfg.d_ff, dropout=cfg.dropout, activation=cfg.activation)
             for _ in range(cfg.d_layers)],
            norm_layer=nn.LayerNorm(cfg.d_model))
        self.projection = nn.Linear(cfg.d_model, cfg.n_channels, bias=True)

    def protected_modules(self) -> List[nn.Module]:
        return [self.enc_embedding.value_embedding.tokenConv, self.dec_embedding.value_embedding.tokenConv,
                self.projection]

    def forward(self, x_enc: torch.Tensor) -> torch.Tensor:  # [B, L, C] -> [B, H, C]
        x_dec = F.pad(x_enc[:, x_enc.shape[1] - self.label_len:, :], (0, 0, 0, self.pred_len))  # [B, label+H, C]
        enc_out = self.encoder(self.enc_embedding(x_enc))
        dec_out = self.decoder(self.dec_embedding(x_dec), enc_out)
        return self.projection(dec_out)[:, -self.pred_len:, :]


@register("transformer")
class TransformerForecaster(ClassicForecaster):
    """Vanilla Transformer (Vaswani et al. 2017) as a long-horizon forecaster.

    ``size="small"``: d_model 512, 8 heads, d_ff 2048, 2+1 layers, input 96, label 48,
    horizon 96, 7 channels, dropout 0.05. ``size="tiny"``: d_model 16, 2 heads, for tests.

    Example:
        >>> m = TransformerForecaster.build(size="tiny")
        >>> m(torch.randn(2, m.context_length, m.n_channels)).shape
        torch.Size([2, 8, 3])
    """

    config_class = TransformerConfig
    network_class = TransformerNet
