"""Zero-shot accuracy of the pretrained PatchTST, TTM and a naive baseline on ETT and Weather.

Standard test splits (`compress.data.load(name, 512, H, "test")`: scaled with the train
split's statistics, windows starting 512 rows before the test border), scaled MSE/MAE
averaged over every value (`compress.evaluate`). One JSON line per model/dataset/horizon,
with the command that made it.

    python benchmarks/pretrain/zero_shot.py                  # everything below, all test windows
    python benchmarks/pretrain/zero_shot.py --models ttm --horizons 96 --datasets ETTh1

Models: `patchtst-mini` (compress/models/weights/patchtst-mini-pretrained, horizons 96 and
192), `patchtst-deep` (compress/models/weights/patchtst-deep-pretrained: 12 layers, d_model 64),
`ttm` (the shipped TTM r2 512-96: horizon 96 only), `naive` (repeat the last value).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import compress  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECKPOINT = os.path.join(REPO, "compress", "models", "weights", "patchtst-mini-pretrained")
CHECKPOINTS = {"patchtst-mini": CHECKPOINT,
               "patchtst-deep": os.path.join(REPO, "compress", "models", "weights", "patchtst-deep-pretrained")}
OUT = os.path.join(REPO, "benchmarks", "results", "pretrained_zero_shot.jsonl")
# datasets whose TRAIN split is in patchtst-mini's pretraining mix (its test split is not)
IN_PRETRAINING = {"patchtst-mini": {"weather"}, "patchtst-deep": {"weather"}, "ttm": set(), "naive": set()}


class RepeatLast(nn.Module):
    """Naive forecast: the last observed value, repeated over the horizon."""

    def __init__(self, horizon: int):
        super().__init__()
        self.horizon = horizon

    def forward(self, past):  # [B, L, C] -> [B, H, C]
        return past[:, -1:, :].expand(-1, self.horizon, -1)


def build(model: str, horizon: int, checkpoint: str):
    if model in CHECKPOINTS:
        return compress.models.load("patchtst", pretrained=checkpoint or CHECKPOINTS[model], horizon=horizon)
    if model == "ttm":
        if horizon > 96:
            return None  # TTM r2 512-96 forecasts 96 steps
        return compress.models.load("ttm", horizon=horizon) if horizon < 96 else compress.models.load("ttm")
    if model == "naive":
        return RepeatLast(horizon)
    raise ValueError(f"unknown model {model!r}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["patchtst-mini", "ttm", "naive"])
    p.add_argument("--datasets", nargs="+", default=["ETTh1", "ETTm1", "ETTm2", "weather"])
    p.add_argument("--horizons", nargs="+", type=int, default=[96, 192])
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--stride", nargs="*", default=[], metavar="DATASET=K",
                   help="evaluate every K-th test window of DATASET (default: every window)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--checkpoint", default=None, help="override the PatchTST checkpoint directory")
    p.add_argument("--out", default=OUT)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    strides = {k: int(v) for k, v in (s.split("=") for s in args.stride)}
    command = "python " + shlex.join([os.path.relpath(os.path.abspath(sys.argv[0]), REPO)] + sys.argv[1:])

    for name in args.models:
        for horizon in args.horizons:
            model = build(name, horizon, args.checkpoint)
            if model is None:
                print(f"skip {name} H={horizon} (not supported)", flush=True)
                continue
            params = sum(p.numel() for p in model.parameters())
            for ds_name in args.datasets:
                stride = strides.get(ds_name, 1)
                test = compress.data.load(ds_name, args.context, horizon, "test", stride=stride)
                t = time.time()
                res = compress.evaluate(model, test, batch_size=args.batch_size)
                rec = {
                    "model": name,
                    "checkpoint": (os.path.relpath(args.checkpoint or CHECKPOINTS[name], REPO) if name in CHECKPOINTS
                                   else "compress/models/weights/granite-ttm-r2-512-96" if name == "ttm" else None),
                    "params": params,
                    "dataset": ds_name,
                    "horizon": horizon,
                    "context": args.context,
                    "split": "test",
                    "stride": stride,
                    "n_windows": res["n_windows"],
                    "mse": res["mse"],
                    "mae": res["mae"],
                    "zero_shot": "in-domain (train split in pretraining)" if ds_name in IN_PRETRAINING[name] else "clean",
                    "seconds": round(time.time() - t, 1),
                    "threads": args.threads,
                    "command": command,
                }
                print(json.dumps(rec), flush=True)
                os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
                with open(args.out, "a") as f:
                    f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
