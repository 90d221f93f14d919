"""Forecasters from other libraries and hand-written reproductions of their patterns.

Each builder returns `(model, example_inputs)` with a tiny config and random weights, so
`compress.prune` can be tried on it the way a new user would: their own model classes,
wrapped (where the class does not map a [B, L, C] window to a forecast) by the few lines
a user would write.

Library models (installed beside torch 2.13 by the `test` extra):
* pytorch-forecasting: TimeXer (dict in, dict out; Time-Series-Library attention layers,
  Conv1d FFNs), the Temporal Fusion Transformer's gated residual networks (GLU gates) and
  interpretable multi-head attention (one value projection shared by all heads), its
  series decomposition (`cat([repeat, x, repeat])` padding).
* transformers: the Informer encoder (ProbSparse attention that reshapes with
  `self.embed_dim`, circular-padded distilling Conv1d after each block), the Autoformer
  encoder (auto-correlation, series decomposition), the vanilla time-series Transformer
  encoder; all return `BaseModelOutput`.
* gluonts: the torch PatchTST model (nn.TransformerEncoder inside, tuple of
  distribution arguments out).

Hand-written modules reproduce the patterns of libraries that do not install cleanly
here (neuralforecast needs ray): PatchTST's residual attention (`res_attention=True`),
TimesNet's Conv2d core, an attention returning a dataclass, and minimal versions of
each failure class of issue 13.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

L, H, C = 16, 4, 3  # context, horizon, channels of every model here


def past(batch: int = 2, length: int = L, channels: int = C) -> torch.Tensor:
    return torch.randn(batch, length, channels)


# ---------------------------------------------------------------------------------------
# pytorch-forecasting
# ---------------------------------------------------------------------------------------
def ptf_timexer():
    """pytorch-forecasting's TimeXer (v2): dict of tensors in, {"prediction": ...} out."""
    import warnings

    from pytorch_forecasting.models.timexer._timexer_v2 import TimeXer

    meta = {"context_length": L, "prediction_length": H, "n_features": {"continuous": C, "target": 1},
            "features": "MS"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = TimeXer(loss=nn.MSELoss(), hidden_size=16, n_heads=4, e_layers=2, d_ff=32, dropout=0.0,
                        patch_length=4, metadata=meta)
    model.eval()
    x = {"history_cont": past(), "history_target": past(channels=1)}
    return model, (x,)  # forward(x: dict): one positional argument


class PtfTFTBlocks(nn.Module):
    """A TFT-style forecaster from pytorch-forecasting's own sub-modules.

    Gated residual networks (GLU gates: `F.glu(Linear(d, 2d)(x))`), interpretable
    multi-head attention (per-head q/k Linears in ModuleLists, ONE value projection shared
    by all heads) and gate-add-norm.
    """

    def __init__(self, d: int = 16, n_heads: int = 4):
        super().__init__()
        from pytorch_forecasting.models.temporal_fusion_transformer.sub_modules import (
            GateAddNorm, GatedResidualNetwork, InterpretableMultiHeadAttention)

        self.embed = nn.Linear(C, d)
        self.grn = GatedResidualNetwork(d, 32, d, dropout=0.0)
        self.attn = InterpretableMultiHeadAttention(n_head=n_heads, d_model=d, dropout=0.0)
        self.post_attn = GateAddNorm(d, dropout=0.0)
        self.ff = GatedResidualNetwork(d, 32, d, dropout=0.0)
        self.head = nn.Linear(L * d, H * C)

    def forward(self, x):  # [B, L, C]
        z = self.grn(self.embed(x))
        a, _ = self.attn(z, z, z)
        z = self.ff(self.post_attn(a, z))
        return self.head(z.flatten(1)).view(x.shape[0], H, C)


def ptf_tft_blocks():
    return PtfTFTBlocks().eval(), past()


class PtfDecompFormer(nn.Module):
    """Autoformer-style encoder from pytorch-forecasting's layers: Time-Series-Library
    `AttentionLayer(FullAttention)` attention, Conv1d FFN, and `SeriesDecomposition`
    (moving average with `cat([front.repeat, x, end.repeat])` padding) after each block."""

    def __init__(self, d: int = 16, n_heads: int = 4, n_layers: int = 2):
        super().__init__()
        from pytorch_forecasting.layers import AttentionLayer, FullAttention, SeriesDecomposition

        self.embed = nn.Linear(C, d)
        self.attn = nn.ModuleList([AttentionLayer(FullAttention(False, attention_dropout=0.0), d, n_heads)
                                   for _ in range(n_layers)])
        self.conv1 = nn.ModuleList([nn.Conv1d(d, 32, 1) for _ in range(n_layers)])
        self.conv2 = nn.ModuleList([nn.Conv1d(32, d, 1) for _ in range(n_layers)])
        self.decomp = nn.ModuleList([SeriesDecomposition(5) for _ in range(n_layers)])
        self.head = nn.Linear(L * d, H * C)

    def forward(self, x):
        z = self.embed(x)
        for attn, c1, c2, dec in zip(self.attn, self.conv1, self.conv2, self.decomp):
            z = z + attn(z, z, z, None)[0]
            z = z + c2(F.relu(c1(z.transpose(1, 2)))).transpose(1, 2)
            z, _ = dec(z)
        return self.head(z.flatten(1)).view(x.shape[0], H, C)


def ptf_decompformer():
    return PtfDecompFormer().eval(), past()


# ---------------------------------------------------------------------------------------
# transformers (time-series encoders; BaseModelOutput out)
# ---------------------------------------------------------------------------------------
class HFEncoderForecaster(nn.Module):
    """What a user writes around a transformers time-series encoder: project the window
    to the encoder's feature size, run it, forecast from the flattened last hidden state."""

    def __init__(self, encoder: nn.Module, feature_size: int, d: int, out_len: int):
        super().__init__()
        self.inp = nn.Linear(C, feature_size)
        self.encoder = encoder
        self.head = nn.Linear(out_len * d, H * C)

    def forward(self, x):
        out = self.encoder(inputs_embeds=self.inp(x))
        return self.head(out.last_hidden_state.flatten(1)).view(x.shape[0], H, C)


def _hf_config(cls, **kw):
    cfg = cls(prediction_length=H, context_length=L, input_size=1, lags_sequence=[1], num_time_features=1,
              d_model=16, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
              decoder_attention_heads=4, encoder_ffn_dim=32, decoder_ffn_dim=32, dropout=0.0,
              attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0, **kw)
    return cfg


def hf_informer(distil: bool = True, attention_type: str = "prob"):
    from transformers import InformerConfig
    from transformers.models.informer.modeling_informer import InformerEncoder

    cfg = _hf_config(InformerConfig, distil=distil, attention_type=attention_type)
    enc = InformerEncoder(cfg)
    out_len = L
    if distil:  # each distilling conv layer halves the length (max-pool stride 2)
        for _ in range(cfg.encoder_layers - 1):
            out_len = (out_len - 1) // 2 + 1
    return HFEncoderForecaster(enc, cfg.feature_size, cfg.d_model, out_len).eval(), past()


def hf_autoformer():
    from transformers import AutoformerConfig
    from transformers.models.autoformer.modeling_autoformer import AutoformerEncoder

    cfg = _hf_config(AutoformerConfig, moving_average=5)
    return HFEncoderForecaster(AutoformerEncoder(cfg), cfg.feature_size, cfg.d_model, L).eval(), past()


def hf_time_series_transformer():
    from transformers import TimeSeriesTransformerConfig
    from transformers.models.time_series_transformer.modeling_time_series_transformer import (
        TimeSeriesTransformerEncoder)

    cfg = _hf_config(TimeSeriesTransformerConfig)
    enc = TimeSeriesTransformerEncoder(cfg)
    return HFEncoderForecaster(enc, cfg.feature_size, cfg.d_model, L).eval(), past()


# ---------------------------------------------------------------------------------------
# gluonts (torch)
# ---------------------------------------------------------------------------------------
class GluonPatchTST(nn.Module):
    """gluonts' torch PatchTSTModel on one series per channel; its Student-t mean is the forecast."""

    def __init__(self):
        super().__init__()
        from gluonts.torch.model.patch_tst.module import PatchTSTModel

        self.model = PatchTSTModel(prediction_length=H, context_length=L, patch_len=4, stride=4, padding_patch="end",
                                   d_model=16, nhead=4, dim_feedforward=32, num_feat_dynamic_real=0, norm_first=False,
                                   num_encoder_layers=2,
                                   activation="relu", dropout=0.0, scaling="mean")

    def forward(self, x):  # [B, L, C] -> one series per (sample, channel)
        B = x.shape[0]
        series = x.transpose(1, 2).reshape(B * C, L)
        (df, loc, scale), l_, s_ = self.model(series, torch.ones_like(series))
        mean = l_ + s_ * loc  # loc of the Student-t, rescaled: [B*C, H]
        return mean.reshape(B, C, H).transpose(1, 2)


def gluonts_patchtst():
    return GluonPatchTST().eval(), past()


# ---------------------------------------------------------------------------------------
# hand-written reproductions
# ---------------------------------------------------------------------------------------
class QKVOAttention(nn.Module):
    """Plain attention with q/k/v/out projections and `n_heads`; no width attributes."""

    def __init__(self, d: int, h: int):
        super().__init__()
        self.n_heads = h
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def heads(self, x):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, -1).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_heads, -1).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_heads, -1).transpose(1, 2)
        return q, k, v

    def forward(self, x):
        q, k, v = self.heads(x)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
        return self.out_proj((a @ v).transpose(1, 2).flatten(2))


