"""Prune, then fine-tune, quickly: the small pretrained PatchTST on ETTh1, with and without recovery.

    python examples/prune_then_finetune.py [--quick]

`compress.prune_then_finetune` masks FFN channels and heads progressively (taylor, up to
20% here), keeps the round with the lowest validation loss, cuts it out, then fine-tunes.
Caps keep it short: 4 training batches of 8 per epoch, one epoch (--quick: 2
batches). The full run (defaults, every training window, 10 epochs) takes
about 35 minutes on one core; `max_train_batches` and `finetune_epochs` set the cost. For
contrast the table also has a one-shot taylor prune at 20% without fine-tuning. All
latencies come from one interleaved timing; MSE on every 32nd ETTh1 test window.
"""
import torch

import compress
from _table import compare, quick_flag
from compress.models.patchtst import PRETRAINED_DIR


def main():
    quick = quick_flag(__doc__)
    torch.manual_seed(0)
    model = compress.models.load("patchtst", pretrained=PRETRAINED_DIR, horizon=96)
    L, H = model.context_length, model.horizon
    train = compress.data.load("ETTh1", L, H, "train")
    val = compress.data.load("ETTh1", L, H, "val")
    test = compress.data.load("ETTh1", L, H, "test", stride=32)
    n = 2 if quick else 4
    tuned = compress.prune_then_finetune(model, train, val, max_ratio=0.2, step_fraction=0.1, patience=1,
                                         calibration_batches=2, validation_batches=2, batch_size=8,
                                         finetune_epochs=1, max_train_batches=n, max_val_batches=2, progress=False)
    cal = train.batches(8, limit=2, shuffle=True)
    x = cal[0][0]
    oneshot = compress.prune(model, "taylor", ratio=0.2, example_inputs=x, calibration=cal)
    models = {"patchtst (pretrained)": model, "taylor 0.2, no finetune": oneshot, "prune-then-finetune": tuned}
    limit = 1 if quick else None
    mse = {name: compress.evaluate(m, test, batch_size=16, limit=limit)["mse"] for name, m in models.items()}
    print(compare(models, x, mse=mse, rounds=2 if quick else 3, repeats=3 if quick else 5))
    print(f"\nchosen round: {tuned.compress_pruning[-1]['chosen_round']}; "
          f"fine-tuning val losses (epoch 0 = right after pruning): {tuned.finetune_history}")


if __name__ == "__main__":
    main()
