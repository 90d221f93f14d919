"""Issue 9: which progressive-pruning settings to make the default, measured.

For each (model, dataset) runs the progressive strategy on a fixed schedule (no early stop:
`max_rounds` rounds of `step_fraction`, patience never reached) under four settings and
records the validation loss after every round (the loss the method selects on) with the
units masked of each kind:

  ema-signed      taylor order 2, EMA 0.9 carried across rounds (bias-corrected), signed
                  scores ranked per kind, per-sample gradients of each sample's own loss
  mean-signed     the same with a plain sum per round (ema=None)
  authors         EMA 0.9, |score| ranked in one pool across kinds, batch-mean gradients
  mean-authors    plain sum per round, |score| pooled, batch-mean gradients

    python benchmarks/ptf/defaults.py --models patchtst_pre ttm --datasets ETTh1 \
        --out benchmarks/results/ptf_defaults.jsonl --threads 1

One JSON line per (model, dataset, setting); cells already in --out are skipped.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import compress  # noqa: E402
from experiment import load_model  # noqa: E402

SETTINGS = {
    "ema-signed": (dict(order=2, ema=0.9), dict(ranking="signed")),
    "mean-signed": (dict(order=2, ema=None), dict(ranking="signed")),
    "authors": (dict(order=2, ema=0.9, grad_scale="batch_mean"), dict(ranking="authors")),
    "mean-authors": (dict(order=2, ema=None, grad_scale="batch_mean"), dict(ranking="authors")),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=["patchtst_pre", "ttm"])
    ap.add_argument("--datasets", nargs="*", default=["ETTh1"])
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS))
    ap.add_argument("--horizon", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--step-fraction", type=float, default=0.1)
    ap.add_argument("--calibration-batches", type=int, default=8)
    ap.add_argument("--val-batches", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "results", "ptf_defaults.jsonl"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    done = set()
    if os.path.exists(args.out):
        done = {(r["model"], r["dataset"], r["setting"]) for r in map(json.loads, open(args.out))}
    for dataset in args.datasets:
        train = compress.data.load(dataset, 512, args.horizon, "train")
        val = compress.data.load(dataset, 512, args.horizon, "val")
        cal = train.batches(32, limit=args.calibration_batches, shuffle=True, seed=0)
        vb = val.batches(32, limit=args.val_batches, shuffle=True, seed=0)
        for model_name in args.models:
            for setting in args.settings:
                if (model_name, dataset, setting) in done:
                    continue
                crit_kw, opts = SETTINGS[setting]
                t0 = time.perf_counter()
                model = load_model(model_name, args.horizon).eval()
                pruned = compress.prune(model, compress.criteria.get("taylor", **crit_kw), ratio=0.95,
                                        strategy="progressive", calibration=cal, validation=vb,
                                        options=dict(step_fraction=args.step_fraction, patience=10 ** 6,
                                                     max_rounds=args.rounds, **opts))
                rec = pruned.compress_pruning[-1]
                out = {"model": model_name, "dataset": dataset, "horizon": args.horizon, "setting": setting,
                       "criterion": crit_kw, "options": opts,
                       "val_loss": [r["val_loss"] for r in rec["rounds"]],
                       "masked": [r["masked"] for r in rec["rounds"]],
                       "seconds": round(time.perf_counter() - t0, 1),
                       "command": "python benchmarks/ptf/defaults.py " + " ".join(sys.argv[1:])}
                print(json.dumps(out), flush=True)
                with open(args.out, "a") as f:
                    f.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
