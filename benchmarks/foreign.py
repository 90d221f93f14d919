"""Prune the foreign-forecaster set (`tests/foreign.py`) and record what happens.

One record per (model, strategy, label) in a JSONL file: did `compress.prune` return
within the time limit, does the pruned model run, is it the original with the removed
units masked (max abs difference), how many heads / FFN channels were cut, the eligible
share (unstructured), the warnings, the seconds. Each cell runs in its own subprocess under
a hard timeout, so a hang is recorded as one. Resumable: cells already in the file are
skipped. `--label` names the code under test (run once with `PYTHONPATH` pointing at an
older checkout of `compress` to compare: `COMPRESS_ROOT=/path/to/old python -m ...`).

Usage:
    python -m benchmarks.foreign --out benchmarks/results/foreign.jsonl --label after
    COMPRESS_ROOT=/tmp/before python -m benchmarks.foreign --label before
    python -m benchmarks.foreign --report benchmarks/results/foreign.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STRATEGIES = ("structured", "unstructured")


def cell(name: str, strategy: str, time_limit_s: float) -> dict:
    """Prune one model in this process (called in the subprocess)."""
    import copy
    import warnings

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    if os.environ.get("COMPRESS_ROOT"):  # the checkout of compress under test (default: this one)
        sys.path.insert(0, os.environ["COMPRESS_ROOT"])
    import foreign
    import compress
    from compress import graph as G

    def pred(out):
        if isinstance(out, dict) and "prediction" in out:
            return out["prediction"]
        return out if isinstance(out, torch.Tensor) else G._first_tensor(out)

    def run(m, x):
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(0)
            return pred(G.run_model(m, x))

    model, x = foreign.BUILDERS[name]()
    ref_out = run(model, x)
    rec = {"model": name, "strategy": strategy}
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            small = compress.prune(model, "magnitude", 0.5, strategy=strategy, example_inputs=x,
                                   time_limit_s=time_limit_s)
        except Exception as e:  # noqa: BLE001 - the outcome is what is measured
            rec.update(outcome="error", error=f"{type(e).__name__}: {str(e)[:300]}")
            small = None
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    rec["warnings"] = sorted({str(w.message)[:140] for w in caught if "compress" in w.filename})[:4]
    if small is None:
        return rec
    last = small.compress_pruning[-1]
    try:
        y = run(small, x)
        rec["outcome"] = "ok" if y.shape == ref_out.shape and torch.isfinite(y).all() else "bad output"
    except Exception as e:  # noqa: BLE001
        rec.update(outcome="broken forward", error=f"{type(e).__name__}: {str(e)[:200]}")
        return rec
    if strategy == "structured":
        groups = last.get("groups", {})
        for kind in ("heads", "ffn"):
            before = sum(g["before"] for g in groups.values() if g["kind"] == kind)
            after = sum(g["after"] for g in groups.values() if g["kind"] == kind)
            rec[kind] = f"{before}->{after}"
        if all("sites" in g for g in groups.values()):  # masked-original check (needs the new record)
            ref = copy.deepcopy(model)
            G.swap_torch_mha(ref)
            mods = dict(ref.named_modules())
            hooks = []
            for g in groups.values():
                for site in g["sites"] if g["removed"] else []:
                    def hook(module, args, idxs=g["removed"], width=g["width"]):
                        x0 = args[0]
                        cdim = 1 if isinstance(module, torch.nn.Conv1d) else x0.dim() - 1
                        keep = torch.ones(x0.shape[cdim])
                        for i in idxs:
                            keep[i * width:(i + 1) * width] = 0
                        shape = [1] * x0.dim()
                        shape[cdim] = -1
                        return (x0 * keep.view(shape),) + args[1:]
                    hooks.append(mods[site].register_forward_pre_hook(hook))
            masked = run(ref, x)
            for h in hooks:
                h.remove()
            rec["max_abs_diff_vs_masked"] = float((y - masked).abs().max())
        rec["not_prunable"] = len(last.get("not_prunable", {}))
    else:
        n = sum(p.numel() for p in small.parameters())
        rec["zeroed_share"] = round(sum(int((p == 0).sum()) for p in small.parameters()) / n, 3)
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "foreign.jsonl"))
    ap.add_argument("--label", default="after", help="names the code under test")
    ap.add_argument("--models", nargs="*", help="default: every model of tests/foreign.py")
    ap.add_argument("--time-limit", type=float, default=20.0, help="compress.prune's time_limit_s")
    ap.add_argument("--hard-timeout", type=float, default=60.0, help="kill a cell after this many seconds")
    ap.add_argument("--report", help="print the markdown table of a results file and exit")
    ap.add_argument("--cell", nargs=2, metavar=("MODEL", "STRATEGY"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cell:
        print(json.dumps(cell(args.cell[0], args.cell[1], args.time_limit)))
        return 0
    if args.report:
        print(report(args.report))
        return 0
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import foreign

    done = set()
    if os.path.exists(args.out):
        with open(args.out) as f:
            done = {(r["label"], r["model"], r["strategy"]) for r in (json.loads(l) for l in f if l.strip())}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    for name in args.models or list(foreign.BUILDERS):
        for strategy in STRATEGIES:
            if (args.label, name, strategy) in done:
                continue
            cmd = [sys.executable, "-m", "benchmarks.foreign", "--cell", name, strategy,
                   "--time-limit", str(args.time_limit)]
            t0 = time.perf_counter()
            try:
                p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.hard_timeout)
                lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
                rec = json.loads(lines[-1]) if lines else {
                    "model": name, "strategy": strategy, "outcome": "crashed", "error": p.stderr[-300:]}
            except subprocess.TimeoutExpired:
                rec = {"model": name, "strategy": strategy, "outcome": f"hang (killed after {args.hard_timeout:.0f}s)",
                       "seconds": round(time.perf_counter() - t0, 1)}
            rec["label"] = args.label
            env = f"COMPRESS_ROOT={os.environ['COMPRESS_ROOT']} " if os.environ.get("COMPRESS_ROOT") else ""
            rec["command"] = env + " ".join(["python -m benchmarks.foreign", "--label", args.label,
                                       "--time-limit", str(args.time_limit), "--models", name])
            with open(args.out, "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(json.dumps(rec)[:200], flush=True)
    return 0


def report(path: str) -> str:
    """A markdown table: one row per model and strategy, one column group per label."""
    with open(path) as f:
        recs = [json.loads(l) for l in f if l.strip()]
    labels = list(dict.fromkeys(r["label"] for r in recs))
    by = {(r["label"], r["model"], r["strategy"]): r for r in recs}
    models = list(dict.fromkeys(r["model"] for r in recs))

    def show(r):
        if r is None:
            return "-"
        o = r.get("outcome", "?")
        if o == "ok" and r["strategy"] == "structured":
            diff = r.get("max_abs_diff_vs_masked")
            o = f"ok: heads {r.get('heads')}, FFN {r.get('ffn')}" + (f", diff {diff:.1e}" if diff is not None else "")
        elif o == "ok":
            o = f"ok: {r.get('zeroed_share', 0):.0%} zeroed"
        elif o == "error":
            o = "error: " + r.get("error", "")[:70].replace("|", "/")
        elif o == "broken forward":
            o = "returned, forward fails"
        if r.get("seconds") is not None and not str(o).startswith("hang"):
            o += f" ({r['seconds']:.1f}s)"
        return o

    head = "| model | strategy | " + " | ".join(labels) + " |\n|---|---|" + "---|" * len(labels) + "\n"
    rows = [f"| {m} | {s} | " + " | ".join(show(by.get((lab, m, s))) for lab in labels) + " |"
            for m in models for s in STRATEGIES if any((lab, m, s) in by for lab in labels)]
    return head + "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