class EmbedDimAttention(nn.Module):
    """Reshapes with `self.embed_dim` (= heads x head_dim), as transformers' attention does."""

    def __init__(self, d: int, h: int):
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = d, h, d // h
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim), -1)
        return self.out_proj((a @ v).transpose(1, 2).reshape(B, T, self.embed_dim))


class HiddenSizeAttention(nn.Module):
    """BERT-style: `all_head_size` for the merge, `attention_head_size` per head."""

    def __init__(self, d: int, h: int):
        super().__init__()
        self.num_attention_heads, self.attention_head_size = h, d // h
        self.all_head_size = d
        self.query, self.key, self.value, self.dense = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        B, T, _ = x.shape
        shape = (B, T, self.num_attention_heads, self.attention_head_size)
        q, k, v = (m(x).view(shape).transpose(1, 2) for m in (self.query, self.key, self.value))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.attention_head_size), -1)
        return self.dense((a @ v).transpose(1, 2).reshape(B, T, self.all_head_size))


@dataclass
class AttnOut:
    """An attention module's output as a dataclass (as transformers' ModelOutputs are)."""

    hidden: torch.Tensor
    weights: Optional[torch.Tensor] = None


class DataclassAttention(QKVOAttention):
    def forward(self, x):
        q, k, v = self.heads(x)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
        return AttnOut(self.out_proj((a @ v).transpose(1, 2).flatten(2)), a)


