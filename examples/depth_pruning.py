"""Depth pruning: remove the least dominant blocks of the small pretrained PatchTST, then realign.

    python examples/depth_pruning.py [--quick]

`compress.prune(model, "dominance", strategy="layers")` scores every encoder block on
calibration windows (the default measure, "removal": the calibration-loss increase with the
block skipped) and removes the lowest third
(1 of 3 blocks) physically; a short fine-tune realigns the rest (caps: 4 batches of 8, one
epoch; --quick: 2). The table compares the original, the shallow model and the realigned
one: sizes, FLOPs, latency and speedup from one interleaved timing, and MSE on every 32nd
ETTh1 test window.
"""
import torch

import compress
from _table import compare, quick_flag
from compress.models.patchtst import PRETRAINED_DIR


def main():
    quick = quick_flag(__doc__)
    torch.manual_seed(0)
    model = compress.models.load("patchtst", pretrained=PRETRAINED_DIR, horizon=96)  # 3 encoder layers
    L, H = model.context_length, model.horizon
    train = compress.data.load("ETTh1", L, H, "train")
    val = compress.data.load("ETTh1", L, H, "val")
    test = compress.data.load("ETTh1", L, H, "test", stride=32)
    cal = train.batches(8, limit=1 if quick else 2, shuffle=True)
    shallow = compress.prune(model, "dominance", ratio=0.34, strategy="layers", calibration=cal)
    rec = shallow.compress_pruning[-1]
    realigned = compress.finetune(shallow, train, val, epochs=1, max_train_batches=2 if quick else 4,
                                  max_val_batches=1, batch_size=8, progress=False)
    models = {"patchtst (3 blocks)": model, f"dominance: {rec['blocks_after']} blocks": shallow,
              "+ realign (1 epoch)": realigned}
    limit = 1 if quick else None
    mse = {name: compress.evaluate(m, test, batch_size=16, limit=limit)["mse"] for name, m in models.items()}
    print(compare(models, cal[0][0], mse=mse, rounds=2 if quick else 3, repeats=3 if quick else 5))
    print(f"\nremoved blocks: {rec['stacks']['model.model.encoder.layers']['removed']}")


if __name__ == "__main__":
    main()
