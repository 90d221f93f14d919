"""Command line of the harness.

    python -m benchmarks run --config FILE --out RESULTS.jsonl
    python -m benchmarks run --model M --dataset D --horizon H --criterion C --strategy S
                             --ratio R [--size tiny] [--finetune-epochs N] --out RESULTS.jsonl
    python -m benchmarks report RESULTS.jsonl... --out DIR
    python -m benchmarks quick [--out runs/quick] [--fresh]
    ... [--workers N] [--executor serial|process|ray] [--address RAY_ADDRESS] [--retries N]

`compress-bench` (installed with the package) is the same command, from any directory.

`run` appends to RESULTS (cells already there without an error, with the same definition,
are skipped) and exits 1 when a cell of this call failed; `quick` runs
`benchmarks/configs/quick.toml`, prints the table and writes the report into runs/quick/.
Both exit 2, before any cell runs, on a config with problems (all of them listed in one
message) or an unusable --out.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from typing import List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
QUICK_CONFIG = os.path.join(HERE, "configs", "quick.toml")


def _command(argv) -> str:
    return shlex.join(["python", "-m", "benchmarks", *argv])


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


#: How the single-cell flags are named in the messages of `benchmarks.validate.check_config`.
_FLAG_LABELS = {"family": "--model", "config": "--set", "checkpoint": "--checkpoint", "datasets": "--dataset",
                "horizons": "--horizon", "criteria": "--criterion", "strategies": "--strategy", "ratios": "--ratio",
                "eval": "--{field} {value}", "finetune": "--finetune-epochs", "seed": "--seed"}


def _single_cell_config(a):
    """The one-cell `Config` the flags describe; raises `ConfigError` listing every bad flag."""
    from .config import BASELINE, Cell, Config, ConfigError, EvalSettings, FinetuneSettings, ModelSpec
    from .validate import check_config

    problems = []
    overrides = {}
    for item in a.set or []:
        if "=" not in item:
            problems.append(f"--set expects KEY=VALUE, got {item!r}")
            continue
        k, v = item.split("=", 1)
        overrides[k] = _value(v)
    if a.finetune_epochs < 0:
        problems.append(f"--finetune-epochs {a.finetune_epochs} must be >= 0 (0: no fine-tuning)")
    ev = EvalSettings(test_stride=a.test_stride, test_limit=a.test_limit, threads=a.threads)
    ft = FinetuneSettings()
    finetune = a.finetune_epochs > 0
    if finetune:
        ft.epochs = a.finetune_epochs
    crit, strat = (a.criterion, a.strategy) if a.ratio > 0 else BASELINE
    cell = Cell(a.model, a.dataset, a.horizon, crit, strat, round(a.ratio, 6), finetune)
    spec = ModelSpec(name=a.model, family=a.model, size=a.size, pretrained=a.pretrained, checkpoint=a.checkpoint,
                     config=overrides)
    cfg = Config(name="cli", models={a.model: spec}, cells=[cell], eval=ev, finetune=ft, seed=a.seed)
    problems += [p.replace("--test_stride", "--test-stride").replace("--test_limit", "--test-limit")
                 for p in check_config(cfg, labels=_FLAG_LABELS)]
    if problems:
        raise ConfigError.of("run", problems)
    return cfg


def _parallel(a) -> dict:
    return dict(workers=a.workers, executor=a.executor, address=a.address, retries=a.retries)


def _fail(e: Exception) -> int:
    print(f"error: {e}", file=sys.stderr)
    return 2


def cmd_run(a, argv) -> int:
    from .config import ConfigError, load_config
    from .results import ResultsError, check_out
    from .runner import run

    try:
        if a.config:
            cfg = load_config(a.config)
        else:
            missing = [n for n in ("model", "dataset", "horizon") if getattr(a, n) is None]
            if missing:
                return _fail(f"give --config FILE, or a single cell with --{' --'.join(missing)} (and --criterion, "
                             "--strategy, --ratio)")
            cfg = _single_cell_config(a)
        check_out(a.out)
        t0 = time.time()
        records = run(cfg, a.out, command=_command(argv), **_parallel(a))
    except (ConfigError, ResultsError) as e:  # raised before any cell runs
        return _fail(e)
    failed = [r for r in records if r.get("error")]
    print(f"{len(records)} cell(s) run, {len(failed)} failed, {time.time() - t0:.0f} s; results in {a.out}",
          file=sys.stderr)
    return 1 if failed else 0


def cmd_report(a, argv) -> int:
    from .report import write_report
    from .results import ResultsError

    try:
        path = write_report(a.results, a.out, title=a.title, notes=a.notes)
    except (FileNotFoundError, ResultsError) as e:
        return _fail(e)
    print(path)
    return 0


def cmd_quick(a, argv) -> int:
    from .config import ConfigError, load_config
    from .report import cell_table, load_records, write_report
    from .results import ResultsError, check_out
    from .runner import run

    results = os.path.join(a.out, "results.jsonl")
    try:  # everything that can be wrong with the call, before anything is deleted or run
        cfg = load_config(a.config)
        if os.path.exists(a.out) and not os.path.isdir(a.out):
            raise ResultsError(f"--out {a.out} is a file; quick's --out is a directory (results.jsonl, report.md "
                               "and the plots go inside it)")
        check_out(results, flag="results file")
    except (ConfigError, ResultsError) as e:
        return _fail(e)
    if a.fresh:  # a new results file and no cached trained models: the full cost, end to end
        import shutil

        if os.path.exists(results):
            os.remove(results)
        shutil.rmtree(os.path.join(a.out, "checkpoints"), ignore_errors=True)
    t0 = time.time()
    try:
        run(cfg, results, command=_command(argv), **_parallel(a))
    except (ConfigError, ResultsError) as e:
        return _fail(e)
    write_report([results], a.out, title="Quick comparison: TTM and two classic models on ETTh1")
    print(cell_table(load_records([results])))
    print(f"\nreport: {os.path.join(a.out, 'report.md')} ({time.time() - t0:.0f} s)")
    return 0


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the docstring's layout and appends "(default: ...)" to every flag's help that does
    not already say its default (or that it is required)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or "required" in text:
            return text
        return super()._get_help_string(action)


def _names() -> Tuple[List[str], List[str], List[str]]:
    """Registered criteria, model families and the strategies a cell can use (help texts, choices)."""
    import compress

    from .validate import harness_strategies

    return (list(compress.criteria.available()), [str(f) for f in compress.models.available()],
            harness_strategies())


def build_parser() -> argparse.ArgumentParser:
    """The CLI's parser (`compress-bench` or `python -m benchmarks`): every flag has help, values, default."""
    from .parallel import EXECUTORS

    criteria, families, strategies = _names()
    p = argparse.ArgumentParser(prog="compress-bench", description=__doc__, formatter_class=_Help)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{run,report,quick}")

    r = sub.add_parser("run", help="run a config's grid, or one cell", formatter_class=_Help,
                       description="Run every cell of --config (or the one cell the flags describe), appending "
                                   "one JSON line per cell to --out; cells already there without an error are skipped.")
    r.add_argument("--config", metavar="FILE", default=None,
                   help="experiment file (.toml or .json, see benchmarks/config.py); without it the flags below "
                        "describe a single cell (default: none)")
    r.add_argument("--out", required=True, metavar="RESULTS.jsonl",
                   help="JSONL results file, created or appended to (resumes: done cells are skipped); required")
    r.add_argument("--model", metavar="FAMILY", default=None,
                   help=f"single cell: model family (required without --config), one of {', '.join(families)}")
    r.add_argument("--dataset", metavar="NAME|CSV", default=None,
                   help="single cell: dataset name (ETTh1 ships; others via compress.data) or a CSV path (required without --config)")
    r.add_argument("--horizon", type=int, metavar="H", default=None,
                   help="single cell: forecast horizon in steps (a positive integer, required without --config)")
    r.add_argument("--criterion", default="magnitude", choices=criteria, metavar="CRITERION",
                   help=f"single cell: pruning criterion, one of {', '.join(criteria)}")
    r.add_argument("--strategy", default="structured", choices=strategies,
                   help="single cell: structured (removes channels/heads), unstructured (zeros weights), "
                        "layers (removes whole blocks; with the dominance criterion)")
    r.add_argument("--ratio", type=float, default=0.0, metavar="R",
                   help="single cell: fraction to prune, in [0, 1); 0 is the unpruned baseline")
    r.add_argument("--size", default="small", metavar="SIZE",
                   help="single cell: family size preset, e.g. small (pretrained for the TSFMs) or tiny (tests)")
    r.add_argument("--pretrained", metavar="DIR", default=None,
                   help="single cell: local pretrained weights of the family (default: the family's own, if it ships any)")
    r.add_argument("--checkpoint", metavar="FILE.pt", default=None,
                   help="single cell: .pt state_dict with its build config in the .json beside it (default: none, build or train the model)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", default=None,
                   help="single cell: model build override, VALUE parsed as JSON (repeatable; default: none)")
    r.add_argument("--finetune-epochs", type=int, default=0, metavar="N",
                   help="single cell: fine-tune after pruning for N epochs (0: no fine-tuning)")
    r.add_argument("--test-stride", type=int, default=8, metavar="N",
                   help="single cell: step between test windows (>= 1; larger is faster)")
    r.add_argument("--test-limit", type=int, default=0, metavar="N",
                   help="single cell: at most this many test batches (0: all)")
    r.add_argument("--threads", type=int, default=1, metavar="N",
                   help="single cell: torch threads for the run and the timing (>= 1)")
    r.add_argument("--seed", type=int, default=0, metavar="N", help="single cell: random seed (an integer)")
    _parallel_flags(r, EXECUTORS)

    rep = sub.add_parser("report", help="write report.md and PNGs from results files", formatter_class=_Help,
                         description="Rebuild a report from results files only (nothing is re-run).")
    rep.add_argument("results", nargs="+", metavar="RESULTS.jsonl",
                     help="one or more JSONL results files written by `run` (required)")
    rep.add_argument("--out", required=True, metavar="DIR", help="output directory for report.md and the PNGs (required)")
    rep.add_argument("--title", default=None, metavar="TEXT",
                     help="the report's heading (default: 'Benchmark report')")
    rep.add_argument("--notes", default=None, metavar="FILE.md",
                     help="markdown file inserted into the report (discussion; default: none)")

    q = sub.add_parser("quick", help="the quick comparison (TTM + two classic models on ETTh1)", formatter_class=_Help,
                       description="Run benchmarks/configs/quick.toml, print its table, write runs/quick/report.md "
                                   "(about 3 minutes on 2 CPU cores, see README).")
    q.add_argument("--out", default=os.path.join("runs", "quick"), metavar="DIR",
                   help="output directory: results.jsonl, report.md, plots, trained-model cache")
    q.add_argument("--config", default=QUICK_CONFIG, metavar="FILE", help="the experiment file to run")
    q.add_argument("--fresh", action="store_true",
                   help="start afresh: new results file, retrain the classic models (default: off, resume)")
    _parallel_flags(q, EXECUTORS)
    return p