class ModelOutputAttention(QKVOAttention):
    def forward(self, x):
        from transformers.modeling_outputs import BaseModelOutput

        q, k, v = self.heads(x)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
        return BaseModelOutput(last_hidden_state=self.out_proj((a @ v).transpose(1, 2).flatten(2)), attentions=(a,))


class DictAttention(QKVOAttention):
    def forward(self, x):
        return {"out": super().forward(x), "aux": None}


class ListAttention(QKVOAttention):
    def forward(self, x):
        return [super().forward(x)]


class GLUFFN(nn.Module):
    """One Linear to twice the width, `F.glu` halves it (TFT / gated-linear-unit style)."""

    def __init__(self, d: int, f: int):
        super().__init__()
        self.fc = nn.Linear(d, 2 * f)
        self.proj = nn.Linear(f, d)

    def forward(self, x):
        return self.proj(F.glu(self.fc(x), dim=-1))


class CircularDistil(nn.Module):
    """Informer's distilling layer: circular-padded Conv1d, norm, ELU, max-pool."""

    def __init__(self, d: int):
        super().__init__()
        self.conv = nn.Conv1d(d, d, 3, padding=1, padding_mode="circular")
        self.norm = nn.BatchNorm1d(d)
        self.pool = nn.MaxPool1d(3, 2, 1)

    def forward(self, x):
        return self.pool(F.elu(self.norm(self.conv(x.transpose(1, 2))))).transpose(1, 2)


