"""Layers shared by the five classic long-horizon forecasters.

Written from the papers and the authors' reference code (Informer2020, Autoformer,
FEDformer, Crossformer; module structure as in Time-Series-Library's ``layers``), with
the changes that make them prunable:

* every attention sub-layer is an `AttentionLayer` whose ``query/key/value/out``
  projections are separate ``nn.Linear`` children and whose ``n_heads`` is read at call
  time (``view(B, L, self.n_heads, -1)``); inner attentions take the head count and head
  width from the tensor shapes. Removing whole heads (rows of q/k/v, columns of out, the
  blocks named by `AttentionLayer.per_head_parameters`) and decrementing ``n_heads``
  keeps the layer computing exactly what the unpruned layer computes with those heads'
  ``out_projection`` columns zeroed.
* circular padding is an ``index_select`` with wrapped indices (`circular_pad`) before a
  ``padding=0`` ``Conv1d``: numerically the reference's ``padding_mode="circular"``, but
  torch-pruning's group building hangs on that and on ``F.pad(mode="circular")`` alike
  (both trace as a ``cat`` of slices along time).
* no calendar (time-feature) embedding: the forecasters only receive past values.
* sequences are padded with ``F.pad`` instead of ``torch.cat`` along time (torch-pruning
  reads every ``cat`` as a channel concatenation and fails on these).
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import ClassVar, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import Forecaster

__all__ = [
    "ClassicConfig", "make_config", "ClassicForecaster", "load_state_dict_file", "circular_pad",
    "PositionalEmbedding", "TokenEmbedding", "DataEmbedding",
    "MovingAvg", "SeriesDecomp", "MyLayerNorm",
    "FullAttention", "AttentionLayer", "ConvLayer",
    "EncoderLayer", "Encoder", "DecoderLayer", "Decoder",
    "DecompEncoderLayer", "DecompDecoderLayer", "DecompDecoder",
]

_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}


# --- configuration -------------------------------------------------------------------
@dataclasses.dataclass
class ClassicConfig:
    """Reference configuration shared by Transformer / Informer / Autoformer / FEDformer.

    Defaults are the authors' reference ("small") configuration: input 96, label 48,
    horizon 96, d_model 512, 8 heads, d_ff 2048, 2 encoder and 1 decoder layers.

    Args:
        context_length: input length L (``seq_len``).
        horizon: forecast length H (``pred_len``).
        n_channels: number of series C (``enc_in = dec_in = c_out``).
        label_len: how many of the last past steps start the decoder input.
        d_model, n_heads, d_ff, e_layers, d_layers, dropout, activation: as in the papers.
    """

    TINY: ClassVar[Dict[str, object]] = dict(
        context_length=32, horizon=8, n_channels=3, label_len=16,
        d_model=16, n_heads=2, d_ff=32, e_layers=2, d_layers=1)
    ALIASES: ClassVar[Dict[str, str]] = dict(
        seq_len="context_length", pred_len="horizon", enc_in="n_channels",
        dec_in="n_channels", c_out="n_channels")

    context_length: int = 96
    horizon: int = 96
    n_channels: int = 7
    label_len: int = 48
    d_model: int = 512
    n_heads: int = 8
    d_ff: int = 2048
    e_layers: int = 2
    d_layers: int = 1
    dropout: float = 0.05
    activation: str = "gelu"

    def __post_init__(self):
        for name in ("context_length", "horizon", "n_channels", "d_model", "n_heads", "d_ff", "e_layers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
        if hasattr(self, "label_len") and not 0 <= self.label_len <= self.context_length:
            raise ValueError(f"label_len must be in [0, context_length], got {self.label_len}")
        if hasattr(self, "d_layers") and self.d_layers < 1:
            raise ValueError(f"d_layers must be >= 1, got {self.d_layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")


def make_config(config_class: type, size: str, overrides: dict) -> ClassicConfig:
    """Build ``config_class`` for ``size`` ("tiny" or "small") with user overrides.

    Accepts the reference code's names as aliases (``seq_len``, ``pred_len``, ``enc_in``).

    Example:
        >>> make_config(ClassicConfig, "tiny", {"horizon": 12}).horizon
        12
    """
    if size not in ("tiny", "small"):
        raise ValueError(f"size must be 'tiny' or 'small', got {size!r}")
    values = dict(config_class.TINY) if size == "tiny" else {}
    fields = {f.name for f in dataclasses.fields(config_class)}
    for key, value in overrides.items():
        key = config_class.ALIASES.get(key, key)
        if key not in fields:
            raise ValueError(f"unknown {config_class.__name__} field {key!r}; known: {', '.join(sorted(fields))}")
        values[key] = value
    return config_class(**values)


def load_state_dict_file(forecaster: Forecaster, path: str) -> None:
    """Load weights saved by our tools (of the Forecaster or of its inner model), no unpickling.

    `path` is a `.safetensors` file, a directory written by `Forecaster.save`, or a
    `torch.save`d state_dict (read with ``weights_only=True``: tensors only, no code).
    """
    if os.path.isdir(path):
        path = os.path.join(path, Forecaster.WEIGHTS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{forecaster.family}: no weights at {path!r}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickled modules and other objects are refused
            raise ValueError(f"{forecaster.family}: {path!r} is not a plain state_dict ({type(e).__name__}); "
                             "save weights with safetensors or torch.save(model.state_dict())") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if state and all(k.startswith("model.") for k in state):
        forecaster.load_state_dict(state)
    else:
        forecaster.model.load_state_dict(state)


class ClassicForecaster(Forecaster):
    """Adapter shared by the five classic families: ``self.model(past) -> forecast``.

    Subclasses set ``config_class`` and ``network_class``; the network builds its own
    decoder input from ``past`` and names its protected modules.
    """

    config_class: ClassVar[type] = ClassicConfig
    network_class: ClassVar[type] = nn.Module

    @classmethod
    def build(cls, pretrained: Optional[str] = None, size: str = "small", **config) -> "ClassicForecaster":
        cfg = make_config(cls.config_class, size, config)
        net = cls.network_class(cfg)
        forecaster = cls(net, cfg.context_length, cfg.horizon, cfg.n_channels, dataclasses.asdict(cfg))
        if pretrained is not None:
            load_state_dict_file(forecaster, pretrained)
        return forecaster

    @classmethod
    def _skeleton(cls, meta: dict) -> "ClassicForecaster":
        # `config` is the whole dataclass: every field given, nothing taken from a preset
        return cls.build(pretrained=None, size="small", **meta["config"])

    def _forecast(self, past: torch.Tensor) -> torch.Tensor:  # [B, L, C] -> [B, H, C]
        if past.shape[1] != self.context_length:
            raise ValueError(f"{type(self).__name__} reads exactly {self.context_length} past steps, got {past.shape[1]}")
        return self.model(past)

    def protected_modules(self) -> List[nn.Module]:
        return list(self.model.protected_modules())

    def head_modules(self) -> List[nn.Module]:
        """The output projection(s): the protected modules that are not input embeddings
        (Autoformer / FEDformer: the decoder projection and the per-layer trend projections;
        Crossformer: every decoder layer's `linear_pred`)."""
        names = {id(m): n for n, m in self.named_modules()}
        return [m for m in self.protected_modules() if "embedding" not in names.get(id(m), "")]

    def layer_stacks(self) -> list:
        """Encoder layers (`e_layers`) and decoder layers (`d_layers`), one kept in each.

        Informer's distilling encoder (`conv_layers`, each halving the length between two
        layers) is not offered: removing a layer there also changes how often the sequence
        is halved, which skipping the layer does not show. Decomposition decoder layers
        (Autoformer, FEDformer) also return a trend: a skipped one adds none. The networks
        read the list lengths, so nothing else changes; `config` (the dataclass a saved model
        is rebuilt from) keeps the unpruned `e_layers` / `d_layers`.
        """
        from ..strategies.layers import BlockStack

        stacks = []
        enc, dec = getattr(self.model, "encoder", None), getattr(self.model, "decoder", None)
        if isinstance(getattr(enc, "attn_layers", None), nn.ModuleList) and getattr(enc, "conv_layers", None) is None:
            stacks.append(BlockStack("model.encoder.attn_layers"))
        if isinstance(getattr(dec, "layers", None), nn.ModuleList):
            decomp = any(isinstance(layer, DecompDecoderLayer) for layer in dec.layers)
            stacks.append(BlockStack("model.decoder.layers", skip=_skip_with_zero_side if decomp else None))
        return stacks


def _skip_with_zero_side(output, hidden_in):
    """A skipped block that returns (hidden, side output): its input, and zeros for the side
    output (a decomposition decoder layer's trend, a Crossformer decoder layer's prediction)."""
    x, side = output
    return hidden_in, torch.zeros_like(side)


# --- embeddings ----------------------------------------------------------------------
def circular_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Circular padding of the last dim by ``pad`` on each side: ``[..., L] -> [..., L + 2*pad]``.

    Same values as ``F.pad(x, (pad, pad), mode="circular")``, written as one ``index_select``
    so that autograd-based tracers (torch-pruning) see a single channel-preserving op.

    Example:
        >>> circular_pad(torch.arange(4.).view(1, 1, 4), 1)
        tensor([[[3., 0., 1., 2., 3., 0.]]])
    """
    L = x.shape[-1]
    index = torch.arange(-pad, L + pad, device=x.device) % L
    return x.index_select(-1, index)


class PositionalEmbedding(nn.Module):
    """Fixed sine/cosine position encoding, a (non-persistent) buffer ``pe[1, max_len, d_model]``.

    Pruning d_model must slice ``pe`` along dim 2 (a buffer is invisible to autograd tracing).
    """

    def __init__(self, d_model: int, max_len: int = 5000):
        super().__init__()
        pe = torch.zeros(max_len, d_model)
        position = torch.arange(0, max_len).float().unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2).float() * -(math.log(10000.0) / d_model))
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)[:, : d_model // 2]
        self.register_buffer("pe", pe.unsqueeze(0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, *] -> [1, L, d_model]
        return self.pe[:, : x.size(1)]


class TokenEmbedding(nn.Module):
    """Value embedding: Conv1d(c_in -> d_model, kernel 3) over time with circular padding.

    The reference uses ``padding_mode="circular"``; here the padding is explicit (`circular_pad`).
    """

    def __init__(self, c_in: int, d_model: int):
        super().__init__()
        self.tokenConv = nn.Conv1d(c_in, d_model, kernel_size=3, padding=0, bias=False)
        nn.init.kaiming_normal_(self.tokenConv.weight, mode="fan_in", nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, C] -> [B, L, d_model]
        x = circular_pad(x.permute(0, 2, 1), 1)  # [B, C, L + 2]
        return self.tokenConv(x).transpose(1, 2)


class DataEmbedding(nn.Module):
    """Value embedding (+ fixed position encoding when ``positional``) + dropout.

    The papers also add a calendar (time-feature) embedding; the forecasters here receive
    only past values, so it is left out. Autoformer/FEDformer use ``positional=False``
    (their reference ``DataEmbedding_wo_pos``).
    """

    def __init__(self, c_in: int, d_model: int, dropout: float = 0.1, positional: bool = True, max_len: int = 5000):
        super().__init__()
        self.value_embedding = TokenEmbedding(c_in, d_model)
        self.position_embedding = PositionalEmbedding(d_model, max_len) if positional else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, C] -> [B, L, d_model]
        out = self.value_embedding(x)
        if self.position_embedding is not None:
            out = out + self.position_embedding(x)
        return self.dropout(out)


# --- decomposition -------------------------------------------------------------------
class MovingAvg(nn.Module):
    """Moving average over time with the ends replicated, so the length is kept."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.kernel_size = int(kernel_size)
        self.avg = nn.AvgPool1d(kernel_size=self.kernel_size, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, C] -> [B, L, C]
        k = self.kernel_size
        end_n = (k - 1) // 2
        front_n = k - 1 - end_n  # = end_n for odd kernels; one more for even ones (FEDformer's rule)
        # replicate padding == the reference's cat of repeated first/last steps (no cat along time:
        # torch-pruning reads every cat as a channel concat)
        x = F.pad(x.permute(0, 2, 1), (front_n, end_n), mode="replicate")  # [B, C, L + k - 1]
        return self.avg(x).permute(0, 2, 1)


class SeriesDecomp(nn.Module):
    """Series decomposition: ``x = seasonal + trend`` with trend a moving average."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.moving_avg = MovingAvg(kernel_size)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:  # -> (seasonal, trend)
        trend = self.moving_avg(x)
        return x - trend, trend


class MyLayerNorm(nn.Module):
    """Autoformer's ``my_Layernorm``: LayerNorm, then remove the mean over time."""

    def __init__(self, channels: int):
        super().__init__()
        self.layernorm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D]
        x_hat = self.layernorm(x)
        return x_hat - x_hat.mean(dim=1, keepdim=True)


