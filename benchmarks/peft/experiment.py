"""Issue 11 experiment: full fine-tuning vs linear probing vs LoRA vs TRACE on pretrained TSFMs.

    nice -n 10 python benchmarks/peft/experiment.py --models patchtst_pre ttm \
        --datasets ETTh1 ETTm1 weather --horizons 96 336 [--out benchmarks/results/peft/peft.jsonl]
    python benchmarks/peft/experiment.py --report benchmarks/results/peft/peft.jsonl   # markdown table
    python benchmarks/peft/experiment.py --claim benchmarks/results/peft/peft.jsonl    # claim check per cell

Per (model, dataset, horizon), every method gets the same training budget: `--steps`
optimiser steps of batch `--batch-size` (in `--epochs` checks of the validation loss on
`--val-batches` fixed batches, best weights kept), one seed. Methods (field `method`):

  finetune          every parameter (`compress.finetune(method="full")`), lr `--lr-full`
  linear_probe      only the forecasting head, lr `--lr`
  lora              LoRA (rank `--rank`) on attention / FFN Linears + the model's own head
  lora+head         LoRA + the reconstructed head (`head="reconstructed"`)
  gated-dsic        LoRA + Gated DSIC with the model's own head (`method="trace", head="keep"`; ablation)
  trace             TRACE: LoRA + Gated DSIC (warm-up counts in the budget) + reconstructed head
  prune-then-trace  `compress.prune(..., "taylor", ratio=--prune-ratio)` (structured; calibration loss on
                    the checkpoint's native horizon where H is longer), then trace

Horizons above the checkpoint's (PatchTST-mini: 192, TTM r2: 96) have no pretrained
flatten head: finetune / linear_probe / lora then get a freshly initialised flatten-linear
head of that horizon (`fresh_head`), the reconstructed head serves any horizon natively.
Test windows are strided (`TEST_STRIDE`, stated per record). One JSON line per cell; cells
already in the file are skipped (resumable).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import torch
from torch import nn

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, REPO)
import compress  # noqa: E402

WEIGHTS = os.path.join(REPO, "compress", "models", "weights")
TEST_STRIDE = {"ETTh1": 16, "ETTm1": 64, "weather": 128}
METHODS = ("finetune", "linear_probe", "lora", "gated-dsic", "lora+head", "trace", "prune-then-trace")
NEEDS_HEAD = ("lora+head", "trace", "prune-then-trace")
# Record `method` is the issue's name; `variant` (unique per cell, the resume key) tells apart
# plain LoRA (head "kept") from LoRA + reconstructed head (head "reconstructed").
# "gated-dsic" (Gated DSIC with the model's own head) is an extra ablation, not one of the
# issue's methods: its records say `ablation: true`.
ISSUE_METHOD = {"lora+head": "lora"}
NATIVE = {"patchtst_pre": 192, "ttm": 96}


def load_model(name: str, horizon: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = min(horizon, NATIVE[name])
        if name == "ttm":
            return compress.models.load("ttm", horizon=h) if h < NATIVE[name] else compress.models.load("ttm")
        if name == "patchtst_pre":
            return compress.models.load("patchtst", pretrained=os.path.join(WEIGHTS, "patchtst-mini-pretrained"),
                                        horizon=h)
    raise ValueError(f"unknown model {name!r}")


def fresh_head(model, horizon: int):
    """A freshly initialised flatten-linear head of `horizon` steps (in place), for horizons
    beyond the checkpoint's; its input (patches x d_model) is the pretrained head's."""
    if model.horizon == horizon:
        return model
    torch.manual_seed(0)
    if model.family == "patchtst":
        old = model.model.head.projection
        model.model.head.projection = nn.Linear(old.in_features, horizon)
        model.model.config.prediction_length = horizon
    elif model.family == "ttm":
        old = model.model.head.base_forecast_block
        model.model.head.base_forecast_block = nn.Linear(old.in_features, horizon)
        model.model.config.prediction_length = horizon
        model.model.config.prediction_filter_length = None
        if hasattr(model.model, "prediction_filter_length"):
            model.model.prediction_filter_length = None
    else:
        raise ValueError(f"no fresh head for {model.family}")
    model.horizon = horizon
    return model


def records(path):
    """The file's records; old ones without `variant` get it from `method` (they predate it)."""
    if path and os.path.exists(path):
        for line in open(path):
            if line.strip():
                r = json.loads(line)
                r.setdefault("variant", r["method"])
                r.setdefault("ablation", r["variant"] == "gated-dsic")
                yield r


