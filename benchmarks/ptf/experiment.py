"""Issue 5 experiment: zero-shot vs full fine-tuning vs prune-then-finetune on TSFMs.

    python benchmarks/ptf/experiment.py --models ttm patchtst_pre --datasets ETTh1 ETTm1 ETTm2 weather \
        [--horizon 96] [--epochs 2] [--max-train-batches 100] [--test-stride 4] \
        [--out benchmarks/results/ptf.jsonl]
    python benchmarks/ptf/experiment.py --report benchmarks/results/ptf.jsonl
    python benchmarks/ptf/experiment.py --report NEW.jsonl --compare OLD.jsonl \
        [--match prune-then-finetune-authors=prune-then-finetune]

Methods per (model, dataset, horizon):
  zero-shot            the pretrained model as shipped
  finetune             full fine-tuning (compress.finetune, early stopping on val)
  prune-then-finetune  compress.prune_then_finetune (taylor order 2 with EMA, progressive
                       global pruning with validation stopping, then the same fine-tuning)
  prune-then-finetune-tol   (with --tolerance t) the same, keeping the most pruned mask set
                       whose validation loss is within t of the best (patience 3)
  prune-then-finetune-norm  (with --normalize) the same as prune-then-finetune with each
                       layer's scores divided by their mean before the global ranking
  prune-then-finetune-ffn   (with --ffn-only) the same, cutting FFN channels only (no heads)
  prune-then-finetune-p3    (with --patience3) the same with patience 3 (no tolerance)
  prune-then-finetune-authors (with --authors) the same as prune-then-finetune with the
                       authors' gradients (of the batch-mean loss) and ranking (|score|, one pool)
  scratch              PatchTST (size "small", same context/horizon) trained from scratch
                       with twice the fine-tuning budget at --scratch-lr, the specialised baseline
The fine-tuning budget is capped (epochs x max_train_batches of 32 windows) to fit a 2-core
CPU; the test split is evaluated with a stride (stated in every record). Speedup is the
latency of the unpruned model over the method's model, timed back to back (1 thread).
One JSON line per cell; cells already in the results file are skipped (resume).
"""
import argparse
import json
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import compress  # noqa: E402
from compress.measure import measure  # noqa: E402

PRETRAINED_PATCHTST = os.path.join(os.path.dirname(__file__), "..", "..", "compress", "models", "weights",
                                   "patchtst-mini-pretrained")


def load_model(name, horizon):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "ttm":
            return compress.models.load("ttm")
        if name == "patchtst_pre":
            return compress.models.load("patchtst", pretrained=PRETRAINED_PATCHTST, horizon=horizon)
        if name == "patchtst_deep":  # issue 10: the 12-layer pretrained PatchTST
            return compress.models.load("patchtst", pretrained=os.path.join(os.path.dirname(PRETRAINED_PATCHTST),
                                                                            "patchtst-deep-pretrained"), horizon=horizon)
        if name == "patchtst_scratch":
            return compress.models.load("patchtst", size="small", context_length=512, horizon=horizon)
    raise ValueError(f"unknown model {name!r}")


def variants(args):
    """The prune-then-finetune methods this run asks for, each with its stopping/ranking options."""
    table = {"prune-then-finetune": (True, {"patience": 1}),
             "prune-then-finetune-tol": (args.tolerance, {"tolerance": args.tolerance, "patience": 3}),
             "prune-then-finetune-norm": (args.normalize, {"patience": 1, "normalize": "mean"}),
             "prune-then-finetune-ffn": (args.ffn_only, {"patience": 1, "units": ("ffn",)}),
             "prune-then-finetune-p3": (args.patience3, {"patience": 3}),
             "prune-then-finetune-authors": (args.authors, {"patience": 1, "ranking": "authors",
                                                            "grad_scale": "batch_mean"})}
    return {method: options for method, (wanted, options) in table.items() if wanted}


def cell_key(r):
    return (r["model"], r["dataset"], r["horizon"], r["method"])


