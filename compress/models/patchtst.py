"""PatchTST (Nie et al., ICLR 2023) through Hugging Face transformers' `PatchTSTForPrediction`.

Channel-independent with shared weights: each channel is a separate univariate series
through the same patch embedding, Transformer encoder and flatten-linear head. The adapter
builds the model with `num_input_channels=1` and folds channels into the batch, which is
exactly the same computation (per-channel scaling, BatchNorm over patches), so any channel
count works (`n_channels is None`). A model built or loaded with `num_input_channels > 1`
is called with its channels as they are and fixes `n_channels`.
"""
from __future__ import annotations

import json
import os
from typing import List, Optional

import torch
from torch import nn

from .base import Forecaster, register

__all__ = ["PatchTSTForecaster", "SIZES"]

SIZES = {
    "tiny": dict(
        context_length=32, patch_length=8, patch_stride=8, prediction_length=8,
        d_model=16, num_attention_heads=2, num_hidden_layers=2, ffn_dim=32,
    ),
    # PatchTST/64 of the paper (L=512, P=16, S=8; d_model 128, 16 heads, FFN 256, 3 layers,
    # dropout 0.2, flatten head), horizon 96.
    "small": dict(
        context_length=512, patch_length=16, patch_stride=8, prediction_length=96,
        d_model=128, num_attention_heads=16, num_hidden_layers=3, ffn_dim=256,
        ff_dropout=0.2, attention_dropout=0.0, head_dropout=0.0,
    ),
}

# What every size shares: channel-independent, shared weights, point (MSE) head, flatten
# head (no pooling), per-window standard scaling (RevIN without affine), BatchNorm.
_COMMON = dict(
    num_input_channels=1, share_embedding=True, share_projection=True, channel_attention=False,
    pooling_type=None, loss="mse", scaling="std", norm_type="batchnorm", pre_norm=True,
    positional_encoding_type="sincos", use_cls_token=False, do_mask_input=False,
)

_ALIASES = {"horizon": "prediction_length"}


def _native(config: dict) -> dict:
    return {_ALIASES.get(k, k): v for k, v in config.items()}


@register("patchtst")
class PatchTSTForecaster(Forecaster):
    """PatchTST (`transformers.PatchTSTForPrediction`) as a `Forecaster`.

    Example:
        >>> m = compress.models.load("patchtst", size="tiny")   # doctest: +SKIP
        >>> m(torch.randn(2, 32, 7)).shape                       # doctest: +SKIP
        torch.Size([2, 8, 7])
    """

    @classmethod
    def build(cls, pretrained: Optional[str] = None, size: str = "small", **config) -> "PatchTSTForecaster":
        """Args:
            pretrained: local directory saved by `PatchTSTForPrediction.save_pretrained`.
            size: "tiny" or "small" (PatchTST/64).
            **config: PatchTSTConfig overrides (`horizon` = `prediction_length`).
        """
        from transformers import PatchTSTConfig, PatchTSTForPrediction

        if size not in SIZES:
            raise ValueError(f"patchtst: unknown size {size!r}; choose one of {sorted(SIZES)}")
        overrides = _native(config)
        if pretrained is not None:
            if not os.path.isdir(pretrained):
                raise FileNotFoundError(f"patchtst: pretrained must be a local directory, got {pretrained!r}")
            model = PatchTSTForPrediction.from_pretrained(pretrained, **overrides)
        else:
            model = PatchTSTForPrediction(PatchTSTConfig(**{**_COMMON, **SIZES[size], **overrides}))
        model.eval()
        cfg = model.config
        if cfg.loss != "mse":
            raise ValueError("patchtst: only the point (loss='mse') head is supported")
        return cls(
            model,
            context_length=cfg.context_length,
            horizon=cfg.prediction_length,
            n_channels=None if cfg.num_input_channels == 1 else cfg.num_input_channels,
            config={
                "size": size,
                "pretrained": None if pretrained is None else os.path.abspath(pretrained),
                "overrides": config,
                "model_config": json.loads(cfg.to_json_string()),
            },
        ).eval()

    def _forecast(self, past: torch.Tensor) -> torch.Tensor:  # [B, L, C] -> [B, H, C]
        b, l, c = past.shape
        folded = self.n_channels is None and c > 1
        x = past.permute(0, 2, 1).reshape(b * c, l, 1) if folded else past  # [B*C, L, 1]
        y = self.model(past_values=x, return_dict=True).prediction_outputs  # [B*C, H, 1]
        if folded:
            y = y.reshape(b, c, -1).permute(0, 2, 1)  # [B, H, C]
        return y

    def protected_modules(self) -> List[nn.Module]:
        # Patch embedding (patch_length -> d_model) and the flatten-linear head.
        emb = self.model.model.encoder.embedder.input_embedding
        head = self.model.head
        return [emb, head.projection if head.share_projection else head.projections]
