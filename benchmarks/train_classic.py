"""Train the five classic forecasters of the comparative pruning study (arXiv 2412.12883) on ETTm1.

    python benchmarks/train_classic.py [--models transformer informer ...] [--epochs 3]
        [--max-train-batches 120] [--out-dir benchmarks/checkpoints] [--force]

The study trains Transformer, Informer, Autoformer, FEDformer and Crossformer on ETTm1 with
input 96 and horizon 192 (7 channels, z-scored with training statistics) and then prunes
them. This script produces those dense starting points, reduced to fit a shared 2-core CPU
in about 40 minutes for all five models.

How it is reduced, and why:

* Width. The reference width (d_model 512, d_ff 2048; Crossformer 256/512) costs ~100x
  more per step than we can afford. The four encoder-decoder models use d_model 64,
  n_heads 8, d_ff 256, e_layers 2, d_layers 1, label_len 48: the reference's depth, heads
  and d_ff/d_model ratio (4x) at 1/8 width. Eight heads (head_dim 8) are kept so head
  pruning has as many heads to choose from as in the paper. Other family fields stay at
  the authors' defaults (Informer ProbSparse factor 5 with distilling; Autoformer
  factor 3, moving_avg 25; FEDformer 64 random modes, moving_avg 25).
* Crossformer: d_model 48, n_heads 4 (head_dim 12, the reference's 4 heads), d_ff 96,
  seg_len 12, win_size 2, factor 10, e_layers 2 (so one segment merge, keeping the
  hierarchy). d_model 64 / d_ff 128 gives 555k parameters (2.2 MB fp32), over the
  2 MB budget for committed checkpoints; 48 gives 324k (1.3 MB).
* Training. AdamW (no weight decay) at lr 1e-3 (the reference: Adam at 1e-4 for up to 10
  epochs at full width; a 10x larger rate makes up for the ~100x fewer steps), batch 32,
  up to 3 epochs of 120 random batches each (3840 windows, drawn from training windows at
  stride 4, i.e. 8.6k distinct windows of the 34k), early stopping on validation MSE
  (patience 1, best epoch's weights kept), seed 0. Validation uses windows at stride 16
  over the whole validation period (~700 windows) rather than the first few batches, so
  early stopping sees every season of the split.
* Threads. One intra-op thread by default: on these shared 2-core machines two OpenMP
  threads were measured 2.7x slower per step (3.0 s vs 1.1 s for the Transformer) while
  other jobs ran; `--threads 2` is there for an idle machine.

Evaluation: MSE / MAE on the scaled values of the FULL test split (stride 1, ~11.2k
windows) unless `--test-stride` says otherwise, plus the naive baseline that repeats the
last context value over the horizon on the same windows.

Outputs, per model: `<out-dir>/<model>-ETTm1-96-192.pt` (the inner network's
state_dict) and `<out-dir>/<model>-ETTm1-96-192.json` with the exact build config, so that

    cfg = json.load(open(".../transformer-ETTm1-96-192.json"))["config"]
    model = compress.models.load("transformer", pretrained=".../transformer-ETTm1-96-192.pt", **cfg)

rebuilds it (checked here on a few test batches after saving), and one JSON line per model
appended to `benchmarks/results/classic_training.jsonl`. Models whose checkpoint exists are
skipped unless `--force`.
"""
import argparse
import json
import os
import platform
import shlex
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import compress  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DATASET, CONTEXT, HORIZON, CHANNELS = "ETTm1", 96, 192, 7

