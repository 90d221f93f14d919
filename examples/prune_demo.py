"""Prune your own nn.Module: a Transformer forecaster pruned three ways, and what each cut bought.

    python examples/prune_demo.py [--quick]

A 4-layer Transformer encoder forecaster (d_model 256, 8 heads, FFN 1024; --quick: 2 layers,
d_model 64) reads 96 hourly steps of ETTh1 (shipped with the package) and predicts 24. It is
pruned at 50% with three criteria (magnitude, taylor, activation; calibration = 4 batches of
training windows) and, for contrast, unstructured magnitude at 50%. Random weights: this
example is about size and speed (accuracy: see prune_tsfm.py). All latencies in the table come
from one interleaved timing, so the speedups agree with the latencies.
"""
import torch
from torch import nn

import compress
from _table import compare, quick_flag


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
    quick = quick_flag(__doc__)
    torch.manual_seed(0)
    train = compress.data.load("ETTh1", context_length=96, horizon=24, split="train")
    cal = train.batches(16, limit=2 if quick else 4, shuffle=True)
    x = cal[0][0]
    model = Forecaster(**(dict(d=64, heads=4, ff=128, layers=2) if quick else {})).eval()
    models = {"original": model}
    for strategy, crit in [("structured", c) for c in ("magnitude", "taylor", "activation")] + [("unstructured", "magnitude")]:
        models[f"{crit} {strategy} 0.5"] = compress.prune(model, crit, ratio=0.5, strategy=strategy,
                                                          example_inputs=x, calibration=cal).eval()
    print(compare(models, x, rounds=2 if quick else 3, repeats=3 if quick else 5))
    print("\nunstructured zeros save no dense FLOPs or time; see compress.sparsify for sparse kernels")


if __name__ == "__main__":
    main()
