"""Reports from results files only: markdown tables (tabulate) and PNG plots (matplotlib).

Why results-only: a report can be rebuilt, restyled or merged across machines without
re-running anything, and every number in it traces back to a record that carries the
command that made it.

Writes ``DIR/report.md`` and

* ``accuracy_vs_density.png``: test MSE against non-zero parameters relative to the
  unpruned model, one panel per model, one line per criterion/strategy, fine-tuned cells
  as stars, the unpruned model as a dashed line;
* ``speedup_vs_flops.png``: measured latency speedup against FLOPs reduction for the
  structured cells, with the y = x line that a FLOP count implicitly promises.
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Optional, Sequence

from .config import BASELINE, cell_key
from .runner import read_results

__all__ = ["load_records", "write_report", "cell_table", "CELL_TABLE_COLUMNS"]


def load_records(paths: Sequence[str]) -> List[Dict[str, Any]]:
    """Records of all `paths`, one per cell: the last error-free one, else the last error.

    A record whose cell definition (model, training, evaluation settings; see
    `benchmarks.config.cell_definition`) differs from an earlier one's supersedes it, error
    or not: a cell re-run after its config changed is reported as it is now, never by the
    stale record.
    """
    best: "OrderedDict[tuple, Dict[str, Any]]" = OrderedDict()
    for p in paths:
        if not os.path.exists(p):
            raise FileNotFoundError(f"results file {p!r} does not exist")
        for r in read_results(p):
            k = cell_key(r)
            old = best.get(k)
            redefined = (old is not None and isinstance(r.get("definition"), dict)
                         and isinstance(old.get("definition"), dict) and r["definition"] != old["definition"])
            if old is None or redefined or not r.get("error") or old.get("error"):
                best[k] = r
    return list(best.values())


def _is_base(r) -> bool:
    return (r.get("criterion"), r.get("strategy")) == BASELINE and not r.get("ratio")


def _f(x, fmt=".4f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, fmt)


def _delta(x, base) -> str:
    if x is None or not base:
        return "-"
    return f"{(x / base - 1) * 100:+.1f}%"


def _sorter(records):
    """Sort key: models in the order they first appear (the config's order: the headline model
    first), then dataset, horizon, the baseline first, strategy, criterion, fine-tuned, ratio."""
    rank = {m: i for i, m in enumerate(OrderedDict.fromkeys(r.get("model") for r in records))}
    return lambda r: (rank.get(r.get("model"), len(rank)), str(r.get("dataset")), r.get("horizon") or 0,
                      not _is_base(r), str(r.get("strategy")), str(r.get("criterion")), bool(r.get("finetuned")),
                      r.get("ratio") or 0)


def cell_table(records: Iterable[Dict[str, Any]], tablefmt: str = "github") -> str:
    """One row per successful cell: the compact table `python -m benchmarks quick` prints."""
    from tabulate import tabulate

    rows = []
    records = list(records)
    for r in sorted((r for r in records if not r.get("error")), key=_sorter(records)):
        rows.append([r["model"], r["dataset"], r["horizon"], "-" if _is_base(r) else r["criterion"],
                     "-" if _is_base(r) else r["strategy"], _f(r["ratio"], ".3f"), r["method"], _params(r.get("params")),
                     _f(r.get("density"), ".3f"), _f(r.get("relative_size"), ".3f"), _f(r.get("flops_reduction"), ".2f"),
                     _f(r.get("speedup"), ".2f"), _f(r.get("mse")), _delta(r.get("mse"), r.get("baseline_mse")),
                     _f(r.get("mae"))])
    return tabulate(rows, headers=list(CELL_TABLE_COLUMNS), tablefmt=tablefmt)


#: The columns of `cell_table` (the quick job's table; the README names them).
CELL_TABLE_COLUMNS = ("model", "data", "H", "criterion", "strategy", "ratio", "method", "params", "density", "size",
                      "FLOPs ÷", "speedup ×", "MSE", "ΔMSE", "MAE")


def _params(n) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def write_report(paths: Sequence[str], out_dir: str, title: Optional[str] = None, notes: Optional[str] = None) -> str:
    """Write ``out_dir/report.md`` and the PNG plots from the results files `paths`.

    Args:
        paths: JSONL results files written by `benchmarks.runner.run`.
        out_dir: directory for report.md and the PNGs (created).
        title: the report's heading.
        notes: a markdown file inserted after the settings (discussion, comparison with a paper).

    Returns:
        The path of report.md.

    Example:
        >>> write_report(["runs/quick/results.jsonl"], "runs/quick")   # doctest: +SKIP
        'runs/quick/report.md'
    """
    from tabulate import tabulate

    records = load_records(paths)
    os.makedirs(out_dir, exist_ok=True)
    ok = [r for r in records if not r.get("error")]
    errors = [r for r in records if r.get("error")]
    lines = [f"# {title or 'Benchmark report'}", ""]
    commands = list(OrderedDict.fromkeys(r.get("command") for r in records if r.get("command")))
    lines += ["Made by:", "", "```bash"] + (commands or ["(no command recorded)"]) + ["```", ""]
    lines.append(f"Results: {', '.join(f'`{p}`' for p in paths)} ({len(ok)} cells, {len(errors)} errors). "
                 f"Rebuild this report with `python -m benchmarks report {' '.join(paths)} --out {out_dir}"
                 f"{' --notes ' + notes if notes else ''}`.")
    strides = sorted({r.get("test_stride") for r in ok if r.get("test_stride") is not None})
    threads = sorted({r.get("threads") for r in ok if r.get("threads") is not None})
    commits = sorted({r.get("commit") for r in records if r.get("commit")})
    lines += ["", f"Settings: test windows every {', '.join(map(str, strides)) or '?'} steps (test stride); "
              f"latency with {', '.join(map(str, threads)) or '?'} thread(s), median of repeats; the unpruned and the pruned model "
              f"timed in three alternating rounds on the same batch; commit {', '.join(commits) or '?'}.", ""]
    lines += ["Columns: *density* = non-zero parameters / all parameters of the model as it is; *size* = non-zero "
              "parameters / parameters of the unpruned model; *FLOPs ÷* = unpruned FLOPs / FLOPs (dense count: "
              "unstructured zeros save no FLOPs); *speedup ×* = unpruned latency / latency; Δ = change against the "
              "unpruned model on the same test windows; *method* says which weights were pruned: \"zero-shot\" = "
              "pretrained weights as shipped, \"trained baseline\" = trained for this benchmark, \"untrained\" = "
              "random initialisation (sizes and speed only, accuracy meaningless).", ""]

    if notes:
        with open(notes) as f:
            lines += [f.read().strip(), ""]

    # Baselines
    base_rows = [[r["model"], r.get("method"), r["dataset"], r["horizon"], r.get("context_length"), r.get("params"),
                  _f(r.get("flops", 0) / 1e6, ".1f") if r.get("flops") else "-", _f(r.get("latency_ms"), ".2f"),
                  _f(r.get("mse")), _f(r.get("mae")), r.get("n_windows")]
                 for r in sorted(ok, key=_sorter(records)) if _is_base(r) and not r.get("finetuned")]
    if base_rows:
        lines += ["## Unpruned models", "", tabulate(base_rows, headers=["model", "weights", "dataset", "H", "L", "params", "MFLOPs",
                                                                         "latency ms", "MSE", "MAE", "windows"],
                                                       tablefmt="github"), ""]

    # Per model x strategy
    groups: "OrderedDict[tuple, List[dict]]" = OrderedDict()
    for r in sorted(ok, key=_sorter(records)):
        if _is_base(r) and not r.get("finetuned"):
            continue
        groups.setdefault((r["model"], r["dataset"], r["horizon"], r["strategy"]), []).append(r)
    if groups:
        lines += ["## Pruned cells", ""]
    for (model, dataset, horizon, strategy), rs in groups.items():
        lines += [f"### {model} · {dataset} · H={horizon} · {strategy}", ""]
        rows = []
        for r in rs:
            ratio = _f(r["ratio"], ".3f")
            if r.get("effective_ratio") is not None and abs(r["effective_ratio"] - r["ratio"]) > 1e-9:
                ratio += f" (→{r['effective_ratio']:.3f})"
            rows.append([r["criterion"], r["method"], ratio, _f(r.get("density"), ".3f"), _f(r.get("relative_size"), ".3f"),
                         r.get("params"), _f(r.get("flops_reduction"), ".2f"), _f(r.get("speedup"), ".2f"),
                         _f(r.get("mse")), _delta(r.get("mse"), r.get("baseline_mse")),
                         _f(r.get("mae")), _delta(r.get("mae"), r.get("baseline_mae"))])
        lines += [tabulate(rows, headers=["criterion", "method", "ratio", "density", "size", "params", "FLOPs ÷",
                                          "speedup ×", "MSE", "ΔMSE", "MAE", "ΔMAE"], tablefmt="github"), ""]

    structured = [r for r in ok if r.get("strategy") == "structured" and r.get("flops_reduction")]
    plots = []
    if ok:
        plots.append(_plot_accuracy(ok, os.path.join(out_dir, "accuracy_vs_density.png")))
    if structured:
        plots.append(_plot_speedup(structured, os.path.join(out_dir, "speedup_vs_flops.png")))
    if plots:
        lines += ["## Plots", ""] + [f"![{os.path.splitext(p)[0]}]({p})" for p in plots] + [""]
    if errors:
        rows = [[r.get("model"), r.get("dataset"), r.get("horizon"), r.get("criterion"), r.get("strategy"),
                 _f(r.get("ratio"), ".3f"), r.get("method"), r.get("error")] for r in sorted(errors, key=_sorter(records))]
        lines += ["## Errors", "", tabulate(rows, headers=["model", "dataset", "H", "criterion", "strategy", "ratio",
                                                             "method", "error"], tablefmt="github"), ""]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_accuracy(records: List[dict], path: str) -> str:
    plt = _plt()
    panels = list(OrderedDict.fromkeys((r["model"], r["dataset"], r["horizon"]) for r in sorted(records, key=_sorter(records))))
    n = len(panels)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False,
                             layout="constrained")  # room for titles and labels: nothing clipped, no tight-layout warning
    for ax, (model, dataset, horizon) in zip(axes.flat, panels):
        rs = [r for r in records if (r["model"], r["dataset"], r["horizon"]) == (model, dataset, horizon)]
        base = [r for r in rs if _is_base(r) and not r.get("finetuned")]
        if base:
            ax.axhline(base[0]["mse"], color="grey", ls="--", lw=1, label="unpruned")
        lines = OrderedDict()
        for r in rs:
            if _is_base(r) or r.get("relative_size") is None:
                continue
            lines.setdefault((r["criterion"], r["strategy"], bool(r.get("finetuned"))), []).append(r)
        for i, ((crit, strat, ft), pts) in enumerate(lines.items()):
            pts = sorted(pts, key=lambda r: r["relative_size"])
            xs = [r["relative_size"] for r in pts]
            ys = [r["mse"] for r in pts]
            if base and not ft:  # every curve starts at the unpruned model
                xs, ys = xs + [1.0], ys + [base[0]["mse"]]
            color = f"C{list(OrderedDict.fromkeys((c, s) for c, s, _ in lines)).index((crit, strat)) % 10}"
            if ft:
                ax.scatter(xs, ys, marker="*", s=140, color=color, edgecolor="k", zorder=5,
                           label=f"{crit}/{strat} + finetune")
            else:
                ax.plot(xs, ys, marker="o" if strat == "structured" else "s", ms=4, color=color,
                        ls="-" if strat == "structured" else ":", label=f"{crit}/{strat}")
        ax.set_title(f"{model} · {dataset} · H={horizon}", fontsize=10)
        ax.set_xlabel("non-zero params / unpruned params")
        ax.set_ylabel("test MSE")
        ax.set_xlim(0, 1.05)
        ax.invert_xaxis()
        ys_all = [r["mse"] for r in rs if r.get("mse") is not None]
        if ys_all and base and max(ys_all) > 5 * base[0]["mse"]:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Accuracy vs density (lower MSE is better; right to left = more pruning)", fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return os.path.basename(path)


def _plot_speedup(records: List[dict], path: str) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 5.2), layout="constrained")
    models = list(OrderedDict.fromkeys(r["model"] for r in sorted(records, key=_sorter(records))))
    hi = max(max(r["flops_reduction"], r.get("speedup") or 0) for r in records) * 1.1
    ax.plot([1, hi], [1, hi], color="grey", ls="--", lw=1)
    ax.axhline(1, color="grey", lw=0.6)
    criteria = list(OrderedDict.fromkeys(r["criterion"] for r in records))
    markers = "osD^v<>Px*"
    for i, m in enumerate(models):
        rs = sorted((r for r in records if r["model"] == m and r.get("speedup")), key=lambda r: r["flops_reduction"])
        for crit in OrderedDict.fromkeys(r["criterion"] for r in rs):
            pts = [r for r in rs if r["criterion"] == crit]
            ax.plot([r["flops_reduction"] for r in pts], [r["speedup"] for r in pts], color=f"C{i % 10}", ls="-", lw=0.8,
                    alpha=0.85, marker=markers[criteria.index(crit) % len(markers)], ms=5)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="grey", ls="--", lw=1, label="speedup = FLOPs reduction")]
    handles += [Line2D([], [], color=f"C{i % 10}", lw=2, label=m) for i, m in enumerate(models)]
    if len(criteria) > 1:
        handles += [Line2D([], [], color="k", ls="", marker=markers[j % len(markers)], label=c) for j, c in enumerate(criteria)]
    ax.legend(handles=handles, fontsize=7)
    ax.set_xlabel("FLOPs reduction (unpruned / pruned)")
    ax.set_ylabel("measured latency speedup (unpruned / pruned)")
    ax.set_xlim(0.9, hi)
    ax.set_ylim(min(0.8, min(r["speedup"] for r in records if r.get("speedup")) * 0.95), hi)
    ax.grid(alpha=0.3)
    ax.set_title("Structured pruning: measured speedup vs FLOPs reduction", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return os.path.basename(path)
