"""Report and plot of the depth-pruning experiment (reads only the results files).

    python benchmarks/depth/report.py [benchmarks/results/depth]        # markdown to stdout
    python benchmarks/depth/report.py --plot [benchmarks/results/depth] # block_scores.png there

The main tables read the *.jsonl files of the folder; the LoRA-vs-full realignment table reads
its subfolder `realign/` (both realignments of the same pruned model, run in one process, so
their training seconds compare; kept apart so that its repeated full realignments do not
replace the main runs' records).
"""
from __future__ import annotations

import glob
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT = os.path.join(HERE, "..", "results", "depth")
MEASURES = ("cosine", "angular", "cka", "removal")
CLAIM_KEEP, CLAIM_MSE, CLAIM_SPEEDUP = 0.30, 0.02, 2.0


BASE_LR = 1e-4  # the experiment's --lr default: realignments at another rate are keyed "METHOD@lr=RATE"


def _at(lr):
    return "" if abs(lr - BASE_LR) < 1e-12 else f"@lr={lr:g}"


def realign_tag(r):
    """What trained a record, for its key (experiment.py keys resume with it too): a
    prune-then-finetune record's realignment, 'full' or 'lora' (older records: full), with
    '@lr=...' when its learning rate is not BASE_LR; a finetune record: None at BASE_LR (older
    records have no lr), else 'full@lr=...'; anything else None."""
    if r["method"] == "finetune":
        return "full" + _at(r["lr"]) if _at(r.get("lr", BASE_LR)) else None
    if r["method"] != "prune-then-finetune":
        return None
    rl = r.get("realign") or {}
    return rl.get("method", "full") + _at(rl.get("lr", BASE_LR))


def load(path=DEFAULT):
    files = sorted(glob.glob(os.path.join(path, "*.jsonl"))) if os.path.isdir(path) else [path]
    last = {}
    for f in files:
        for line in open(f):
            if not line.strip():
                continue
            r = json.loads(line)
            key = (r["model"], r["dataset"], r["method"], r.get("select"), r.get("ratio"), r.get("keep"),
                   realign_tag(r))
            last[key] = r
    return last


def _f(v, fmt="{:.4f}"):
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def spearman_table(last):
    rows, per = [], {m: [] for m in MEASURES}
    for key, r in sorted(last.items()):
        if r["method"] != "block-scores":
            continue
        rho = r["spearman"]
        rows.append(f"| {r['model']} | {r['dataset']} | {len(r['blocks'])} | "
                    + " | ".join(_f(rho.get(m), "{:+.2f}") for m in MEASURES)
                    + " | " + " | ".join(_f(r["seconds"].get(m), "{:.0f}") for m in MEASURES) + " |")
        for m in MEASURES:
            if rho.get(m) is not None and not math.isnan(rho[m]):
                per[m].append(rho[m])
    out = ["| model | dataset | blocks | " + " | ".join(f"ρ {m}" for m in MEASURES) + " | "
           + " | ".join(f"s {m}" for m in MEASURES) + " |",
           "|---|---|---|" + "---|" * (2 * len(MEASURES))]
    out += rows
    if rows:
        out.append("| **mean** | | | " + " | ".join(_f(sum(v) / len(v) if v else None, "**{:+.2f}**") for m, v in per.items())
                   + " |" + " |" * len(MEASURES))
        means = {m: sum(v) / len(v) for m, v in per.items() if v}
        best = max(means, key=means.get)
        sys.path.insert(0, os.path.join(HERE, "..", ".."))
        from compress.criteria.dominance import DEFAULT_MEASURE

        out.append(f"\nThe rule for the `dominance` default: the measure with the highest mean ρ over every pair "
                   f"above ({len(rows)} pairs): **{best}** ({means[best]:+.2f}; "
                   + ", ".join(f"{m} {means[m]:+.2f}" for m in sorted(means, key=means.get, reverse=True) if m != best)
                   + f"). The criterion's default (`compress.criteria.dominance.DEFAULT_MEASURE`): **{DEFAULT_MEASURE}**"
                   + ("." if DEFAULT_MEASURE == best else " (DIFFERS from the rule: update it).")
                   + " Measure(s) the dominance cells below used: "
                   + ", ".join(sorted({str(r.get("measure")) for r in last.values() if r.get("select") == "dominance"}))
                   + ".")
    return "\n".join(out)


