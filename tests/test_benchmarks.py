"""The benchmark harness: cells write complete records, resume, survive failures; reports and configs."""
import dataclasses
import json
import os

import pytest

from benchmarks.__main__ import main
from benchmarks.config import ConfigError, load_config, parse_config
from benchmarks.report import write_report
from benchmarks.runner import RECORD_FIELDS, read_results, run

TINY_EVAL = {"test_stride": 64, "test_limit": 1, "batch_size": 16, "calibration_batches": 1,
             "calibration_batch_size": 4, "latency_batch_size": 2, "latency_repeats": 2}


def tiny_config(models, criteria=("magnitude",), ratios=(0.5,), **extra):
    families = {"broken": "transformer"}
    raw = {"name": "t", "models": {m: {"family": families.get(m, m), "size": "tiny"} for m in models},
           "datasets": ["ETTh1"],
           "horizons": [8], "eval": TINY_EVAL,
           "grid": [{"models": list(models), "criteria": list(criteria), "strategies": ["structured"],
                     "ratios": list(ratios)}]}
    raw.update(extra)
    return parse_config(raw)


def test_when_a_single_cell_runs_from_the_shell_then_one_record_has_every_field(tmp_path):
    out = str(tmp_path / "r.jsonl")
    argv = ["run", "--model", "transformer", "--size", "tiny", "--dataset", "ETTh1", "--horizon", "8",
            "--criterion", "taylor", "--strategy", "structured", "--ratio", "0.5", "--test-stride", "64",
            "--test-limit", "1", "--out", out]
    assert main(argv) == 0
    (rec,) = read_results(out)
    assert set(RECORD_FIELDS) <= set(rec)
    assert rec["error"] is None and rec["method"] == "prune (untrained model)" and rec["finetuned"] is False
    assert rec["weights"] == "untrained"
    assert rec["command"].startswith("python -m benchmarks run --model transformer")
    assert 0 < rec["relative_size"] < 1 and rec["flops_reduction"] > 1 and rec["speedup"] > 0
    assert rec["mse"] > 0 and rec["mae"] > 0 and rec["n_windows"] > 0 and rec["threads"] == 1

    # Resume: the same cell again is skipped and nothing is appended.
    assert main(argv) == 0
    assert len(read_results(out)) == 1


def test_when_a_cell_fails_then_its_error_is_recorded_and_the_grid_goes_on(tmp_path):
    out = str(tmp_path / "r.jsonl")
    cfg = tiny_config(["broken", "transformer"])  # a valid config whose first model fails when it is built:
    cfg.models["broken"] = dataclasses.replace(cfg.models["broken"], config={"d_model": 7})  # not a multiple of heads
    records = run(cfg, out, command="test", log=lambda m: None)
    by_model = {}
    for r in records:
        by_model.setdefault(r["model"], []).append(r)
    assert len(by_model["broken"]) == 2  # baseline + one pruned cell
    assert all("must be a multiple of n_heads" in r["error"] for r in by_model["broken"])
    assert [r["method"] for r in by_model["transformer"]] == ["untrained (random init)", "prune (untrained model)"]
    assert all(r["error"] is None for r in by_model["transformer"])
    base = by_model["transformer"][0]
    assert base["ratio"] == 0 and base["criterion"] == "none" and base["mse"] == base["baseline_mse"]

    # Resume retries the failed cells only.
    again = run(cfg, out, command="test", log=lambda m: None)
    assert {r["model"] for r in again} == {"broken"}


def test_when_a_checkpoint_is_missing_then_the_error_says_how_to_make_it(tmp_path):
    raw = {"models": {"transformer": {"checkpoint": str(tmp_path / "{model}-{dataset}-96-{horizon}.pt")}},
           "datasets": ["ETTh1"], "horizons": [8], "eval": TINY_EVAL,
           "grid": [{"models": ["transformer"], "criteria": ["magnitude"], "ratios": [0.5]}]}
    records = run(parse_config(raw), str(tmp_path / "r.jsonl"), log=lambda m: None)
    assert "transformer-ETTh1-96-8.pt" in records[0]["error"]
    assert "python benchmarks/train_classic.py" in records[0]["error"]


