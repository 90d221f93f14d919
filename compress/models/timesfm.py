"""TimesFM 2.5 (Google) through Hugging Face transformers' `TimesFm2_5ModelForPrediction`.

A decoder-only patched Transformer (RoPE, q/k RMS-norm, a learned per-dimension query
`scaling`) with a point head (10 outputs per step: mean and the 0.1..0.9 quantiles) and a
long-horizon quantile head. The forecast is the model's own forward: per-series
normalisation, flip invariance, the continuous quantile head, and the point output at
`decode_index` (the 0.5 quantile, i.e. the median). TimesFM is univariate: channels are
forecast as separate series, so any channel count works.

Sizes: "base" is the published TimesFM-2.5-200M architecture (load its weights with
`pretrained=DIR` of `google/timesfm-2.5-200m-transformers`); "small" keeps its structure at
d_model 256 x 4 layers (~3 M parameters) for benchmarks on CPU; "tiny" is for tests.
"""
from __future__ import annotations

import copy
import json
import os
from typing import List, Optional

import torch
from torch import nn

from .base import Forecaster, build_record, check_config_keys, register

__all__ = ["TimesFMForecaster", "SIZES"]

SIZES = {
    "tiny": dict(
        context_length=64, patch_length=8, horizon_length=16, output_quantile_len=16,
        hidden_size=32, intermediate_size=64, head_dim=8, num_attention_heads=4, num_key_value_heads=4,
        num_hidden_layers=2, max_position_embeddings=64,
    ),
    "small": dict(
        context_length=512, patch_length=32, horizon_length=128, output_quantile_len=128,
        hidden_size=256, intermediate_size=256, head_dim=64, num_attention_heads=4, num_key_value_heads=4,
        num_hidden_layers=4, max_position_embeddings=512,
    ),
    # TimesFM-2.5-200M (its checkpoint reads up to 16k steps; 512 here, RoPE has no weights).
    "base": dict(
        context_length=512, patch_length=32, horizon_length=128, output_quantile_len=1024,
        hidden_size=1280, intermediate_size=1280, head_dim=80, num_attention_heads=16, num_key_value_heads=16,
        num_hidden_layers=20, max_position_embeddings=16384,
    ),
}

_ALIASES = {"horizon": "horizon_length"}


def _native(config: dict) -> dict:
    return {_ALIASES.get(k, k): v for k, v in config.items()}


