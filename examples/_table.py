"""What every example shares: the --quick flag and one table whose latencies come from one timing.

Each example times the original and every pruned model in the same process, in alternating
rounds (`compress.measure.interleaved_latency`), so the speedup column is a ratio of two
timings taken moments apart, never of a baseline timed minutes earlier.
"""
import argparse
import os

from tabulate import tabulate

from compress.measure import interleaved_latency, measure


def quick_flag(doc: str) -> bool:
    """Parse --quick (tiny settings, seconds; also COMPRESS_EXAMPLES_QUICK=1)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny settings that run in seconds (for tests)")
    return p.parse_args().quick or os.environ.get("COMPRESS_EXAMPLES_QUICK") == "1"


def compare(models: dict, x, mse: dict = None, rounds: int = 3, repeats: int = 5) -> str:
    """A table: params, density, FLOPs, latency (interleaved) and speedup against the first model."""
    ms = interleaved_latency(models, x, rounds=rounds, repeats=repeats, threads=1)
    names = list(models)
    base = measure(models[names[0]], x, latency=False, memory=False)
    rows = []
    for name in names:
        m = base if name == names[0] else measure(models[name], x, latency=False, memory=False)
        row = [name, f"{m.params / 1e6:.3f}M", f"{m.density:.2f}", f"{base.flops / m.flops:.2f}",
               f"{ms[name][0]:.3f}", f"{ms[names[0]][0] / ms[name][0]:.2f}"]
        if mse is not None:
            row.append(f"{mse[name]:.4f}")
        rows.append(row)
    headers = ["model", "params", "density", "FLOPs ÷", "latency ms", "speedup ×"] + (["MSE"] if mse else [])
    note = (f"latency: median of {rounds} alternating rounds x {repeats} blocks, 1 thread, same batch "
            f"{tuple(x.shape)}; speedup = {names[0]} latency / latency")
    return tabulate(rows, headers=headers, tablefmt="github") + "\n" + note
