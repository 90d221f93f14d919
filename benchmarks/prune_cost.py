"""Time and peak memory of `compress.prune` on a generic 12-layer, d_model 768 Transformer.

    python benchmarks/prune_cost.py [--criterion magnitude|taylor] [--batches 8] [--micro-batch 1]

One criterion per process, so that peak RSS belongs to that run alone. Writes one JSON
line per run to benchmarks/results/prune_cost.jsonl and prints where the time goes.
"""
import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import compress  # noqa: E402


class GenericTransformer(nn.Module):
    """Patch embedding -> 12 x nn.TransformerEncoderLayer(768, 12, 3072) -> flatten head."""

    def __init__(self, L=96, H=96, C=7, patch=8, d=768, heads=12, ff=3072, layers=12):
        super().__init__()
        self.L, self.H, self.C, self.patch = L, H, C, patch
        self.embed = nn.Linear(patch, d)
        layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear((L // patch) * d, H)

    def forward(self, x):  # [B, L, C] -> [B, H, C], channel-independent patches
        B = x.shape[0]
        z = x.transpose(1, 2).reshape(B * self.C, self.L // self.patch, self.patch)  # [B*C, N, P]
        z = self.encoder(self.embed(z))
        return self.head(z.flatten(1)).view(B, self.C, self.H).transpose(1, 2)


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--criterion", default="magnitude")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--micro-batch", type=int, default=None, help="taylor: calibrate in slices of this many samples")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "prune_cost.jsonl"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GenericTransformer()
    n = sum(p.numel() for p in model.parameters())
    size_mb = n * 4 / 2**20
    x = torch.randn(args.batch_size, 96, 7)
    cal = [(torch.randn(args.batch_size, 96, 7), torch.randn(args.batch_size, 96, 7)) for _ in range(args.batches)]
    base = rss_mb()
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    crit = compress.criteria.get(args.criterion, **({"micro_batch": args.micro_batch} if args.micro_batch else {}))
    small = compress.prune(model, crit, ratio=args.ratio, example_inputs=x,
                           calibration=cal if args.criterion != "magnitude" else None, verbose=True)
    prof.disable()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MB, whole process
    m = sum(p.numel() for p in small.parameters())
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(25)
    rec = {"criterion": repr(crit), "params": n, "params_after": m, "model_mb": round(size_mb, 1),
           "seconds": round(seconds, 2), "graph_seconds": round(small.compress_pruning[-1]["graph_seconds"], 2),
           "rss_before_mb": round(base), "peak_rss_mb": round(peak), "extra_mb": round(peak - base),
           "extra_over_model": round((peak - base) / size_mb, 2), "calibration_batches": len(cal) if args.criterion != "magnitude" else 0,
           "batch_size": args.batch_size, "threads": args.threads, "torch": torch.__version__,
           "command": "python benchmarks/prune_cost.py " + " ".join(sys.argv[1:])}
    print(json.dumps(rec))
    print(s.getvalue()[:6000])
    with open(args.out, "a") as f:
        f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