class MovingAvgDecomp(nn.Module):
    """Series decomposition with replicate padding by `cat([repeat, x, repeat])`."""

    def __init__(self, k: int = 5):
        super().__init__()
        self.k = k
        self.avg = nn.AvgPool1d(k, 1)

    def forward(self, x):  # [B, T, D]
        p = (self.k - 1) // 2
        front, end = x[:, :1].repeat(1, p, 1), x[:, -1:].repeat(1, p, 1)
        trend = self.avg(torch.cat([front, x, end], 1).transpose(1, 2)).transpose(1, 2)
        return x - trend, trend


class PatternBlock(nn.Module):
    def __init__(self, attn: nn.Module, ffn: nn.Module, d: int, after: Optional[nn.Module] = None):
        super().__init__()
        self.attn, self.ffn, self.after = attn, ffn, after
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, x):
        a = self.attn(x)
        if isinstance(a, AttnOut):
            a = a.hidden
        elif hasattr(a, "last_hidden_state"):  # ModelOutput (a dict subclass)
            a = a.last_hidden_state
        elif isinstance(a, dict):
            a = a["out"]
        elif isinstance(a, list):
            a = a[0]
        x = self.norm1(x + a)
        x = self.norm2(x + self.ffn(x))
        if isinstance(self.after, MovingAvgDecomp):
            x = self.after(x)[0]
        elif self.after is not None:
            x = self.after(x)
        return x


class MLP(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, f), nn.Linear(f, d)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class PatternForecaster(nn.Module):
    """embed -> blocks (attention `attn_cls`, FFN `ffn_cls`, optional layer after) -> flatten head."""

    def __init__(self, attn_cls=QKVOAttention, ffn_cls=MLP, after_cls=None, d: int = 16, h: int = 4,
                 f: int = 32, n_layers: int = 2):
        super().__init__()
        self.embed = nn.Linear(C, d)
        self.blocks = nn.ModuleList(
            [PatternBlock(attn_cls(d, h), ffn_cls(d, f), d, after_cls(d) if after_cls is not None else None)
             for _ in range(n_layers)])
        t = L
        for _ in range(n_layers):
            if after_cls is CircularDistil:
                t = (t - 1) // 2 + 1
        self.head = nn.Linear(t * d, H * C)

    def forward(self, x):
        z = self.embed(x)
        for b in self.blocks:
            z = b(z)
        return self.head(z.flatten(1)).view(x.shape[0], H, C)


def pattern(attn_cls=QKVOAttention, ffn_cls=MLP, after_cls=None, **kw):
    return PatternForecaster(attn_cls, ffn_cls, after_cls, **kw).eval(), past()


class ResidualAttention(nn.Module):
    """PatchTST's `_MultiheadAttention(res_attention=True)`: the pre-softmax scores of the
    previous layer are added to this layer's scores and the sum is handed on."""

    def __init__(self, d: int, h: int):
        super().__init__()
        self.n_heads = h
        self.W_Q, self.W_K, self.W_V = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.to_out = nn.Sequential(nn.Linear(d, d), nn.Dropout(0.0))

    def forward(self, x, prev: Optional[torch.Tensor] = None):
        B, T, _ = x.shape
        q = self.W_Q(x).view(B, T, self.n_heads, -1).transpose(1, 2)
        k = self.W_K(x).view(B, T, self.n_heads, -1).transpose(1, 2)
        v = self.W_V(x).view(B, T, self.n_heads, -1).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # [B, h, T, T]
        if prev is not None:
            scores = scores + prev
        a = torch.softmax(scores, -1)
        return self.to_out((a @ v).transpose(1, 2).flatten(2)), a, scores


class ResAttnForecaster(nn.Module):
    """PatchTST-style encoder with residual attention across its layers."""

    def __init__(self, d: int = 16, h: int = 4, f: int = 32, n_layers: int = 3):
        super().__init__()
        self.embed = nn.Linear(C, d)
        self.attn = nn.ModuleList([ResidualAttention(d, h) for _ in range(n_layers)])
        self.ffn = nn.ModuleList([MLP(d, f) for _ in range(n_layers)])
        self.norms = nn.ModuleList([nn.LayerNorm(d) for _ in range(2 * n_layers)])
        self.head = nn.Linear(L * d, H * C)

    def forward(self, x):
        z, scores = self.embed(x), None
        for i, (attn, ffn) in enumerate(zip(self.attn, self.ffn)):
            a, _, scores = attn(z, scores)
            z = self.norms[2 * i](z + a)
            z = self.norms[2 * i + 1](z + ffn(z))
        return self.head(z.flatten(1)).view(x.shape[0], H, C)


