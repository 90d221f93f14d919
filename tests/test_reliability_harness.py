"""The benchmark harness refuses bad configs and paths up front, survives a crash mid-write, resumes honestly."""
import dataclasses
import json
import os

import pytest

from benchmarks.__main__ import main
from benchmarks.config import ConfigError, parse_config
from benchmarks.report import load_records
from benchmarks.results import ResultsError
from benchmarks.runner import read_results, run

TINY_EVAL = {"test_stride": 64, "test_limit": 1, "batch_size": 16, "calibration_batches": 1,
             "calibration_batch_size": 4, "latency_batch_size": 2, "latency_repeats": 2}

BAD_CONFIG = """
datasets = ["ETTh1", "ETTh7"]
horizons = [8, 0]
bogus = 1
[finetune]
epochs = 0
[models.transformer]
family = "transformr"
size = "tiny"
[[grid]]
criteria = ["magnitud"]
strategies = ["structurd"]
ratios = [0.5, 1.5]
"""
# every problem of BAD_CONFIG, each as the message says it, with the valid choice where there is one
BAD_CONFIG_PROBLEMS = ["unknown key(s) ['bogus']", "horizon 0 must be a positive integer",
                       "ratio 1.5 must be a number in [0, 1)", "[finetune] epochs = 0 must be a positive integer",
                       "unknown model family 'transformr' (did you mean 'transformer'?)",
                       "unknown dataset 'ETTh7'", "unknown criterion 'magnitud' (did you mean 'magnitude'?)",
                       "unknown strategy 'structurd' (did you mean 'structured'?)"]


def baseline_config(**model):
    """One cell: the unpruned tiny Transformer on ETTh1 (a second to run)."""
    return parse_config({"name": "t", "models": {"transformer": {"size": "tiny", **model}}, "datasets": ["ETTh1"],
                         "horizons": [8], "eval": TINY_EVAL,
                         "grid": [{"criteria": ["magnitude"], "ratios": [0.0]}]})