@register("timesfm")
class TimesFMForecaster(Forecaster):
    """TimesFM 2.5 (`transformers.TimesFm2_5ModelForPrediction`) as a `Forecaster`.

    `horizon` may be shorter than the model's `horizon_length` (the forecast is cut).

    Example:
        >>> m = compress.models.load("timesfm", size="tiny")   # doctest: +SKIP
        >>> m(torch.randn(2, 64, 3)).shape                      # doctest: +SKIP
        torch.Size([2, 16, 3])
    """

    requires = ("transformers",)

    @classmethod
    def build(cls, pretrained: Optional[str] = None, size: str = "small", **config) -> "TimesFMForecaster":
        """Args:
            pretrained: local directory of a TimesFM-2.5 transformers checkpoint.
            size: "tiny", "small" or "base" (the published 200M architecture).
            **config: TimesFm2_5Config overrides; `horizon` (<= horizon_length) cuts the
                forecast, `context_length` sets how many past steps are read.
        """
        from transformers import TimesFm2_5Config, TimesFm2_5ModelForPrediction

        if size not in SIZES:
            raise ValueError(f"timesfm: unknown size {size!r}; choose one of {sorted(SIZES)}")
        overrides = dict(config)
        check_config_keys("timesfm", overrides, set(TimesFm2_5Config().to_dict()) | {"horizon"},
                          " (TimesFm2_5Config fields and horizon)")
        horizon = overrides.pop("horizon", None)
        if pretrained is not None:
            if not os.path.isdir(pretrained):
                raise FileNotFoundError(f"timesfm: pretrained must be a local directory, got {pretrained!r}")
            model = TimesFm2_5ModelForPrediction.from_pretrained(pretrained, **overrides)
        else:
            params = {**SIZES[size], **overrides}
            if horizon is not None and "horizon_length" not in overrides:
                params["horizon_length"] = max(int(horizon), 1)
            model = TimesFm2_5ModelForPrediction(TimesFm2_5Config(**params))
        model.eval()
        cfg = model.config
        horizon = cfg.horizon_length if horizon is None else int(horizon)
        if horizon > cfg.horizon_length:
            raise ValueError(f"timesfm: horizon {horizon} exceeds the model's horizon_length {cfg.horizon_length}")
        return cls(
            model,
            context_length=cfg.context_length,
            horizon=horizon,
            n_channels=None,
            config={
                **build_record(size, pretrained, config),
                "model_config": json.loads(cfg.to_json_string()),
            },
        ).eval()

    @classmethod
    def _skeleton(cls, meta: dict) -> "Forecaster":
        """The saved model's unpruned architecture, from its recorded native config (no checkpoint files)."""
        from transformers import TimesFm2_5Config, TimesFm2_5ModelForPrediction

        native = meta["config"]["model_config"]
        return cls.from_native(TimesFm2_5ModelForPrediction(TimesFm2_5Config.from_dict(native)), meta)

    def native_config(self):
        """`TimesFm2_5Config` with the pruned FFN width, head count and layer count
        (`save_pretrained`); both must agree across layers (the config holds one number)."""
        from .native import uniform

        cfg = copy.deepcopy(self.model.config)
        layers = self.model.model.layers
        if len(layers):
            cfg.intermediate_size = uniform("timesfm", "FFN widths", {f"layers.{i}": l.mlp.fc1.out_features
                                            for i, l in enumerate(layers)}, "intermediate_size", "TimesFm2_5Config")
            heads = {f"layers.{i}": l.self_attn.q_proj.out_features // cfg.head_dim for i, l in enumerate(layers)}
            heads.update({f"layers.{i} (k/v)": l.self_attn.k_proj.out_features // cfg.head_dim
                          for i, l in enumerate(layers)})
            cfg.num_attention_heads = cfg.num_key_value_heads = uniform(
                "timesfm", "head counts", heads, "num_attention_heads", "TimesFm2_5Config")
        cfg.num_hidden_layers = len(layers)
        return cfg

    def _forecast(self, past: torch.Tensor) -> torch.Tensor:  # [B, L, C] -> [B, H, C]
        b, l, c = past.shape
        series = past.permute(0, 2, 1).reshape(b * c, l)  # [B*C, L]: one univariate series per row
        out = self.model(past_values=series, return_dict=True)
        y = out.mean_predictions[:, : self.horizon]  # [B*C, H] (decode_index: the median)
        return y.reshape(b, c, -1).permute(0, 2, 1)  # [B, H, C]

    # --- pruning -----------------------------------------------------------------------
    def _attention_layers(self) -> list:
        from transformers.models.timesfm2_5.modeling_timesfm2_5 import TimesFm2_5Attention

        return [m for m in self.model.modules() if isinstance(m, TimesFm2_5Attention)]

    def prepare_for_pruning(self) -> None:
        """Per-layer head counts (compress.graph traces recognised attention as one node,
        so RoPE's cat inside it never reaches torch-pruning).

        The attention forward views q/k/v as (-1, head_dim), so it adapts to fewer heads by
        itself; `scaling`, q_norm and k_norm act on head_dim, which whole-head pruning keeps.
        """
        for m in self._attention_layers():
            if not isinstance(getattr(m, "num_heads", None), int):
                m.num_heads = m.q_proj.out_features // m.head_dim
            if not isinstance(getattr(m, "num_key_value_heads", None), int):
                m.num_key_value_heads = m.k_proj.out_features // m.head_dim
            if m.num_heads != m.num_key_value_heads:  # grouped-query: k/v heads are shared
                raise NotImplementedError("timesfm: head pruning with num_key_value_heads != num_attention_heads")

    def after_prune(self) -> None:
        layers = self._attention_layers()
        for m in layers:
            m.num_key_value_heads = m.num_heads = m.q_proj.out_features // m.head_dim
        counts = {m.num_heads for m in layers}
        cfg = self.model.config
        if len(counts) == 1:  # every layer agrees: the shared config can say so
            cfg.num_attention_heads = cfg.num_key_value_heads = counts.pop()
        # per-layer head counts live on the modules (`num_heads`); the config keeps the
        # original count when layers differ (nothing in the forward reads it)
        mc = self.config.setdefault("model_config", {})
        mc["num_attention_heads"], mc["num_key_value_heads"] = cfg.num_attention_heads, cfg.num_key_value_heads

    def layer_stacks(self) -> list:
        """The decoder layers (residual, [B*C, patches, d_model] -> same). After a removal the
        config's layer count follows and the per-layer head counts (on the attention modules)
        are re-read by `after_prune`."""
        from ..strategies.layers import BlockStack

        def fix(forecaster, old, kept):
            # the live config follows (`forecaster.config` stays the unpruned build record); the
            # per-layer head counts live on the kept layers' attention modules and go with them
            forecaster.model.config.num_hidden_layers = len(kept)

        return [BlockStack("model.model.layers", fix=fix)]

    def protected_modules(self) -> List[nn.Module]:
        # Input tokenizer (2*patch -> d_model residual MLP) and the point / quantile heads.
        return [
            self.model.model.input_ff_layer,
            self.model.output_projection_point,
            self.model.output_projection_quantiles,
        ]

    def head_modules(self) -> List[nn.Module]:
        """The point and quantile output blocks."""
        return [self.model.output_projection_point, self.model.output_projection_quantiles]