def records(path):
    if path and os.path.exists(path):
        for line in open(path):
            yield json.loads(line)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def run(args):
    done = {cell_key(r) for r in records(args.out) if not r.get("error")}
    ptf = variants(args)
    torch.manual_seed(0)
    for dataset in args.datasets:
        train = compress.data.load(dataset, 512, args.horizon, "train")
        val = compress.data.load(dataset, 512, args.horizon, "val")
        test = compress.data.load(dataset, 512, args.horizon, "test", stride=args.test_stride)
        x = test.batches(8, limit=1)[0][0][:, :, :1].repeat(1, 1, 7)[:8]  # fixed timing batch [8, 512, 7]
        ft = dict(epochs=args.epochs, lr=args.lr, patience=1, batch_size=32, max_train_batches=args.max_train_batches,
                  max_val_batches=args.max_val_batches, progress=False)
        methods = ["zero-shot", "finetune", *ptf]
        plan = [(m, meth) for m in args.models for meth in methods]
        if not args.no_scratch:
            plan.append(("patchtst_scratch", "scratch"))
        if args.only:
            plan = [(m, meth) for m, meth in plan if meth in args.only]
        for model_name, method in plan:
            key = (model_name, dataset, args.horizon, method)
            if key in done:
                continue
            rec = {"model": model_name, "dataset": dataset, "horizon": args.horizon, "method": method,
                   "context_length": 512, "test_stride": args.test_stride, "epochs": args.epochs,
                   "max_train_batches": args.max_train_batches, "lr": args.lr, "seed": 0,
                   "command": "python benchmarks/ptf/experiment.py " + " ".join(sys.argv[1:])}
            t0 = time.perf_counter()
            try:
                base = load_model(model_name, args.horizon).eval()
                if method == "zero-shot":
                    model = base
                elif method in ("finetune", "scratch"):
                    budget = dict(ft, epochs=ft["epochs"] * (2 if method == "scratch" else 1),
                                  lr=args.scratch_lr if method == "scratch" else args.lr)
                    model = compress.finetune(base, train, val, **budget)
                else:
                    model = compress.prune_then_finetune(
                        base, train, val, max_ratio=args.max_ratio, step_fraction=args.step_fraction, **ptf[method],
                        calibration_batches=args.calibration_batches, validation_batches=args.max_val_batches,
                        batch_size=32, finetune_epochs=args.epochs, lr=args.lr, finetune_patience=1,
                        max_train_batches=args.max_train_batches, max_val_batches=args.max_val_batches,
                        progress=False)
                    pr = model.compress_pruning[-1]
                    rec.update(chosen_round=pr.get("chosen_round"), rounds=len(pr.get("rounds", [])),
                               val_loss_per_round=[r.get("val_loss") for r in pr.get("rounds", [])],
                               val_mse_after_pruning=pr.get("val_mse_after_pruning"))
                r = compress.evaluate(model, test, batch_size=256)
                a = measure(base, x, repeats=5, memory=False)
                b = measure(model, x, repeats=5, memory=False)
                rec.update(mse=r["mse"], mae=r["mae"], n_windows=r["n_windows"], params=b.params,
                           params_base=a.params, params_kept=b.params / a.params, flops=b.flops,
                           flops_reduction=a.flops / b.flops, latency_ms=b.latency_ms, speedup=a.latency_ms / b.latency_ms)
            except Exception as e:
                rec["error"] = f"{type(e).__name__}: {e}"
            rec["seconds"] = round(time.perf_counter() - t0, 1)
            if args.save_models and not rec.get("error"):
                os.makedirs(args.save_models, exist_ok=True)
                model.save(os.path.join(args.save_models, cell_file(key)))
            print(json.dumps(rec), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(rec) + "\n")


def cell_file(key):
    """The directory (compress.models.saving layout) a cell's pruned model is saved to."""
    return "{}__{}__{}__{}".format(*key)


def retime(models_dir, out, repeats):
    """Re-time every saved pruned cell model against its unpruned base, one after the other on a quiet
    machine (nothing else running), and append one line per cell to ``out``."""
    x = torch.randn(8, 512, 7)
    for name in sorted(os.listdir(models_dir)):
        path = os.path.join(models_dir, name)
        if not os.path.isfile(os.path.join(path, "compress_config.json")):
            continue
        model_name, dataset, horizon, method = name.split("__")
        model = compress.models.load(path).eval()
        base = load_model(model_name, int(horizon)).eval()
        if n_params(model) == n_params(base):
            continue  # same shapes as the base: speedup 1 by construction
        a = measure(base, x, repeats=repeats, memory=False)
        b = measure(model, x, repeats=repeats, memory=False)
        a2 = measure(base, x, repeats=repeats, memory=False)  # base again: the spread shows the noise
        rec = {"model": model_name, "dataset": dataset, "horizon": int(horizon), "method": method,
               "latency_ms": b.latency_ms, "latency_base_ms": [a.latency_ms, a2.latency_ms],
               "speedup": min(a.latency_ms, a2.latency_ms) / b.latency_ms, "threads": torch.get_num_threads(),
               "batch": list(x.shape), "repeats": repeats,
               "command": "python benchmarks/ptf/experiment.py " + " ".join(sys.argv[1:])}
        print(json.dumps(rec), flush=True)
        with open(out, "a") as f:
            f.write(json.dumps(rec) + "\n")


