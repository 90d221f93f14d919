"""Parameter-efficient fine-tuning: full fine-tuning vs LoRA vs TRACE on the small pretrained PatchTST.

    python examples/peft_finetune.py [--quick]

Fine-tunes the shipped PatchTST-mini (pretrained, horizon 96) on ETTh1 three ways with the
same tiny budget (30 optimiser steps of batch 8 in 3 epochs, validation loss on 2
batches, best weights kept):

  full   every parameter (`compress.finetune(method="full")`)
  lora   LoRA rank 8 on attention / FFN Linears + the model's own head (`method="lora"`)
  trace  TRACE: LoRA + Gated DSIC (keeps half the LoRA modules) + the reconstructed head
         (`method="trace"`; its warm-up steps count in the budget)

and prints trainable parameters (and their share of full fine-tuning's), total parameters
after merging, MSE on ETTh1 test windows (every 32nd) and training seconds. The budget is
far too small to rank the methods (benchmarks/results/peft/report.md has the measured
comparison); it shows the calls and the parameter counts. The input model is never
modified (every call works on a copy). Not named peft.py: a script of that name would
shadow the `peft` package it uses. --quick: 2 steps of batch 4, one validation batch.
"""
import time

import torch
from tabulate import tabulate

import compress
from _table import quick_flag
from compress.models.patchtst import PRETRAINED_DIR


def main():
    quick = quick_flag(__doc__)
    torch.manual_seed(0)
    model = compress.models.load("patchtst", pretrained=PRETRAINED_DIR, horizon=96)
    L, H = model.context_length, model.horizon
    train = compress.data.load("ETTh1", L, H, "train")
    val = compress.data.load("ETTh1", L, H, "val")
    test = compress.data.load("ETTh1", L, H, "test", stride=32)
    steps, batch = (2, 4) if quick else (30, 8)
    budget = dict(epochs=1 if quick else 3, max_steps=steps, max_train_batches=steps if quick else 10,
                  batch_size=batch, max_val_batches=1 if quick else 2, progress=False, seed=0)
    runs = {
        "full": dict(method="full", lr=1e-4),
        "lora": dict(method="lora", rank=8, alpha=16.0, lr=1e-3),
        "trace": dict(method="trace", rank=8, alpha=16.0, lr=1e-3,
                      trace=dict(warmup_steps=1 if quick else 8, mc_samples=2 if quick else 6, budget=0.5,
                                 score_batches=1 if quick else 2)),
    }
    rows, full_trainable = [], None
    for name, kw in runs.items():
        t = time.perf_counter()
        tuned = compress.finetune(model, train, val, **budget, **kw)
        seconds = time.perf_counter() - t
        info = tuned.finetune_info
        full_trainable = full_trainable or info["trainable_params"]
        mse = compress.evaluate(tuned, test, batch_size=16, limit=1 if quick else None)["mse"]
        rows.append([name, f"{info['trainable_params']:,}", f"{info['trainable_params'] / full_trainable:.1%}",
                     f"{sum(p.numel() for p in tuned.parameters()):,}", info.get("head") or "kept",
                     f"{mse:.4f}", f"{seconds:.1f}"])
    print(tabulate(rows, headers=["method", "trainable params", "of full", "params (merged)", "head", "MSE",
                                  "train s"], tablefmt="github"))
    print(f"\nbudget: {steps} steps of batch {batch} each; MSE on {'one batch of ' if quick else ''}ETTh1 test windows "
          "(stride 32); the pretrained input model is unchanged")


if __name__ == "__main__":
    main()
