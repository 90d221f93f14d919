"""Per-layer kernel table: dense vs each sparse matmul kernel, for the Linear shapes of the
five classic forecasters (d_model 64, d_ff 256; Crossformer 48/96) and PatchTST/64
(d_model 128, d_ff 256), plus the reference shape of issue 14 (768 tokens, 512 <-> 2048).

    python benchmarks/sparse_kernels.py [--threads 1 2] [--sparsities 0.5 0.7 0.8 0.9 0.95]
        [--rounds 5] [--out benchmarks/results/sparse_kernels.jsonl] [--table]

Kernels (``y = x @ W.T + b`` for ``x [tokens, in]``, random unstructured zeros in W):

* ``dense``: ``F.linear`` (MKL/oneDNN sgemm).
* ``numba``: `compress.sparse.SparseLinear(kernel="numba")` (CSR row kernel compiled with
  numba; includes its input transpose and the module call).
* ``torch_csr``: `compress.sparse.SparseLinear(kernel="torch_csr")`:
  ``torch.addmm(b, W_csr, x.T)`` (torch's own CSR path, MKL underneath), module call
  included.
* ``scipy``: ``scipy.sparse.csr_matrix(W) @ x.T`` (single-threaded; includes the
  transposes and the torch <-> numpy views).
* ``torch_csr_xwt``: ``x @ W_csr.T + b`` (the obvious way to write it with torch's CSR).
* ``torch_bsr``: ``torch.addmm(b, W.to_sparse_bsr((4, 4)), x.T)``.

Per cell (shape, tokens, sparsity, threads) the kernels are timed in `--rounds`
interleaved rounds (each round times every kernel once, a block of calls ~20 ms long),
in one process; the record holds each kernel's median wall ms, min-max range and speedup
(dense median / kernel median), and the same from the thread's CPU time (``cpu_ms``,
``cpu_speedup``: on a loaded shared machine CPU time is the steadier of the two, as it
leaves out the time the process waits for a core; with threads > 1 it counts only the
calling thread, so there only wall time is meaningful). One JSON line per cell, resumable (finished cells are
skipped), each with the command that made it and the load average at its start.
"""
import argparse
import json
import os
import shlex
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from compress.sparse import SparseLinear  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# (name, out, in, tokens per sample); batch 1 and 32 multiply the tokens
SHAPES = [
    ("classic attn q/k/v/o", 64, 64, 96),
    ("classic ffn up", 256, 64, 96),
    ("classic ffn down", 64, 256, 96),
    ("crossformer ffn up", 96, 48, 56),
    ("crossformer ffn down", 48, 96, 56),
    ("patchtst attn q/k/v/o", 128, 128, 448),
    ("patchtst ffn up", 256, 128, 448),
    ("patchtst ffn down", 128, 256, 448),
]
REFERENCE = [("issue-14 reference up", 2048, 512, 768), ("issue-14 reference down", 512, 2048, 768)]
KERNELS = ("dense", "numba", "torch_csr", "scipy", "torch_csr_xwt", "torch_bsr")


def make_kernels(weight, bias):
    import warnings

    import scipy.sparse as sp

    warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
    lin = SparseLinear(weight, bias, kernel="numba")
    lin_csr = SparseLinear(weight, bias, kernel="torch_csr")
    csr = sp.csr_matrix(weight.numpy())
    t_csr = weight.to_sparse_csr()
    t_bsr = weight.to_sparse_bsr((4, 4)) if weight.shape[0] % 4 == 0 and weight.shape[1] % 4 == 0 else None
    b = bias[:, None]

    def scipy_mm(x):
        return torch.from_numpy(np.ascontiguousarray((csr @ x.numpy().T).T)) + bias

    return {
        "dense": lambda x: F.linear(x, weight, bias),
        "numba": lin,
        "scipy": scipy_mm,
        "torch_csr": lin_csr,
        "torch_csr_xwt": lambda x: x @ t_csr.t() + bias,
        "torch_bsr": None if t_bsr is None else (lambda x: torch.addmm(b, t_bsr, x.t()).t()),
    }