def _parallel_flags(parser, executors) -> None:
    g = parser.add_argument_group("parallel grids (see README, 'Grids that outgrow one machine')")
    g.add_argument("--workers", type=int, default=1, metavar="N",
                   help="cells run at once: worker processes (process executor) or CPUs of a local Ray instance; "
                        "N > 1 without --executor uses the process executor")
    g.add_argument("--executor", default=None, choices=list(executors),
                   help="where cells run: serial (this process), process (a local pool of --workers) or ray "
                        "(a local Ray instance, or the cluster at --address); default: serial for --workers 1, "
                        "else process")
    g.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster to join (auto, or ray://HEAD:10001); default: none, start a local instance")
    g.add_argument("--retries", type=int, default=1, metavar="N",
                   help="times a cell whose worker died is retried before it is recorded as failed (>= 0)")


def _check_parallel(a) -> Optional[str]:
    if a.workers < 1:
        return f"--workers {a.workers} must be >= 1"
    if a.retries < 0:
        return f"--retries {a.retries} must be >= 0"
    if a.address and a.executor != "ray":
        return "--address is the Ray cluster to join: give it with --executor ray"
    if a.executor == "serial" and a.workers > 1:
        return "--executor serial runs one cell at a time: drop --workers or use --executor process/ray"
    return None


def main(argv=None) -> int:
    """Entry point of `compress-bench` and `python -m benchmarks`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    a = build_parser().parse_args(argv)
    if a.cmd in ("run", "quick"):
        problem = _check_parallel(a)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    return {"run": cmd_run, "report": cmd_report, "quick": cmd_quick}[a.cmd](a, argv)


if __name__ == "__main__":
    sys.exit(main())
