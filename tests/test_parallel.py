"""Parallel grids: a local process pool and Ray, one writer, resume, and workers that die mid-cell."""
import collections

import pytest

from benchmarks.config import cell_key, parse_config
from benchmarks.parallel import TEST_KILL_ENV
from benchmarks.runner import read_results, run

TINY_EVAL = {"test_stride": 64, "test_limit": 1, "batch_size": 16, "calibration_batches": 1,
             "calibration_batch_size": 4, "latency_batch_size": 2, "latency_repeats": 2}


def tiny_grid(ratios=(0.3, 0.5)):
    return parse_config({"name": "p", "models": {"transformer": {"size": "tiny"}}, "datasets": ["ETTh1"],
                         "horizons": [8], "eval": TINY_EVAL,
                         "grid": [{"criteria": ["magnitude"], "ratios": list(ratios)}]})


def keys(path):
    return collections.Counter(cell_key(r) for r in read_results(path))


def test_when_two_pool_workers_run_a_grid_then_each_cell_is_written_once_and_resume_skips_them(tmp_path):
    cfg, out = tiny_grid(), str(tmp_path / "r.jsonl")
    records = run(cfg, out, command="t", log=lambda m: None, workers=2)
    assert len(records) == 3 and all(r["error"] is None for r in records)
    assert sorted(keys(out).values()) == [1, 1, 1]
    assert {cell_key(r) for r in records} == {c.key("tiny", 0) for c in cfg.cells}
    assert run(cfg, out, command="t", log=lambda m: None, workers=2) == []
    assert len(read_results(out)) == 3


def test_when_a_pool_worker_is_killed_mid_cell_then_the_cell_is_retried_once_and_not_lost(tmp_path, monkeypatch):
    monkeypatch.setenv(TEST_KILL_ENV, f"r=0.500|{tmp_path / 'died-once'}")
    out, lines = str(tmp_path / "r.jsonl"), []
    records = run(tiny_grid(), out, command="t", log=lines.append, workers=2)
    assert (tmp_path / "died-once").exists()  # the hook did kill a worker
    assert any("killed by SIGKILL; retrying" in m for m in lines)
    assert len(records) == 3 and all(r["error"] is None for r in records)
    assert sorted(keys(out).values()) == [1, 1, 1]


def test_when_a_cell_kills_every_worker_then_it_is_reported_failed_and_the_rest_run(tmp_path, monkeypatch):
    monkeypatch.setenv(TEST_KILL_ENV, "r=0.500")
    out = str(tmp_path / "r.jsonl")
    records = run(tiny_grid(), out, command="t", log=lambda m: None, workers=2, retries=1)
    failed = [r for r in records if r["error"]]
    assert len(records) == 3 and len(failed) == 1 and failed[0]["ratio"] == 0.5
    assert "WorkerDied" in failed[0]["error"] and "SIGKILL" in failed[0]["error"] and "2 attempt(s)" in failed[0]["error"]
    monkeypatch.delenv(TEST_KILL_ENV)
    again = run(tiny_grid(), out, command="t", log=lambda m: None, workers=2)  # resume retries the failed cell
    assert [(r["ratio"], r["error"]) for r in again] == [(0.5, None)]


def test_when_the_grid_runs_on_a_local_ray_instance_then_records_match_and_a_killed_worker_is_retried(
        tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv(TEST_KILL_ENV, f"r=0.300|{tmp_path / 'died-once'}")
    out = str(tmp_path / "r.jsonl")
    try:
        records = run(tiny_grid(), out, command="t", log=lambda m: None, executor="ray", workers=2)
    finally:
        ray.shutdown()
    assert (tmp_path / "died-once").exists()
    assert len(records) == 3 and all(r["error"] is None for r in records), [r["error"] for r in records]
    assert sorted(keys(out).values()) == [1, 1, 1]