def _record(model, strategy, ratio, mse, flops_red=1.0, speedup=1.0, finetuned=False, error=None):
    base = ratio == 0
    return {"model": model, "size": "tiny", "dataset": "ETTh1", "horizon": 8, "context_length": 32,
            "criterion": "none" if base else "magnitude", "strategy": "none" if base else strategy, "ratio": ratio,
            "effective_ratio": ratio, "method": "zero-shot" if base else ("prune-then-finetune" if finetuned else "prune"),
            "finetuned": finetuned, "seed": 0, "params": 1000, "nonzero_params": int(1000 * (1 - ratio)),
            "density": 1 - ratio, "prunable_density": 1 - ratio, "relative_size": 1 - ratio, "flops": 10**6,
            "flops_reduction": flops_red, "latency_ms": 1.0, "speedup": speedup, "threads": 1, "mse": mse,
            "mae": mse, "n_windows": 10, "baseline_mse": 0.5, "baseline_mae": 0.5, "test_stride": 8,
            "error": error, "command": "python -m benchmarks run --config x.toml --out r.jsonl", "commit": "abc"}


def test_when_reporting_a_results_file_then_report_md_and_both_plots_are_written(tmp_path):
    res = tmp_path / "r.jsonl"
    recs = [_record("a", "none", 0.0, 0.5),
            _record("a", "structured", 0.2, 0.55, 1.3, 1.1), _record("a", "structured", 0.5, 0.7, 2.0, 1.3),
            _record("a", "unstructured", 0.5, 0.6), _record("a", "structured", 0.5, 0.52, 2.0, 1.3, finetuned=True),
            _record("b", "structured", 0.5, None, error="ValueError: boom")]
    res.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    import warnings

    with warnings.catch_warnings(record=True) as caught:  # constrained layout: no tight-layout warnings
        warnings.simplefilter("always")
        path = write_report([str(res)], str(tmp_path / "rep"))
    assert [str(w.message) for w in caught] == []
    text = open(path).read()
    assert "python -m benchmarks run --config x.toml" in text
    assert "+40.0%" in text and "ValueError: boom" in text
    for png in ("accuracy_vs_density.png", "speedup_vs_flops.png"):
        assert os.path.getsize(tmp_path / "rep" / png) > 1000


@pytest.mark.parametrize("text, message", [
    ('grid = [{criteria = ["magnitude"], ratios = [0.5]}]\nmodels = ["m"]\ndatasets = ["ETTh1"]\nhorizons = [8]\nbogus = 1\n',
     "unknown key(s) ['bogus']"),
    ('models = ["m"]\ndatasets = ["ETTh1"]\nhorizons = [8]\n', "no [[grid]] table"),
    ('models = ["m"]\ndatasets = ["ETTh1"]\nhorizons = [8]\n[[grid]]\ncriteria = ["magnitude"]\nratios = [1.5]\n',
     "ratio 1.5 must be a number in [0, 1)"),
    ('models = ["m"]\ndatasets = ["ETTh1"]\n[[grid]]\ncriteria = ["magnitude"]\nratios = [0.5]\n', "horizons is missing"),
    ('models = ["m"]\ndatasets = ["ETTh1"]\nhorizons = [8]\n[eval]\ntest_stride = "8"\n[[grid]]\ncriteria = ["m"]\nratios = [0.5]\n',
     "test_stride = '8' should be a int"),
    ('models = ["m"\n', "cannot parse"),
])
def test_when_a_config_is_wrong_then_the_error_names_the_file_and_the_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    assert message in str(e.value) and "bad.toml" in str(e.value)


