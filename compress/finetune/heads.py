"""The reconstructed forecasting head (TRACE, Li and Zhu, arXiv 2503.16991) for patch backbones.

Why this module exists: patch-based forecasters (PatchTST, MOMENT, TTM's decoder) end in
one flatten-linear head from (patches x d_model) to the horizon. That Linear is most of
what linear probing trains (MOMENT-1-small at horizon 96: 3.1M weights, for a 336-step
horizon 11M) and it fixes the horizon. `attach_reconstructed_head` swaps that Linear for
a small head that first maps each patch's features back to patch values and then
reconstructs the horizon from the reconstructed patches, so it serves any horizon,
including ones longer than the backbone's native one.

Design (`ReconstructedHead`, a drop-in for the flatten-linear; input ``[..., P * d]``
flattened patches-outer as the family's head flattens it, output ``[..., H]``):

1. ``patch``: a depth-wise separable Conv1d over the patch axis: a depth-wise Conv1d
   (d channels, kernel k, one filter per feature) then a point-wise Conv1d d -> p; each
   patch's features become its p reconstructed values (p = the backbone's patch length).
2. ``project``: a Linear from the P * p reconstructed values to the H steps (with
   ``rank=r``: factorised as P*p -> r -> H).

Parameters: ``d*k + d + d*p + p + P*p*H + H`` (rank r: ``... + P*p*r + r*H + H``),
against ``P*d*H + H`` for the linear head: the ratio is about p / d (PatchTST-mini 16/192,
MOMENT-small 8/512; TTM-R2's decoder 64/128, where the linear head is already small).
`head_param_counts(model)` gives both counts for a model.

Every family registers where its Linear sits and how many patches it sees (`HeadSite`);
widths are read from the live Linear (in_features / patches), so pruned models work.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
from torch import nn

__all__ = ["ReconstructedHead", "HeadSite", "register_head_site", "attach_reconstructed_head",
           "supports_reconstructed_head", "head_param_counts"]


class ReconstructedHead(nn.Module):
    """Flattened patch features ``[..., P*d]`` -> forecast ``[..., H]`` through reconstructed patches.

    Args:
        n_patches: P, patches the backbone emits.
        d_model: d, features per patch.
        patch_len: p, values each patch reconstructs.
        horizon: H, forecast steps.
        kernel_size: k of the depth-wise Conv1d over the patch axis (odd).
        rank: factorise the horizon map P*p -> rank -> H (None: one Linear).

    Example:
        >>> h = ReconstructedHead(n_patches=4, d_model=16, patch_len=8, horizon=48)
        >>> h(torch.randn(2, 3, 4 * 16)).shape
        torch.Size([2, 3, 48])
    """

    def __init__(self, n_patches: int, d_model: int, patch_len: int, horizon: int,
                 kernel_size: int = 3, rank: Optional[int] = None, replaced_params: int = 0):
        super().__init__()
        for name, v in (("n_patches", n_patches), ("d_model", d_model), ("patch_len", patch_len),
                        ("horizon", horizon), ("kernel_size", kernel_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ReconstructedHead: {name}={v!r} must be a positive integer")
        if kernel_size % 2 == 0:
            raise ValueError(f"ReconstructedHead: kernel_size={kernel_size} must be odd (same-length convolution)")
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise ValueError(f"ReconstructedHead: rank={rank!r} must be a positive integer or None")
        self.n_patches, self.d_model, self.patch_len = n_patches, d_model, patch_len
        self.horizon, self.kernel_size, self.rank = horizon, kernel_size, rank
        self.replaced_params = int(replaced_params)  # the linear head it replaced (for reports)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel_size, padding=kernel_size // 2, groups=d_model)
        self.pointwise = nn.Conv1d(d_model, patch_len, 1)
        flat = n_patches * patch_len
        self.project = (nn.Linear(flat, horizon) if rank is None
                        else nn.Sequential(nn.Linear(flat, rank, bias=False), nn.Linear(rank, horizon)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        z = x.reshape(-1, self.n_patches, self.d_model).transpose(1, 2)  # [N, d, P]
        z = self.pointwise(self.depthwise(z))                            # [N, p, P] reconstructed patches
        z = z.transpose(1, 2).reshape(z.shape[0], -1)                    # [N, P*p] patch after patch
        return self.project(z).reshape(*lead, self.horizon)

    def extra_repr(self) -> str:
        return f"patches={self.n_patches}, d_model={self.d_model}, patch_len={self.patch_len}, horizon={self.horizon}"


def _rebuild(old: nn.Module, entry: dict) -> ReconstructedHead:
    a = entry.get("attrs", {})
    return ReconstructedHead(a["n_patches"], a["d_model"], a["patch_len"], a["horizon"],
                             kernel_size=a.get("kernel_size", 3), rank=a.get("rank"),
                             replaced_params=a.get("replaced_params", 0))


def _register_saving() -> None:
    from ..models.saving import register_module_type

    register_module_type(ReconstructedHead, _rebuild, name="compress.finetune.heads.ReconstructedHead")


_register_saving()


# ---------------------------------------------------------------------------------
# Per-family sites
# ---------------------------------------------------------------------------------
@dataclass
class HeadSite:
    """Where a family's flatten-linear head is and what it sees.

    Args:
        path: qualified name of the Linear (from the Forecaster).
        n_patches: model -> P (patches flattened into the Linear's input).
        patch_len: model -> p (values per patch).
        check: model -> None, raising ValueError where this model's head cannot be replaced.
        after: (model, horizon) -> None, bring the family's live config/attributes in line.
    """

    path: str
    n_patches: Callable[[nn.Module], int]
    patch_len: Callable[[nn.Module], int]
    check: Optional[Callable[[nn.Module], None]] = None
    after: Optional[Callable[[nn.Module, int], None]] = None


_SITES: Dict[str, HeadSite] = {}


def register_head_site(family: str, site: HeadSite) -> None:
    """Teach `attach_reconstructed_head` a family's flatten-linear head."""
    _SITES[family] = site


def _patchtst_check(m):
    head, cfg = m.model.head, m.model.config
    if not getattr(head, "share_projection", True) or head.pooling_type or head.use_cls_token:
        raise ValueError("reconstructed head: this PatchTST has per-channel projections or a pooled/CLS head; "
                         "only the shared flatten head (share_projection=True, pooling_type=None) is supported")
    if getattr(cfg, "loss", "mse") != "mse":
        raise ValueError("reconstructed head: only the point (loss='mse') PatchTST head is supported")


def _patchtst_after(m, h):
    m.model.config.prediction_length = h


register_head_site("patchtst", HeadSite(
    "model.head.projection",
    n_patches=lambda m: int(m.model.model.patchifier.num_patches),
    patch_len=lambda m: int(m.model.config.patch_length),
    check=_patchtst_check, after=_patchtst_after))


def _moment_patches(m):
    mc = m.model.config
    return (max(mc.seq_len, mc.patch_len) - mc.patch_len) // mc.patch_stride_len + 1


def _moment_after(m, h):
    m.model.config.forecast_horizon = h


register_head_site("moment", HeadSite(
    "model.head.linear", n_patches=_moment_patches, patch_len=lambda m: int(m.model.config.patch_len),
    after=_moment_after))


def _ttm_check(m):
    head = m.model.head
    if getattr(head, "enable_forecast_channel_mixing", False) or getattr(head, "prediction_channel_indices", None):
        raise ValueError("reconstructed head: TTM with forecast channel mixing or prediction_channel_indices is "
                         "not supported (the head mixer is built for the native horizon)")


def _ttm_after(m, h):
    m.model.head.prediction_filter_length = None  # the new head makes exactly h steps
    m.model.config.prediction_length = h
    m.model.config.prediction_filter_length = None


register_head_site("ttm", HeadSite(
    "model.head.base_forecast_block", n_patches=lambda m: int(m.model.config.num_patches),
    patch_len=lambda m: int(m.model.config.patch_length), check=_ttm_check, after=_ttm_after))


# ---------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------
def _site(model: nn.Module) -> HeadSite:
    from ..models.base import Forecaster

    family = getattr(model, "family", None)
    if not isinstance(model, Forecaster) or family not in _SITES:
        raise ValueError(f"reconstructed head: {type(model).__name__} (family {family!r}) has no patch-based "
                         f"flatten-linear head; supported families: {', '.join(sorted(_SITES))}. Use the model's "
                         "own head (e.g. method='lora') for other families")
    return _SITES[family]


def supports_reconstructed_head(model: nn.Module) -> bool:
    """Whether `attach_reconstructed_head` can replace `model`'s head.

    Example:
        >>> supports_reconstructed_head(compress.models.load("patchtst", size="tiny"))  # doctest: +SKIP
        True
    """
    try:
        site = _site(model)
        if site.check:
            site.check(model)
        _geometry(model, site)
    except (ValueError, AttributeError):
        return False
    return True


def _geometry(model, site):
    """(Linear or ReconstructedHead at the site, P, d, p) read from the live modules."""
    lin = model.get_submodule(site.path)
    p_count, p = site.n_patches(model), site.patch_len(model)
    if isinstance(lin, ReconstructedHead):
        return lin, lin.n_patches, lin.d_model, lin.patch_len
    if not isinstance(lin, nn.Linear):
        raise ValueError(f"reconstructed head: {site.path} is a {type(lin).__name__}, not the flatten Linear")
    if lin.in_features % p_count:
        raise ValueError(f"reconstructed head: {site.path} reads {lin.in_features} features, not a multiple of "
                         f"{p_count} patches")
    return lin, p_count, lin.in_features // p_count, p


def _linear_params(n_patches, d_model, horizon):
    return n_patches * d_model * horizon + horizon


def attach_reconstructed_head(model: nn.Module, horizon: Optional[int] = None, *, kernel_size: int = 3,
                              rank: Optional[int] = None, seed: Optional[int] = None,
                              inplace: bool = False) -> nn.Module:
    """A copy of `model` whose flatten-linear head is a `ReconstructedHead` (`inplace=True`: `model` itself).

    As everywhere in compress, the input model is not modified unless `inplace=True`.
    Only the head changes: the backbone's tensors and their `requires_grad` stay as they
    were; every parameter of the new head trains. `model.horizon` becomes `horizon`, which
    may exceed the backbone's native one (load data with the new horizon:
    ``compress.data.load(name, model.context_length, model.horizon, split)``).

    Args:
        model: a PatchTST, MOMENT or TTM `Forecaster` (pruned or not).
        horizon: forecast steps of the new head (None: the model's horizon).
        kernel_size: kernel of the depth-wise convolution over the patch axis.
        rank: factorise the horizon map (None: one Linear from the reconstructed patches).
        seed: seeds the new head's initialisation (None: the global generator).
        inplace: replace the head of `model` itself instead of a deep copy's.

    Returns:
        The model with the new head: a copy, or `model` itself with `inplace=True`.

    Raises:
        ValueError: the family has no patch-based flatten head (names the supported ones).
        TypeError: `inplace=False` and the model cannot be deep-copied (suggests `inplace=True`).

    Example:
        >>> m = compress.models.load("patchtst", size="tiny")                 # doctest: +SKIP
        >>> m24 = attach_reconstructed_head(m, horizon=24)                      # doctest: +SKIP
        >>> m24(torch.randn(2, 32, 3)).shape, m.horizon                         # doctest: +SKIP
        (torch.Size([2, 24, 3]), 8)
    """
    site = _site(model)
    if site.check:
        site.check(model)
    _geometry(model, site)  # unsupported geometry fails before any copy
    if horizon is not None and (isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1):
        raise ValueError(f"reconstructed head: horizon={horizon!r} must be a positive integer")
    if not inplace:
        from ..guards import deepcopy_model

        model = deepcopy_model(model, "attach_reconstructed_head", "change the head of")
    old, n_patches, d_model, patch_len = _geometry(model, site)
    h = int(model.horizon if horizon is None else horizon)
    replaced = getattr(old, "replaced_params", 0) or sum(t.numel() for t in old.parameters())
    if seed is not None:
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
    try:
        new = ReconstructedHead(n_patches, d_model, patch_len, h, kernel_size=kernel_size, rank=rank,
                                replaced_params=replaced)
    finally:
        if seed is not None:
            torch.random.set_rng_state(state)
    ref = next(iter(old.parameters()), None)
    if ref is not None:
        new = new.to(device=ref.device, dtype=ref.dtype)
    new.train(old.training)
    parent, _, attr = site.path.rpartition(".")
    setattr(model.get_submodule(parent), attr, new)
    model.horizon = h
    if site.after:
        site.after(model, h)
    return model


def head_param_counts(model: nn.Module, horizon: Optional[int] = None) -> dict:
    """Parameter counts of the flatten-linear head and of the reconstructed head for `model`.

    Works before or after `attach_reconstructed_head` (widths from the live modules).

    Returns:
        {"linear": P*d*H + H, "reconstructed": ..., "ratio": reconstructed / linear,
        "horizon": H, "n_patches": P, "d_model": d, "patch_len": p, "attached": bool}

    Example:
        >>> head_param_counts(compress.models.load("patchtst", size="tiny"))["ratio"] < 1  # doctest: +SKIP
        True
    """
    site = _site(model)
    cur, n_patches, d_model, patch_len = _geometry(model, site)
    attached = isinstance(cur, ReconstructedHead)
    h = int(model.horizon if horizon is None else horizon)
    if attached and h == cur.horizon:
        recon = sum(t.numel() for t in cur.parameters())
        kernel, rank = cur.kernel_size, cur.rank
    else:
        kernel, rank = (cur.kernel_size, cur.rank) if attached else (3, None)
        with torch.device("meta"):
            recon = sum(t.numel() for t in ReconstructedHead(n_patches, d_model, patch_len, h, kernel, rank).parameters())
    linear = _linear_params(n_patches, d_model, h)
    return {"linear": linear, "reconstructed": recon, "ratio": recon / linear, "horizon": h,
            "n_patches": n_patches, "d_model": d_model, "patch_len": patch_len, "attached": attached}
