"""MOMENT (Goswami et al., ICML 2024) through the momentfm package, in its forecasting task.

`MOMENTPipeline` built from a config (no hub download): RevIN (per-series, no affine),
non-overlapping patches, a linear patch embedding with a sinusoidal position buffer, a T5
encoder (relative attention bias, one column per head) and a flatten-linear forecasting
head. MOMENT is channel-independent: channels are run as separate series, so any channel
count works. Inputs shorter than `seq_len` are left-padded and masked (MOMENT's own
convention); longer ones are cut to the last `seq_len` steps.

The library freezes the patch embedding and encoder by default (linear probing); a model
meant to be pruned and fine-tuned needs gradients everywhere, so this adapter builds it
with `freeze_embedder=False, freeze_encoder=False` and without gradient checkpointing.

Sizes: "small" is MOMENT-1-small (flan-T5-small encoder: d_model 512, 8 layers, 6 heads,
gated-GELU FFN 1024, seq_len 512, patch 8) with a 96-step head; "tiny" is for tests.
"""
from __future__ import annotations

import copy
import os
import warnings
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import _t5  # noqa: F401  (registers the T5 attention recogniser)
from .base import Forecaster, build_record, check_config_keys, register

__all__ = ["MomentForecaster", "SIZES"]

# google/flan-t5-small, the backbone of MOMENT-1-small.
_FLAN_T5_SMALL = dict(
    d_model=512, d_ff=1024, d_kv=64, num_heads=6, num_layers=8, num_decoder_layers=8,
    feed_forward_proj="gated-gelu", dropout_rate=0.1, layer_norm_epsilon=1e-6, initializer_factor=1.0,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, vocab_size=32128,
    tie_word_embeddings=False, is_encoder_decoder=True, model_type="t5",
    decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, n_positions=512,
)

SIZES = {
    "tiny": dict(
        seq_len=64, patch_len=8, patch_stride_len=8, forecast_horizon=16, d_model=32,
        transformer_backbone="google/flan-t5-small",
        t5_config={**_FLAN_T5_SMALL, "d_model": 32, "d_ff": 64, "d_kv": 8, "num_heads": 4, "num_layers": 2,
                   "num_decoder_layers": 2, "vocab_size": 2},
    ),
    "small": dict(
        seq_len=512, patch_len=8, patch_stride_len=8, forecast_horizon=96, d_model=None,
        transformer_backbone="google/flan-t5-small", t5_config=dict(_FLAN_T5_SMALL),
    ),
}

_COMMON = dict(
    task_name="reconstruction", model_name="MOMENT", transformer_type="encoder_only", device="cpu",
    revin_affine=False, add_positional_embedding=True, value_embedding_bias=False, orth_gain=1.41,
    patch_dropout=0.1, head_dropout=0.1, mask_ratio=0.0,
)

# What the forecasting task needs at build time (passed as the pipeline's model_kwargs).
_TASK = dict(task_name="forecasting", freeze_embedder=False, freeze_encoder=False, freeze_head=False,
             enable_gradient_checkpointing=False)

_ALIASES = {"horizon": "forecast_horizon", "context_length": "seq_len"}


def _native(config: dict) -> dict:
    return {_ALIASES.get(k, k): v for k, v in config.items()}


