"""PatchTST (Nie et al., ICLR 2023) through Hugging Face transformers' `PatchTSTForPrediction`.

Channel-independent with shared weights: each channel is a separate univariate series
through the same patch embedding, Transformer encoder and flatten-linear head. The adapter
builds the model with `num_input_channels=1` and folds channels into the batch, which is
exactly the same computation (per-channel scaling, BatchNorm over patches), so any channel
count works (`n_channels is None`). A model built or loaded with `num_input_channels > 1`
is called with its channels as they are and fixes `n_channels`.
"""
from __future__ import annotations

import copy
import json
import os
from typing import List, Optional

import torch
from torch import nn

from .base import Forecaster, build_record, check_config_keys, register

__all__ = ["PatchTSTForecaster", "PRETRAINED_DIR", "SIZES"]

#: The shipped pretrained PatchTST (`patchtst-mini-pretrained`: 3 layers, d_model 192,
#: context 512, prediction length 192; recipe in benchmarks/pretrain/). Load it with
#: `compress.models.load("patchtst", pretrained=PRETRAINED_DIR, horizon=96)`.
PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights", "patchtst-mini-pretrained")

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


def _trim_head(model: nn.Module, horizon: int) -> None:
    """Keep the first `horizon` output rows of the (point) forecasting head, in place.

    Each output step of the flatten head is its own row of the projection, and the
    de-scaling after it is per channel, so the trimmed model's forecast equals the first
    `horizon` steps of the full one; parameters and FLOPs then count only what is used.
    """
    head = model.head
    names = ["projection"] if head.share_projection else [f"projections.{i}" for i in range(len(head.projections))]
    for name in names:
        old = head.get_submodule(name)
        new = nn.Linear(old.in_features, horizon, bias=old.bias is not None)
        with torch.no_grad():
            new.weight.copy_(old.weight[:horizon])
            if old.bias is not None:
                new.bias.copy_(old.bias[:horizon])
        if head.share_projection:
            head.projection = new
        else:
            head.projections[int(name.split(".")[1])] = new
    model.config.prediction_length = horizon