# --- attention -----------------------------------------------------------------------
class FullAttention(nn.Module):
    """Scaled dot-product attention on ``[B, L, H, E]`` inputs (optionally causal)."""

    def __init__(self, mask_flag: bool = True, scale: Optional[float] = None, attention_dropout: float = 0.1):
        super().__init__()
        self.mask_flag = mask_flag
        self.scale = scale
        self.dropout = nn.Dropout(attention_dropout)

    def forward(self, queries, keys, values, attn_mask=None):
        # queries [B, L, H, E], keys [B, S, H, E], values [B, S, H, D] -> [B, L, H, D]
        L, E = queries.shape[1], queries.shape[3]
        S = keys.shape[1]
        scale = self.scale or 1.0 / math.sqrt(E)
        scores = torch.einsum("blhe,bshe->bhls", queries, keys)  # [B, H, L, S]
        if self.mask_flag:
            if attn_mask is None:
                attn_mask = torch.ones(L, S, dtype=torch.bool, device=queries.device).triu(1)
            scores = scores.masked_fill(attn_mask, float("-inf"))
        attn = self.dropout(torch.softmax(scale * scores, dim=-1))
        return torch.einsum("bhls,bshd->blhd", attn, values).contiguous()


class AttentionLayer(nn.Module):
    """Multi-head wrapper: separate q/k/v/out ``nn.Linear`` projections around an inner attention.

    The inner attention receives ``[B, L, H, E]`` tensors and returns ``[B, L, H, D]``; it
    takes H, E, D from the shapes. ``n_heads`` is read at call time, so removing whole heads
    (rows ``h*E:(h+1)*E`` of q/k/v, the same columns of out, block ``h`` of every
    `per_head_parameters` entry) and decrementing ``n_heads`` is a valid surgery.

    An inner attention with a ``scale`` attribute left at None gets ``1/sqrt(d_keys)`` here
    (the value the reference computes from the shape at call time).

    An inner attention that never reads keys or values (FEDformer's Fourier blocks) sets
    ``uses_keys``/``uses_values`` to False. The projection is still built (as in the
    reference, and so that every attention has the four Linears), but it is not run: its
    name is listed in ``unused_projections``, no gradient reaches it, and its width only
    follows the heads (slice its rows with the heads; nothing reads its input width).

    Args:
        attention: the inner attention module.
        d_model: width of the residual stream.
        n_heads: number of heads.
        d_keys, d_values: per-head widths (default ``d_model // n_heads``).
    """

    def __init__(self, attention: nn.Module, d_model: int, n_heads: int,
                 d_keys: Optional[int] = None, d_values: Optional[int] = None):
        super().__init__()
        d_keys = d_keys or (d_model // n_heads)
        d_values = d_values or (d_model // n_heads)
        self.inner_attention = attention
        self.query_projection = nn.Linear(d_model, d_keys * n_heads)
        self.key_projection = nn.Linear(d_model, d_keys * n_heads)
        self.value_projection = nn.Linear(d_model, d_values * n_heads)
        self.out_projection = nn.Linear(d_values * n_heads, d_model)
        self.n_heads = int(n_heads)
        self.unused_projections = tuple(
            name for name, used in (("key_projection", getattr(attention, "uses_keys", True)),
                                    ("value_projection", getattr(attention, "uses_values", True))) if not used)
        if getattr(attention, "scale", False) is None:
            # fix the softmax temperature at 1/sqrt(head width) now, so that pruning head
            # dims later does not silently change it (the reference reads it from the shape)
            attention.scale = 1.0 / math.sqrt(d_keys)

    def in_projections(self) -> List[nn.Linear]:
        """The q/k/v projections (their output rows are grouped by head), used or not."""
        return [self.query_projection, self.key_projection, self.value_projection]

    def per_head_parameters(self) -> List[Tuple[nn.Module, str, int]]:
        """``(owner, attribute, dim)`` of parameters with one block per head along ``dim``."""
        fn = getattr(self.inner_attention, "per_head_parameters", None)
        return list(fn()) if fn is not None else []

    def forward(self, queries, keys, values, attn_mask=None):
        # queries [B, L, d_model], keys/values [B, S, d_model] -> [B, L, d_model]
        B, L, _ = queries.shape
        S = keys.shape[1]
        H = self.n_heads
        q = self.query_projection(queries).view(B, L, H, -1)
        k = None if "key_projection" in self.unused_projections else self.key_projection(keys).view(B, S, H, -1)
        v = None if "value_projection" in self.unused_projections else self.value_projection(values).view(B, S, H, -1)
        out = self.inner_attention(q, k, v, attn_mask)  # [B, L, H, D]
        return self.out_projection(out.reshape(B, L, -1))


# --- Informer / Transformer encoder-decoder --------------------------------------------
def conv_ffn(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The position-wise FFN of the reference encoder/decoder layers: two kernel-1 convs.

    [B, L, D] -> [B, L, D]; `layer` holds conv1, conv2, activation and dropout.
    """
    y = layer.dropout(_ACTIVATIONS[layer.activation](layer.conv1(x.transpose(-1, 1))))  # [B, d_ff, L]
    return layer.dropout(layer.conv2(y).transpose(-1, 1))


class ConvLayer(nn.Module):
    """Informer's distilling layer: circular Conv1d(k=3) + BatchNorm + ELU + MaxPool(stride 2).

    Halves the length: ``[B, L, D] -> [B, ceil(L/2), D]``.
    """

    def __init__(self, c_in: int):
        super().__init__()
        self.downConv = nn.Conv1d(c_in, c_in, kernel_size=3, padding=0)
        self.norm = nn.BatchNorm1d(c_in)
        self.activation = nn.ELU()
        self.maxPool = nn.MaxPool1d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = circular_pad(x.permute(0, 2, 1), 1)  # [B, D, L+2]
        x = self.maxPool(self.activation(self.norm(self.downConv(x))))
        return x.transpose(1, 2)


class EncoderLayer(nn.Module):
    """Post-norm encoder layer: attention + FFN (Conv1d k=1 pair ``conv1``/``conv2``)."""

    def __init__(self, attention: AttentionLayer, d_model: int, d_ff: Optional[int] = None,
                 dropout: float = 0.1, activation: str = "relu"):
        super().__init__()
        d_ff = d_ff or 4 * d_model
        self.attention = attention
        self.conv1 = nn.Conv1d(d_model, d_ff, kernel_size=1)
        self.conv2 = nn.Conv1d(d_ff, d_model, kernel_size=1)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.activation = activation

    def forward(self, x: torch.Tensor, attn_mask=None) -> torch.Tensor:  # [B, L, D]
        x = x + self.dropout(self.attention(x, x, x, attn_mask))
        y = x = self.norm1(x)
        y = conv_ffn(self, y)
        return self.norm2(x + y)


class Encoder(nn.Module):
    """A stack of encoder layers, optionally interleaved with distilling `ConvLayer`s."""

    def __init__(self, attn_layers: Sequence[nn.Module], conv_layers: Optional[Sequence[nn.Module]] = None,
                 norm_layer: Optional[nn.Module] = None):
        super().__init__()
        self.attn_layers = nn.ModuleList(attn_layers)
        self.conv_layers = nn.ModuleList(conv_layers) if conv_layers is not None else None
        self.norm = norm_layer

    def forward(self, x: torch.Tensor, attn_mask=None) -> torch.Tensor:  # [B, L, D] -> [B, L', D]
        if self.conv_layers is not None:
            for attn_layer, conv_layer in zip(self.attn_layers, self.conv_layers):
                x = conv_layer(attn_layer(x, attn_mask))
            x = self.attn_layers[-1](x, attn_mask)
        else:
            for attn_layer in self.attn_layers:
                x = attn_layer(x, attn_mask)
        if self.norm is not None:
            x = self.norm(x)
        return x


class DecoderLayer(nn.Module):
    """Post-norm decoder layer: (masked) self-attention, cross-attention, FFN."""

    def __init__(self, self_attention: AttentionLayer, cross_attention: AttentionLayer, d_model: int,
                 d_ff: Optional[int] = None, dropout: float = 0.1, activation: str = "relu"):
        super().__init__()
        d_ff = d_ff or 4 * d_model
        self.self_attention = self_attention
        self.cross_attention = cross_attention
        self.conv1 = nn.Conv1d(d_model, d_ff, kernel_size=1)
        self.conv2 = nn.Conv1d(d_ff, d_model, kernel_size=1)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.activation = activation

    def forward(self, x, cross, x_mask=None, cross_mask=None):  # x [B, L, D], cross [B, S, D]
        x = self.norm1(x + self.dropout(self.self_attention(x, x, x, x_mask)))
        x = x + self.dropout(self.cross_attention(x, cross, cross, cross_mask))
        y = x = self.norm2(x)
        y = conv_ffn(self, y)
        return self.norm3(x + y)


class Decoder(nn.Module):
    """A stack of decoder layers with a final norm (the projection lives in the model)."""

    def __init__(self, layers: Sequence[nn.Module], norm_layer: Optional[nn.Module] = None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm_layer

    def forward(self, x, cross, x_mask=None, cross_mask=None):
        for layer in self.layers:
            x = layer(x, cross, x_mask, cross_mask)
        if self.norm is not None:
            x = self.norm(x)
        return x


# --- Autoformer / FEDformer decomposition encoder-decoder --------------------------------
class DecompEncoderLayer(nn.Module):
    """Autoformer encoder layer: attention, decomposition, FFN (bias-free Conv1d k=1), decomposition.

    Only the seasonal part goes on; the trends are discarded (as in the paper).
    """

    def __init__(self, attention: AttentionLayer, d_model: int, d_ff: Optional[int] = None,
                 moving_avg: int = 25, dropout: float = 0.1, activation: str = "relu"):
        super().__init__()
        d_ff = d_ff or 4 * d_model
        self.attention = attention
        self.conv1 = nn.Conv1d(d_model, d_ff, kernel_size=1, bias=False)
        self.conv2 = nn.Conv1d(d_ff, d_model, kernel_size=1, bias=False)
        self.decomp1 = SeriesDecomp(moving_avg)
        self.decomp2 = SeriesDecomp(moving_avg)
        self.dropout = nn.Dropout(dropout)
        self.activation = activation

    def forward(self, x: torch.Tensor, attn_mask=None) -> torch.Tensor:  # [B, L, D]
        x = x + self.dropout(self.attention(x, x, x, attn_mask))
        x, _ = self.decomp1(x)
        y = conv_ffn(self, x)
        res, _ = self.decomp2(x + y)
        return res


class DecompDecoderLayer(nn.Module):
    """Autoformer decoder layer: returns the seasonal part and this layer's trend (in C channels).

    The three extracted trends are summed and projected d_model -> C by a circular
    Conv1d(k=3, no bias) named ``projection`` (explicit circular padding here).
    """

    def __init__(self, self_attention: AttentionLayer, cross_attention: AttentionLayer, d_model: int,
                 c_out: int, d_ff: Optional[int] = None, moving_avg: int = 25, dropout: float = 0.1,
                 activation: str = "relu"):
        super().__init__()
        d_ff = d_ff or 4 * d_model
        self.self_attention = self_attention
        self.cross_attention = cross_attention
        self.conv1 = nn.Conv1d(d_model, d_ff, kernel_size=1, bias=False)
        self.conv2 = nn.Conv1d(d_ff, d_model, kernel_size=1, bias=False)
        self.decomp1 = SeriesDecomp(moving_avg)
        self.decomp2 = SeriesDecomp(moving_avg)
        self.decomp3 = SeriesDecomp(moving_avg)
        self.dropout = nn.Dropout(dropout)
        self.projection = nn.Conv1d(d_model, c_out, kernel_size=3, stride=1, padding=0, bias=False)
        self.activation = activation

    def forward(self, x, cross, x_mask=None, cross_mask=None):  # x [B, L, D], cross [B, S, D]
        x = x + self.dropout(self.self_attention(x, x, x, x_mask))
        x, trend1 = self.decomp1(x)
        x = x + self.dropout(self.cross_attention(x, cross, cross, cross_mask))
        x, trend2 = self.decomp2(x)
        y = conv_ffn(self, x)
        x, trend3 = self.decomp3(x + y)
        residual_trend = trend1 + trend2 + trend3  # [B, L, D]
        residual_trend = circular_pad(residual_trend.permute(0, 2, 1), 1)  # [B, D, L + 2]
        residual_trend = self.projection(residual_trend).transpose(1, 2)  # [B, L, C]
        return x, residual_trend


class DecompDecoder(nn.Module):
    """Autoformer decoder: accumulates the trend; norm and Linear projection of the seasonal part."""

    def __init__(self, layers: Sequence[nn.Module], norm_layer: Optional[nn.Module] = None,
                 projection: Optional[nn.Module] = None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm_layer
        self.projection = projection

    def forward(self, x, cross, x_mask=None, cross_mask=None, trend=None):
        for layer in self.layers:
            x, residual_trend = layer(x, cross, x_mask, cross_mask)
            trend = trend + residual_trend
        if self.norm is not None:
            x = self.norm(x)
        if self.projection is not None:
            x = self.projection(x)
        return x, trend


class DecompositionNet(nn.Module):
    """Shared forward of the decomposition forecasters (Autoformer, FEDformer).

    Subclasses build `decomp`, `enc_embedding`, `dec_embedding`, `encoder`, `decoder`
    (a `DecompDecoder`) and set `label_len`, `pred_len`. The decoder starts from the last
    `label_len` seasonal steps (zeros ahead) and trend steps (the context mean ahead).
    """

    def protected_modules(self) -> List[nn.Module]:
        return ([self.enc_embedding.value_embedding.tokenConv, self.dec_embedding.value_embedding.tokenConv,
                 self.decoder.projection] + [layer.projection for layer in self.decoder.layers])

    def forward(self, x_enc: torch.Tensor) -> torch.Tensor:  # [B, L, C] -> [B, H, C]
        B, L, C = x_enc.shape
        mean = x_enc.mean(dim=1, keepdim=True).expand(B, self.pred_len, C)
        seasonal_init, trend_init = self.decomp(x_enc)
        # cat([last label_len trend steps, mean]) and cat([last seasonal steps, zeros]), written
        # as pads (torch-pruning reads every cat as a channel concatenation)
        trend_init = (F.pad(trend_init[:, L - self.label_len:, :], (0, 0, 0, self.pred_len))
                      + F.pad(mean, (0, 0, self.label_len, 0)))                           # [B, label+H, C]
        seasonal_init = F.pad(seasonal_init[:, L - self.label_len:, :], (0, 0, 0, self.pred_len))
        enc_out = self.encoder(self.enc_embedding(x_enc))                                 # [B, L, D]
        seasonal_part, trend_part = self.decoder(self.dec_embedding(seasonal_init), enc_out, trend=trend_init)
        return (trend_part + seasonal_part)[:, -self.pred_len:, :]