def test_when_loading_the_shipped_configs_then_they_parse():
    here = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "configs")
    quick = load_config(os.path.join(here, "quick.toml"))
    assert {c.criterion for c in quick.cells} == {"none", "magnitude", "taylor", "activation"}
    study = load_config(os.path.join(here, "study_ettm1.toml"))
    assert {c.model for c in study.cells} == {"transformer", "informer", "autoformer", "fedformer", "crossformer"}
    assert sum(c.finetune for c in study.cells) == 10


def _ptf_record(model, method, mse, params, params_base=100, dataset="ETTh1"):
    return {"model": model, "dataset": dataset, "horizon": 96, "method": method, "mse": mse, "mae": mse,
            "params": params, "params_base": params_base, "params_kept": params / params_base,
            "flops_reduction": params_base / params}


def test_when_the_ptf_report_is_made_then_the_claim_check_reads_the_records(tmp_path, capsys):
    from benchmarks.ptf.experiment import report

    rows = [_ptf_record("a", "finetune", 0.40, 100), _ptf_record("a", "prune-then-finetune", 0.39, 65),
            _ptf_record("a", "prune-then-finetune-tol", 0.38, 80),  # lower, but only 20% fewer parameters
            _ptf_record("b", "finetune", 0.30, 100), _ptf_record("b", "prune-then-finetune", 0.31, 50),
            _ptf_record("patchtst_scratch", "scratch", 0.35, 100)]
    path, lat = tmp_path / "ptf.jsonl", tmp_path / "lat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lat.write_text(json.dumps({"model": "a", "dataset": "ETTh1", "horizon": 96, "method": "prune-then-finetune",
                               "speedup": 1.7}) + "\n")
    report(str(path), str(lat))
    out = capsys.readouterr().out
    claim = {tuple(c.strip() for c in line.split("|")[3:5]): line for line in out.splitlines()
             if "| yes " in line or "| no " in line}
    assert set(claim) == {("a", "prune-then-finetune"), ("a", "prune-then-finetune-tol"), ("b", "prune-then-finetune")}
    assert "65.0%" in claim["a", "prune-then-finetune"] and "| yes " in claim["a", "prune-then-finetune"]
    assert "0.3500" in claim["a", "prune-then-finetune"]
    assert "| no " in claim["a", "prune-then-finetune-tol"]  # lower MSE, but only 20% fewer parameters
    assert "| no " in claim["b", "prune-then-finetune"] and "+3.3%" in claim["b", "prune-then-finetune"]
    assert "1.70x" in out and "not re-timed" in out and "same shapes" in out


def test_when_a_variant_is_compared_with_match_then_each_cell_sits_beside_its_reference(tmp_path, capsys):
    from benchmarks.ptf.experiment import compare

    old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    old.write_text("".join(json.dumps(r) + "\n" for r in [_ptf_record("a", "prune-then-finetune", 0.40, 80),
                                                         _ptf_record("a", "finetune", 0.50, 100)]))
    new.write_text(json.dumps(_ptf_record("a", "prune-then-finetune-authors", 0.42, 60)) + "\n")
    compare(str(new), str(old))  # no cell of that method in OLD: nothing beside it
    row = next(line for line in capsys.readouterr().out.splitlines() if "authors" in line)
    assert "0.4000" not in row and "0.4200" in row
    compare(str(new), str(old), ["prune-then-finetune-authors=prune-then-finetune"])
    row = next(line for line in capsys.readouterr().out.splitlines() if "authors" in line)
    assert "prune-then-finetune-authors vs prune-then-finetune" in row
    assert "0.4000" in row and "80%" in row and "0.4200" in row and "60%" in row and "+5.0%" in row
    with pytest.raises(SystemExit, match="NEW_METHOD=OLD_METHOD"):
        compare(str(new), str(old), ["prune-then-finetune-authors"])


