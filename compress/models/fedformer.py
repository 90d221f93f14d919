"""FEDformer (Zhou et al., ICML 2022), the Fourier variant: frequency enhanced blocks in a
seasonal-trend decomposition Transformer.

Structure as in the authors' code: Autoformer's decomposition encoder-decoder (see
`autoformer`), with the encoder and decoder self-attention replaced by `FourierBlock`
(FEB-f: FFT, a learned complex linear map per head on a fixed subset of ``modes``
frequencies, inverse FFT) and the cross-attention by `FourierCrossAttention` (FEA-f:
attention between the selected frequencies of queries and keys, tanh activation). The
decoder starts from the last ``label_len`` seasonal steps + zeros and the last
``label_len`` trend steps + the input mean.

Embedding: value only (circular Conv1d k=3), as the reference's ``DataEmbedding_wo_pos``
minus its calendar embedding (only past values are given).

Differences from the reference code, and why:
* The Fourier weights have one block per head of the `AttentionLayer` (the reference fixes
  8) and are stored as real Parameters with a trailing dim of 2 (real, imaginary):
  ``weights1[H, E, E, modes, 2]``; complex Parameters break many tools.
* The blocks return ``[B, L, H, E]``; the reference returns ``[B, H, E, L]`` and the layer
  then views it as ``[B, L, H*E]``, which mixes time steps into ``out_projection``'s input
  channels and cannot survive head removal.
* The Fourier blocks never read the keys/values of the self-attention layers nor the
  values of the cross-attention layer. The reference computes those projections anyway
  and discards them; here they are built (same parameters) but not run, and listed in
  ``AttentionLayer.unused_projections``: dead parameters that no gradient reaches.
* Random mode selection draws from a seeded generator (``mode_seed``); the chosen indices
  are kept as buffers. Decoder lengths use ``label_len + horizon`` (the reference writes
  ``seq_len // 2 + pred_len``, equal under its configs). The moving average kernel is 25
  (Time-Series-Library; the authors' run script uses [24] through a one-kernel mixture).
* As in the reference, `FourierBlock` writes the i-th selected mode's output to frequency
  slot i (not back to the selected frequency); `FourierCrossAttention` writes it back.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._blocks import (AttentionLayer, DecompositionNet, ClassicConfig, ClassicForecaster, DataEmbedding, DecompDecoder,
                      DecompDecoderLayer, DecompEncoderLayer, Encoder, MyLayerNorm, SeriesDecomp)
from .base import register

__all__ = ["FEDformerConfig", "get_frequency_modes", "FourierBlock", "FourierCrossAttention", "FEDformerNet",
           "FEDformerForecaster"]


@dataclasses.dataclass
class FEDformerConfig(ClassicConfig):
    """`ClassicConfig` plus FEDformer's fields.

    Args:
        modes: number of frequencies each Fourier block keeps (at most ``length // 2``).
        mode_select: "random" (seeded by ``mode_seed``) or "low" (the lowest ``modes``).
        mode_seed: seed of the random mode selection.
        moving_avg: kernel of the decomposition's moving average.
        cross_activation: "tanh" or "softmax" in the Fourier cross-attention.
        positional: add fixed positions to the value embedding (the reference does not).
    """

    TINY = dict(ClassicConfig.TINY, modes=8, moving_avg=5)

    modes: int = 64
    mode_select: str = "random"
    mode_seed: int = 2021
    moving_avg: int = 25
    cross_activation: str = "tanh"
    positional: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.mode_select not in ("random", "low"):
            raise ValueError(f"mode_select must be 'random' or 'low', got {self.mode_select!r}")
        if self.cross_activation not in ("tanh", "softmax"):
            raise ValueError(f"cross_activation must be 'tanh' or 'softmax', got {self.cross_activation!r}")
        if self.modes < 1 or self.moving_avg < 1:
            raise ValueError("modes and moving_avg must be >= 1")


def get_frequency_modes(seq_len: int, modes: int = 64, mode_select_method: str = "random",
                        rng: Optional[np.random.RandomState] = None) -> List[int]:
    """Sorted frequency indices a Fourier block keeps: ``min(modes, seq_len // 2)`` of them.

    Example:
        >>> get_frequency_modes(16, modes=4, mode_select_method="low")
        [0, 1, 2, 3]
    """
    modes = min(modes, seq_len // 2)
    if mode_select_method == "random":
        index = list(range(0, seq_len // 2))
        (rng or np.random.RandomState(0)).shuffle(index)
        index = index[:modes]
    else:
        index = list(range(0, modes))
    return sorted(int(i) for i in index)


def _complex_weights(n_heads: int, in_channels: int, out_channels: int, n_modes: int) -> nn.Parameter:
    # reference init: scale * rand(cfloat) -> real and imaginary parts uniform in [0, scale)
    scale = 1.0 / (in_channels * out_channels)
    return nn.Parameter(scale * torch.rand(n_heads, in_channels // n_heads, out_channels // n_heads, n_modes, 2))


class FourierBlock(nn.Module):
    """FEB-f: FFT over time, per-head complex linear map on the selected modes, inverse FFT.

    Reads only the queries. ``weights1[H, E, E, modes, 2]`` (real, imaginary): block h of
    dim 0 belongs to head h.
    """

    uses_keys = False
    uses_values = False

    def __init__(self, in_channels: int, out_channels: int, seq_len: int, n_heads: int, modes: int = 0,
                 mode_select_method: str = "random", rng: Optional[np.random.RandomState] = None):
        super().__init__()
        index = get_frequency_modes(seq_len, modes=modes, mode_select_method=mode_select_method, rng=rng)
        self.register_buffer("index", torch.tensor(index, dtype=torch.long))
        self.weights1 = _complex_weights(n_heads, in_channels, out_channels, len(index))

    def per_head_parameters(self) -> List[Tuple[nn.Module, str, int]]:
        return [(self, "weights1", 0)]

    def forward(self, q, k=None, v=None, mask=None):
        # q [B, L, H, E] -> [B, L, H, E_out]
        B, L, H, E = q.shape
        x_ft = torch.fft.rfft(q.permute(0, 2, 3, 1), dim=-1)                 # [B, H, E, L//2+1]
        n_freq = x_ft.shape[-1]
        index = self.index[self.index < n_freq]
        n_modes = min(index.numel(), n_freq)
        w = torch.complex(self.weights1[..., :n_modes, 0], self.weights1[..., :n_modes, 1])  # [H, E, O, M]
        sel = x_ft.index_select(-1, index[:n_modes])                          # [B, H, E, M]
        out = torch.einsum("bhem,heom->bhom", sel, w)                         # [B, H, O, M]
        out_ft = torch.complex(F.pad(out.real, (0, n_freq - n_modes)), F.pad(out.imag, (0, n_freq - n_modes)))
        x = torch.fft.irfft(out_ft, n=L, dim=-1)                              # [B, H, O, L]
        return x.permute(0, 3, 1, 2).contiguous()


class FourierCrossAttention(nn.Module):
    """FEA-f: attention between the selected frequencies of queries and keys (keys double as values).

    ``weights1[H, E, E, modes_q, 2]`` (real, imaginary): block h of dim 0 belongs to head h.
    The output is divided by ``in_channels * out_channels`` (fixed at construction).
    """

    uses_keys = True
    uses_values = False

    def __init__(self, in_channels: int, out_channels: int, seq_len_q: int, seq_len_kv: int, n_heads: int,
                 modes: int = 64, mode_select_method: str = "random", activation: str = "tanh",
                 rng: Optional[np.random.RandomState] = None):
        super().__init__()
        self.activation = activation
        self.in_channels = in_channels
        self.out_channels = out_channels
        index_q = get_frequency_modes(seq_len_q, modes=modes, mode_select_method=mode_select_method, rng=rng)
        index_kv = get_frequency_modes(seq_len_kv, modes=modes, mode_select_method=mode_select_method, rng=rng)
        self.register_buffer("index_q", torch.tensor(index_q, dtype=torch.long))
        self.register_buffer("index_kv", torch.tensor(index_kv, dtype=torch.long))
        self.weights1 = _complex_weights(n_heads, in_channels, out_channels, len(index_q))

    def per_head_parameters(self) -> List[Tuple[nn.Module, str, int]]:
        return [(self, "weights1", 0)]

    def forward(self, q, k, v=None, mask=None):
        # q [B, L, H, E], k [B, S, H, E] -> [B, L, H, E_out]
        B, L, H, E = q.shape
        xq_ft = torch.fft.rfft(q.permute(0, 2, 3, 1), dim=-1)                # [B, H, E, L//2+1]
        xk_ft = torch.fft.rfft(k.permute(0, 2, 3, 1), dim=-1)                # [B, H, E, S//2+1]
        index_q = self.index_q[self.index_q < xq_ft.shape[-1]]
        index_kv = self.index_kv[self.index_kv < xk_ft.shape[-1]]
        xq_ft_ = xq_ft.index_select(-1, index_q)                              # [B, H, E, Mq]
        xk_ft_ = xk_ft.index_select(-1, index_kv)                             # [B, H, E, Mk]
        xqk_ft = torch.einsum("bhex,bhey->bhxy", xq_ft_, xk_ft_)              # [B, H, Mq, Mk]
        if self.activation == "tanh":
            xqk_ft = xqk_ft.tanh()
        else:
            xqk_ft = torch.softmax(xqk_ft.abs(), dim=-1)
            xqk_ft = torch.complex(xqk_ft, torch.zeros_like(xqk_ft))
        xqkv_ft = torch.einsum("bhxy,bhey->bhex", xqk_ft, xk_ft_)             # [B, H, E, Mq]
        n_q = index_q.numel()
        w = torch.complex(self.weights1[..., :n_q, 0], self.weights1[..., :n_q, 1])  # [H, E, O, Mq]
        xqkvw = torch.einsum("bhex,heox->bhox", xqkv_ft, w)                   # [B, H, O, Mq]
        out_ft = xqkvw.new_zeros(B, H, xqkvw.shape[2], L // 2 + 1).index_copy(-1, index_q, xqkvw)
        out = torch.fft.irfft(out_ft / self.in_channels / self.out_channels, n=L, dim=-1)  # [B, H, O, L]
        return out.permute(0, 3, 1, 2).contiguous()


class FEDformerNet(DecompositionNet):
    """FEDformer (Fourier): ``forward(past[B, L, C]) -> forecast[B, H, C]``."""

    def __init__(self, cfg: FEDformerConfig):
        super().__init__()
        self.label_len = cfg.label_len
        self.pred_len = cfg.horizon
        d, h = cfg.d_model, cfg.n_heads
        dec_len = cfg.label_len + cfg.horizon
        max_len = max(cfg.context_length, dec_len)
        rng = np.random.RandomState(cfg.mode_seed)
        self.decomp = SeriesDecomp(cfg.moving_avg)
        self.enc_embedding = DataEmbedding(cfg.n_channels, d, cfg.dropout, positional=cfg.positional, max_len=max_len)
        self.dec_embedding = DataEmbedding(cfg.n_channels, d, cfg.dropout, positional=cfg.positional, max_len=max_len)

        def block(seq_len: int) -> AttentionLayer:
            return AttentionLayer(FourierBlock(d, d, seq_len, h, cfg.modes, cfg.mode_select, rng), d, h)

        enc_layers = [DecompEncoderLayer(block(cfg.context_length), d, cfg.d_ff, moving_avg=cfg.moving_avg,
                                         dropout=cfg.dropout, activation=cfg.activation)
                      for _ in range(cfg.e_layers)]
        dec_layers = []
        for _ in range(cfg.d_layers):
            self_attn = block(dec_len)
            cross = AttentionLayer(FourierCrossAttention(d, d, dec_len, cfg.context_length, h, cfg.modes,
                                                         cfg.mode_select, cfg.cross_activation, rng), d, h)
            dec_layers.append(DecompDecoderLayer(self_attn, cross, d, cfg.n_channels, cfg.d_ff,
                                                 moving_avg=cfg.moving_avg, dropout=cfg.dropout,
                                                 activation=cfg.activation))
        self.encoder = Encoder(enc_layers, norm_layer=MyLayerNorm(d))
        self.decoder = DecompDecoder(dec_layers, norm_layer=MyLayerNorm(d),
                                     projection=nn.Linear(d, cfg.n_channels, bias=True))


@register("fedformer")
class FEDformerForecaster(ClassicForecaster):
    """FEDformer (Fourier variant) as a `Forecaster`.

    ``size="small"``: d_model 512, 8 heads, d_ff 2048, 2+1 layers, modes 64 (random,
    seed 2021), moving_avg 25, input 96, label 48, horizon 96, 7 channels, dropout 0.05.
    ``size="tiny"``: d_model 16, 2 heads, modes 8, moving_avg 5, input 32, label 16,
    horizon 8, 3 channels.

    Example:
        >>> m = FEDformerForecaster.build(size="tiny")
        >>> m.eval()(torch.randn(2, m.context_length, m.n_channels)).shape
        torch.Size([2, 8, 3])
    """

    config_class = FEDformerConfig
    network_class = FEDformerNet