@pytest.mark.parametrize("command", ["run", "quick"])
def test_when_a_config_has_many_problems_then_run_and_quick_exit_2_with_all_of_them_in_one_message(
        tmp_path, capsys, command):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(BAD_CONFIG)
    out = tmp_path / ("r.jsonl" if command == "run" else "quick")
    assert main([command, "--config", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "bad.toml" in err and "nothing was run" in err
    for problem in BAD_CONFIG_PROBLEMS:
        assert problem in err, problem
    assert "magnitude" in err.split("unknown criterion")[1].split("\n")[0]  # the registered criteria are listed
    assert not out.exists()  # nothing ran, nothing was written


def test_when_a_single_cell_names_an_unknown_family_or_dataset_then_run_exits_2_before_building_anything(
        tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    argv = ["run", "--model", "transformr", "--dataset", "ETTh7", "--horizon", "8", "--ratio", "0.5", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--model: unknown model family 'transformr'" in err and "--dataset: unknown dataset 'ETTh7'" in err
    assert not out.exists()
    # a Config built in code is held to the same rules by run() itself
    cfg = baseline_config()
    cfg.models["transformer"] = dataclasses.replace(cfg.models["transformer"], config={"d_modle": 8})
    with pytest.raises(ConfigError, match="'d_modle' is not a build setting of 'transformer'.*'d_model'"):
        run(cfg, str(out), log=lambda m: None)
    assert not out.exists()


def test_when_the_last_line_was_cut_by_a_crash_then_resume_moves_it_aside_and_appends_clean_lines(tmp_path):
    out = tmp_path / "r.jsonl"
    run(baseline_config(), str(out), log=lambda m: None)
    partial = b'{"model": "transformer", "size": "tiny", "dataset": "ETT'
    with open(out, "ab") as f:
        f.write(partial)  # a crash mid-write
    grid = parse_config({"name": "t", "models": {"transformer": {"size": "tiny"}}, "datasets": ["ETTh1"],
                         "horizons": [8], "eval": TINY_EVAL,
                         "grid": [{"criteria": ["magnitude"], "ratios": [0.5]}]})  # the baseline and one new cell
    lines = []
    written = run(grid, str(out), log=lines.append)
    assert [r["ratio"] for r in written] == [0.5]  # the baseline was not re-run, the new cell was
    (moved,) = [m for m in lines if "moved it to" in m]
    aside = [p for p in os.listdir(tmp_path) if p.startswith("r.jsonl.corrupt-")]
    assert len(aside) == 1 and (tmp_path / aside[0]).read_bytes() == partial and aside[0] in moved
    rows = out.read_bytes().decode().splitlines()
    assert len(rows) == 2 and all(isinstance(json.loads(r), dict) for r in rows)


def test_when_a_line_before_the_last_is_corrupt_then_run_and_report_stop_naming_its_number(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    run(baseline_config(), str(out), log=lambda m: None)
    good = out.read_text()
    out.write_text(good + "not json at all\n" + good)
    with pytest.raises(ResultsError, match=r"r.jsonl:2: line 2 is not a JSON record"):
        run(baseline_config(), str(out), log=lambda m: None)
    assert out.read_text() == good + "not json at all\n" + good  # nothing appended, nothing dropped
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 2
    assert "line 2" in capsys.readouterr().err


@pytest.mark.parametrize("change, field", [
    (dict(config={"d_model": 16}), "model.config.d_model"),
    (dict(train={"epochs": 1, "max_train_batches": 2, "max_val_batches": 1}), "model.train"),
])
def test_when_a_models_definition_changed_since_its_record_then_resume_reruns_the_cell_and_says_why(
        tmp_path, change, field):
    out = str(tmp_path / "r.jsonl")
    (first,) = run(baseline_config(), out, log=lambda m: None)
    assert run(baseline_config(), out, log=lambda m: None) == []  # same definition: skipped
    lines = []
    (again,) = run(baseline_config(**change), out, log=lines.append)
    assert any("definition changed (" in m and field in m and "re-running" in m for m in lines), lines
    assert again["error"] is None
    (reported,) = load_records([out])
    assert reported["definition"] == again["definition"] != first["definition"]  # the report uses the new record
    assert run(baseline_config(**change), out, log=lambda m: None) == []


def test_when_the_evaluation_settings_changed_then_the_cell_is_rerun_and_the_changed_field_is_named(tmp_path):
    out = str(tmp_path / "r.jsonl")
    run(baseline_config(), out, log=lambda m: None)
    cfg = baseline_config()
    cfg.eval.test_stride = 32
    lines = []
    assert len(run(cfg, out, log=lines.append)) == 1
    assert any("definition changed (eval.test_stride), re-running" in m for m in lines), lines


def test_when_records_predate_cell_definitions_then_resume_skips_them_and_says_it_cannot_compare(tmp_path):
    out = tmp_path / "r.jsonl"
    run(baseline_config(), str(out), log=lambda m: None)
    (rec,) = read_results(str(out))
    del rec["definition"]
    out.write_text(json.dumps(rec) + "\n")
    lines = []
    assert run(baseline_config(), str(out), log=lines.append) == []
    assert any("written before the harness recorded cell definitions" in m for m in lines), lines


def test_when_out_is_a_directory_or_under_a_file_then_run_and_quick_exit_2_before_any_cell(tmp_path, capsys):
    cell = ["run", "--model", "transformer", "--size", "tiny", "--dataset", "ETTh1", "--horizon", "8",
            "--test-stride", "64", "--test-limit", "1"]
    assert main([*cell, "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert main([*cell, "--out", str(blocker / "r.jsonl")]) == 2
    assert "file.txt is a file, not a directory" in capsys.readouterr().err
    assert blocker.read_text() == "x"
    cfg = tmp_path / "tiny.toml"
    cfg.write_text('models = ["transformer"]\ndatasets = ["ETTh1"]\nhorizons = [8]\n'
                   '[[grid]]\ncriteria = ["magnitude"]\nratios = [0.0]\n')
    assert main(["quick", "--config", str(cfg), "--out", str(blocker)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["quick", "--config", str(cfg), "--out", str(blocker / "q")]) == 2
    assert "file.txt is a file, not a directory" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["file.txt", "tiny.toml"]
