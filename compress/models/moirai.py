"""Moirai (Salesforce) through the uni2ts package: `MoiraiModule` plus its forecast logic.

`MoiraiModule` is a packed "any-variate" encoder: every channel's patches are flattened
into one token sequence (variate ids, time ids, binary variate attention bias, RoPE over
time), with multi-patch-size input and output projections and a mixture distribution head.
This adapter does what uni2ts' `MoiraiForecast._convert` does for a target-only batch
(left-pad the context to whole patches, append masked prediction tokens, build
sample/time/variate ids) and takes the point forecast as the distribution's mean
(deterministic, unlike the median of samples). Any channel count works: channels attend to
each other through the packed sequence.

Sizes: "small" is moirai-1.1-R-small (d_model 384, 6 layers, 6 heads, patch sizes
8..128, mixture of Student-t, fixed-scale normal, negative binomial and log-normal),
forecasting 96 steps from 512 with patch size 32; "tiny" is for tests. Moirai has
d_model // 64 heads, so the tiny model has d_model 128 (2 heads).
"""
from __future__ import annotations

import math
import os
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import graph as _graph
from .base import Forecaster, build_record, register

__all__ = ["MoiraiForecaster", "SIZES"]

SIZES = {
    "tiny": dict(module=dict(d_model=128, num_layers=2, patch_sizes=[8, 16], max_seq_len=64),
                 context_length=32, horizon=8, patch_size=8),
    "small": dict(module=dict(d_model=384, num_layers=6, patch_sizes=[8, 16, 32, 64, 128], max_seq_len=512),
                  context_length=512, horizon=96, patch_size=32),
    "base": dict(module=dict(d_model=768, num_layers=12, patch_sizes=[8, 16, 32, 64, 128], max_seq_len=512),
                 context_length=512, horizon=96, patch_size=32),
}
_MODULE_COMMON = dict(attn_dropout_p=0.0, dropout_p=0.0, scaling=True)
_MODULE_KEYS = ("d_model", "num_layers", "patch_sizes", "max_seq_len", "attn_dropout_p", "dropout_p", "scaling")


def _mixture():
    from uni2ts.distribution import (
        LogNormalOutput,
        MixtureOutput,
        NegativeBinomialOutput,
        NormalFixedScaleOutput,
        StudentTOutput,
    )

    return MixtureOutput(
        components=[StudentTOutput(), NormalFixedScaleOutput(scale=1e-3), NegativeBinomialOutput(), LogNormalOutput()]
    )


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _make_picklable(module: nn.Module) -> None:
    # uni2ts' MixtureOutput maps the mixture-weight logits with `lambda x: x`, which
    # torch.save (Forecaster.save) cannot pickle; put a module-level identity in its place.
    dm = getattr(getattr(module, "param_proj", None), "domain_map", None)
    if isinstance(dm, dict) and getattr(dm.get("weights_logits"), "__name__", "") == "<lambda>":
        dm["weights_logits"] = _identity


# --- attention heads ---------------------------------------------------------------------
def _bias_tables(attn: nn.Module, heads: int = None) -> list:
    """Per-head attention-bias tables of a uni2ts attention: (module, its Embedding), each
    checked to hold `heads` (default: the attention's head count) columns."""
    out = []
    for name in ("var_attn_bias", "time_attn_bias"):
        b = getattr(attn, name, None)
        if b is None:
            continue
        emb = getattr(b, "emb", None)
        if not isinstance(emb, nn.Embedding) or emb.weight.shape[1] != (heads or attn.num_heads):
            raise NotImplementedError(f"moirai: unsupported attention bias {type(b).__name__} for head pruning")
        out.append((b, emb))
    return out


def _fix_heads(attn: nn.Module, new: int, old: int) -> None:
    # multi-head attention (one head per group): groups, the bias modules' head counts and
    # their tables' widths follow. head_dim is unchanged, so q/k norms and RoPE (shared
    # between layers, over head_dim) need nothing.
    tables = _bias_tables(attn, new)  # the tables were sliced with the heads already
    attn.num_heads = attn.num_groups = new
    for b, emb in tables:
        b.num_heads = b.num_groups = new
        emb.embedding_dim = emb.weight.shape[1]


