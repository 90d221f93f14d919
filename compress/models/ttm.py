"""IBM TinyTimeMixer (TTM) through its own package, granite-tsfm (`tsfm_public`).

`load("ttm")` loads the pretrained TTM-R2 checkpoint (context 512, horizon 96, Apache-2.0)
that ships in `compress/models/weights/granite-ttm-r2-512-96/` with its model card. The
forecast is computed as IBM's zero-shot evaluation does: the model scales each window
itself (per-channel mean/std over the context) and `prediction_outputs` is the point
forecast in the input's units.

TTM is an MLP-Mixer in "common_channel" mode: channels are independent, so any channel
count works (`n_channels is None`) unless channel mixing is configured.
"""
from __future__ import annotations

import copy
import json
import os
from typing import List, Optional

import torch
from torch import nn

from .base import Forecaster, build_record, check_config_keys, register

__all__ = ["TTMForecaster", "PRETRAINED_DIR", "SIZES"]

#: The shipped pretrained checkpoint: granite-timeseries-ttm-r2, branch 512-96-r2.
PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights", "granite-ttm-r2-512-96")

#: Configurations built from scratch (random weights). "small" is not here: it is the
#: shipped pretrained checkpoint (805,280 parameters).
SIZES = {
    # Same structure as R2 (adaptive patching, decoder, gated attention), at toy widths.
    "tiny": dict(
        context_length=64, patch_length=8, patch_stride=8, prediction_length=16,
        d_model=16, num_layers=2, expansion_factor=2, adaptive_patching_levels=2,
        decoder_d_model=16, decoder_num_layers=2, gated_attn=True, mode="common_channel",
        decoder_mode="common_channel", scaling="std", loss="mse", dropout=0.0, head_dropout=0.0,
    ),
}

_SAME_DEPTH = ("Remove the same number of layers from every level (strategy='layers' with "
               "options={'select': 'last'} or 'first' spreads the cut evenly over the stacks)")

# Generic names accepted by every adapter -> TinyTimeMixerConfig names.
_ALIASES = {"horizon": "prediction_length"}


def _native(config: dict) -> dict:
    return {_ALIASES.get(k, k): v for k, v in config.items()}