@register("moment")
class MomentForecaster(Forecaster):
    """MOMENT (`momentfm.MOMENTPipeline`, forecasting task) as a `Forecaster`.

    Example:
        >>> m = compress.models.load("moment", size="tiny")   # doctest: +SKIP
        >>> m(torch.randn(2, 64, 3)).shape                     # doctest: +SKIP
        torch.Size([2, 16, 3])
    """

    requires = ("momentfm", "transformers")

    @classmethod
    def build(cls, pretrained: Optional[str] = None, size: str = "small", **config) -> "MomentForecaster":
        """Args:
            pretrained: local directory of a MOMENT checkpoint (config.json + model.safetensors);
                its reconstruction head is replaced by a new forecasting head.
            size: "tiny" or "small" (MOMENT-1-small).
            **config: MOMENT config overrides (`horizon` = forecast_horizon,
                `context_length` = seq_len, `t5_config` = backbone T5 settings).
        """
        from momentfm import MOMENTPipeline

        if size not in SIZES:
            raise ValueError(f"moment: unknown size {size!r}; choose one of {sorted(SIZES)}")
        overrides = _native(config)
        known = set(_COMMON) | set(_TASK) | {k for s in SIZES.values() for k in s}
        check_config_keys("moment", overrides, known, " (MOMENT settings; horizon = forecast_horizon, "
                          "context_length = seq_len)")
        if isinstance(overrides.get("t5_config"), dict):
            from transformers import T5Config

            check_config_keys("moment t5_config", overrides["t5_config"], set(T5Config().to_dict()))
        horizon = int(overrides.pop("forecast_horizon", SIZES[size]["forecast_horizon"]))
        model_kwargs = {**_TASK, "forecast_horizon": horizon}
        with warnings.catch_warnings():
            # "Only reconstruction head is pre-trained ..." -- known, the head is new.
            warnings.simplefilter("ignore", UserWarning)
            if pretrained is not None:
                if not os.path.isdir(pretrained):
                    raise FileNotFoundError(f"moment: pretrained must be a local directory, got {pretrained!r}")
                model = _from_pretrained(MOMENTPipeline, pretrained, {**model_kwargs, **overrides})
            else:
                spec = copy.deepcopy({**_COMMON, **SIZES[size]})
                spec.pop("forecast_horizon")
                if "t5_config" in overrides:
                    spec["t5_config"].update(overrides.pop("t5_config"))
                spec.update(overrides)
                model = MOMENTPipeline(spec, model_kwargs=model_kwargs)
                model.init()  # swaps in the forecasting head
        model.eval()
        mc = model.config
        return cls(
            model,
            context_length=mc.seq_len,
            horizon=mc.forecast_horizon,
            n_channels=None,
            config={
                **build_record(size, pretrained, config),
                "model_config": {k: v for k, v in vars(mc).items() if _jsonable(v)},
            },
        ).eval()

    def _forecast(self, past: torch.Tensor) -> torch.Tensor:  # [B, L, C] -> [B, H, C]
        b, l, c = past.shape
        seq_len = self.model.seq_len
        x = past.permute(0, 2, 1)  # [B, C, L]
        mask = torch.ones(b, min(l, seq_len), dtype=past.dtype, device=past.device)  # [B, L]
        if l > seq_len:
            x = x[..., -seq_len:]
        elif l < seq_len:
            x = F.pad(x, (seq_len - l, 0))
            mask = F.pad(mask, (seq_len - l, 0))
        out = self.model(x_enc=x, input_mask=mask)
        return out.forecast.permute(0, 2, 1)  # [B, C, H] -> [B, H, C]

    def prepare_for_pruning(self) -> None:
        # each T5 layer computes its own relative-position bias, so heads can differ per layer
        from ._t5 import untie_position_bias

        untie_position_bias(self.model)

    def layer_stacks(self) -> list:
        """The T5 encoder blocks; the T5 config's `num_layers` follows a removal and the
        relative-bias table moves to the new first block."""
        from ._t5 import t5_block_stack

        def set_count(forecaster, n):
            m = forecaster.model
            m.encoder.config.num_layers = n
            t5 = getattr(m.config, "t5_config", None)
            if isinstance(t5, dict):  # a new dict: the build record (`forecaster.config`) shares the old one
                m.config.t5_config = {**t5, "num_layers": n}

        return [t5_block_stack("model.encoder.block", set_count)]

    def protected_modules(self) -> List[nn.Module]:
        # Patch embedding (patch_len -> d_model) and the flatten-linear forecasting head.
        return [self.model.patch_embedding.value_embedding, self.model.head.linear]

    def head_modules(self) -> List[nn.Module]:
        """The whole forecasting head (flatten, dropout, linear)."""
        return [self.model.head]


def _from_pretrained(pipeline_cls, directory: str, model_kwargs: dict) -> nn.Module:
    """`MOMENTPipeline.from_pretrained` for a local directory, also for forecasting heads.

    The library's loader rebuilds the model with the reconstruction head named in
    config.json and loads strictly, so it cannot read back a checkpoint whose head is a
    forecasting head (or one of another horizon). Here the model is built for the
    forecasting task first; a head whose shapes do not match (the pretrained
    reconstruction head) is left freshly initialised, everything else must load.
    """
    import json

    with open(os.path.join(directory, "config.json")) as f:
        spec = json.load(f)
    spec.pop("model_kwargs", None)
    spec = {**spec, **{k: v for k, v in model_kwargs.items() if k not in _TASK and k != "forecast_horizon"}}
    model = pipeline_cls(spec, model_kwargs=dict(model_kwargs))
    model.init()
    weights = os.path.join(directory, "model.safetensors")
    if os.path.exists(weights):
        from safetensors.torch import load_file

        state = load_file(weights)
    else:
        state = torch.load(os.path.join(directory, "pytorch_model.bin"), map_location="cpu", weights_only=True)
    own = model.state_dict()
    state = {k: v for k, v in state.items()
             if not (k.startswith("head.") and (k not in own or own[k].shape != v.shape))}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise RuntimeError(f"moment: checkpoint {directory} does not match: missing {missing}, unexpected {unexpected}")
    return model


def _jsonable(v) -> bool:
    import json

    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False
