"""The JSONL results file: checked before a run, repaired after a crash, appended one line at a time.

Why hand-written: the results file is the harness's only product, appended to over hours
and resumed after crashes, so the few ways it can go wrong get an answer each instead of a
traceback or, worse, silently dropped or duplicated cells:

* ``--out`` that is a directory, or under a path whose parent is a file: `ResultsError`
  before any cell runs (`check_out`);
* a last line cut short by a crash mid-write (or any unreadable last line): moved aside to
  ``<out>.corrupt-<UTC time>`` with a message, the file truncated to its last complete
  record, before anything is appended (`repair`); a complete last record that only lacks
  its newline gets one;
* an unreadable line *before* the last: `ResultsError` naming the line (that is not a crash
  mid-write, someone edited the file; nothing is guessed).

Each record is written with one `write` of a whole line, flushed and fsynced, so a crash
can only ever cut the last line.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ["ResultsError", "check_out", "read_results", "repair", "append"]


class ResultsError(ValueError):
    """A results file (or `--out` path) the harness cannot use; the message says why and what to do."""


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def check_out(path: str, flag: str = "--out") -> None:
    """Raise `ResultsError` unless `path` can be a results file: not a directory, no file among its parents."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ResultsError(f"{flag} {path} is a directory; give the results file inside it, e.g. "
                           f"{flag} {os.path.join(path, 'results.jsonl')}")
    if os.path.exists(path) and not os.path.isfile(path):
        raise ResultsError(f"{flag} {path} exists and is not a regular file; give a .jsonl file path")
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.exists(parent):
        up = os.path.dirname(parent)
        if up == parent:
            break
        parent = up
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise ResultsError(f"{flag} {path}: {parent} is a file, not a directory, so nothing can be written under "
                           "it; choose another path (or move that file)")


def _parse(line: bytes) -> Optional[Dict[str, Any]]:
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def _lines(data: bytes) -> List[Tuple[int, int, bytes]]:
    """(line number, byte offset, content) of every non-blank line."""
    out, offset = [], 0
    for n, raw in enumerate(data.split(b"\n"), 1):
        if raw.strip():
            out.append((n, offset, raw))
        offset += len(raw) + 1
    return out


def _middle_error(path: str, n: int, raw: bytes) -> ResultsError:
    shown = raw[:80].decode("utf-8", "replace")
    return ResultsError(f"{path}:{n}: line {n} is not a JSON record ({shown!r}{'...' if len(raw) > 80 else ''}); "
                        "only the last line can be cut short by a crash, so this file was changed by hand or "
                        f"by another program. Fix or delete line {n} (or start a new results file), then run again")


def read_results(path: str, log: Callable[[str], None] = _stderr) -> List[Dict[str, Any]]:
    """All records of a JSONL results file (a missing file has none).

    An unreadable *last* line (a crash mid-write, or a run still writing) is skipped with a
    warning; `repair` fixes it before a run appends. An unreadable line before the last is a
    `ResultsError` naming its number.
    """
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    lines = _lines(data)
    out = []
    for i, (n, _, raw) in enumerate(lines):
        rec = _parse(raw)
        if rec is not None:
            out.append(rec)
        elif i < len(lines) - 1:
            raise _middle_error(path, n, raw)
        else:
            log(f"warning: {path}:{n}: skipping the unreadable last line (cut short by a crash mid-write?); "
                "the next `run` on this file moves it aside")
    return out


def repair(path: str, log: Callable[[str], None] = _stderr) -> Optional[str]:
    """Make `path` safe to append to; returns where a bad last line was moved (None: nothing to do).

    Raises:
        ResultsError: a line before the last is unreadable (named by number).
    """
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        data = f.read()
    lines = _lines(data)
    for n, _, raw in lines[:-1]:
        if _parse(raw) is None:
            raise _middle_error(path, n, raw)
    if not lines:
        return None
    n, offset, raw = lines[-1]
    if _parse(raw) is not None:
        if not data.endswith(b"\n"):  # a whole record whose newline was not written
            with open(path, "ab") as f:
                f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
            log(f"{path}: the last record had no line end; added one")
        return None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside, k = f"{path}.corrupt-{stamp}", 1
    while os.path.exists(aside):
        aside, k = f"{path}.corrupt-{stamp}-{k}", k + 1
    with open(aside, "wb") as f:  # first keep the bytes, then cut them from the results file
        f.write(data[offset:])
        f.flush()
        os.fsync(f.fileno())
    with open(path, "r+b") as f:
        f.truncate(offset)
        f.flush()
        os.fsync(f.fileno())
    log(f"{path}:{n}: the last line is not a complete record ({len(data) - offset} bytes, cut short by a crash "
        f"mid-write?); moved it to {aside} and kept the {len(lines) - 1} complete record(s) before it; "
        "its cell (if any) runs again")
    return aside


def append(path: str, record: Dict[str, Any], default: Optional[Callable[[Any], Any]] = None) -> None:
    """Append one record as one line: a single write, flushed and fsynced (a crash cuts at most this line)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    line = (json.dumps(record, default=default) + "\n").encode("utf-8")
    with open(path, "ab") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
