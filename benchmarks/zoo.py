"""Model-zoo benchmark: every family at size "small", before and after structured pruning.

    python benchmarks/zoo.py [--families ...] [--ratio 0.5] [--criterion magnitude]
    python benchmarks/zoo.py --ttm-mse        # TTM zero-shot ETTh1 MSE before/after taylor 0.2, 0.5

For each family: graph-building time, parameters, FLOPs (compress.measure) and CPU latency
(1 thread, median, baseline and pruned timed back to back in this process) of one forward
on a batch of 8 series x 7 channels. Appends JSON lines to
benchmarks/results/zoo_small.jsonl (or zoo_ttm_mse.jsonl) with the command.
"""
import argparse
import json
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import compress  # noqa: E402
from compress.measure import measure  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def zoo(args):
    out = os.path.join(RESULTS, "zoo_small.jsonl")
    for fam in args.families or compress.models.available():
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = compress.models.load(fam, size="small").eval()
        x = model.example_inputs(8, 7)
        rec = {"family": fam, "size": "small", "criterion": args.criterion, "ratio": args.ratio,
               "batch": list(x.shape), "threads": 1, "torch": torch.__version__,
               "command": "python benchmarks/zoo.py " + " ".join(sys.argv[1:])}
        try:
            t = time.perf_counter()
            small = compress.prune(model, args.criterion, ratio=args.ratio, example_inputs=x).eval()
            rec["prune_seconds"] = round(time.perf_counter() - t, 2)
            rec["graph_seconds"] = round(small.compress_pruning[-1]["graph_seconds"], 2)
            groups = small.compress_pruning[-1]["groups"].values()
            rec["heads_groups"] = sum(g["kind"] == "heads" for g in groups)
            rec["ffn_groups"] = sum(g["kind"] == "ffn" for g in groups)
            a = measure(model, x, repeats=args.repeats, memory=False)
            b = measure(small, x, repeats=args.repeats, memory=False)
            rec.update(params=a.params, params_pruned=b.params, flops=a.flops, flops_pruned=b.flops,
                       latency_ms=round(a.latency_ms, 2), latency_ms_pruned=round(b.latency_ms, 2),
                       param_reduction=round(a.params / b.params, 2), flops_reduction=round(a.flops / b.flops, 2),
                       speedup=round(a.latency_ms / b.latency_ms, 2))
        except Exception as e:  # record and go on
            rec["error"] = f"{type(e).__name__}: {e}"
        print(json.dumps(rec), flush=True)
        with open(out, "a") as f:
            f.write(json.dumps(rec) + "\n")


def ttm_mse(args):
    out = os.path.join(RESULTS, "zoo_ttm_mse.jsonl")
    torch.set_num_threads(2)
    model = compress.models.load("ttm")
    test = compress.data.load("ETTh1", 512, 96, "test")
    train = compress.data.load("ETTh1", 512, 96, "train")
    cal = train.batches(16, limit=8, shuffle=True, seed=0)
    base = compress.evaluate(model, test, batch_size=256)
    rows = [{"ratio": 0.0, **base}]
    for ratio in (0.2, 0.5):
        small = compress.prune(model, "taylor", ratio=ratio, calibration=cal)
        r = compress.evaluate(small, test, batch_size=256)
        rows.append({"ratio": ratio, **r, "params": sum(p.numel() for p in small.parameters())})
    rows[0]["params"] = sum(p.numel() for p in model.parameters())
    for r in rows:
        r.update(model="ttm", dataset="ETTh1", horizon=96, context=512, criterion="taylor", strategy="structured",
                 calibration="8 x 16 ETTh1 train windows", command="python benchmarks/zoo.py --ttm-mse")
        print(json.dumps(r), flush=True)
        with open(out, "a") as f:
            f.write(json.dumps(r) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", nargs="*")
    ap.add_argument("--criterion", default="magnitude")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--ttm-mse", action="store_true")
    args = ap.parse_args()
    os.makedirs(RESULTS, exist_ok=True)
    ttm_mse(args) if args.ttm_mse else zoo(args)


if __name__ == "__main__":
    main()