_ENC_DEC = dict(d_model=64, n_heads=8, d_ff=256, e_layers=2, d_layers=1, label_len=48, dropout=0.05)
# Build overrides per model, on top of size="small" (the authors' defaults for everything else).
CONFIGS = {
    "transformer": dict(_ENC_DEC),
    "informer": dict(_ENC_DEC, factor=5, attn="prob", distil=True),
    "autoformer": dict(_ENC_DEC, factor=3, moving_avg=25),
    "fedformer": dict(_ENC_DEC, modes=64, mode_select="random", moving_avg=25),
    "crossformer": dict(d_model=48, n_heads=4, d_ff=96, seg_len=12, win_size=2, factor=10, e_layers=2, dropout=0.2),
    # Issue 10 (depth pruning): the same Transformer with 6 encoder layers, a subject deep enough
    # to remove blocks from (2 encoder layers leave nothing to choose).
    "transformer-e6": dict(_ENC_DEC, e_layers=6),
}
# Entries that are a variant of a family: the name `compress.models.load` takes.
FAMILY = {"transformer-e6": "transformer"}
MAX_CHECKPOINT_BYTES = 2 * 1024 * 1024


def build_config(name: str) -> dict:
    """Every keyword that `compress.models.load(name, **cfg)` needs to rebuild the model."""
    return dict(context_length=CONTEXT, horizon=HORIZON, n_channels=CHANNELS, **CONFIGS[name])


@torch.no_grad()
def naive_last(data, batch_size: int = 512) -> dict:
    """MSE / MAE of repeating the last context value over the horizon."""
    se = ae = n = 0.0
    for past, future in data.loader(batch_size=batch_size, shuffle=False):
        err = past[:, -1:, :].expand_as(future) - future  # [B, H, C]
        se += float(err.pow(2).sum())
        ae += float(err.abs().sum())
        n += err.numel()
    return {"mse": se / n, "mae": ae / n, "n_windows": len(data)}