def _last(path):
    return {cell_key(r): r for r in records(path)}


def compare(new_path, old_path, match=()):
    """Markdown: every cell of `new_path` beside the same cell of `old_path` (a re-measure), or,
    with `match` (["NEW_METHOD=OLD_METHOD", ...]), beside the cell of another method (a variant
    against its reference)."""
    from tabulate import tabulate
    new, old = _last(new_path), _last(old_path)
    as_old = {}
    for m in match:
        a, sep, b = m.partition("=")
        if not sep or not a or not b:
            raise SystemExit(f"--match {m!r}: write NEW_METHOD=OLD_METHOD, e.g. "
                             "prune-then-finetune-authors=prune-then-finetune")
        as_old[a] = b
    rows = []
    for key, r in sorted(new.items(), key=lambda kv: (kv[0][1].lower(), kv[0][2], kv[0][0], kv[0][3])):
        o = old.get((*key[:3], as_old.get(key[3], key[3])))

        def cell(x):
            if not x:
                return "", "", ""
            if x.get("error"):
                return "error", "", ""
            return f"{x['mse']:.4f}", f"{x['params_kept']:.0%}", ("" if x.get("chosen_round") is None else
                                                              f"{x['chosen_round']}/{x['rounds'] - 1}")
        (nm, nk, nr), (om, ok, orr) = cell(r), cell(o)
        delta = f"{(r['mse'] / o['mse'] - 1) * 100:+.1f}%" if o and not o.get("error") and not r.get("error") else ""
        method = key[3] if key[3] not in as_old else f"{key[3]} vs {as_old[key[3]]}"
        rows.append([*key[1:3], key[0], method, om, ok, orr, nm, nk, nr, delta])
    a, b = ("reference", "variant") if as_old else ("old", "new")
    print(tabulate(rows, headers=["dataset", "H", "model", "method", f"{a} MSE", f"{a} kept", f"{a} round (chosen/last)",
                                  f"{b} MSE", f"{b} kept", f"{b} round (chosen/last)", "MSE change"],
                   tablefmt="github", disable_numparse=True))


