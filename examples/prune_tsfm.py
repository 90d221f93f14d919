"""Prune a shipped time-series foundation model (TTM r2, pretrained) and compare accuracy and speed.

    python examples/prune_tsfm.py [--quick]

Loads the pretrained TTM r2 shipped with the package (context 512, horizon 96), prunes it
structurally with taylor at 20% and 50% (calibration: 4 batches of ETTh1 training windows),
and prints one table: params, FLOPs, latency and speedup (one interleaved timing) and
zero-shot test MSE on ETTh1 (every 16th test window; --quick: 16 windows). No fine-tuning:
see prune_then_finetune.py.
"""
import torch

import compress
from _table import compare, quick_flag


def main():
    quick = quick_flag(__doc__)
    torch.manual_seed(0)
    model = compress.models.load("ttm")  # the shipped pretrained TTM r2, eval mode
    L, H = model.context_length, model.horizon
    cal = compress.data.load("ETTh1", L, H, "train").batches(8, limit=2 if quick else 4, shuffle=True)
    test = compress.data.load("ETTh1", L, H, "test", stride=16)
    x = cal[0][0]
    models = {"ttm (pretrained)": model}
    for ratio in (0.2, 0.5):
        models[f"taylor {ratio}"] = compress.prune(model, "taylor", ratio=ratio, example_inputs=x, calibration=cal)
    limit = 1 if quick else None
    mse = {name: compress.evaluate(m, test, batch_size=16, limit=limit)["mse"] for name, m in models.items()}
    print(compare(models, x, mse=mse, rounds=2 if quick else 3, repeats=3 if quick else 5))


if __name__ == "__main__":
    main()
