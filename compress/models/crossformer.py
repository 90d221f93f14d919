"""Crossformer (Zhang & Yan, ICLR 2023): dimension-segment-wise embedding, two-stage
attention, hierarchical encoder-decoder.

Structure as in the authors' code (Thinklab-SJTU/Crossformer):
* DSW embedding: each channel's series is cut into segments of ``seg_len`` steps, each
  embedded by one Linear(seg_len -> d_model), plus a learned position Parameter
  ``enc_pos_embedding[1, C, n_segments, d_model]``, then LayerNorm.
* Two-stage attention (TSA) layer on ``[B, C, n_seg, d_model]``: cross-time stage (full
  self-attention along segments, per channel, + MLP) then cross-dimension stage: a learned
  ``router[n_seg, factor, d_model]`` gathers from all channels (``dim_sender``) and
  distributes back (``dim_receiver``), + MLP.
* Hierarchical encoder of ``e_layers`` scale blocks; every block after the first merges
  ``win_size`` adjacent segments (LayerNorm + Linear(win_size*d_model -> d_model)).
* Decoder of ``e_layers + 1`` layers, one per encoder scale: TSA on the learned
  ``dec_pos_embedding``, cross-attention to that scale's encoder output, MLP, and a
  Linear(d_model -> seg_len) prediction; the forecast is the sum of all layers' predictions.
The input is front-padded with its first value to a multiple of ``seg_len``.

Crossformer uses no calendar features; nothing is left out. Every attention is an
`AttentionLayer` (three per TSA layer, plus one cross-attention per decoder layer); none
has per-head parameters.
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from ._blocks import AttentionLayer, ClassicForecaster, FullAttention
from .base import register

__all__ = ["CrossformerConfig", "DSWEmbedding", "TwoStageAttentionLayer", "SegMerging", "ScaleBlock",
           "CrossformerDecoderLayer", "CrossformerNet", "CrossformerForecaster"]


@dataclasses.dataclass
class CrossformerConfig:
    """Crossformer configuration; defaults follow the paper / authors' code for input 96.

    Args:
        context_length: input length (``in_len``).
        horizon: forecast length (``out_len``).
        n_channels: number of series (``data_dim``).
        seg_len: segment length of the DSW embedding.
        win_size: segments merged per scale.
        factor: routers per segment in the cross-dimension stage.
        d_model, d_ff, n_heads, e_layers, dropout: as in the paper (decoder has e_layers + 1).
    """

    TINY: ClassVar[Dict[str, object]] = dict(
        context_length=32, horizon=8, n_channels=3, seg_len=4, factor=2,
        d_model=16, n_heads=2, d_ff=32, e_layers=2)
    ALIASES: ClassVar[Dict[str, str]] = dict(
        seq_len="context_length", in_len="context_length", pred_len="horizon", out_len="horizon",
        enc_in="n_channels", data_dim="n_channels")

    context_length: int = 96
    horizon: int = 96
    n_channels: int = 7
    seg_len: int = 12
    win_size: int = 2
    factor: int = 10
    d_model: int = 256
    d_ff: int = 512
    n_heads: int = 4
    e_layers: int = 3
    dropout: float = 0.2

    def __post_init__(self):
        for name in ("context_length", "horizon", "n_channels", "seg_len", "win_size", "factor", "d_model",
                     "d_ff", "n_heads", "e_layers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def _attention(d_model: int, n_heads: int, dropout: float) -> AttentionLayer:
    return AttentionLayer(FullAttention(False, attention_dropout=dropout), d_model, n_heads)


def _mlp(d_in: int, d_hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_in))


class DSWEmbedding(nn.Module):
    """Dimension-segment-wise embedding: ``[B, L, C] -> [B, C, L // seg_len, d_model]``."""

    def __init__(self, seg_len: int, d_model: int):
        super().__init__()
        self.seg_len = seg_len
        self.linear = nn.Linear(seg_len, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        segments = x.permute(0, 2, 1).reshape(B, C, L // self.seg_len, self.seg_len)  # [B, C, n_seg, seg_len]
        return self.linear(segments)


class TwoStageAttentionLayer(nn.Module):
    """TSA layer on ``[B, C, n_seg, d_model]``: cross-time, then cross-dimension with routers.

    ``router`` is a Parameter ``[n_seg, factor, d_model]`` (its dim 2 follows d_model).
    """

    def __init__(self, seg_num: int, factor: int, d_model: int, n_heads: int, d_ff: int = None,
                 dropout: float = 0.1):
        super().__init__()
        d_ff = d_ff or 4 * d_model
        self.time_attention = _attention(d_model, n_heads, dropout)
        self.dim_sender = _attention(d_model, n_heads, dropout)
        self.dim_receiver = _attention(d_model, n_heads, dropout)
        self.router = nn.Parameter(torch.randn(seg_num, factor, d_model))
        self.dropout = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.norm4 = nn.LayerNorm(d_model)
        self.MLP1 = _mlp(d_model, d_ff)
        self.MLP2 = _mlp(d_model, d_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, n_seg, D] -> same
        B, C, S, D = x.shape
        # cross-time stage: self-attention along the segments of each channel
        time_in = x.reshape(B * C, S, D)
        dim_in = self.norm1(time_in + self.dropout(self.time_attention(time_in, time_in, time_in)))
        dim_in = self.norm2(dim_in + self.dropout(self.MLP1(dim_in)))
        # cross-dimension stage: routers gather from all channels, then distribute back
        dim_send = dim_in.reshape(B, C, S, D).permute(0, 2, 1, 3).reshape(B * S, C, D)
        batch_router = self.router.repeat(B, 1, 1)                                # [B*S, factor, D]
        dim_buffer = self.dim_sender(batch_router, dim_send, dim_send)           # [B*S, factor, D]
        dim_receive = self.dim_receiver(dim_send, dim_buffer, dim_buffer)        # [B*S, C, D]
        dim_enc = self.norm3(dim_send + self.dropout(dim_receive))
        dim_enc = self.norm4(dim_enc + self.dropout(self.MLP2(dim_enc)))
        return dim_enc.reshape(B, S, C, D).permute(0, 2, 1, 3)


class SegMerging(nn.Module):
    """Merge ``win_size`` adjacent segments: ``[B, C, n, D] -> [B, C, ceil(n / win), D]``.

    The merged vector of segments ``j*w .. j*w+w-1`` is their concatenation (a reshape, equal
    to the reference's cat of ``x[:, :, i::w]``): its channel ``k*D + d`` is channel d of
    the k-th segment, so removing d_model channel d removes inputs ``{k*D + d}`` of ``norm``
    and ``linear_trans``.
    """

    def __init__(self, d_model: int, win_size: int):
        super().__init__()
        self.d_model = d_model
        self.win_size = win_size
        self.linear_trans = nn.Linear(win_size * d_model, d_model)
        self.norm = nn.LayerNorm(win_size * d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seg_num = x.shape[2]
        pad_num = seg_num % self.win_size
        if pad_num != 0:  # repeat the last pad_num segments (an index_select, not a cat along segments)
            pad_num = self.win_size - pad_num
            index = torch.cat([torch.arange(seg_num), torch.arange(seg_num - pad_num, seg_num)]).to(x.device)
            x = x.index_select(2, index)
        B, C, n, D = x.shape
        x = x.reshape(B, C, n // self.win_size, self.win_size * D)  # == cat of x[:, :, i::w] over i: [B, C, n/w, w*D]
        return self.linear_trans(self.norm(x))


class ScaleBlock(nn.Module):
    """One encoder scale: optional segment merging, then ``depth`` TSA layers."""

    def __init__(self, win_size: int, d_model: int, n_heads: int, d_ff: int, depth: int, dropout: float,
                 seg_num: int, factor: int):
        super().__init__()
        self.merge_layer = SegMerging(d_model, win_size) if win_size > 1 else None
        self.encode_layers = nn.ModuleList(
            [TwoStageAttentionLayer(seg_num, factor, d_model, n_heads, d_ff, dropout) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merge_layer is not None:
            x = self.merge_layer(x)
        for layer in self.encode_layers:
            x = layer(x)
        return x


class CrossformerDecoderLayer(nn.Module):
    """TSA self-attention, cross-attention to one encoder scale, MLP, per-layer prediction."""

    def __init__(self, seg_len: int, d_model: int, n_heads: int, d_ff: int, dropout: float, out_seg_num: int,
                 factor: int):
        super().__init__()
        self.self_attention = TwoStageAttentionLayer(out_seg_num, factor, d_model, n_heads, d_ff, dropout)
        self.cross_attention = _attention(d_model, n_heads, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.MLP1 = _mlp(d_model, d_model)
        self.linear_pred = nn.Linear(d_model, seg_len)

    def forward(self, x: torch.Tensor, cross: torch.Tensor):
        # x [B, C, out_seg, D], cross [B, C, in_seg, D] -> ([B, C, out_seg, D], [B, C, out_seg, seg_len])
        B, C, S, D = x.shape
        x = self.self_attention(x).reshape(B * C, S, D)
        cross = cross.reshape(B * C, cross.shape[2], cross.shape[3])
        x = self.norm1(x + self.dropout(self.cross_attention(x, cross, cross)))
        dec_output = self.norm2(x + self.MLP1(x)).reshape(B, C, S, D)
        return dec_output, self.linear_pred(dec_output)


class CrossformerNet(nn.Module):
    """Crossformer: ``forward(past[B, L, C]) -> forecast[B, H, C]``."""

    def __init__(self, cfg: CrossformerConfig):
        super().__init__()
        self.in_len, self.out_len, self.seg_len = cfg.context_length, cfg.horizon, cfg.seg_len
        pad_in_len = math.ceil(cfg.context_length / cfg.seg_len) * cfg.seg_len
        pad_out_len = math.ceil(cfg.horizon / cfg.seg_len) * cfg.seg_len
        self.in_len_add = pad_in_len - cfg.context_length
        in_seg, out_seg = pad_in_len // cfg.seg_len, pad_out_len // cfg.seg_len
        d = cfg.d_model

        self.enc_value_embedding = DSWEmbedding(cfg.seg_len, d)
        self.enc_pos_embedding = nn.Parameter(torch.randn(1, cfg.n_channels, in_seg, d))
        self.pre_norm = nn.LayerNorm(d)
        self.encoder = nn.ModuleList(
            [ScaleBlock(1, d, cfg.n_heads, cfg.d_ff, 1, cfg.dropout, in_seg, cfg.factor)]
            + [ScaleBlock(cfg.win_size, d, cfg.n_heads, cfg.d_ff, 1, cfg.dropout,
                          math.ceil(in_seg / cfg.win_size ** i), cfg.factor) for i in range(1, cfg.e_layers)])
        self.dec_pos_embedding = nn.Parameter(torch.randn(1, cfg.n_channels, out_seg, d))
        self.decoder = nn.ModuleList(
            [CrossformerDecoderLayer(cfg.seg_len, d, cfg.n_heads, cfg.d_ff, cfg.dropout, out_seg, cfg.factor)
             for _ in range(cfg.e_layers + 1)])
        for i, layer in enumerate(self.decoder):
            layer.scale = i  # the encoder scale it reads (kept when decoder layers are removed)

    def protected_modules(self) -> List[nn.Module]:
        return [self.enc_value_embedding.linear] + [layer.linear_pred for layer in self.decoder]

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:  # [B, L, C] -> [B, H, C]
        B, _, C = x_seq.shape
        if self.in_len_add:  # front-pad with the first value (replicate == the reference's cat)
            x_seq = F.pad(x_seq.permute(0, 2, 1), (self.in_len_add, 0), mode="replicate").permute(0, 2, 1)
        x = self.pre_norm(self.enc_value_embedding(x_seq) + self.enc_pos_embedding)  # [B, C, in_seg, D]
        enc_out = [x]
        for block in self.encoder:
            x = block(x)
            enc_out.append(x)
        x = self.dec_pos_embedding.expand(B, -1, -1, -1)                              # [B, C, out_seg, D]
        prediction = 0
        for i, layer in enumerate(self.decoder):
            x, layer_predict = layer(x, enc_out[getattr(layer, "scale", i)])
            prediction = prediction + layer_predict                                   # [B, C, out_seg, seg_len]
        prediction = prediction.reshape(B, C, -1).transpose(1, 2)                     # [B, out_seg*seg_len, C]
        return prediction[:, :self.out_len, :]


@register("crossformer")
class CrossformerForecaster(ClassicForecaster):
    """Crossformer as a `Forecaster`.

    ``size="small"``: the paper's configuration for input 96: seg_len 12, win_size 2,
    factor 10, d_model 256, d_ff 512, 4 heads, 3 encoder scales (4 decoder layers),
    dropout 0.2, horizon 96, 7 channels. ``size="tiny"``: d_model 16, 2 heads, seg_len 4,
    factor 2, 2 scales, input 32, horizon 8, 3 channels.

    Example:
        >>> m = CrossformerForecaster.build(size="tiny")
        >>> m.eval()(torch.randn(2, m.context_length, m.n_channels)).shape
        torch.Size([2, 8, 3])
    """

    config_class = CrossformerConfig
    network_class = CrossformerNet

    def layer_stacks(self) -> list:
        """The TSA layers of each encoder scale (a scale may lose all of them: its segment
        merging stays) and the decoder layers (one per scale; at least one stays; a skipped
        one adds no prediction). The scales themselves stay: the later scales' routers are
        sized for the merged segment counts."""
        from ..strategies.layers import BlockStack
        from ._blocks import _skip_with_zero_side

        stacks = [BlockStack(f"model.encoder.{i}.encode_layers", min_keep=0) for i in range(len(self.model.encoder))]
        stacks.append(BlockStack("model.decoder", skip=_skip_with_zero_side))
        return stacks
