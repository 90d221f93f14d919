"""Unit masks: one set of 0/1 masks on unit groups, applied at each group's mask site.

The progressive strategy masks units round by round; the second-order Taylor criterion
needs the gradient of the loss with respect to those same masks, per sample. Both use
this one `MaskSet`: it installs one forward pre-hook per group that multiplies the site
input by the group's mask (repeated `width` times along the site's channel dim); while
`tracking`, the hook multiplies by a fresh leaf tensor holding the current mask values
once per index of the site input's sample dimension instead, so that one backward pass
gives every sample's mask gradient. A coupled group (residual attention: the same heads in
several layers) has one mask applied at every layer's site, and records a leaf at each of
them: its gradient is the sum over the sites, as for one mask shared by all layers.

Example:
    >>> import copy, torch, compress
    >>> layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 8), layer, torch.nn.Linear(8, 3)).eval()
    >>> x = torch.randn(2, 5, 3)
    >>> ref = copy.deepcopy(model)
    >>> _ = ref[1].linear2.weight.data.zero_()          # every FFN channel removed by hand
    >>> g = compress.graph.build(model, x).of_kind("ffn")[0]
    >>> masks = MaskSet([g])
    >>> _ = masks.values[id(g)].zero_()                 # ... and masked
    >>> with masks.installed():
    ...     y = model(x)
    >>> bool(torch.allclose(y, ref(x), atol=1e-6))
    True
"""
from __future__ import annotations

import contextlib
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["MaskSet", "group_sites", "scale_site_input", "site_channel_dim"]


def site_channel_dim(site: nn.Module) -> int:
    """Which dim of `site`'s input carries its input channels."""
    return 1 if isinstance(site, nn.modules.conv._ConvNd) else -1


def scale_site_input(x: torch.Tensor, site: nn.Module, factors: torch.Tensor, width: int,
                     dim: Optional[int] = None) -> torch.Tensor:
    """`x * factors` with `factors` [n] (or [R, n] along `dim` of x) repeated `width` times
    along the site's channel dim."""
    cdim = site_channel_dim(site) % x.dim()
    full = factors.to(dtype=x.dtype, device=x.device).repeat_interleave(width, dim=-1)
    shape = [1] * x.dim()
    shape[cdim] = full.shape[-1]
    if full.dim() == 1:
        return x * full.view(shape)
    d = dim % x.dim()
    shape[d] = full.shape[0]
    return x * (full.view(shape) if d < cdim else full.t().reshape(shape))


def group_sites(group) -> List[Tuple[nn.Module, int]]:
    """(site, width) of every module whose input carries `group`'s units: the kind's mask
    site first, then the further sites of coupled groups (residual attention: each layer's
    output projection), which are masked, and differentiated, with the same values."""
    from .kinds import get_kind

    first = get_kind(group.kind).mask_site(group)
    rest = group.sites()[1:] if hasattr(group, "sites") else []
    return [first] + [sw for sw in rest if sw[0] is not first[0]]


class MaskSet:
    """0/1 masks on the units of `groups`, applied at each group's mask site.

    Args:
        groups: unit groups of one traced model.

    Attributes:
        values: `{id(group): tensor [group.n]}`, the current mask (edit in place).
    """

    def __init__(self, groups: Sequence):
        self.groups = list(groups)
        self.values: Dict[int, torch.Tensor] = {id(g): torch.ones(g.n) for g in self.groups}
        self._sites = {id(g): group_sites(g) for g in self.groups}
        self._handles: List = []
        self._tracking: Optional[Dict[int, list]] = None
        self.records: Dict[int, list] = {}

    # --- state ---------------------------------------------------------------------
    def masked(self, group) -> List[int]:
        """Indices of the masked units of `group`."""
        return torch.nonzero(self.values[id(group)] == 0).flatten().tolist()

    def n_masked(self, kind: Optional[str] = None) -> int:
        return sum(int((self.values[id(g)] == 0).sum()) for g in self.groups if kind is None or g.kind == kind)

    def snapshot(self) -> Dict[int, torch.Tensor]:
        return {k: v.clone() for k, v in self.values.items()}

    # --- hooks ---------------------------------------------------------------------
    def install(self) -> "MaskSet":
        """Register the hooks (they read `values` live); `remove()` takes them off."""
        if not self._handles:
            for g in self.groups:
                for site, width in self._sites[id(g)]:  # coupled heads: every layer's site
                    self._handles.append(site.register_forward_pre_hook(self._hook(g, width)))
        return self

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @contextlib.contextmanager
    def installed(self):
        was = bool(self._handles)
        self.install()
        try:
            yield self
        finally:
            if not was:
                self.remove()

    @contextlib.contextmanager
    def tracking(self, layouts: Dict[int, list]):
        """While active, each call of a site records a leaf [R, n] (R: the size of the site
        input's sample dim from `layouts[id(group)][call].dim`) in `records[id(group)]`."""
        self._tracking = layouts
        self.records = {id(g): [] for g in self.groups}
        try:
            with self.installed():
                yield self
        finally:
            self._tracking = None

    def _hook(self, group, width: int):
        def hook(module, args):
            x = args[0]
            value = self.values[id(group)]
            if self._tracking is None:
                return (scale_site_input(x, module, value, width),) + tuple(args[1:])
            store = self.records[id(group)]
            layouts = self._tracking.get(id(group), [])
            layout = layouts[len(store)] if len(store) < len(layouts) else None
            d = 0 if layout is None else layout.dim % x.dim()
            leaf = value.to(dtype=x.dtype, device=x.device).expand(x.shape[d], -1).clone().requires_grad_(True)
            store.append((leaf, layout))
            return (scale_site_input(x, module, leaf, width, dim=d),) + tuple(args[1:])

        return hook
