"""Run and report a comparison grid with the benchmark harness (the API behind `compress-bench`).

    python examples/grid.py [--quick] [--out runs/example_grid]

The grid: the shipped TTM r2 (zero-shot) and a small classic Transformer trained here for
one short epoch, on ETTh1, horizon 96, pruned structurally by magnitude and taylor at 20%
and 50% (11 cells;
--quick: a tiny random Transformer, 2 cells).
Records go to OUT/results.jsonl (resumable: run it again and done cells are skipped), the
report with plots to OUT/report.md, and the table is printed. Each cell's speedup is the
unpruned and the pruned model timed in alternating rounds in the same process.
"""
import argparse
import os

from benchmarks.config import parse_config
from benchmarks.report import cell_table, load_records, write_report
from benchmarks.runner import run

GRID = {
    "name": "example_grid", "datasets": ["ETTh1"], "horizons": [96],
    "eval": {"test_stride": 32, "calibration_batches": 2, "latency_repeats": 6},
    "models": {"ttm": {"size": "small"},
               "transformer": {"config": {"d_model": 64, "n_heads": 4, "d_ff": 128},
                               "train": {"epochs": 1, "max_train_batches": 60, "max_val_batches": 5}}},
    "grid": [{"criteria": ["magnitude", "taylor"], "strategies": ["structured"], "ratios": [0.2, 0.5]}],
}
QUICK = {
    "name": "example_grid_quick", "datasets": ["ETTh1"], "horizons": [8],
    "eval": {"test_stride": 64, "test_limit": 1, "calibration_batches": 1, "latency_repeats": 3},
    "models": {"transformer": {"size": "tiny"}},
    "grid": [{"criteria": ["taylor"], "strategies": ["structured"], "ratios": [0.5]}],
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a 2-cell tiny grid that runs in seconds")
    p.add_argument("--out", default=os.path.join("runs", "example_grid"), help="output directory")
    a = p.parse_args()
    quick = a.quick or os.environ.get("COMPRESS_EXAMPLES_QUICK") == "1"
    config = parse_config(QUICK if quick else GRID)
    results = os.path.join(a.out, "results.jsonl")
    run(config, results, command="python examples/grid.py" + (" --quick" if quick else ""))
    report = write_report([results], a.out, title="Example grid")
    print(cell_table(load_records([results])))
    print(f"\nreport: {report}")


if __name__ == "__main__":
    main()
