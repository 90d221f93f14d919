"""Chronos-Bolt (Amazon) through the chronos-forecasting package.

`ChronosBoltModelForForecasting` is a T5 encoder-decoder over patches: instance
normalisation, a residual-MLP patch embedding (patch values + observed mask), a T5 encoder
(with relative attention bias, one column per head), a one-token decoder and a residual-MLP
head that emits `len(quantiles)` values per future step. The point forecast is the 0.5
quantile. Chronos-Bolt is univariate: channels are forecast as separate series, so any
channel count works.

Sizes follow the published checkpoints' configs: "small" is chronos-bolt-small
(d_model 512, 6+6 layers, 8 heads, ~48 M parameters), "tiny" is a toy config for tests
(not chronos-bolt-tiny, whose config is "bolt_tiny").
"""
from __future__ import annotations

import copy
import json
import os
import re
from typing import List, Optional

import torch
from torch import nn

from . import _t5  # noqa: F401  (registers the T5 attention recogniser)
from .base import Forecaster, build_record, check_config_keys, register

__all__ = ["ChronosBoltForecaster", "SIZES"]

_QUANTILES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
_BOLT = dict(context_length=2048, prediction_length=64, input_patch_size=16, input_patch_stride=16, use_reg_token=True)

SIZES = {
    "tiny": dict(
        d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=2,
        chronos_config=dict(context_length=64, prediction_length=16, input_patch_size=8, input_patch_stride=8,
                            use_reg_token=True),
    ),
    # The published configurations (amazon/chronos-bolt-{tiny,mini,small,base}).
    "bolt_tiny": dict(d_model=256, d_ff=1024, d_kv=64, num_heads=4, num_layers=4, num_decoder_layers=4, chronos_config=_BOLT),
    "bolt_mini": dict(d_model=384, d_ff=1536, d_kv=64, num_heads=8, num_layers=4, num_decoder_layers=4, chronos_config=_BOLT),
    "small": dict(d_model=512, d_ff=2048, d_kv=64, num_heads=8, num_layers=6, num_decoder_layers=6, chronos_config=_BOLT),
    "base": dict(d_model=768, d_ff=3072, d_kv=64, num_heads=12, num_layers=12, num_decoder_layers=12, chronos_config=_BOLT),
}

# The T5 settings every Chronos-Bolt checkpoint shares.
_T5 = dict(
    architectures=["ChronosBoltModelForForecasting"], model_type="t5", is_encoder_decoder=True,
    feed_forward_proj="relu", dropout_rate=0.1, layer_norm_epsilon=1e-6, initializer_factor=0.05,
    relative_attention_num_buckets=32, relative_attention_max_distance=128,
    decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, vocab_size=2, use_cache=False,
    chronos_pipeline_class="ChronosBoltPipeline",
)

# Generic names -> chronos_config names.
_CHRONOS_KEYS = {"context_length": "context_length", "horizon": "prediction_length",
                 "prediction_length": "prediction_length", "input_patch_size": "input_patch_size",
                 "input_patch_stride": "input_patch_stride", "quantiles": "quantiles", "use_reg_token": "use_reg_token"}