def res_attention():
    return ResAttnForecaster().eval(), past()


class SharedValueAttention(nn.Module):
    """Heads share one value projection (TFT's interpretable attention, hand-written with
    the generic projection names, so it looks like q/k/v/o attention but is not)."""

    def __init__(self, d: int, h: int):
        super().__init__()
        self.n_heads = h
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d // h)
        self.out_proj = nn.Linear(d // h, d)

    def forward(self, x):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, -1).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_heads, -1).transpose(1, 2)
        v = self.v_proj(x).unsqueeze(1)  # [B, 1, T, dv], one value for all heads
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
        return self.out_proj((a @ v).mean(1))


class InceptionConv2d(nn.Module):
    """TimesNet's core: the series folded to 2-D by a period, Conv2d blocks, unfolded."""

    def __init__(self, d: int, f: int):
        super().__init__()
        self.conv1 = nn.Conv2d(d, f, 3, padding=1)
        self.conv2 = nn.Conv2d(f, d, 3, padding=1)

    def forward(self, x, period: int = 4):  # [B, T, D]
        B, T, D = x.shape
        z = x.transpose(1, 2).reshape(B, D, T // period, period)
        z = self.conv2(F.gelu(self.conv1(z)))
        return z.reshape(B, D, T).transpose(1, 2)


class Conv2dCore(nn.Module):
    """A TimesNet-like forecaster: almost all weights are Conv2d."""

    def __init__(self, d: int = 16, f: int = 32, n_layers: int = 2):
        super().__init__()
        self.embed = nn.Linear(C, d)
        self.blocks = nn.ModuleList([InceptionConv2d(d, f) for _ in range(n_layers)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(L * d, H * C)

    def forward(self, x):
        z = self.embed(x)
        for b in self.blocks:
            z = self.norm(z + b(z))
        return self.head(z.flatten(1)).view(x.shape[0], H, C)


def conv2d_core():
    return Conv2dCore().eval(), past()


class LSTMCore(nn.Module):
    """A DeepAR-like forecaster: most weights are in an LSTM, which no strategy prunes."""

    def __init__(self, d: int = 16, hidden: int = 48):
        super().__init__()
        self.embed = nn.Linear(C, d)
        self.rnn = nn.LSTM(d, hidden, num_layers=2, batch_first=True)
        self.proj = nn.Linear(hidden, d)
        self.head = nn.Linear(d, H * C)

    def forward(self, x):
        z, _ = self.rnn(self.embed(x))
        return self.head(torch.relu(self.proj(z[:, -1]))).view(x.shape[0], H, C)


def lstm_core():
    return LSTMCore().eval(), past()


#: name -> builder, every model of the set
BUILDERS = {
    "ptf_timexer": ptf_timexer,
    "ptf_tft_blocks": ptf_tft_blocks,
    "ptf_decompformer": ptf_decompformer,
    "hf_informer": hf_informer,
    "hf_informer_full": lambda: hf_informer(attention_type="full"),
    "hf_autoformer": hf_autoformer,
    "hf_tst": hf_time_series_transformer,
    "gluonts_patchtst": gluonts_patchtst,
    "embed_dim_attention": lambda: pattern(EmbedDimAttention),
    "hidden_size_attention": lambda: pattern(HiddenSizeAttention),
    "dataclass_attention": lambda: pattern(DataclassAttention),
    "modeloutput_attention": lambda: pattern(ModelOutputAttention),
    "dict_attention": lambda: pattern(DictAttention),
    "list_attention": lambda: pattern(ListAttention),
    "glu_ffn": lambda: pattern(ffn_cls=GLUFFN),
    "circular_conv_after_block": lambda: pattern(after_cls=CircularDistil),
    "decomposition_padding": lambda: pattern(after_cls=lambda d: MovingAvgDecomp()),
    "shared_value_attention": lambda: pattern(SharedValueAttention),
    "res_attention": res_attention,
    "conv2d_core": conv2d_core,
}
