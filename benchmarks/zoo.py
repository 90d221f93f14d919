"""Model-zoo benchmark: every family at size "small", before and after structured pruning.

    python benchmarks/zoo.py [--families ...] [--ratio 0.5] [--criterion magnitude]
    python benchmarks/zoo.py --ttm-mse        # TTM zero-shot ETTh1 MSE before/after taylor 0.2, 0.5
    python benchmarks/zoo.py --round-to 8 --ratio 0.3 [--families ...]   # with vs without round_to
    python benchmarks/zoo.py --widths         # dense FFN time per FLOP vs hidden width

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


def _cpu_ms(fn, rounds: int, target_s: float = 0.1):
    """Median per-call thread CPU ms of `rounds` blocks (steadier than wall time on a loaded machine)."""
    fn()
    out = []
    for _ in range(rounds):
        c0, n = time.thread_time(), 0
        while time.thread_time() - c0 < target_s or n < 2:
            fn()
            n += 1
        out.append((time.thread_time() - c0) / n * 1e3)
    return sorted(out)[len(out) // 2]


def round_to_cmp(args):
    """Structured pruning with and without round_to on the cheap families: widths, FLOPs,
    and CPU time of one forward (unpruned, plain, rounded timed in alternating rounds)."""
    out = os.path.join(RESULTS, "zoo_round_to.jsonl")
    torch.set_num_threads(1)
    families = args.families or ["transformer", "informer", "autoformer", "fedformer", "crossformer", "patchtst", "ttm"]
    for fam in families:
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = compress.models.load(fam, size="small").eval()
        x = model.example_inputs(8, 7)
        rec = {"family": fam, "size": "small", "criterion": args.criterion, "ratio": args.ratio,
               "round_to": args.round_to, "batch": list(x.shape), "threads": 1, "torch": torch.__version__,
               "timing": "thread CPU time, median of alternating rounds", "loadavg_1min": os.getloadavg()[0],
               "command": "python benchmarks/zoo.py " + " ".join(sys.argv[1:])}
        try:
            plain = compress.prune(model, args.criterion, ratio=args.ratio, example_inputs=x).eval()
            rounded = compress.prune(model, args.criterion, ratio=args.ratio, example_inputs=x,
                                     round_to=args.round_to).eval()
            widths = lambda m: sorted({g["after"] for g in m.compress_pruning[-1]["groups"].values()  # noqa: E731
                                       if g["kind"] == "ffn"})
            rec["ffn_widths_plain"], rec["ffn_widths_rounded"] = widths(plain), widths(rounded)
            flops = {k: measure(m, x, latency=False, memory=False).flops
                     for k, m in (("base", model), ("plain", plain), ("rounded", rounded))}
            times = {k: [] for k in flops}
            with torch.no_grad():
                for _ in range(args.repeats):
                    for k, m in (("base", model), ("plain", plain), ("rounded", rounded)):
                        times[k].append(_cpu_ms(lambda: m(x), 1))
            ms = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
            rec.update(flops=flops, cpu_ms=ms,
                       speedup_plain=ms["base"] / ms["plain"], speedup_rounded=ms["base"] / ms["rounded"],
                       flops_reduction_plain=flops["base"] / flops["plain"],
                       flops_reduction_rounded=flops["base"] / flops["rounded"])
            # speed per FLOP: > 1 means the rounded model does its (slightly larger) work faster per FLOP
            rec["per_flop_gain_rounded"] = (flops["rounded"] / ms["rounded"]) / (flops["plain"] / ms["plain"])
        except Exception as e:  # record and go on
            rec["error"] = f"{type(e).__name__}: {e}"
        print(json.dumps(rec), flush=True)
        with open(out, "a") as f:
            f.write(json.dumps(rec) + "\n")


def widths(args):
    """Dense FFN (768 tokens, 512 -> W -> 512, GELU) thread-CPU time per FLOP across widths W."""
    out = os.path.join(RESULTS, "ffn_widths.jsonl")
    torch.set_num_threads(1)
    x = torch.randn(768, 512)
    ws = [1016, 1020, 1022, 1023, 1024, 1025, 1026, 1028, 1032, 1000, 1001, 1008]
    layers = {w: torch.nn.Sequential(torch.nn.Linear(512, w), torch.nn.GELU(), torch.nn.Linear(w, 512)) for w in ws}
    times = {w: [] for w in ws}
    with torch.no_grad():
        for _ in range(args.repeats):
            for w in ws:
                times[w].append(_cpu_ms(lambda: layers[w](x), 1, 0.05))
    ref = sorted(times[1024])[len(times[1024]) // 2] / 1024
    for w in ws:
        ms = sorted(times[w])[len(times[w]) // 2]
        rec = {"tokens": 768, "d_model": 512, "width": w, "cpu_ms": ms, "ms_per_width_vs_1024": (ms / w) / ref,
               "multiple_of_8": w % 8 == 0, "threads": 1, "repeats": args.repeats, "torch": torch.__version__,
               "loadavg_1min": os.getloadavg()[0], "command": "python benchmarks/zoo.py " + " ".join(sys.argv[1:])}
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
    ap.add_argument("--round-to", type=int, default=None, help="compare structured pruning with/without round_to")
    ap.add_argument("--widths", action="store_true", help="dense FFN time per FLOP across hidden widths")
    args = ap.parse_args()
    os.makedirs(RESULTS, exist_ok=True)
    if args.ttm_mse:
        ttm_mse(args)
    elif args.widths:
        widths(args)
    elif args.round_to:
        round_to_cmp(args)
    else:
        zoo(args)


if __name__ == "__main__":
    main()