@register("chronos_bolt")
class ChronosBoltForecaster(Forecaster):
    """Chronos-Bolt (`chronos.chronos_bolt.ChronosBoltModelForForecasting`) as a `Forecaster`.

    Example:
        >>> m = compress.models.load("chronos_bolt", size="tiny")   # doctest: +SKIP
        >>> m(torch.randn(2, 64, 3)).shape                           # doctest: +SKIP
        torch.Size([2, 16, 3])
    """

    requires = ("chronos", "transformers")

    @classmethod
    def build(cls, pretrained: Optional[str] = None, size: str = "small", **config) -> "ChronosBoltForecaster":
        """Args:
            pretrained: local directory of a Chronos-Bolt checkpoint (config.json + weights).
            size: "tiny", "small" (chronos-bolt-small), or "bolt_tiny", "bolt_mini", "base".
            **config: T5Config overrides (d_model, num_heads, ...) and chronos_config keys
                (context_length, horizon / prediction_length, input_patch_size, ...).
        """
        from chronos.chronos_bolt import ChronosBoltModelForForecasting
        from transformers import T5Config

        if size not in SIZES:
            raise ValueError(f"chronos_bolt: unknown size {size!r}; choose one of {sorted(SIZES)}")
        t5_overrides = {k: v for k, v in config.items() if k not in _CHRONOS_KEYS}
        check_config_keys("chronos_bolt", t5_overrides, set(T5Config().to_dict()),
                          f" (T5Config fields and {', '.join(sorted(_CHRONOS_KEYS))})")
        chronos_overrides = {_CHRONOS_KEYS[k]: v for k, v in config.items() if k in _CHRONOS_KEYS}
        if pretrained is not None:
            if not os.path.isdir(pretrained):
                raise FileNotFoundError(f"chronos_bolt: pretrained must be a local directory, got {pretrained!r}")
            if chronos_overrides:
                raise ValueError("chronos_bolt: a pretrained model's context/horizon/patching are fixed by its weights")
            model = ChronosBoltModelForForecasting.from_pretrained(pretrained, **t5_overrides)
        else:
            spec = {**_T5, **SIZES[size], **t5_overrides}
            spec["chronos_config"] = {"quantiles": list(_QUANTILES), **spec["chronos_config"], **chronos_overrides}
            model = ChronosBoltModelForForecasting(T5Config(**spec))
        model.eval()
        cc = model.chronos_config
        return cls(
            model,
            context_length=cc.context_length,
            horizon=cc.prediction_length,
            n_channels=None,
            config={
                **build_record(size, pretrained, config),
                "model_config": json.loads(model.config.to_json_string()),
            },
        ).eval()

    @property
    def median_index(self) -> int:
        q = list(self.model.chronos_config.quantiles)
        return min(range(len(q)), key=lambda i: abs(q[i] - 0.5))

    @classmethod
    def _skeleton(cls, meta: dict) -> "Forecaster":
        """The saved model's unpruned architecture, from its recorded native config (no checkpoint files)."""
        from chronos.chronos_bolt import ChronosBoltModelForForecasting
        from transformers import T5Config

        native = meta["config"]["model_config"]
        return cls.from_native(ChronosBoltModelForForecasting(T5Config.from_dict(native)), meta)

    def native_config(self):
        """`T5Config` (with its chronos_config) at the pruned FFN width, head count and layer
        counts (`save_pretrained`).

        Head pruning usually has none: T5 computes the relative-position bias once, in the
        first layer of a stack, from a table with one column per head, and hands it to every
        later layer. Pruning gives each layer its own table (`prepare_for_pruning`); the layout
        exists only while every layer's table equals its stack's first (FFN-only pruning).
        """
        from .native import NativeLayoutError, uniform

        m = self.model
        cfg = copy.deepcopy(m.config)
        stacks = {"encoder": m.encoder.block, "decoder": m.decoder.block}
        ffn, heads = {}, {}
        for stack, blocks in stacks.items():
            for i, block in enumerate(blocks):
                ff = block.layer[-1].DenseReluDense
                ffn[f"{stack}.{i}"] = (ff.wi_0 if hasattr(ff, "wi_0") else ff.wi).out_features
                for layer in block.layer:
                    for name in ("SelfAttention", "EncDecAttention"):
                        att = getattr(layer, name, None)
                        if att is not None:
                            heads[f"{stack}.{i}.{name}"] = att.q.out_features // cfg.d_kv
            if not len(blocks):
                continue
            owner = blocks[0].layer[0].SelfAttention
            table = owner.relative_attention_bias.weight if owner.has_relative_attention_bias else None
            for i, block in enumerate(blocks[1:], start=1):
                att = block.layer[0].SelfAttention
                if att.has_relative_attention_bias and (table is None or not torch.equal(
                        att.relative_attention_bias.weight, table)):
                    raise NativeLayoutError(
                        f"chronos_bolt: {stack} layer {i} has its own relative-position bias (head pruning kept "
                        "different heads in different layers); T5 computes the bias once, in the first layer, so no "
                        "T5Config describes this model. Depth pruning (strategy='layers') and unstructured zeros "
                        "keep a save_pretrained layout; otherwise keep the compress format "
                        "(model.save(dir) / compress.models.load(dir))")
        cfg.d_ff = uniform("chronos_bolt", "FFN widths", ffn, "d_ff", "T5Config")
        dense = {n: b.hidden_layer.out_features for n, b in (("input_patch_embedding", m.input_patch_embedding),
                                                              ("output_patch_embedding", m.output_patch_embedding))}
        if any(w != cfg.d_ff for w in dense.values()):
            raise NativeLayoutError(
                f"chronos_bolt: T5Config.d_ff sizes both the FFN of every T5 layer (pruned to {cfg.d_ff}) and the hidden "
                f"layer of the patch embedding and of the output head ({dense}, left dense by pruning), so no "
                "ChronosBoltModelForForecasting config describes FFN pruning. Depth pruning (strategy='layers') and "
                "unstructured zeros keep a save_pretrained layout; otherwise keep the compress format "
                "(model.save(dir) / compress.models.load(dir))")
        cfg.num_heads = uniform("chronos_bolt", "head counts", heads, "num_heads", "T5Config")
        cfg.num_layers, cfg.num_decoder_layers = len(m.encoder.block), len(m.decoder.block)
        return cfg

    def native_state_dict(self) -> dict:
        """The state dict without the per-layer copies of the relative-bias tables (equal to
        their stack's first one, `native_config` checked it)."""
        copies = re.compile(r"^(encoder|decoder)\.block\.[1-9]\d*\.layer\.0\.SelfAttention\.relative_attention_bias\.")
        return {k: v for k, v in self.model.state_dict().items() if not copies.match(k)}

    def _forecast(self, past: torch.Tensor) -> torch.Tensor:  # [B, L, C] -> [B, H, C]
        b, l, c = past.shape
        context = past.permute(0, 2, 1).reshape(b * c, l)  # [B*C, L]
        q = self.model(context=context).quantile_preds  # [B*C, Q, H]
        y = q[:, self.median_index, :]  # [B*C, H]
        return y.reshape(b, c, -1).permute(0, 2, 1)  # [B, H, C]

    def prepare_for_pruning(self) -> None:
        # each T5 layer computes its own relative-position bias, so heads can differ per layer
        from ._t5 import untie_position_bias

        untie_position_bias(self.model)

    def layer_stacks(self) -> list:
        """The T5 encoder and decoder blocks; `num_layers` / `num_decoder_layers` follow a
        removal and the relative-bias table moves to the new first block of its stack."""
        from ._t5 import t5_block_stack

        def count(which):
            def set_count(forecaster, n):
                m = forecaster.model
                setattr(m.config, which, n)
                getattr(m, "encoder" if which == "num_layers" else "decoder").config.num_layers = n
                # `forecaster.config` stays the unpruned build record (saved models are rebuilt from it)
            return set_count

        return [t5_block_stack("model.encoder.block", count("num_layers")),
                t5_block_stack("model.decoder.block", count("num_decoder_layers"))]

    def protected_modules(self) -> List[nn.Module]:
        # Patch embedding (2*patch -> d_model residual MLP) and the quantile head.
        return [self.model.input_patch_embedding, self.model.output_patch_embedding]
