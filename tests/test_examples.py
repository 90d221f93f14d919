"""Each script in examples/ runs (--quick), exits 0 and prints a table whose numbers agree."""
import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "examples", "*.py"))
                 if not os.path.basename(p).startswith("_"))


def _table(stdout):
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    assert len(lines) >= 3, f"no table printed:\n{stdout}"
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    return header, rows


def test_the_examples_are_the_documented_ones():
    assert {"prune_tsfm.py", "prune_demo.py", "prune_then_finetune.py", "grid.py", "depth_pruning.py",
            "peft_finetune.py"} <= set(SCRIPTS)
    listed = open(os.path.join(ROOT, "examples", "README.md")).read()
    assert all(s in listed for s in SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_when_an_example_runs_quickly_then_it_prints_a_consistent_table(script, tmp_path):
    argv = [sys.executable, os.path.join(ROOT, "examples", script), "--quick"]
    if script == "grid.py":
        argv += ["--out", str(tmp_path / "grid")]
    env = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    header, rows = _table(done.stdout)
    assert rows
    if "latency ms" in header:  # the speedups are the printed latencies' ratios (one timing)
        lat, sp = header.index("latency ms"), header.index("speedup ×")
        base = float(rows[0][lat])
        assert float(rows[0][sp]) == 1.0
        for row in rows[1:]:
            assert abs(float(row[sp]) - base / float(row[lat])) <= 0.011, row
    if script == "grid.py":
        assert (tmp_path / "grid" / "report.md").exists() and "speedup ×" in header
    if script == "peft_finetune.py":  # the shares are the printed counts' ratios; TRACE trains < 10%
        by = {row[0]: row for row in rows}
        assert set(by) == {"full", "lora", "trace"}
        tr, share, mse = header.index("trainable params"), header.index("of full"), header.index("MSE")
        full = int(by["full"][tr].replace(",", ""))
        for row in rows:
            assert abs(float(row[share].rstrip("%")) / 100 - int(row[tr].replace(",", "")) / full) <= 0.0006, row
            assert 0 < float(row[mse]) < 10, row
        assert int(by["trace"][tr].replace(",", "")) < 0.1 * full < int(by["lora"][tr].replace(",", "")) < full
        assert by["trace"][header.index("head")] == "reconstructed"
