"""End to end: the five classic forecasters of the study, pruned unstructured, sparsified,
timed against their dense (masked) selves.

    python benchmarks/sparse_e2e.py [--models transformer ...] [--ks 1 3 5 7 9 10 11]
        [--batches 1 32] [--rounds 7] [--out benchmarks/results/study_ettm1_sparse.jsonl]
    python benchmarks/sparse_e2e.py --table   # the markdown table of --out

For each model (its committed checkpoint, `benchmarks/checkpoints/`, as in the study) and
density 0.8^k: global magnitude unstructured pruning (`compress.prune`, as the study's
unstructured cells), then `compress.sparsify(min_sparsity=0.5)` with the crossover
measured for each batch size's shapes, one thread. Timing: the masked model and the
sparsified one alternate in `--rounds` rounds in one process (each round times a block of
calls ~0.2 s long per model), median and min-max of the rounds; `speedup` = masked median
/ sparse median of wall time, `cpu_speedup` the same from the thread's CPU time (steadier on
a loaded shared machine: it leaves out time spent waiting for a core). MSE: both models on the study's test windows (ETTm1 test, every 16th
window, scaled values); `mse` is the sparsified model's, `mse_masked` the masked one's,
`max_abs_diff` their largest forecast difference on the timing batch.

One JSON line per (model, k, batch size), resumable, with the command, the load average
at the start of the cell and the kernel of every converted layer.
"""
import argparse
import collections
import json
import os
import shlex
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import compress  # noqa: E402
from benchmarks.config import ModelSpec  # noqa: E402
from benchmarks.runner import _commit, _from_checkpoint  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ["transformer", "informer", "autoformer", "fedformer", "crossformer"]