@register("ttm")
class TTMForecaster(Forecaster):
    """TinyTimeMixer (`tsfm_public.TinyTimeMixerForPrediction`) as a `Forecaster`.

    Example:
        >>> m = compress.models.load("ttm")                   # doctest: +SKIP
        >>> m(torch.randn(4, 512, 7)).shape                   # doctest: +SKIP
        torch.Size([4, 96, 7])
    """

    requires = ("tsfm_public", "transformers")

    @classmethod
    def build(cls, pretrained: Optional[str] = None, size: str = "small", **config) -> "TTMForecaster":
        """Args:
            pretrained: local directory of a TTM checkpoint; default for size="small" is the
                shipped TTM-R2 512-96.
            size: "small" (the shipped pretrained model) or "tiny" (random, for tests).
            **config: TinyTimeMixerConfig overrides (`horizon` is an alias of
                `prediction_length`; on a pretrained model `horizon` below its native
                horizon becomes `prediction_filter_length`).
        """
        from tsfm_public import TinyTimeMixerConfig, TinyTimeMixerForPrediction

        if size not in ("small", *SIZES):
            raise ValueError(f"ttm: unknown size {size!r}; choose 'small' (pretrained) or one of {sorted(SIZES)}")
        if pretrained is None and size == "small":
            pretrained = PRETRAINED_DIR
        overrides = _native(config)
        check_config_keys("ttm", overrides, set(TinyTimeMixerConfig().to_dict()) | set(_ALIASES),
                          " (TinyTimeMixerConfig fields; horizon = prediction_length)")
        if pretrained is not None:
            if not os.path.isdir(pretrained):
                raise FileNotFoundError(f"ttm: pretrained must be a local checkpoint directory, got {pretrained!r}")
            # A shorter horizon on a fixed-horizon checkpoint is IBM's prediction_filter_length.
            horizon = overrides.pop("prediction_length", None)
            if horizon is not None:
                overrides["prediction_filter_length"] = int(horizon)
            model = TinyTimeMixerForPrediction.from_pretrained(pretrained, **overrides)
        else:
            model = TinyTimeMixerForPrediction(TinyTimeMixerConfig(**{**SIZES[size], **overrides}))
        model.eval()

        cfg = model.config
        horizon = cfg.prediction_filter_length or cfg.prediction_length
        mixes_channels = (
            cfg.mode == "mix_channel" or cfg.decoder_mode == "mix_channel" or cfg.enable_forecast_channel_mixing
        )
        return cls(
            model,
            context_length=cfg.context_length,
            horizon=horizon,
            n_channels=cfg.num_input_channels if mixes_channels else None,
            config={
                **build_record(size, pretrained, config),
                "model_config": json.loads(cfg.to_json_string()),
            },
        ).eval()

    @classmethod
    def _skeleton(cls, meta: dict) -> "Forecaster":
        """The saved model's unpruned architecture, from its recorded native config (no checkpoint files)."""
        from tsfm_public import TinyTimeMixerConfig, TinyTimeMixerForPrediction

        native = meta["config"]["model_config"]
        return cls.from_native(TinyTimeMixerForPrediction(TinyTimeMixerConfig.from_dict(native)), meta)

    def native_config(self):
        """`TinyTimeMixerConfig` with the pruned mixer widths and layer counts (`save_pretrained`).

        Every mixer MLP is `Linear(n, n * expansion_factor)`, with n the patch count (patch
        mixer) or the level's d_model (feature mixer); the layout exists when all of them were
        cut to the same whole multiple of their input (ratio 0.5 of factor 2 gives factor 1),
        and when every adaptive-patching level kept the same number of layers.
        """
        from .native import NativeLayoutError, uniform

        cfg = copy.deepcopy(self.model.config)
        ratios = {}
        for name, m in self.model.named_modules():
            if type(m).__name__ == "TinyTimeMixerMLP":
                ratios[name] = m.fc1.out_features / m.fc1.in_features
        factor = uniform("ttm", "mixer expansion factors (hidden / input width)", ratios, "expansion_factor",
                         "TinyTimeMixerConfig")
        if factor != int(factor):
            raise NativeLayoutError(
                f"ttm: the mixer MLPs were cut to {factor:g} x their input width; TinyTimeMixerConfig.expansion_factor "
                "must be a whole number (each MLP is Linear(n, n * expansion_factor)). Choose a ratio that leaves a "
                "whole factor (0.5 of factor 2), or keep the compress format (model.save(dir) / compress.models.load(dir))")
        cfg.expansion_factor = int(factor)
        counts = {s.path: len(self.get_submodule(s.path)) for s in self.layer_stacks()}
        enc = {p: n for p, n in counts.items() if ".decoder." not in p}
        dec = {p: n for p, n in counts.items() if ".decoder." in p}
        if enc:
            cfg.num_layers = uniform("ttm", "layer counts of the adaptive-patching levels", enc, "num_layers",
                                     "TinyTimeMixerConfig", fix=_SAME_DEPTH)
        if dec:
            cfg.decoder_num_layers = uniform("ttm", "decoder layer counts", dec, "decoder_num_layers",
                                             "TinyTimeMixerConfig", fix=_SAME_DEPTH)
        return cfg

    def _forecast(self, past: torch.Tensor) -> torch.Tensor:  # [B, L, C] -> [B, H, C]
        # TTM left-pads / truncates to its context itself and scales each window per channel.
        out = self.model(past_values=past, return_loss=False, return_dict=True)
        return out.prediction_outputs  # [B, H, C]

    def layer_stacks(self) -> list:
        """The mixer layers of every adaptive-patching level and of the decoder (each a
        residual patch/feature mixer, [B, C, patches, d] -> same). A level may lose all of
        them (its reshapes are then the identity); the config's `num_layers` /
        `decoder_num_layers` follow when every level keeps the same count."""
        from ..strategies.layers import BlockStack

        paths = []
        for name, m in self.named_modules():
            if type(m).__name__ == "TinyTimeMixerBlock":
                if getattr(m, "adaptive_patching_levels", 0) > 0:
                    paths += [f"{name}.mixers.{i}.mixer_layers" for i in range(len(m.mixers))]
                else:
                    paths.append(f"{name}.mixers")

        def fix(forecaster, old, kept):
            # the live config follows where one number can say it (`forecaster.config` stays the
            # unpruned build record; the per-level counts are the lists' lengths)
            counts = {p: len(forecaster.get_submodule(p)) for p in paths}
            cfg = forecaster.model.config
            enc = [n for p, n in counts.items() if ".decoder." not in p]
            dec = [n for p, n in counts.items() if ".decoder." in p]
            if enc and len(set(enc)) == 1:
                cfg.num_layers = enc[0]
            if dec:
                cfg.decoder_num_layers = dec[0]

        return [BlockStack(p, min_keep=0, fix=fix) for p in paths]

    def protected_modules(self) -> List[nn.Module]:
        # Patch projection (patch_length -> d_model) and the flatten-linear forecasting head.
        return [self.model.backbone.encoder.patcher, self.model.head.base_forecast_block]

    def head_modules(self) -> List[nn.Module]:
        """The whole forecasting head (flatten-linear over patches x d_model)."""
        return [self.model.head]