def run_cell(args, model_name, dataset, horizon, method, data):
    train, val, test = data
    base = load_model(model_name, horizon)
    n_full = sum(p.numel() for p in base.parameters())
    steps_per_epoch = max(1, args.steps // args.epochs)
    ft = dict(epochs=args.epochs, max_train_batches=steps_per_epoch, max_steps=args.steps, patience=args.epochs,
              batch_size=args.batch_size, max_val_batches=args.val_batches, progress=False, seed=args.seed)
    lora = dict(rank=args.rank, alpha=2.0 * args.rank)
    trace = {"warmup_steps": args.warmup, "mc_samples": args.mc_samples, "budget": args.budget,
             "score_batches": min(2, args.val_batches)}
    info = {}
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method in ("finetune", "linear_probe", "lora"):
            model = fresh_head(base, horizon)
            kw = {"finetune": dict(method="full", lr=args.lr_full), "linear_probe": dict(method="linear_probe", lr=args.lr),
                  "lora": dict(method="lora", lr=args.lr, **lora)}[method]
            tuned = compress.finetune(model, train, val, inplace=True, **ft, **kw)
        elif method == "lora+head":
            tuned = compress.finetune(base, train, val, method="lora", head="reconstructed", horizon=horizon,
                                      lr=args.lr, inplace=True, **ft, **lora)
        elif method == "gated-dsic":
            tuned = compress.finetune(fresh_head(base, horizon), train, val, method="trace", head="keep", lr=args.lr,
                                      trace=trace, inplace=True, **ft, **lora)
        elif method == "trace":
            tuned = compress.finetune(base, train, val, method="trace", horizon=horizon, lr=args.lr, trace=trace,
                                      inplace=True, **ft, **lora)
        elif method == "prune-then-trace":
            cal = train.batches(args.batch_size, limit=4, shuffle=True, seed=0)
            # beyond the checkpoint's horizon the backbone still predicts its native steps: prune on those
            cal = [(x, y[:, :base.horizon]) for x, y in cal]
            t0 = time.perf_counter()
            pruned = compress.prune(base, compress.criteria.get("taylor", order=2, ema=0.9), ratio=args.prune_ratio,
                                    calibration=cal)
            info["prune_seconds"] = round(time.perf_counter() - t0, 2)
            info["params_before_pruning"] = n_full
            tuned = compress.finetune(pruned, train, val, method="trace", horizon=horizon, lr=args.lr, trace=trace,
                                      inplace=True, **ft, **lora)
        else:
            raise ValueError(method)
    seconds = time.perf_counter() - t
    r = compress.evaluate(tuned, test, batch_size=64)
    fi = tuned.finetune_info
    return {"method": ISSUE_METHOD.get(method, method), "variant": method, "ablation": method == "gated-dsic",
            "mse": r["mse"], "mae": r["mae"], "n_test_windows": r["n_windows"],
            "params": sum(p.numel() for p in tuned.parameters()), "trainable_params": fi["trainable_params"],
            "params_pretrained": n_full, "train_seconds": round(seconds, 2), "head": fi.get("head"),
            "lora_modules": (fi.get("lora") or {}).get("modules"),
            "trace": {k: fi["trace"][k] for k in ("modules_before", "modules_after", "lora_params_before",
                                                  "lora_params_after", "steps")} if "trace" in fi else None,
            "val_history": [h["val"] for h in tuned.finetune_history], **info}


LABEL = {"lora+head": "lora + reconstructed head", "gated-dsic": "gated-dsic (ablation: own head)"}


def _cells(path):
    rows = list(records(path))
    key = lambda r: (r["model"], r["dataset"], r["horizon"])  # noqa: E731
    return {k: {r["variant"]: r for r in rows if key(r) == k} for k in sorted({key(r) for r in rows})}


def report(path):
    """Markdown table: every record, MSE and trainable parameters against full fine-tuning's."""
    out = ["| model | dataset | H | method | head | MSE | MAE | params | trainable | vs full: trainable | "
           "vs full: MSE | train s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, cell in _cells(path).items():
        full = cell.get("finetune")
        for m in METHODS:
            if m not in cell:
                continue
            r = cell[m]
            rel_t = f"{1 - r['trainable_params'] / full['trainable_params']:.1%} fewer" if full else "n/a"
            rel_m = f"{r['mse'] / full['mse'] - 1:+.1%}" if full else "n/a"
            head = r.get("head") or ("fresh" if r["horizon"] > NATIVE[r["model"]] else "pretrained")
            if head == "kept":
                head = "fresh" if r["horizon"] > NATIVE[r["model"]] else "pretrained"
            out.append(f"| {k[0]} | {k[1]} | {k[2]} | {LABEL.get(m, m)} | {head} | {r['mse']:.4f} | {r['mae']:.4f} | "
                       f"{r['params']:,} | {r['trainable_params']:,} | {rel_t} | {rel_m} | {r['train_seconds']:.0f} |")
    return "\n".join(out)


def claim(path, variants=("trace", "prune-then-trace"), reduction=0.9, tolerance=0.01):
    """The issue's claim per cell: `variant` trains >= `reduction` fewer parameters than full
    fine-tuning with MSE at most `tolerance` above it. Also against the best MSE of full
    fine-tuning, linear probing and plain LoRA (the paper compares with both)."""
    import statistics

    out = []
    for v in variants:
        lines = [f"#### {v} vs full fine-tuning (holds: trainable >= {reduction:.0%} fewer AND MSE <= "
                 f"+{tolerance:.0%})", "",
                 "| model | dataset | H | trainable: full | trainable: " + v + " | fewer | MSE: full | MSE: " + v +
                 " | vs full | holds | best baseline MSE (which) | vs best |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        red, dm, dbest, n_hold = [], [], [], 0
        for k, cell in _cells(path).items():
            full, r = cell.get("finetune"), cell.get(v)
            if not (full and r):
                continue
            fewer = 1 - r["trainable_params"] / full["trainable_params"]
            d = r["mse"] / full["mse"] - 1
            holds = fewer >= reduction and d <= tolerance
            best = min((cell[b] for b in ("finetune", "linear_probe", "lora") if b in cell), key=lambda b: b["mse"])
            db = r["mse"] / best["mse"] - 1
            red.append(fewer), dm.append(d), dbest.append(db)
            n_hold += holds
            lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {full['trainable_params']:,} | {r['trainable_params']:,} | "
                         f"{fewer:.1%} | {full['mse']:.4f} | {r['mse']:.4f} | {d:+.1%} | {'yes' if holds else 'no'} | "
                         f"{best['mse']:.4f} ({best['variant']}) | {db:+.1%} |")
        if red:
            lines += ["", f"{v}: the claim holds in **{n_hold} of {len(red)}** cells; median trainable-parameter "
                      f"reduction {statistics.median(red):.1%} (min {min(red):.1%}); median MSE change vs full "
                      f"{statistics.median(dm):+.1%} (range {min(dm):+.1%} .. {max(dm):+.1%}); vs the best of "
                      f"full / linear probe / LoRA: median {statistics.median(dbest):+.1%}, "
                      f"{sum(x <= tolerance for x in dbest)} of {len(red)} within +{tolerance:.0%}.", ""]
        out += lines
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["patchtst_pre", "ttm"])
    p.add_argument("--datasets", nargs="+", default=["ETTh1", "ETTm1", "weather"])
    p.add_argument("--horizons", nargs="+", type=int, default=[96, 336])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--val-batches", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-full", type=float, default=1e-4)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--mc-samples", type=int, default=6)
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--prune-ratio", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "peft", "peft.jsonl"))
    p.add_argument("--report", metavar="JSONL", help="print the markdown table of a results file")
    p.add_argument("--claim", metavar="JSONL", help="print the claim check (TRACE vs full fine-tuning) per cell")
    args = p.parse_args(argv)
    if args.report:
        print(report(args.report))
        return 0
    if args.claim:
        print(claim(args.claim))
        return 0
    torch.set_num_threads(args.threads)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    done = {(r["model"], r["dataset"], r["horizon"], r["variant"]) for r in records(args.out)}
    import importlib.util
    if importlib.util.find_spec("compress.finetune.heads") is None:
        skipped = [m for m in args.methods if m in NEEDS_HEAD]
        if skipped:
            print(f"compress.finetune.heads is not available: skipping {skipped} (rerun once it is)", file=sys.stderr)
        args.methods = [m for m in args.methods if m not in NEEDS_HEAD]
    command = "python benchmarks/peft/experiment.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for dataset in args.datasets:
        for horizon in args.horizons:
            data = None
            for model_name in args.models:
                for method in args.methods:
                    if (model_name, dataset, horizon, method) in done:
                        continue
                    if data is None:
                        data = (compress.data.load(dataset, 512, horizon, "train"),
                                compress.data.load(dataset, 512, horizon, "val"),
                                compress.data.load(dataset, 512, horizon, "test", stride=TEST_STRIDE[dataset]))
                    try:
                        rec = run_cell(args, model_name, dataset, horizon, method, data)
                    except Exception as e:  # recorded, so the grid goes on
                        rec = {"method": ISSUE_METHOD.get(method, method), "variant": method, "error": f"{type(e).__name__}: {e}"[:500]}
                    rec.update(model=model_name, dataset=dataset, horizon=horizon, seed=args.seed, steps=args.steps,
                               batch_size=args.batch_size, test_stride=TEST_STRIDE[dataset], command=command)
                    print(json.dumps({k: v for k, v in rec.items() if k != "val_history"}), flush=True)
                    if "error" not in rec:
                        with open(args.out, "a") as f:
                            f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
