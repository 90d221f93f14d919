"""Command line of the harness.

    python -m benchmarks run --config FILE --out RESULTS.jsonl
    python -m benchmarks run --model M --dataset D --horizon H --criterion C --strategy S
                             --ratio R [--size tiny] [--finetune-epochs N] --out RESULTS.jsonl
    python -m benchmarks report RESULTS.jsonl... --out DIR
    python -m benchmarks quick [--out runs/quick] [--fresh]

`run` appends to RESULTS (cells already there without an error are skipped) and exits 1
when a cell of this call failed; `quick` runs `benchmarks/configs/quick.toml`, prints the
table and writes the report into runs/quick/.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
QUICK_CONFIG = os.path.join(HERE, "configs", "quick.toml")


def _command(argv) -> str:
    return shlex.join(["python", "-m", "benchmarks", *argv])


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _single_cell_config(a):
    from .config import BASELINE, Cell, Config, EvalSettings, FinetuneSettings, ModelSpec

    if not 0 <= a.ratio < 1:
        raise SystemExit(f"error: --ratio {a.ratio} must be in [0, 1)")
    overrides = {}
    for item in a.set or []:
        if "=" not in item:
            raise SystemExit(f"error: --set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k] = _value(v)
    ev = EvalSettings(test_stride=a.test_stride, test_limit=a.test_limit, threads=a.threads)
    ft = FinetuneSettings()
    finetune = bool(a.finetune_epochs)
    if finetune:
        ft.epochs = a.finetune_epochs
    crit, strat = (a.criterion, a.strategy) if a.ratio > 0 else BASELINE
    cell = Cell(a.model, a.dataset, a.horizon, crit, strat, round(a.ratio, 6), finetune)
    spec = ModelSpec(name=a.model, family=a.model, size=a.size, pretrained=a.pretrained, checkpoint=a.checkpoint,
                     config=overrides)
    return Config(name="cli", models={a.model: spec}, cells=[cell], eval=ev, finetune=ft, seed=a.seed)


def cmd_run(a, argv) -> int:
    from .config import ConfigError, load_config
    from .runner import run

    if a.config:
        try:
            cfg = load_config(a.config)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    else:
        missing = [n for n in ("model", "dataset", "horizon") if getattr(a, n) is None]
        if missing:
            print(f"error: give --config FILE, or a single cell with --{' --'.join(missing)} (and --criterion, "
                  "--strategy, --ratio)", file=sys.stderr)
            return 2
        cfg = _single_cell_config(a)
    t0 = time.time()
    records = run(cfg, a.out, command=_command(argv))
    failed = [r for r in records if r.get("error")]
    print(f"{len(records)} cell(s) run, {len(failed)} failed, {time.time() - t0:.0f} s; results in {a.out}",
          file=sys.stderr)
    return 1 if failed else 0


def cmd_report(a, argv) -> int:
    from .report import write_report

    try:
        path = write_report(a.results, a.out, title=a.title, notes=a.notes)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


def cmd_quick(a, argv) -> int:
    from .config import load_config
    from .report import cell_table, load_records, write_report
    from .runner import run

    results = os.path.join(a.out, "results.jsonl")
    if a.fresh:  # a new results file and no cached trained models: the full cost, end to end
        import shutil

        if os.path.exists(results):
            os.remove(results)
        shutil.rmtree(os.path.join(a.out, "checkpoints"), ignore_errors=True)
    t0 = time.time()
    cfg = load_config(a.config)
    run(cfg, results, command=_command(argv))
    write_report([results], a.out, title="Quick comparison: TTM and two classic models on ETTh1")
    print(cell_table(load_records([results])))
    print(f"\nreport: {os.path.join(a.out, 'report.md')} ({time.time() - t0:.0f} s)")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run a config's grid, or one cell")
    r.add_argument("--config", help="experiment file (.toml or .json)")
    r.add_argument("--out", required=True, help="JSONL results file (appended to; resumes)")
    r.add_argument("--model", help="model family (compress.models.available())")
    r.add_argument("--dataset", help="dataset name or CSV path (compress.data.load)")
    r.add_argument("--horizon", type=int)
    r.add_argument("--criterion", default="magnitude")
    r.add_argument("--strategy", default="structured", choices=["structured", "unstructured"])
    r.add_argument("--ratio", type=float, default=0.0)
    r.add_argument("--size", default="small")
    r.add_argument("--pretrained", help="local pretrained weights of the family")
    r.add_argument("--checkpoint", help=".pt state_dict with its build config in the .json beside it")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="model build override (repeatable)")
    r.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune after pruning for N epochs")
    r.add_argument("--test-stride", type=int, default=8)
    r.add_argument("--test-limit", type=int, default=0, help="at most this many test batches (0: all)")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--seed", type=int, default=0)

    rep = sub.add_parser("report", help="write report.md and PNGs from results files")
    rep.add_argument("results", nargs="+")
    rep.add_argument("--out", required=True, help="output directory")
    rep.add_argument("--title")
    rep.add_argument("--notes", help="markdown file inserted into the report (discussion)")

    q = sub.add_parser("quick", help="the quick comparison (TTM + two classic models on ETTh1)")
    q.add_argument("--out", default=os.path.join("runs", "quick"))
    q.add_argument("--config", default=QUICK_CONFIG)
    q.add_argument("--fresh", action="store_true", help="start afresh: new results file, retrain the classic models")

    a = p.parse_args(argv)
    return {"run": cmd_run, "report": cmd_report, "quick": cmd_quick}[a.cmd](a, argv)


if __name__ == "__main__":
    sys.exit(main())