@register("patchtst")
class PatchTSTForecaster(Forecaster):
    """PatchTST (`transformers.PatchTSTForPrediction`) as a `Forecaster`.

    Example:
        >>> m = compress.models.load("patchtst", size="tiny")   # doctest: +SKIP
        >>> m(torch.randn(2, 32, 7)).shape                       # doctest: +SKIP
        torch.Size([2, 8, 7])
    """

    requires = ("transformers",)

    @classmethod
    def build(cls, pretrained: Optional[str] = None, size: str = "small", **config) -> "PatchTSTForecaster":
        """Args:
            pretrained: local directory saved by `PatchTSTForPrediction.save_pretrained`
                (e.g. the shipped `compress/models/weights/patchtst-mini-pretrained`, context
                512, prediction length 192). `horizon` below the checkpoint's prediction
                length keeps the first `horizon` steps; `context_length`, if given, must
                equal the checkpoint's.
            size: "tiny" or "small" (PatchTST/64).
            **config: PatchTSTConfig overrides (`horizon` = `prediction_length`).
        """
        from transformers import PatchTSTConfig, PatchTSTForPrediction

        if size not in SIZES:
            raise ValueError(f"patchtst: unknown size {size!r}; choose one of {sorted(SIZES)}")
        overrides = _native(config)
        check_config_keys("patchtst", overrides, set(PatchTSTConfig().to_dict()),
                          " (PatchTSTConfig fields; horizon = prediction_length)")
        horizon = native = None
        if pretrained is not None:
            if not os.path.isdir(pretrained):
                raise FileNotFoundError(f"patchtst: pretrained must be a local directory, got {pretrained!r}")
            # The flatten head fixes context and prediction length: a shorter horizon keeps the
            # first `horizon` outputs of the head (exactly the first steps of the checkpoint's
            # forecast, with a head that has only those rows); the context must match.
            native = PatchTSTConfig.from_pretrained(pretrained)
            horizon = overrides.pop("prediction_length", None)
            if horizon is not None and not 0 < int(horizon) <= native.prediction_length:
                raise ValueError(f"patchtst: horizon {horizon} must be 1..{native.prediction_length}, "
                                 f"the checkpoint's prediction_length")
            context = overrides.pop("context_length", native.context_length)
            if context != native.context_length:
                raise ValueError(f"patchtst: the checkpoint reads context_length={native.context_length}; "
                                 f"got {context}")
            model = PatchTSTForPrediction.from_pretrained(pretrained, **overrides)
            if horizon is not None and int(horizon) < model.config.prediction_length:
                _trim_head(model, int(horizon))
        else:
            model = PatchTSTForPrediction(PatchTSTConfig(**{**_COMMON, **SIZES[size], **overrides}))
        model.eval()
        cfg = model.config
        if cfg.loss != "mse":
            raise ValueError("patchtst: only the point (loss='mse') head is supported")
        return cls(
            model,
            context_length=cfg.context_length,
            horizon=cfg.prediction_length if horizon is None else int(horizon),
            n_channels=None if cfg.num_input_channels == 1 else cfg.num_input_channels,
            config={
                **build_record(size, pretrained, config),
                "checkpoint_prediction_length": None if native is None else native.prediction_length,
                "model_config": json.loads(cfg.to_json_string()),
            },
        ).eval()

    @classmethod
    def _skeleton(cls, meta: dict) -> "Forecaster":
        """The saved model's unpruned architecture, from its recorded native config (no checkpoint files)."""
        from transformers import PatchTSTConfig, PatchTSTForPrediction

        native = meta["config"]["model_config"]
        return cls.from_native(PatchTSTForPrediction(PatchTSTConfig.from_dict(native)), meta)

    def native_config(self):
        """`PatchTSTConfig` with the pruned FFN width and layer count (`save_pretrained`).

        Head pruning has none: transformers' `PatchTSTAttention` projects q/k/v to d_model
        and derives head_dim = d_model / num_attention_heads, so fewer heads of the same size
        are not a PatchTST. FFN widths must agree across layers (`ffn_dim` is one number).
        """
        from .native import NativeLayoutError, uniform

        cfg = copy.deepcopy(self.model.config)
        layers = self.model.model.encoder.layers
        cut = {f"layers.{i}": l.self_attn.q_proj.out_features for i, l in enumerate(layers)
               if l.self_attn.q_proj.out_features != cfg.d_model}
        if cut:
            raise NativeLayoutError(
                f"patchtst: head pruning left q/k/v projections of {sorted(set(cut.values()))} features for d_model "
                f"{cfg.d_model}; transformers' PatchTSTAttention always projects to d_model (head_dim = d_model / "
                "num_attention_heads), so no PatchTSTConfig describes pruned heads. Prune FFN channels "
                "(units=('ffn',)) and layers (strategy='layers') for a save_pretrained layout, or keep the compress "
                "format (model.save(dir) / compress.models.load(dir))")
        if len(layers):
            cfg.ffn_dim = uniform("patchtst", "FFN widths", {f"layers.{i}": l.ff[0].out_features
                                                             for i, l in enumerate(layers)}, "ffn_dim", "PatchTSTConfig")
        cfg.num_hidden_layers = len(layers)
        return cfg

    def _forecast(self, past: torch.Tensor) -> torch.Tensor:  # [B, L, C] -> [B, H, C]
        b, l, c = past.shape
        folded = self.n_channels is None and c > 1
        x = past.permute(0, 2, 1).reshape(b * c, l, 1) if folded else past  # [B*C, L, 1]
        y = self.model(past_values=x, return_dict=True).prediction_outputs  # [B*C, H_native, 1]
        if y.shape[1] > self.horizon:  # guard; `_trim_head` already made them equal
            y = y[:, : self.horizon]
        if folded:
            y = y.reshape(b, c, -1).permute(0, 2, 1)  # [B, H, C]
        return y

    def protected_modules(self) -> List[nn.Module]:
        # Patch embedding (patch_length -> d_model) and the flatten-linear head.
        emb = self.model.model.encoder.embedder.input_embedding
        head = self.model.head
        return [emb, head.projection if head.share_projection else head.projections]

    def head_modules(self) -> List[nn.Module]:
        """The whole prediction head (flatten, dropout, projection)."""
        return [self.model.head]

    def layer_stacks(self) -> list:
        """The encoder layers (each pre-norm residual, [B*C, patches, d_model] -> same)."""
        from ..strategies.layers import BlockStack

        return [BlockStack("model.model.encoder.layers", fix=_fix_layer_count)]


def _fix_layer_count(forecaster: "PatchTSTForecaster", old, kept) -> None:
    # the live config follows; `forecaster.config` stays the unpruned build record (a saved
    # model is rebuilt from it, then loses the recorded `compress_removed_blocks`)
    forecaster.model.config.num_hidden_layers = len(kept)
