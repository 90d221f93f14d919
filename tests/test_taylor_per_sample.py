"""Second-order Taylor scores are per *sample* whatever the site's tensor layout: checked
against a brute force (one backward per sample) on batch-first and seq-first layers, on
heads, and on every model family of the zoo."""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compress
from compress import graph as G
from test_criteria import _brute_force_taylor


class SeqFirst(nn.Module):
    """nn.TransformerEncoderLayer with batch_first=False: the site inputs are [L, B, D]."""

    def __init__(self, L=8, H=4, C=3, d=16, h=4, f=32):
        super().__init__()
        self.H, self.C = H, C
        self.embed = nn.Linear(C, d)
        self.layer = nn.TransformerEncoderLayer(d, h, f, dropout=0.0, batch_first=False)
        self.head = nn.Linear(L * d, H * C)

    def forward(self, x):  # [B, L, C]
        z = self.layer(self.embed(x).transpose(0, 1)).transpose(0, 1)  # [L, B, D] inside
        return self.head(z.flatten(1)).view(x.shape[0], self.H, self.C)


class ChannelFlat(nn.Module):
    """Channel-independent: the FFN sees [B*C, L, d] (PatchTST-style flattening)."""

    def __init__(self, L=8, H=4, C=3, d=8, f=16):
        super().__init__()
        self.H, self.C = H, C
        self.embed = nn.Linear(1, d)
        self.fc1, self.fc2 = nn.Linear(d, f), nn.Linear(f, d)
        self.head = nn.Linear(L * d, H)

    def forward(self, x):  # [B, L, C]
        B, L, C = x.shape
        z = self.embed(x.permute(0, 2, 1).reshape(B * C, L, 1))
        z = z + self.fc2(F.gelu(self.fc1(z)))
        return self.head(z.flatten(1)).view(B, C, self.H).transpose(1, 2)


def _cal(model, x, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        y = G._first_tensor(model(x))
    return [(torch.randn(x.shape, generator=g), torch.randn(y.shape, generator=g)) for _ in range(n)]


def _check(model, x, groups, rtol=1e-3):
    cal = _cal(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to rows would warn
        crit = compress.criteria.get("taylor", order=2).calibrate(model, cal, groups=groups)
    for g in groups:
        ref = _brute_force_taylor(model, g, cal)
        torch.testing.assert_close(crit.score(g), ref, rtol=rtol, atol=1e-6 * float(ref.abs().max()) + 1e-9,
                                   msg=lambda m: f"{g.name}: {m}")


@pytest.mark.parametrize("cls", [SeqFirst, ChannelFlat])
def test_taylor_order_two_is_per_sample_for_every_layout(cls):
    model = cls().eval()
    x = torch.randn(5, 8, 3)
    groups = G.build(model, x).groups
    assert groups and ({"ffn", "heads"} <= {g.kind for g in groups} or cls is ChannelFlat)
    _check(model, x, groups)


FAMILIES = compress.models.available()


@pytest.mark.parametrize("name", FAMILIES)
def test_taylor_order_two_is_per_sample_on_every_family(name):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = compress.models.load(name, size="tiny").eval()
    except ImportError as e:  # pragma: no cover - depends on the install
        pytest.skip(f"{name}: model package not installed ({e})")
    model.prepare_for_pruning()
    x = torch.randn(model.example_inputs(3, 3).shape)
    pg = G.build(model, x, protected=model.protected_modules() or None)
    # the first and last group of each kind keep it fast and still cover encoder and decoder
    groups = []
    for kind in ("ffn", "heads"):
        members = pg.of_kind(kind)
        groups += list({id(g): g for g in (members[:1] + members[-1:])}.values())
    assert groups
    _check(model, x, groups)
