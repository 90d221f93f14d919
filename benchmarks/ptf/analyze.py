"""Issue 5 analyses: are our pretrained TSFMs sparse on a downstream task?

    python benchmarks/ptf/analyze.py [--dataset ETTh1] [--batches 4]

For the shipped TTM r2 and the pretrained PatchTST (horizon 96), on ETTh1 validation
windows: per layer, the share of FFN channels whose activation probability is below 5%,
the relative output norms of attention heads, and the distribution of second-order Taylor
importance scores. Writes benchmarks/results/sparsity/{summary.json, *.png}.
"""
import argparse
import json
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import compress  # noqa: E402
from compress import analysis  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "results", "sparsity")
PRE = os.path.join(os.path.dirname(__file__), "..", "..", "compress", "models", "weights", "patchtst-mini-pretrained")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="ETTh1")
    ap.add_argument("--batches", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    val = compress.data.load(args.dataset, 512, 96, "val")
    batches = val.batches(32, limit=args.batches, shuffle=True, seed=0)
    summary = {"dataset": args.dataset, "split": "val", "windows": 32 * args.batches,
               "command": "python benchmarks/ptf/analyze.py " + " ".join(sys.argv[1:])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = {"ttm": compress.models.load("ttm"),
                  "patchtst_pre": compress.models.load("patchtst", pretrained=PRE, horizon=96)}
    for name, model in models.items():
        low = analysis.activation_sparsity(model, batches, threshold=0.05)
        analysis.plot_activation_sparsity(low, os.path.join(OUT, f"{name}_activation_sparsity.png"),
                                          title=f"{name}: FFN channels active on <5% of tokens ({args.dataset} val)")
        try:
            norms = analysis.head_output_norms(model, batches)
        except compress.graph.GraphBuildError:  # TTM is an MLP-Mixer: no attention heads
            norms = {}
        if norms:
            analysis.plot_head_norms(norms, os.path.join(OUT, f"{name}_head_norms.png"),
                                     title=f"{name}: head output norm / input norm ({args.dataset} val)")
        scores = analysis.importance_distribution(model, batches, criterion="taylor")
        analysis.plot_importance(scores, os.path.join(OUT, f"{name}_importance.png"),
                                 title=f"{name}: second-order Taylor scores ({args.dataset} val)")
        flat = torch.cat([s.flatten() for s in scores.values()])
        summary[name] = {
            "low_activation_share_per_layer": {k: round(v, 4) for k, v in low.items()},
            "low_activation_share_mean": round(sum(low.values()) / max(len(low), 1), 4),
            "head_norms_per_layer": {k: [round(float(x), 4) for x in v] for k, v in norms.items()},
            "importance_quantiles": [round(float(q), 6) for q in torch.quantile(flat.float(), torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9]))],
            "importance_share_near_zero": round(float((flat.abs() <= 0.01 * flat.abs().max()).float().mean()), 4),
        }
        print(name, summary[name]["low_activation_share_mean"], summary[name]["importance_share_near_zero"], flush=True)
    with open(os.path.join(OUT, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