def train_one(name: str, args, data: dict, naive: dict, command: str) -> dict:
    stem = f"{name}-{DATASET}-{CONTEXT}-{HORIZON}"
    ckpt = os.path.join(args.out_dir, stem + ".pt")
    meta_path = os.path.join(args.out_dir, stem + ".json")
    cfg = build_config(name)

    torch.manual_seed(args.seed)
    family = FAMILY.get(name, name)
    model = compress.models.load(family, **cfg)
    params = sum(p.numel() for p in model.parameters())
    print(f"[{name}] {params:,} parameters; config {cfg}", flush=True)

    t0 = time.perf_counter()
    trained = compress.finetune(
        model, data["train"], data["val"], epochs=args.epochs, lr=args.lr, patience=args.patience,
        batch_size=args.batch_size, max_train_batches=args.max_train_batches, seed=args.seed,
        keep_sparsity=False, progress=args.progress)
    train_seconds = time.perf_counter() - t0
    history = trained.finetune_history
    epochs_run = len(history) - 1
    best = min(history, key=lambda h: h["val"])
    print(f"[{name}] trained in {train_seconds:.0f} s, {epochs_run} epochs, best val {best['val']:.4f} "
          f"(epoch {best['epoch']})", flush=True)

    t0 = time.perf_counter()
    test = compress.evaluate(trained, data["test"], batch_size=args.eval_batch_size)
    test_seconds = time.perf_counter() - t0
    print(f"[{name}] test mse {test['mse']:.4f} mae {test['mae']:.4f} on {test['n_windows']} windows "
          f"({test_seconds:.0f} s); naive mse {naive['mse']:.4f}", flush=True)

    os.makedirs(args.out_dir, exist_ok=True)
    torch.save(trained.model.state_dict(), ckpt)
    size = os.path.getsize(ckpt)
    if size > MAX_CHECKPOINT_BYTES:
        print(f"[{name}] WARNING: checkpoint is {size / 2**20:.2f} MB (> 2 MB)", flush=True)

    # The saved file + config must rebuild the same model: compare on a few test batches.
    rebuilt = compress.models.load(family, pretrained=ckpt, **cfg)
    a = compress.evaluate(trained, data["test"], batch_size=args.eval_batch_size, limit=args.check_batches)
    b = compress.evaluate(rebuilt, data["test"], batch_size=args.eval_batch_size, limit=args.check_batches)
    if abs(a["mse"] - b["mse"]) > 1e-6 * max(1.0, a["mse"]):
        raise RuntimeError(f"{name}: the reloaded checkpoint gives mse {b['mse']} != {a['mse']}")

    record = {
        "model": name, "dataset": DATASET, "context_length": CONTEXT, "horizon": HORIZON,
        "method": "train", "params": params, "train_seconds": round(train_seconds, 1),
        "epochs_run": epochs_run, "best_epoch": best["epoch"], "val_mse": best["val"],
        "mse": test["mse"], "mae": test["mae"], "n_test_windows": test["n_windows"],
        "test_stride": args.test_stride, "naive_mse": naive["mse"], "naive_mae": naive["mae"],
        "checkpoint": os.path.relpath(ckpt, os.path.join(HERE, "..")), "checkpoint_bytes": size,
        "seed": args.seed, "threads": args.threads, "torch": torch.__version__, "command": command,
    }
    meta = {
        "model": name, "family": family, "config": cfg, "dataset": DATASET, "scaled": True,
        "full_config": trained.config,
        "training": {
            "optimizer": "AdamW(weight_decay=0)", "lr": args.lr, "batch_size": args.batch_size,
            "epochs": args.epochs, "max_train_batches": args.max_train_batches, "patience": args.patience,
            "train_stride": args.train_stride, "n_train_windows": len(data["train"]),
            "val_stride": args.val_stride, "n_val_windows": len(data["val"]), "seed": args.seed,
            "threads": args.threads, "history": history,
        },
        "params": params, "train_seconds": round(train_seconds, 1), "epochs_run": epochs_run,
        "val_mse": best["val"],
        "test": {"mse": test["mse"], "mae": test["mae"], "n_windows": test["n_windows"], "stride": args.test_stride,
                 "eval_seconds": round(test_seconds, 1)},
        "naive_last_value": naive,
        "reload_check": {"batches": args.check_batches, "mse_trained": a["mse"], "mse_reloaded": b["mse"]},
        "torch": torch.__version__, "python": platform.python_version(), "command": command,
    }
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=2)
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    with open(args.results, "a") as f:
        f.write(json.dumps(record) + "\n")
    return record


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=[m for m in CONFIGS if m not in FAMILY], choices=list(CONFIGS))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-train-batches", type=int, default=120, help="batches per epoch (0: all)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--patience", type=int, default=1)
    ap.add_argument("--train-stride", type=int, default=4)
    ap.add_argument("--val-stride", type=int, default=16)
    ap.add_argument("--test-stride", type=int, default=1)
    ap.add_argument("--eval-batch-size", type=int, default=128)
    ap.add_argument("--check-batches", type=int, default=3, help="test batches for the reload check")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out-dir", default=os.path.join(HERE, "checkpoints"))
    ap.add_argument("--results", default=os.path.join(HERE, "results", "classic_training.jsonl"))
    ap.add_argument("--force", action="store_true", help="retrain models whose checkpoint exists")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python benchmarks/train_classic.py" + "".join(" " + shlex.quote(a) for a in (argv or sys.argv[1:]))

    todo = [m for m in args.models
            if args.force or not os.path.exists(os.path.join(args.out_dir, f"{m}-{DATASET}-{CONTEXT}-{HORIZON}.pt"))]
    for m in (m for m in args.models if m not in todo):
        print(f"[{m}] checkpoint exists; skipped (use --force to retrain)")
    if not todo:
        return
    data = {
        "train": compress.data.load(DATASET, CONTEXT, HORIZON, "train", stride=args.train_stride),
        "val": compress.data.load(DATASET, CONTEXT, HORIZON, "val", stride=args.val_stride),
        "test": compress.data.load(DATASET, CONTEXT, HORIZON, "test", stride=args.test_stride),
    }
    print(f"windows: train {len(data['train'])} (stride {args.train_stride}), val {len(data['val'])} "
          f"(stride {args.val_stride}), test {len(data['test'])} (stride {args.test_stride})", flush=True)
    naive = naive_last(data["test"])
    print(f"naive repeat-last-value: test mse {naive['mse']:.4f} mae {naive['mae']:.4f}", flush=True)
    args.max_train_batches = args.max_train_batches or None
    for name in todo:
        train_one(name, args, data, naive, command)


if __name__ == "__main__":
    main()
