"""The ``date`` column of a CSV: parsed, then checked for order, repeats and gaps.

A window of ``context_length`` rows means "the last L time steps" only if the rows are in
time order, one per step. A file with rows out of order, a repeated timestamp or a missing
stretch would still load as windows, just silently wrong ones (a window spanning a gap
pretends no time passed), so ``compress.data.load`` reads the timestamps and applies one of
these policies (``timestamps=``):

- ``"check"`` (default): rows out of order, repeated timestamps or an irregular step are a
  ``ValueError`` naming the rows, their timestamps and the fixes below. Exception: the
  standard benchmark files whose irregularities are known and part of every published
  number (``_KNOWN_ISSUES``: weather.csv repeats 2020-05-12 06:00:00 and skips nine
  10-minute steps after 2020-05-29 09:30:00) load unchanged, with a ``TimestampWarning``,
  so results stay comparable with the literature; any *other* irregularity in those files
  is still an error.
- ``"sort"``: rows are sorted by time (stable); repeated timestamps are still an error; a
  remaining irregular step is a ``TimestampWarning``.
- ``"dedupe"``: sorted, then the first row of each repeated timestamp is kept (warning with
  the count); a remaining irregular step is a ``TimestampWarning``.
- ``"ignore"``: no check; rows are used in file order (the timestamps need not parse).

"Irregular" means a step that differs from the file's usual one (its most common step).
Monthly / quarterly / yearly series (same day and time each period) and business-day series
(weekdays only, one business day apart) are regular. Timestamps are read as ISO 8601
(``2020-01-01 00:10:00``, ``2020-01-01T00:10``, ``2020-01-01``, with or without offset),
``YYYY/M/D [H:MM[:SS]]``, ``D.M.YYYY [H:MM[:SS]]``, ``M/D/YYYY [H:MM[:SS]]``, or plain numbers;
anything else is an error under "check" / "sort" / "dedupe" (fix: ISO 8601 or "ignore").

Hand-written (numpy's datetime64 parser plus a few regular expressions) to keep pandas out of
``import compress``.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np

POLICIES = ("check", "sort", "dedupe", "ignore")
_SHOW = 5  # problems listed per kind in a message


class TimestampWarning(UserWarning):
    """Irregular timestamps that were loaded anyway (known benchmark quirk, or asked for)."""


# dataset -> the irregularities of its standard file that every published result includes:
# repeated timestamps, and (timestamp before, timestamp after) of each irregular step
_KNOWN_ISSUES: dict[str, dict[str, tuple]] = {
    "weather": {
        "repeats": ("2020-05-12T06:00:00",),
        "steps": (("2020-05-29T09:30:00", "2020-05-29T11:10:00"),),
    },
}

_ISO_LIKE = re.compile(r"\s*\d{4}-\d{2}")
# (pattern, order of the year / month / day groups) -> rewritten as ISO 8601 for numpy
_FORMATS = (
    (re.compile(r"^\s*(\d{4})[/.](\d{1,2})[/.](\d{1,2})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?\s*$"), (0, 1, 2)),
    (re.compile(r"^\s*(\d{1,2})\.(\d{1,2})\.(\d{4})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?\s*$"), (2, 1, 0)),
    (re.compile(r"^\s*(\d{1,2})/(\d{1,2})/(\d{4})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?\s*$"), (2, 0, 1)),
)


@dataclass(frozen=True)
class Times:
    """Parsed timestamps of a file: ``values`` (datetime64[us] or float64, [T]) or ``bad``."""

    column: str | None  # None: the file has no date column
    cells: tuple[str, ...] = ()
    values: np.ndarray | None = None
    bad: int | None = None  # index of the first cell that could not be read


def parse(column: str | None, cells) -> Times:
    """Read the cells of a date column (one format for the whole column).

    Example:
        >>> parse("date", ["2020-01-01 00:00:00", "2020/1/1 1:00"]).bad
        1
        >>> parse("date", ["2020/1/1 0:00", "2020/1/1 1:00"]).values[1]
        np.datetime64('2020-01-01T01:00:00.000000')
    """
    cells = tuple(cells)
    if column is None:
        return Times(None)
    if not cells:
        return Times(column, cells, np.empty(0, "datetime64[us]"))
    furthest = 0
    for kind in _KINDS:
        values, bad = kind(cells)
        if values is not None:
            return Times(column, cells, values)
        furthest = max(furthest, bad)
    return Times(column, cells, bad=furthest)


def _iso(cells):
    if not _ISO_LIKE.match(cells[0]):
        return None, 0
    with warnings.catch_warnings():  # "no explicit representation of timezones"
        warnings.simplefilter("ignore")
        try:
            return np.array(cells, dtype="datetime64[us]"), None
        except ValueError:
            return _first_bad(cells, _datetime)


def _number(cells):
    try:
        return np.asarray(cells, dtype=np.float64), None
    except ValueError:
        return _first_bad(cells, float)


def _datetime(text):
    return np.datetime64(text, "us")


def _first_bad(cells, parse):
    """After a vectorised parse failed: (None, index of the first cell `parse` rejects), or
    (None, 0) when each cell parses alone."""
    for i, cell in enumerate(cells):
        try:
            parse(cell)
        except ValueError:
            return None, i
    return None, 0


def _pattern(pattern, y, m, d):
    def read(cells):
        iso = []
        for i, cell in enumerate(cells):
            hit = pattern.match(cell)
            if hit is None:
                return None, i
            g = hit.groups()
            iso.append(
                f"{g[y]}-{int(g[m]):02d}-{int(g[d]):02d}"
                f"T{int(g[3] or 0):02d}:{g[4] or '00'}:{g[5] or '00'}"
            )
        try:
            return np.array(iso, dtype="datetime64[us]"), None
        except ValueError:  # e.g. month 13: the other day / month order
            return _first_bad(iso, _datetime)

    return read


_KINDS = (_iso, _number) + tuple(_pattern(p, *ymd) for p, ymd in _FORMATS)


def apply(where, times: Times, lines, policy: str = "check", dataset: str | None = None):
    """Check ``times`` under ``policy``; return the row order to use ([T'] int) or None.

    ``lines`` are the file line numbers of the data rows (for messages); ``dataset`` is the
    standard set the file is (for its known issues). Raises ``ValueError`` when the policy
    does not allow what is found.

    Example:
        >>> t = parse("date", ["2020-01-02", "2020-01-01", "2020-01-03"])
        >>> apply("f.csv", t, [2, 3, 4], "sort")
        array([1, 0, 2])
    """
    if policy not in POLICIES:
        raise ValueError(
            f"timestamps={policy!r} is not a policy; use one of {POLICIES} "
            f"(default 'check')"
        )
    if policy == "ignore" or times.column is None or len(times.cells) < 2:
        return None
    col = times.column
    if times.values is None:
        i = times.bad
        raise ValueError(
            f"{where}: cannot read the timestamps in column {col!r}: data row {i} (line "
            f"{lines[i]}) holds {times.cells[i]!r}. Readable: ISO 8601 (2020-01-01 00:10:00), "
            f"YYYY/M/D H:MM, D.M.YYYY H:MM, M/D/YYYY H:MM or plain numbers, one format per "
            f"file. Fix: write the column in one of these formats, or pass "
            f"timestamps='ignore' to use the rows in file order without checking them."
        )
    values = times.values
    order = None
    if policy in ("sort", "dedupe"):
        order = np.argsort(values, kind="stable")
        values = values[order]
    if policy == "dedupe":
        keep = np.ones(len(values), dtype=bool)
        keep[1:] = values[1:] != values[:-1]
        if not keep.all():
            dropped = order[~keep]
            warnings.warn(
                f"{where}: timestamps='dedupe' dropped {len(dropped)} row(s) that repeat a "
                f"timestamp (the first row of each is kept): data rows "
                f"{_rows(dropped, lines, times.cells)}",
                TimestampWarning, stacklevel=3,
            )
            order, values = order[keep], values[keep]
    index = order if order is not None else np.arange(len(values))

    backwards, repeats = _order_problems(values)
    step, odd = _irregular_steps(values)
    problems, fixes = [], []
    if len(backwards):
        problems.append(
            f"{len(backwards)} row(s) earlier than the row before: "
            + _pairs(backwards, index, lines, times.cells)
        )
        fixes.append("sort the file by time, or pass timestamps='sort'")
    if len(repeats):
        problems.append(
            f"{len(repeats)} repeated timestamp(s): " + _pairs(repeats, index, lines, times.cells)
        )
        fixes.append("remove the repeated rows, or pass timestamps='dedupe' (keeps the first)")
    if len(odd) and not len(backwards):
        problems.append(
            f"{len(odd)} irregular step(s) (the usual step is {_fmt_step(step)}): "
            + _pairs(odd, index, lines, times.cells, values)
            + "; a window across one pretends no time passed"
        )
        fixes.append("fill the missing rows (e.g. interpolate) before loading")
    if not problems:
        return order
    if policy == "check" and _is_known(dataset, values, backwards, repeats, odd):
        warnings.warn(
            f"{where}: the standard {dataset} file has known timestamp irregularities, "
            f"loaded unchanged as the published results use them: " + "; ".join(problems)
            + ". Pass timestamps='dedupe' to drop the repeats (the split borders then move).",
            TimestampWarning, stacklevel=3,
        )
        return None
    if policy in ("sort", "dedupe") and not len(backwards) and not len(repeats):
        warnings.warn(
            f"{where}: timestamps={policy!r}: " + "; ".join(problems) + ". Fix: "
            + fixes[-1] + ".",
            TimestampWarning, stacklevel=3,
        )
        return order
    fixes.append("or pass timestamps='ignore' to use the rows as they are")
    raise ValueError(
        f"{where}: timestamps in column {col!r} (data rows count from 0, after the header):"
        f"\n  " + "\n  ".join(problems) + "\nFix: " + "; ".join(fixes) + "."
    )


def _order_problems(values):
    """Positions i (>= 1) where row i is earlier than / equal to row i - 1."""
    diff = values[1:] - values[:-1]
    zero = diff == diff.dtype.type(0)
    return np.flatnonzero(diff < diff.dtype.type(0)) + 1, np.flatnonzero(zero) + 1


def _irregular_steps(values):
    """(usual step, positions i where the step from row i - 1 differs from it)."""
    if len(values) < 3:
        return None, np.empty(0, dtype=np.int64)
    diff = values[1:] - values[:-1]
    positive = diff[diff > diff.dtype.type(0)]
    if not len(positive):
        return None, np.empty(0, dtype=np.int64)
    if values.dtype.kind == "M":
        if _calendar_regular(values) or _business_day_regular(values):
            return None, np.empty(0, dtype=np.int64)
        steps, counts = np.unique(positive, return_counts=True)
        step = steps[np.argmax(counts)]
        odd = (diff != step) & (diff > diff.dtype.type(0))
    else:
        steps, counts = np.unique(positive, return_counts=True)
        step = steps[np.argmax(counts)]
        odd = (~np.isclose(diff, step, rtol=1e-6, atol=0)) & (diff > 0)
    return step, np.flatnonzero(odd) + 1


def _calendar_regular(values) -> bool:
    """Every row on the same day of month and time, a constant number of months apart."""
    months = values.astype("datetime64[M]")
    offset = values - months.astype(values.dtype)
    days = values.astype("datetime64[D]")
    month_end = (days + 1).astype("datetime64[M]") != months
    time_of_day = values - days.astype(values.dtype)
    same_day = (offset == offset[0]).all()
    if not (same_day or (month_end.all() and (time_of_day == time_of_day[0]).all())):
        return False
    step = np.diff(months.astype(np.int64))
    return bool(step[0] > 0 and (step == step[0]).all())


def _business_day_regular(values) -> bool:
    days = values.astype("datetime64[D]")
    if not (values == days.astype(values.dtype)).all():
        return False  # intraday rows: not a business-day series
    if not np.is_busday(days).all():
        return False
    return bool((np.busday_count(days[:-1], days[1:]) == 1).all())


def _is_known(dataset, values, backwards, repeats, odd) -> bool:
    known = _KNOWN_ISSUES.get(dataset or "")
    if known is None or len(backwards) or values.dtype.kind != "M":
        return False
    found_repeats = {str(values[i].astype("datetime64[s]")) for i in repeats}
    found_steps = {
        (str(values[i - 1].astype("datetime64[s]")), str(values[i].astype("datetime64[s]")))
        for i in odd
    }
    return found_repeats == set(known["repeats"]) and found_steps == set(known["steps"])


def _fmt_step(step) -> str:
    if isinstance(step, np.timedelta64):
        seconds = int(step / np.timedelta64(1, "s"))
        days, rest = divmod(seconds, 86400)
        hms = f"{rest // 3600}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
        return f"{days} day(s) {hms}" if days else hms
    return f"{step:g}"


def _pairs(positions, index, lines, cells, values=None) -> str:
    """'data row r (line l) 'ts' after 'ts_before' (line l0)', the first few."""
    out = []
    for i in positions[:_SHOW]:
        r, r0 = int(index[i]), int(index[i - 1])
        text = (
            f"data row {r} (line {lines[r]}) {cells[r]!r} after {cells[r0]!r} "
            f"(line {lines[r0]})"
        )
        if values is not None:
            text += f", a step of {_fmt_step(values[i] - values[i - 1])}"
        out.append(text)
    more = f" and {len(positions) - _SHOW} more" if len(positions) > _SHOW else ""
    return "; ".join(out) + more


def _rows(rows, lines, cells) -> str:
    shown = ", ".join(f"{int(r)} (line {lines[int(r)]}, {cells[int(r)]!r})" for r in rows[:_SHOW])
    return shown + (f" and {len(rows) - _SHOW} more" if len(rows) > _SHOW else "")
