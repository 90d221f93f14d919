"""Tiny forecasters built for the tests (CPU, milliseconds)."""
import time

import torch
import torch.nn.functional as F
from torch import nn


class HandAttention(nn.Module):
    """Hand-written attention: separate q/k/v/o Linears, head count in `n_heads`."""

    def __init__(self, d, h, head_attr="n_heads"):
        super().__init__()
        setattr(self, head_attr, h)
        self._head_attr = head_attr
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x):  # [B, L, D]
        B, L, _ = x.shape
        h = getattr(self, self._head_attr)
        q = self.q_proj(x).view(B, L, h, -1).transpose(1, 2)
        k = self.k_proj(x).view(B, L, h, -1).transpose(1, 2)
        v = self.v_proj(x).view(B, L, h, -1).transpose(1, 2)
        a = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        return self.out_proj((a @ v).transpose(1, 2).reshape(B, L, -1))


class Block(nn.Module):
    def __init__(self, d, h, f, act=F.gelu, head_attr="n_heads"):
        super().__init__()
        self.attn = HandAttention(d, h, head_attr)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, f), nn.Linear(f, d)
        self.act = act

    def forward(self, x):
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.fc2(self.act(self.fc1(x))))


class TinyForecaster(nn.Module):
    """Patch-free Transformer forecaster: embed -> blocks -> flatten head. [B, L, C] -> [B, H, C]."""

    def __init__(self, L=16, H=4, C=3, d=16, h=4, f=32, n_layers=2, act=F.gelu, head_attr="n_heads"):
        super().__init__()
        self.L, self.H, self.C = L, H, C
        self.embed = nn.Linear(C, d)
        self.pos = nn.Parameter(torch.randn(L, d) * 0.02)
        self.blocks = nn.ModuleList([Block(d, h, f, act, head_attr) for _ in range(n_layers)])
        self.head = nn.Linear(L * d, H * C)

    def forward(self, x):
        z = self.embed(x) + self.pos
        for b in self.blocks:
            z = b(z)
        return self.head(z.flatten(1)).view(x.shape[0], self.H, self.C)


class TorchEncoderForecaster(nn.Module):
    """nn.TransformerEncoder (batch_first) with a linear head over the last step."""

    def __init__(self, L=16, H=4, C=3, d=16, h=4, f=32, n_layers=2):
        super().__init__()
        self.H, self.C = H, C
        self.embed = nn.Linear(C, d)
        layer = nn.TransformerEncoderLayer(d, h, f, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.head = nn.Linear(L * d, H * C)

    def forward(self, x):
        z = self.encoder(self.embed(x))
        return self.head(z.flatten(1)).view(x.shape[0], self.H, self.C)


class ConvFFNForecaster(nn.Module):
    """Informer-style FFN: Conv1d(k=1) pair applied on [B, D, L]."""

    def __init__(self, L=16, H=4, C=3, d=16, f=32):
        super().__init__()
        self.H, self.C = H, C
        self.embed = nn.Linear(C, d)
        self.conv1, self.conv2 = nn.Conv1d(d, f, 1), nn.Conv1d(f, d, 1)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(L * d, H * C)

    def forward(self, x):
        z = self.embed(x)
        y = self.conv2(F.relu(self.conv1(z.transpose(1, 2)))).transpose(1, 2)
        z = self.norm(z + y)
        return self.head(z.flatten(1)).view(x.shape[0], self.H, self.C)


class Broken(nn.Module):
    """A block whose forward fails on purpose, to test error messages."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        raise RuntimeError("unsupported operator frobnicate")


class BrokenForecaster(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 3)
        self.bad = Broken()

    def forward(self, x):
        return self.bad(self.embed(x))


class Slow(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        time.sleep(3)
        return self.lin(x)


def batches(model, n=3, B=4, L=16, C=3, H=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(B, L, C, generator=g), torch.randn(B, H, C, generator=g)) for _ in range(n)]


def zero_heads(attn: nn.Module, heads, n_heads, scale: float = 0.0):
    """Make heads contribute nothing: zero their q/k/v rows and output columns (or, with
    `scale`, multiply them by it: nearly nothing, but not all-zero)."""
    with torch.no_grad():
        d = attn.q_proj.out_features // n_heads
        for h in heads:
            sl = slice(h * d, (h + 1) * d)
            for lin in (attn.q_proj, attn.k_proj, attn.v_proj):
                lin.weight[sl] *= scale
                lin.bias[sl] *= scale
            attn.out_proj.weight[:, sl] *= scale


class FusedGLUForecaster(nn.Module):
    """A fused GLU FFN: one producer of 2f channels, `chunk(2)`, a consumer of width f."""

    def __init__(self, L=16, H=4, C=3, d=16, f=24):
        super().__init__()
        self.H, self.C = H, C
        self.embed = nn.Linear(C, d)
        self.fc1, self.fc2 = nn.Linear(d, 2 * f), nn.Linear(f, d)
        self.head = nn.Linear(L * d, H * C)

    def forward(self, x):
        z = self.embed(x)
        a, b = self.fc1(z).chunk(2, dim=-1)
        z = z + self.fc2(F.silu(a) * b)
        return self.head(z.flatten(1)).view(x.shape[0], self.H, self.C)


class ConcatFFNForecaster(nn.Module):
    """A consumer that reads `cat([side, act(fc1(x))])`: its input is wider than the units."""

    def __init__(self, L=16, H=4, C=3, d=16, f=24):
        super().__init__()
        self.H, self.C = H, C
        self.embed = nn.Linear(C, d)
        self.fc1, self.fc2 = nn.Linear(d, f), nn.Linear(d + f, d)
        self.head = nn.Linear(L * d, H * C)

    def forward(self, x):
        z = self.embed(x)
        z = z + self.fc2(torch.cat([z, F.gelu(self.fc1(z))], dim=-1))
        return self.head(z.flatten(1)).view(x.shape[0], self.H, self.C)


class GatedFFNForecaster(nn.Module):
    """A gated FFN with two producers (SwiGLU: act(x W0) * (x W1)) and one consumer, as LLaMA/T5 v1.1."""

    def __init__(self, L=16, H=4, C=3, d=16, f=24, n_layers=2):
        super().__init__()
        self.H, self.C = H, C
        self.embed = nn.Linear(C, d)
        self.blocks = nn.ModuleList([_Gated(d, f) for _ in range(n_layers)])
        self.head = nn.Linear(L * d, H * C)

    def forward(self, x):
        z = self.embed(x)
        for b in self.blocks:
            z = b(z)
        return self.head(z.flatten(1)).view(x.shape[0], self.H, self.C)


class _Gated(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.wi_0, self.wi_1, self.wo = nn.Linear(d, f, bias=False), nn.Linear(d, f, bias=False), nn.Linear(f, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, z):
        return self.norm(z + self.wo(F.silu(self.wi_0(z)) * self.wi_1(z)))