def report(path, latency_path=None):
    """Markdown: one row per cell (speedups from the quiet re-timing where there is one), then
    the claim check per (dataset, horizon, model)."""
    from tabulate import tabulate
    last, quiet = _last(path), _last(latency_path)
    table = []
    for key, r in sorted(last.items(), key=lambda kv: (kv[0][1].lower(), kv[0][2], kv[0][0], kv[0][3])):
        m, d, h, meth = key
        if r.get("error"):
            table.append([d, h, m, meth, "error: " + r["error"][:60], "", "", "", ""])
            continue
        if r["params"] == r["params_base"]:
            speed = "1.00x (same shapes)"
        elif key in quiet:
            speed = f"{quiet[key]['speedup']:.2f}x"
        else:
            speed = "not re-timed"
        table.append([d, h, m, meth, f"{r['mse']:.4f}", f"{r['mae']:.4f}", f"{r['params_kept']:.0%}",
                      f"{r['flops_reduction']:.2f}x", speed])
    print(tabulate(table, headers=["dataset", "H", "model", "method", "MSE", "MAE", "params kept", "FLOPs ÷",
                                   "CPU speedup"], tablefmt="github", disable_numparse=True))
    print()
    methods = ["zero-shot", "finetune", "prune-then-finetune", "prune-then-finetune-tol", "prune-then-finetune-p3",
               "prune-then-finetune-norm", "prune-then-finetune-ffn", "prune-then-finetune-authors"]
    methods = [m for m in methods if any(k[3] == m for k in last)]
    pivot = []
    for m, d, h in sorted({k[:3] for k in last if k[0] != "patchtst_scratch"}, key=lambda k: (k[1].lower(), k[2], k[0])):
        row = [d, h, m]
        for meth in methods:
            r = last.get((m, d, h, meth))
            row.append("" if not r else "error" if r.get("error") else
                       f"{r['mse']:.4f}" + ("" if r["params_kept"] >= 1 else f" ({r['params_kept']:.0%})"))
        sc = last.get(("patchtst_scratch", d, h, "scratch"))
        row.append(f"{sc['mse']:.4f}" if sc and not sc.get("error") else "")
        pivot.append(row)
    print(tabulate(pivot, headers=["dataset", "H", "model"] + methods + ["PatchTST scratch"], tablefmt="github",
                   disable_numparse=True))
    print()
    claim = []
    for (m, d, h, meth), p in sorted(last.items(), key=lambda kv: (kv[0][1].lower(), kv[0][2], kv[0][0], kv[0][3])):
        ft = last.get((m, d, h, "finetune"))
        if not meth.startswith("prune-then-finetune") or p.get("error") or not ft or ft.get("error"):
            continue
        holds = p["mse"] < ft["mse"] and p["params_kept"] <= 0.7
        sc = last.get(("patchtst_scratch", d, h, "scratch"))
        claim.append([d, h, m, meth, f"{ft['mse']:.4f}", f"{p['mse']:.4f}", f"{(p['mse'] / ft['mse'] - 1) * 100:+.1f}%",
                      f"{p['params_kept']:.1%}", "yes" if holds else "no",
                      f"{sc['mse']:.4f}" if sc and not sc.get("error") else ""])
    print(tabulate(claim, headers=["dataset", "H", "model", "method", "finetune MSE", "MSE", "vs finetune",
                                   "params kept", "lower MSE with >=30% fewer params", "PatchTST scratch"],
                   tablefmt="github", disable_numparse=True))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=["ttm", "patchtst_pre"])
    ap.add_argument("--datasets", nargs="*", default=["ETTh1", "ETTm1", "ETTm2", "weather"])
    ap.add_argument("--horizon", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--scratch-lr", type=float, default=1e-3)
    ap.add_argument("--max-train-batches", type=int, default=100)
    ap.add_argument("--max-val-batches", type=int, default=10)
    ap.add_argument("--calibration-batches", type=int, default=8)
    ap.add_argument("--max-ratio", type=float, default=0.7)
    ap.add_argument("--step-fraction", type=float, default=0.1)
    ap.add_argument("--tolerance", type=float, default=0.0,
                    help="also run prune-then-finetune-tol: keep the most pruned mask set within this "
                         "relative tolerance of the best validation loss (patience 3)")
    ap.add_argument("--normalize", action="store_true",
                    help="also run prune-then-finetune-norm: scores divided by their layer's mean before the "
                         "global ranking (normalize='mean'), patience 1")
    ap.add_argument("--ffn-only", action="store_true",
                    help="also run prune-then-finetune-ffn: FFN channels only, heads kept, patience 1")
    ap.add_argument("--patience3", action="store_true",
                    help="also run prune-then-finetune-p3: patience 3 instead of 1, no tolerance")
    ap.add_argument("--authors", action="store_true",
                    help="also run prune-then-finetune-authors (the authors' batch-mean gradients and |score| "
                         "ranking in one pool across kinds)")
    ap.add_argument("--only", nargs="*", metavar="METHOD", help="run only these methods (e.g. to split a grid "
                                                                  "across processes)")
    ap.add_argument("--test-stride", type=int, default=4)
    ap.add_argument("--no-scratch", action="store_true", help="skip the PatchTST-from-scratch baseline")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "results", "ptf.jsonl"))
    ap.add_argument("--save-models", metavar="DIR", help="torch.save each cell's final model here (for --retime)")
    ap.add_argument("--retime", metavar="DIR", help="re-time the models saved in DIR and append to --latency-out")
    ap.add_argument("--latency-out", default=os.path.join(os.path.dirname(__file__), "..", "results",
                                                          "ptf_latency.jsonl"))
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--report")
    ap.add_argument("--compare", metavar="OLD", help="with --report NEW: each cell of NEW beside OLD's")
    ap.add_argument("--match", nargs="*", default=[], metavar="NEW=OLD",
                    help="with --compare: set NEW's cells of method NEW beside OLD's cells of method OLD "
                         "(e.g. prune-then-finetune-authors=prune-then-finetune)")
    args = ap.parse_args()
    if args.report and args.compare:
        return compare(args.report, args.compare, args.match)
    if args.report:
        return report(args.report, args.latency_out)
    torch.set_num_threads(args.threads)
    if args.retime:
        return retime(args.retime, args.latency_out, args.repeats)
    run(args)


if __name__ == "__main__":
    main()