def block_ms(fn, x, target_s=0.02):
    """(wall ms, thread CPU ms) per call of a block of calls ~target_s long."""
    fn(x)
    t0 = time.perf_counter()
    fn(x)
    one = max(time.perf_counter() - t0, 1e-7)
    n = max(1, int(target_s / one))
    t0, c0 = time.perf_counter(), time.thread_time()
    for _ in range(n):
        fn(x)
    return (time.perf_counter() - t0) / n * 1e3, (time.thread_time() - c0) / n * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.9, 0.95])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "sparse_kernels.jsonl"))
    ap.add_argument("--table", action="store_true", help="only print the markdown table of --out")
    ap.add_argument("--cpu", action="store_true", help="--table from thread CPU time (1-thread rows)")
    args = ap.parse_args()
    if args.table:
        return print_table(args.out, args.cpu)
    command = "python benchmarks/sparse_kernels.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    done = set()
    if os.path.exists(args.out):
        with open(args.out) as f:
            for line in f:
                r = json.loads(line)
                done.add((r["shape"], r["tokens"], r["sparsity"], r["threads"]))
    cells = [(name, o, i, t * b) for name, o, i, t in SHAPES for b in args.batches] + \
            [(name, o, i, t) for name, o, i, t in REFERENCE]
    with torch.no_grad():
        for threads in args.threads:
            torch.set_num_threads(threads)
            for name, out_f, in_f, tokens in cells:
                for s in args.sparsities:
                    if (name, tokens, s, threads) in done:
                        continue
                    g = torch.Generator().manual_seed(0)
                    w = torch.randn(out_f, in_f, generator=g) * (torch.rand(out_f, in_f, generator=g) >= s)
                    bias = torch.randn(out_f, generator=g)
                    x = torch.randn(tokens, in_f, generator=g)
                    kernels = {k: f for k, f in make_kernels(w, bias).items() if f is not None}
                    ref = kernels["dense"](x)
                    for k, f in kernels.items():
                        torch.testing.assert_close(f(x), ref, rtol=1e-4, atol=1e-4, msg=f"{k} differs")
                    load = os.getloadavg()[0]
                    times = {k: [] for k in kernels}
                    cpu = {k: [] for k in kernels}
                    for _ in range(args.rounds):
                        for k, f in kernels.items():
                            wall_ms, cpu_ms = block_ms(f, x)
                            times[k].append(wall_ms)
                            cpu[k].append(cpu_ms)
                    med = {k: float(np.median(v)) for k, v in times.items()}
                    med_cpu = {k: float(np.median(v)) for k, v in cpu.items()}
                    rec = {"shape": name, "out": out_f, "in": in_f, "tokens": tokens, "sparsity": s,
                           "threads": threads, "ms": med,
                           "range_ms": {k: [float(min(v)), float(max(v))] for k, v in times.items()},
                           "speedup": {k: med["dense"] / med[k] for k in med},
                           "cpu_ms": med_cpu, "cpu_speedup": {k: med_cpu["dense"] / med_cpu[k] for k in med_cpu},
                           "best": max((k for k in med if k != "dense"), key=lambda k: med["dense"] / med[k]),
                           "loadavg_1min": load, "rounds": args.rounds, "torch": torch.__version__,
                           "command": command, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                    with open(args.out, "a") as f:
                        f.write(json.dumps(rec) + "\n")
                    print(f"{threads}t {name:26s} {tokens:6d} tok s={s:.2f} " +
                          " ".join(f"{k}={rec['speedup'][k]:.2f}x" for k in med if k != "dense"), flush=True)


def print_table(path, cpu=False):
    rows = [json.loads(line) for line in open(path)]
    print("| shape (out x in) | tokens | threads | sparsity | dense ms | numba | torch CSR (W x^T) | scipy | "
          "torch CSR (x W^T) | torch BSR 4x4 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        sp = r["cpu_speedup"] if cpu and r["threads"] == 1 else r["speedup"]
        cell = lambda k: f"{sp[k]:.2f}x" if k in sp else "n/a"  # noqa: E731
        print(f"| {r['shape']} ({r['out']}x{r['in']}) | {r['tokens']} | {r['threads']} | {r['sparsity']:.0%} | "
              f"{r['ms']['dense']:.3f} | {cell('numba')} | {cell('torch_csr')} | {cell('scipy')} | "
              f"{cell('torch_csr_xwt')} | {cell('torch_bsr')} |")


if __name__ == "__main__":
    main()