def _recognise_moirai_attention(module: nn.Module, hint):
    try:
        from uni2ts.module.attention import GroupedQueryAttention
    except ImportError:  # pragma: no cover - uni2ts not installed
        return None
    if not isinstance(module, GroupedQueryAttention):
        return None
    if module.num_groups != module.num_heads:  # GQA/MQA: k/v heads are shared between q heads
        return None
    if any(getattr(module, n, None) is not None for n in ("var_qk_proj", "time_qk_proj")):
        for n in ("var_qk_proj", "time_qk_proj"):
            proj = getattr(module, n, None)
            if proj is not None and any(True for _ in proj.parameters()):
                return None  # learned per-head q/k projections: not supported
    per_head = [(emb, "weight", 1) for _, emb in _bias_tables(module)]
    return _graph.AttentionSpec(module, module.num_heads, module.q_proj, module.k_proj, module.v_proj,
                                module.out_proj, per_head, fix=_fix_heads)


_graph.register_attention(_recognise_moirai_attention)


@register("moirai")
class MoiraiForecaster(Forecaster):
    """Moirai (`uni2ts.model.moirai.MoiraiModule`) as a `Forecaster`.

    Example:
        >>> m = compress.models.load("moirai", size="tiny")   # doctest: +SKIP
        >>> m(torch.randn(2, 32, 3)).shape                     # doctest: +SKIP
        torch.Size([2, 8, 3])
    """

    requires = ("uni2ts", "gluonts", "einops")

    def __init__(self, model: nn.Module, context_length: int, horizon: int, patch_size: int, **kw):
        super().__init__(model, context_length, horizon, **kw)
        self.patch_size = int(patch_size)

    @classmethod
    def build(cls, pretrained: Optional[str] = None, size: str = "small", **config) -> "MoiraiForecaster":
        """Args:
            pretrained: local directory of a Moirai checkpoint (config.json + model.safetensors).
            size: "tiny", "small" (moirai-1.1-R-small) or "base".
            **config: `context_length`, `horizon`, `patch_size` (one of the module's patch
                sizes) and MoiraiModule settings (d_model, num_layers, patch_sizes, ...).
        """
        from uni2ts.model.moirai import MoiraiModule
        from uni2ts.model.moirai.module import encode_distr_output

        if size not in SIZES:
            raise ValueError(f"moirai: unknown size {size!r}; choose one of {sorted(SIZES)}")
        spec = SIZES[size]
        module_overrides = {k: v for k, v in config.items() if k in _MODULE_KEYS}
        unknown = set(config) - set(_MODULE_KEYS) - {"context_length", "horizon", "patch_size"}
        if unknown:
            raise ValueError(f"moirai: unknown config keys {sorted(unknown)}")
        if pretrained is not None:
            if not os.path.isdir(pretrained):
                raise FileNotFoundError(f"moirai: pretrained must be a local directory, got {pretrained!r}")
            if module_overrides:
                raise ValueError("moirai: a pretrained module's architecture is fixed by its weights")
            module = MoiraiModule.from_pretrained(pretrained)
        else:
            kwargs = {**_MODULE_COMMON, **spec["module"], **module_overrides}
            kwargs["patch_sizes"] = tuple(kwargs["patch_sizes"])
            module = MoiraiModule(distr_output=_mixture(), **kwargs)
        _make_picklable(module)
        module.eval()
        patch_size = int(config.get("patch_size", spec["patch_size"]))
        if patch_size not in module.patch_sizes:
            raise ValueError(f"moirai: patch_size {patch_size} is not one of the module's {tuple(module.patch_sizes)}")
        context_length = int(config.get("context_length", spec["context_length"]))
        horizon = int(config.get("horizon", spec["horizon"]))
        module_config = {k: getattr(module, k) for k in ("d_model", "num_layers", "max_seq_len", "scaling")}
        module_config["patch_sizes"] = list(module.patch_sizes)
        module_config["distr_output"] = encode_distr_output(module.distr_output)
        return cls(
            module,
            context_length=context_length,
            horizon=horizon,
            patch_size=patch_size,
            n_channels=None,
            config={
                **build_record(size, pretrained, config),
                "context_length": context_length,
                "horizon": horizon,
                "patch_size": patch_size,
                "module_config": module_config,
            },
        ).eval()

    # --- uni2ts' forecast logic, for the target-only case ------------------------------
    def packed_inputs(self, past: torch.Tensor) -> dict:
        """The packed token sequence MoiraiModule reads, as `MoiraiForecast._convert` builds it.

        Args:
            past: [B, L, C] context; the last `context_length` steps are used.

        Returns:
            keyword arguments of `MoiraiModule.forward`: target / observed_mask
            [B, C*(Nc+Nh), P_max], sample_id / time_id / variate_id / prediction_mask /
            patch_size [B, C*(Nc+Nh)], where Nc, Nh are context and horizon token counts.
        """
        from einops import rearrange, repeat

        p, p_max = self.patch_size, max(self.model.patch_sizes)
        past = past[:, -self.context_length:, :]
        b, l, c = past.shape
        nc, nh = math.ceil(l / p), math.ceil(self.horizon / p)
        dev = past.device
        pad_l, pad_h = nc * p - l, nh * p - self.horizon

        def tokens(x: torch.Tensor) -> torch.Tensor:  # [B, T*p, C] -> [B, C*T, P_max]
            x = rearrange(x, "b (t p) c -> b (c t) p", p=p)
            return F.pad(x, (0, p_max - p))

        target = torch.cat([
            tokens(F.pad(past, (0, 0, pad_l, 0))),
            tokens(past.new_zeros(b, nh * p, c)),
        ], dim=1)
        obs_past = F.pad(torch.ones(b, l, c, dtype=torch.bool, device=dev), (0, 0, pad_l, 0), value=False)
        obs_future = F.pad(torch.ones(b, self.horizon, c, dtype=torch.bool, device=dev), (0, 0, 0, pad_h), value=False)
        observed_mask = torch.cat([tokens(obs_past), tokens(obs_future)], dim=1)

        # time ids: context tokens count observed patches (0-based), horizon continues after.
        past_seq = obs_past.reshape(b, nc, p, c).amax(dim=(2, 3)).long()  # [B, Nc]
        past_seq_id = torch.clamp(past_seq.cummax(dim=-1).values.cumsum(dim=-1) - 1, min=0)
        future_seq_id = torch.arange(nh, device=dev).expand(b, nh) + past_seq_id.amax(dim=-1, keepdim=True) + 1
        time_id = torch.cat([past_seq_id.repeat(1, c), future_seq_id.repeat(1, c)], dim=1)

        # every token that holds at least one real (non-pad) step belongs to sample 1
        sample_id = torch.ones(b, c * (nc + nh), dtype=torch.long, device=dev)
        variate_id = torch.cat([
            repeat(torch.arange(c, device=dev), "c -> b (c t)", b=b, t=nc),
            repeat(torch.arange(c, device=dev), "c -> b (c t)", b=b, t=nh),
        ], dim=1)
        prediction_mask = torch.cat([
            torch.zeros(b, c * nc, dtype=torch.bool, device=dev),
            torch.ones(b, c * nh, dtype=torch.bool, device=dev),
        ], dim=1)
        return dict(target=target, observed_mask=observed_mask, sample_id=sample_id, time_id=time_id,
                    variate_id=variate_id, prediction_mask=prediction_mask,
                    patch_size=torch.full_like(time_id, p))

    def distribution(self, past: torch.Tensor):
        """The predictive distribution over every packed token (for losses / log-probs)."""
        return self.model(**self.packed_inputs(past))

    def unpack(self, tokens: torch.Tensor, n_context: int, n_channels: int) -> torch.Tensor:
        """[B, C*(Nc+Nh), P_max] per-token values -> [B, H, C] forecast."""
        from einops import rearrange

        p = self.patch_size
        nc = math.ceil(n_context / p)
        nh = math.ceil(self.horizon / p)
        start = n_channels * nc
        y = tokens[:, start:start + n_channels * nh, :p]  # [B, C*Nh, p]
        y = rearrange(y, "b (c t) p -> b (t p) c", c=n_channels)
        return y[:, : self.horizon, :]

    def _forecast(self, past: torch.Tensor) -> torch.Tensor:  # [B, L, C] -> [B, H, C]
        n_context = min(past.shape[1], self.context_length)
        mean = self.distribution(past).mean  # [B, C*(Nc+Nh), P_max]
        return self.unpack(mean, n_context, past.shape[-1])

    def layer_stacks(self) -> list:
        """The encoder layers (residual over the packed token sequence)."""
        from ..strategies.layers import BlockStack

        def fix(forecaster, old, kept):
            forecaster.model.num_layers = len(kept)  # `forecaster.config` stays the unpruned build record

        return [BlockStack("model.encoder.layers", fix=fix)]

    # heads are cut by the attention spec registered above; compress.graph traces each
    # attention as one node, so its einops rearranges and RoPE never reach torch-pruning
    def protected_modules(self) -> List[nn.Module]:
        # Multi-patch-size input projection and the distribution parameter projection (head).
        return [self.model.in_proj, self.model.param_proj]
