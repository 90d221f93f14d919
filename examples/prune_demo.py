"""Prune a Transformer forecaster three ways and print what each cut bought.

    python examples/prune_demo.py

A 4-layer Transformer encoder forecaster (d_model 256, 8 heads, FFN 1024) reads 96 hourly
steps of ETTh1 (shipped with the package) and predicts 24. It is pruned at 50% with
three criteria (magnitude, taylor, activation; 4 calibration batches of ETTh1 training
windows) and, for contrast, unstructured magnitude pruning at 50%. Random weights: this
demo is about size and speed; accuracy comparisons live in benchmarks/.
"""
import torch
from tabulate import tabulate
from torch import nn

import compress
from compress.data import load
from compress.measure import measure


class Forecaster(nn.Module):
    def __init__(self, L=96, H=24, C=7, d=256, heads=8, ff=1024, layers=4):
        super().__init__()
        self.H, self.C = H, C
        self.embed = nn.Linear(C, d)
        layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(L * d, H * C)

    def forward(self, x):  # [B, L, C] -> [B, H, C]
        return self.head(self.encoder(self.embed(x)).flatten(1)).view(x.shape[0], self.H, self.C)


def main():
    torch.manual_seed(0)
    train = load("ETTh1", context_length=96, horizon=24, split="train")
    cal = train.batches(16, limit=4, shuffle=True)
    x = cal[0][0]
    model = Forecaster().eval()
    base = measure(model, x)
    rows = [["original", "-", f"{base.params / 1e6:.2f}M", f"{base.density:.2f}", f"{base.flops / 1e9:.2f}G",
             f"{base.latency_ms:.1f}", "1.00x"]]
    runs = [("structured", c) for c in ("magnitude", "taylor", "activation")] + [("unstructured", "magnitude")]
    for strategy, crit in runs:
        small = compress.prune(model, crit, ratio=0.5, strategy=strategy, example_inputs=x, calibration=cal).eval()
        m = measure(small, x)
        rows.append([strategy, crit, f"{m.params / 1e6:.2f}M", f"{m.density:.2f}", f"{m.flops / 1e9:.2f}G",
                     f"{m.latency_ms:.1f}", f"{base.latency_ms / m.latency_ms:.2f}x"])
    print(tabulate(rows, headers=["strategy", "criterion", "params", "density", "FLOPs", "latency ms (1 thread)",
                                  "speedup"], tablefmt="github"))
    print()
    print("structured taylor vs original:")
    small = compress.prune(model, "taylor", ratio=0.5, example_inputs=x, calibration=cal).eval()
    print(measure(small, x).compare(base))


if __name__ == "__main__":
    main()
