"""The benchmark CLI: help for every flag, the `compress-bench` console script, honest method labels."""
import json
import os
import subprocess
import sys

import pytest

from benchmarks.__main__ import build_parser, main
from benchmarks.config import parse_config
from benchmarks.report import CELL_TABLE_COLUMNS, cell_table
from benchmarks.runner import read_results, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _subparsers():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "cmd"]
    return sub.choices


@pytest.mark.parametrize("command", ["run", "report", "quick"])
def test_when_asking_for_help_then_every_flag_has_a_description_its_values_and_its_default(command):
    parser = _subparsers()[command]
    actions = [a for a in parser._actions if a.dest != "help"]
    assert actions
    formatter = parser._get_formatter()
    for a in actions:
        assert a.help and len(a.help) > 15, f"{command} {a.option_strings or a.dest}: no description"
        shown = formatter._get_help_string(a) % {"default": a.default, "prog": "x"}
        assert "default" in shown or "required" in shown, f"{command} {a.option_strings}: default not said"
        if a.choices:
            for choice in a.choices:
                assert str(choice) in shown or str(choice) in str(a.metavar or a.choices), (a.option_strings, choice)
    text = parser.format_help()
    assert "(default: None)" not in text  # a None default is explained in words, not printed as None


def test_when_a_flag_combination_is_wrong_then_the_cli_says_so(tmp_path, capsys):
    out = str(tmp_path / "r.jsonl")
    assert main(["run", "--config", "x.toml", "--out", out, "--address", "auto"]) == 2
    assert "--executor ray" in capsys.readouterr().err
    assert main(["run", "--config", "x.toml", "--out", out, "--workers", "0"]) == 2


def test_when_the_package_is_installed_then_compress_bench_runs_from_any_directory(tmp_path):
    target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), ROOT], check=True, capture_output=True, timeout=300)
    script = target / "bin" / "compress-bench"
    env = {**os.environ, "PYTHONPATH": str(target)}
    help_text = subprocess.run([str(script), "quick", "--help"], cwd=elsewhere, env=env, capture_output=True,
                               text=True, timeout=120)
    assert help_text.returncode == 0 and "--workers" in help_text.stdout
    assert str(target) in help_text.stdout.replace("\n", "").replace(" ", "")  # the installed quick.toml
    done = subprocess.run([str(script), "run", "--model", "transformer", "--size", "tiny", "--dataset", "ETTh1",
                           "--horizon", "8", "--ratio", "0.5", "--test-stride", "64", "--test-limit", "1",
                           "--out", "r.jsonl"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (rec,) = read_results(str(elsewhere / "r.jsonl"))
    assert rec["error"] is None and rec["command"].startswith("python -m benchmarks run")
    assert rec["commit"] is None or isinstance(rec["commit"], str)


TINY_EVAL = {"test_stride": 64, "test_limit": 1, "batch_size": 16, "calibration_batches": 1,
             "calibration_batch_size": 4, "latency_batch_size": 2, "latency_repeats": 2}


def test_when_a_classic_model_is_trained_in_the_run_then_its_baseline_is_not_called_zero_shot(tmp_path):
    cfg = parse_config({"models": {"transformer": {"size": "tiny", "train": {"epochs": 1, "max_train_batches": 2,
                                                                              "max_val_batches": 1}},
                                   "informer": {"size": "tiny"}},
                        "datasets": ["ETTh1"], "horizons": [8], "eval": TINY_EVAL,
                        "grid": [{"criteria": ["magnitude"], "ratios": [0.5]}]})
    records = run(cfg, str(tmp_path / "r.jsonl"), log=lambda m: None)
    methods = [(r["model"], r["weights"], r["method"]) for r in records]
    assert methods == [("transformer", "trained", "trained baseline"), ("transformer", "trained", "prune"),
                       ("informer", "untrained", "untrained (random init)"),
                       ("informer", "untrained", "prune (untrained model)")]

    # The table keeps the config's model order (headline first) and has the README's columns.
    table = cell_table(records).splitlines()
    assert [c.strip() for c in table[0].strip("|").split("|")] == list(CELL_TABLE_COLUMNS)
    models = [line.strip("|").split("|")[0].strip() for line in table[2:]]
    assert models == ["transformer", "transformer", "informer", "informer"]
    for word in ("params", "density", "FLOPs", "speedup", "MSE", "MAE"):
        assert any(word in c for c in CELL_TABLE_COLUMNS)


def test_when_reading_the_readme_then_the_quick_jobs_columns_are_the_tables_columns():
    readme = open(os.path.join(ROOT, "README.md")).read()
    start = readme.index("The main job (`benchmarks/configs/quick.toml`")
    para = readme[start:readme.index("\n\n", start)]
    named = para[para.index("columns ") + len("columns "):].split(")")[0].split("(")[1]
    assert [c.strip() for c in named.split(",")] == list(CELL_TABLE_COLUMNS)
