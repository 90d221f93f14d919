"""Argument and value checks shared by the loaders, the windows and the generators.

They live apart so that every module of ``compress.data`` raises the same messages for
the same mistakes (a bad split name, a non-positive length, NaNs in a series).
"""

from __future__ import annotations

import numpy as np

SPLITS = ("train", "val", "test")


def _check_finite(where, values, columns, lines=None, max_rows: int = 5):
    finite = np.isfinite(values)  # [T, C]
    if finite.all():
        return
    problems = []
    for j in np.flatnonzero(~finite.all(axis=0)):
        rows = np.flatnonzero(~finite[:, j])
        shown = ", ".join(str(r) for r in rows[:max_rows])
        more = f" and {len(rows) - max_rows} more" if len(rows) > max_rows else ""
        at_lines = ""
        if lines is not None:
            at_lines = " (file lines " + ", ".join(str(lines[r]) for r in rows[:max_rows]) + ")"
        problems.append(
            f"column {columns[j]!r}: {len(rows)} missing/non-finite values at data rows "
            f"{shown}{more}{at_lines}"
        )
    raise ValueError(
        f"{where}: missing or non-finite values (data rows count from 0, the first row "
        f"after the header):\n  " + "\n  ".join(problems)
        + "\nFix: fill or interpolate them before loading, or leave those columns out "
        "with columns=[...]"
    )


def _check_positive_int(what: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{what} must be a positive int; got {value!r}")


def _check_split(split) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
