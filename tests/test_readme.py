"""Every ```python block of README.md runs as written.

A README snippet that does not run costs a new user more trust than a missing one. Each
block fenced ```` ```python ```` is executed on its own (a fresh namespace, as a user
pasting only that block would), from a scratch folder that links the checkout's top-level
entries (so `benchmarks/...`, `compress/...` paths work and written files land in the
scratch folder). A block that truly cannot run here is fenced ```` ```python skip ````,
and the prose around it says how long it takes; those are reported as skipped.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
_FENCE = re.compile(r"^(\s*)(`{3,})\s*([^`]*)$")


def readme_blocks(text: str):
    """Yield (first line number, info words, code) for every fenced block of `text`."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, ticks, info = m.group(1), m.group(2), m.group(3).split()
        start = i + 1
        body = []
        i += 1
        while i < len(lines) and not re.match(rf"^\s*{ticks}\s*$", lines[i]):
            line = lines[i]
            body.append(line[len(indent):] if line.startswith(indent) else line)
            i += 1
        if i >= len(lines):
            raise AssertionError(f"README.md line {start}: the ``` block is never closed")
        yield start + 1, info, "\n".join(body) + "\n"
        i += 1


def _section(text: str, lineno: int) -> str:
    heading = "top"
    for n, line in enumerate(text.splitlines(), 1):
        if n >= lineno:
            break
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
    return re.sub(r"[^A-Za-z0-9]+", "-", heading).strip("-")[:40]


def _python_blocks():
    text = README.read_text()
    params = []
    for lineno, info, code in readme_blocks(text):
        if not info or info[0] != "python":
            continue
        marks = [pytest.mark.skip(reason="fenced ```python skip")] if "skip" in info[1:] else []
        params.append(pytest.param(lineno, code, id=f"L{lineno}-{_section(text, lineno)}", marks=marks))
    return params


def test_fence_parser_finds_python_and_skip_blocks():
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n  ```python skip\n  y = 2\n  ```\n"
    blocks = list(readme_blocks(text))
    assert [(n, info) for n, info, _ in blocks] == [(3, ["python"]), (6, ["bash"]), (9, ["python", "skip"])]
    assert blocks[2][2] == "y = 2\n"
    with pytest.raises(AssertionError, match="never closed"):
        list(readme_blocks("```python\nx = 1\n"))


def test_readme_has_runnable_blocks():
    params = _python_blocks()
    runnable = [p for p in params if not p.marks]
    assert len(runnable) >= 3, "README.md lost its runnable ```python blocks"


@pytest.mark.parametrize("lineno, code", _python_blocks())
def test_readme_block_runs(lineno, code, tmp_path, monkeypatch):
    for entry in ROOT.iterdir():  # a scratch checkout: links to the real files, fresh runs/
        if not entry.name.startswith(".") and entry.name != "runs":
            (tmp_path / entry.name).symlink_to(entry)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("COMPRESS_DATA", str(tmp_path / "data-cache"))
    import torch

    threads = torch.get_num_threads()
    namespace = {"__name__": "__readme__"}
    t0 = time.perf_counter()
    try:
        exec(compile(code, f"README.md:{lineno}", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    print(f"README.md line {lineno}: {time.perf_counter() - t0:.1f} s")