def block_ms(fn, target_s=0.2):
    """(wall ms, thread CPU ms) per call of a block of calls ~target_s long."""
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    n = max(1, int(target_s / one))
    t0, c0 = time.perf_counter(), time.thread_time()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e3, (time.thread_time() - c0) / n * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 3, 5, 7, 9, 10, 11])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--test-stride", type=int, default=16)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "study_ettm1_sparse.jsonl"))
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    if args.table:
        return print_table(args.out)
    warnings.filterwarnings("ignore", message=".*(beta|sparse|Sparse).*")
    command = "python benchmarks/sparse_e2e.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    torch.set_num_threads(1)
    done = set()
    if os.path.exists(args.out):
        for line in open(args.out):
            r = json.loads(line)
            done.add((r["model"], r["k"], r["batch_size"]))
    commit = _commit()
    for name in args.models:
        todo = [(k, b) for k in args.ks for b in args.batches if (name, k, b) not in done]
        if not todo:
            continue
        spec = ModelSpec(name=name, family=name, checkpoint=f"benchmarks/checkpoints/{name}-ETTm1-96-192.pt")
        base = _from_checkpoint(spec, os.path.join(HERE, "..", spec.checkpoint), 192).eval()
        test = compress.data.load("ETTm1", base.context_length, 192, "test", stride=args.test_stride)
        xs = {b: test.batches(b, limit=1)[0][0] for b in args.batches}  # [B, L, C] timing batches
        for k in sorted({k for k, _ in todo}):
            ratio = 1.0 - 0.8 ** k
            torch.manual_seed(0)
            masked = compress.prune(base, "magnitude", ratio, strategy="unstructured", example_inputs=xs[args.batches[0]])
            masked.eval()
            m_masked = compress.measure(masked, xs[args.batches[0]], latency=False, memory=False)
            mse_masked = None
            for b in args.batches:
                if (name, k, b) in done:
                    continue
                t0 = time.time()
                load = os.getloadavg()[0]
                x = xs[b]
                compress.sparse.clear_crossover_cache()  # measure the crossover in this cell's conditions
                fast = compress.sparsify(masked, min_sparsity=0.5, example_inputs=x, threads=1)
                kernels = collections.Counter(v["kernel"] for v in fast.compress_sparse.values())
                with torch.no_grad():
                    diff = float((fast(x) - masked(x)).abs().max())
                    dense_ms, sparse_ms, dense_cpu, sparse_cpu = [], [], [], []
                    for _ in range(args.rounds):
                        for fn, wall, cpu in ((lambda: masked(x), dense_ms, dense_cpu),
                                              (lambda: fast(x), sparse_ms, sparse_cpu)):
                            w, c = block_ms(fn)
                            wall.append(w)
                            cpu.append(c)
                if mse_masked is None:
                    mse_masked = compress.evaluate(masked, test, batch_size=64)["mse"]
                metrics = compress.evaluate(fast, test, batch_size=64)
                m_fast = compress.measure(fast, x, latency=False, memory=False)
                md, ms = statistics.median(dense_ms), statistics.median(sparse_ms)
                rec = {
                    "model": name, "family": name, "size": "small", "dataset": "ETTm1", "horizon": 192,
                    "context_length": base.context_length, "criterion": "magnitude", "strategy": "unstructured",
                    "ratio": ratio, "k": k, "method": "prune+sparsify", "finetuned": False, "seed": 0,
                    "params": m_masked.params, "nonzero_params": m_masked.nonzero_params,
                    "density": m_masked.density, "prunable_density": m_masked.prunable_density,
                    "batch_size": b, "threads": 1,
                    "sparse_kernel": dict(kernels), "sparse_layers": len(fast.compress_sparse),
                    "dense_layers_left": sum(1 for _, mod in fast.named_modules()
                                             if isinstance(mod, (torch.nn.Linear, torch.nn.Conv1d))),
                    "latency_ms": ms, "latency_range_ms": [min(sparse_ms), max(sparse_ms)],
                    "baseline_latency_ms": md, "baseline_range_ms": [min(dense_ms), max(dense_ms)],
                    "speedup": md / ms, "rounds": args.rounds,
                    "cpu_ms": statistics.median(sparse_cpu), "baseline_cpu_ms": statistics.median(dense_cpu),
                    "cpu_speedup": statistics.median(dense_cpu) / statistics.median(sparse_cpu),
                    "weight_mb": m_fast.weight_mb, "baseline_weight_mb": m_masked.weight_mb,
                    "mse": metrics["mse"], "mae": metrics["mae"], "mse_masked": mse_masked,
                    "n_windows": metrics["n_windows"], "test_stride": args.test_stride, "max_abs_diff": diff,
                    "loadavg_1min": load, "seconds": round(time.time() - t0, 1), "command": command,
                    "commit": commit, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
                with open(args.out, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(f"{name:12s} k={k:2d} density {m_masked.prunable_density:.3f} b={b:2d} "
                      f"speedup {rec['speedup']:.2f}x (cpu {rec['cpu_speedup']:.2f}x)  kernels {dict(kernels)}  mse {metrics['mse']:.5f} "
                      f"vs {mse_masked:.5f}  diff {diff:.1e}  load {load:.1f}", flush=True)


def print_table(path):
    rows = [json.loads(line) for line in open(path)]
    print("| model | density 0.8^k | prunable sparsity | batch | masked ms | sparse ms | speedup (range) | "
          "CPU-time speedup | layers sparse | kernels | MSE sparse = masked | weights MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|")
    for r in sorted(rows, key=lambda r: (MODELS.index(r["model"]), r["k"], r["batch_size"])):
        lo = r["baseline_latency_ms"] / r["latency_range_ms"][1]
        hi = r["baseline_latency_ms"] / r["latency_range_ms"][0]
        same = abs(r["mse"] - r["mse_masked"]) <= 1e-5 * max(1.0, abs(r["mse_masked"]))
        kern = ", ".join(f"{k} {v}" for k, v in sorted(r["sparse_kernel"].items())) or "-"
        print(f"| {r['model']} | 0.8^{r['k']} | {1 - r['prunable_density']:.1%} | {r['batch_size']} | "
              f"{r['baseline_latency_ms']:.2f} | {r['latency_ms']:.2f} | {r['speedup']:.2f}x ({lo:.2f}-{hi:.2f}) | "
              f"{r['cpu_speedup']:.2f}x | "
              f"{r['sparse_layers']} | {kern} | {r['mse']:.4f} {'=' if same else '!='} {r['mse_masked']:.4f} | "
              f"{r['weight_mb']:.2f} vs {r['baseline_weight_mb']:.2f} |")


if __name__ == "__main__":
    main()