def test_when_pruned_cell_models_are_retimed_then_each_gets_a_speedup_record(tmp_path):
    pytest.importorskip("tsfm_public")
    import torch

    import compress
    from benchmarks.ptf.experiment import cell_file, retime

    base = compress.models.load("ttm").eval()
    small = compress.prune(base, "magnitude", ratio=0.3)
    small.save(tmp_path / cell_file(("ttm", "ETTh1", 96, "prune-then-finetune")))
    base.save(tmp_path / cell_file(("ttm", "ETTh1", 96, "finetune")))  # same shapes: skipped
    out = tmp_path / "lat.jsonl"
    retime(str(tmp_path), str(out), repeats=2)
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["model"], r["method"]) for r in recs] == [("ttm", "prune-then-finetune")]
    assert recs[0]["speedup"] > 0 and len(recs[0]["latency_base_ms"]) == 2


def _depth_record(method, realign=None, mse=0.4, **extra):
    r = {"model": "m", "dataset": "ETTh1", "method": method, "select": "dominance", "ratio": 0.75, "keep": None,
         "mse": mse, "blocks_before": 8, "blocks_after": 2, "command": "python benchmarks/depth/experiment.py x"}
    if realign is not None:
        r["realign"] = realign
    r.update(extra)
    return r


def test_when_depth_cells_are_realigned_by_lora_and_full_then_keys_and_the_report_keep_them_apart(tmp_path):
    from benchmarks.depth.experiment import cell_key
    from benchmarks.depth.report import load, lora_table

    old_full = _depth_record("prune-then-finetune", {"lr": 1e-4})  # records from before the method was stored
    full = _depth_record("prune-then-finetune", {"method": "full", "lr": 1e-4}, 0.38, trainable_params=200,
                         train_seconds=2.0)
    lora = _depth_record("prune-then-finetune", {"method": "lora", "lr": 1e-4}, 0.39, trainable_params=100,
                         train_seconds=3.0)
    lora_hi = _depth_record("prune-then-finetune", {"method": "lora", "lr": 1e-3}, 0.37, trainable_params=100,
                            train_seconds=3.1)
    ft_hi = _depth_record("finetune", select=None, ratio=0.0, mse=0.35, lr=1e-3)
    assert cell_key(old_full) == cell_key(full)
    assert len({cell_key(r) for r in (full, lora, lora_hi)}) == 3
    assert cell_key(_depth_record("finetune", lr=1e-4)) == cell_key(_depth_record("finetune")) != cell_key(ft_hi)
    main_dir, paired_dir = tmp_path, tmp_path / "realign"
    paired_dir.mkdir()
    (main_dir / "run.jsonl").write_text("\n".join(json.dumps(r) for r in (
        _depth_record("prune", mse=0.5), _depth_record("finetune", select=None, ratio=0.0, mse=0.36), old_full)))
    (paired_dir / "lora.jsonl").write_text("\n".join(json.dumps(r) for r in (full, lora, lora_hi, ft_hi)))
    rows = [line for line in lora_table(load(str(main_dir)), load(str(paired_dir))).splitlines() if line.startswith("| m ")]
    assert rows[0].split(" | ")[4:13] == ["0.0001", "0.5000", "0.3800", "0.3900", "200", "100", "2.0", "3.0", "0.3600 |"]
    # no full realignment at that rate; the unpruned fine-tune at the same rate
    assert rows[1].split(" | ")[4:8] + rows[1].split(" | ")[-1:] == ["0.001", "0.5000", "", "0.3700", "0.3500 |"]


def test_when_only_realign_is_asked_then_no_other_depth_stage_runs():
    from benchmarks.depth.experiment import STAGES, parse, selected

    assert all(selected(parse([]), s) for s in STAGES)
    for argv in (["--only-realign"], ["--only", "realign"]):
        assert [s for s in STAGES if selected(parse(argv), s)] == ["realign"]
    assert [s for s in STAGES if selected(parse(["--only", "finetune", "prune"]), s)] == ["finetune", "prune"]