def cells_table(last):
    out = ["| model | dataset | method | select | removed | blocks kept | MSE | MAE | params kept | FLOPs ÷ | speedup (range) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {"zero-shot": 0, "finetune": 1, "prune": 2, "prune-then-finetune": 3}
    keyf = lambda kv: (kv[0][0], kv[0][1], str(kv[0][4]), str(kv[0][5]), str(kv[0][3]), order.get(kv[0][2], 9))  # noqa: E731
    for key, r in sorted(last.items(), key=keyf):
        if r["method"] == "block-scores":
            continue
        if r.get("error"):
            out.append(f"| {r['model']} | {r['dataset']} | {r['method']} | {r.get('select') or ''} | "
                       f"{r.get('ratio')} | error: {r['error'][:50]} | | | | | |")
            continue
        removed = "auto" if r.get("keep") == "auto" else f"{r.get('ratio', 0):.0%}"
        kept = f"{r.get('blocks_after')}/{r.get('blocks_before')}"
        rng = r.get("speedup_range") or [float("nan")] * 2
        method = r["method"] + (f" ({key[6]})" if key[6] not in (None, "full") else "")
        out.append(f"| {r['model']} | {r['dataset']} | {method} | {r.get('select') or ''} | {removed} | {kept} | "
                   f"{_f(r['mse'])} | {_f(r['mae'])} | {r['params'] / r['params_base']:.0%} | "
                   f"{_f(r.get('flops_reduction'), '{:.2f}x')} | {_f(r['speedup'], '{:.2f}x')} "
                   f"({_f(rng[0], '{:.2f}')}–{_f(rng[1], '{:.2f}')}) |")
    return "\n".join(out)


def claim_table(last):
    """Per (model, dataset): the realigned cells keeping <= 30 % of the blocks vs the fine-tuned full model."""
    out = ["| model | dataset | fine-tuned full MSE | best realigned cell keeping ≤ 30 % | its MSE | Δ MSE | speedup | claim |",
           "|---|---|---|---|---|---|---|---|"]
    pairs = sorted({(k[0], k[1]) for k in last})
    for m, d in pairs:
        ft = last.get((m, d, "finetune", None, 0.0, None, None))
        cands = [r for k, r in last.items() if k[0] == m and k[1] == d and k[6] == "full"
                 and not r.get("error") and r["blocks_after"] <= CLAIM_KEEP * r["blocks_before"] + 1e-9]
        if ft is None or ft.get("error"):
            continue
        if not cands:
            out.append(f"| {m} | {d} | {_f(ft['mse'])} | none (no realigned cell keeps ≤ 30 %) | | | | not tested |")
            continue
        best = min(cands, key=lambda r: r["mse"])
        delta = best["mse"] / ft["mse"] - 1
        holds = delta <= CLAIM_MSE and best["speedup"] >= CLAIM_SPEEDUP
        what = f"{best['select']} {'auto' if best.get('keep') == 'auto' else format(best['ratio'], '.0%')} " \
               f"({best['blocks_after']}/{best['blocks_before']})"
        out.append(f"| {m} | {d} | {_f(ft['mse'])} | {what} | {_f(best['mse'])} | {delta:+.1%} | "
                   f"{best['speedup']:.2f}x | {'holds' if holds else 'does not hold'} |")
    return "\n".join(out)


def lora_table(last, paired):
    """LoRA realignment (adapters merged) next to the full realignment of the same pruned model.

    `paired`: the records of the realign/ folder (both realignments, one process); `last`: the
    main records (the pruned model before realignment, the fine-tuned unpruned model at BASE_LR;
    at another rate it is looked up in `paired`)."""
    out = ["| model | dataset | removed | blocks kept | lr | MSE before | full: MSE | LoRA: MSE | full: trainable | "
           "LoRA: trainable | full: train s | LoRA: train s | fine-tuned unpruned MSE (same lr) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, r in sorted(paired.items(), key=lambda kv: str(kv[0])):
        if not (k[6] or "").startswith("lora") or r.get("error"):
            continue
        full = paired.get(k[:6] + (k[6].replace("lora", "full", 1),))
        before = last.get((k[0], k[1], "prune", k[3], k[4], k[5], None))
        lr = r["realign"]["lr"]
        ft_key = (k[0], k[1], "finetune", None, 0.0, None, ("full" + _at(lr)) if _at(lr) else None)
        ft = paired.get(ft_key) or last.get(ft_key)  # the unpruned model fine-tuned at the same rate
        removed = "auto" if r.get("keep") == "auto" else f"{r.get('ratio', 0):.0%}"
        f = full or {}
        out.append(f"| {k[0]} | {k[1]} | {removed} | {r['blocks_after']}/{r['blocks_before']} | "
                   f"{r['realign']['lr']:g} | {_f(before and before.get('mse'))} | {_f(f.get('mse'))} | "
                   f"{_f(r['mse'])} | {_f(f.get('trainable_params'), '{:,}')} | {_f(r.get('trainable_params'), '{:,}')} | "
                   f"{_f(f.get('train_seconds'), '{:.1f}')} | {_f(r.get('train_seconds'), '{:.1f}')} | "
                   f"{_f(ft and ft.get('mse'))} |")
    if len(out) == 2:
        return ""
    commands = sorted({r["command"] for r in paired.values() if r.get("command")})
    return "\n".join(out) + "\n\n" + "\n".join(f"    {c}" for c in commands)


def report(path=DEFAULT):
    last = load(path)
    commands = sorted({r["command"] for r in last.values() if r.get("command")})
    print("# Depth pruning by layer dominance (issue 10)\n")
    print("Made by `python benchmarks/depth/report.py benchmarks/results/depth > benchmarks/results/depth/report.md`"
          " from the records of:\n")
    print("\n".join(f"    {c}" for c in commands) + "\n")
    print("### Which measure predicts the real removal loss (Spearman ρ per model; s = seconds to score)\n")
    print(spearman_table(last))
    print("\n### The claim: keep ≤ 30 % of the blocks, within 2 % of the fine-tuned full model's MSE, ≥ 2x faster\n")
    print(claim_table(last))
    realign_dir = os.path.join(path, "realign") if os.path.isdir(path) else None
    lt = lora_table(last, load(realign_dir)) if realign_dir and os.path.isdir(realign_dir) else ""
    if lt:
        print("\n### Realignment: full fine-tune vs LoRA, same pruned model and budget (test MSE)\n")
        print(lt)
        notes = os.path.join(realign_dir, "README.md")
        if os.path.exists(notes):  # the hand-written reading of that table
            print("\n" + open(notes).read().strip())
    print("\n### Every cell\n")
    print(cells_table(last))


def plot(path=DEFAULT, out=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = load(path)
    recs = [r for k, r in sorted(last.items()) if r["method"] == "block-scores"]
    if not recs:
        print("no block-scores records")
        return
    n = len(recs)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.4 * rows), squeeze=False,
                             layout="constrained")
    for ax, r in zip(axes.flat, recs):
        x = list(range(len(r["blocks"])))

        def norm(v):
            top = max(abs(t) for t in v) or 1.0
            return [t / top for t in v]

        for m in MEASURES:
            ax.plot(x, norm(r["scores"][m]), marker="o", ms=3, lw=1,
                    label=f"{m} (ρ={r['spearman'][m]:+.2f})")
        ax.bar(x, norm(r["real_val_increase"]), color="0.8", label="real removal Δ val MSE", zorder=0)
        ax.set_title(f"{r['model']} · {r['dataset']}", fontsize=9)
        ax.set_xlabel("block (stack order)", fontsize=8)
        ax.set_ylabel("score / max", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    out = out or os.path.join(path if os.path.isdir(path) else os.path.dirname(path), "block_scores.png")
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--plot"]
    target = args[0] if args else DEFAULT
    (plot if "--plot" in sys.argv else report)(target)
