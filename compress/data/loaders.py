"""Standard benchmark files: the dataset registry, where files are found, CSV parsing.

``load`` resolves a benchmark name (or a path) to a CSV file, parses it without pandas
(``csv`` + numpy, to keep ``import compress`` light and the borders explicit), and cuts
the split with the literature's borders (ETT 12/4/4 months, the rest 70/10/20 %).
"""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from . import timestamps as _timestamps
from ._checks import _check_finite, _check_positive_int, _check_split
from .windows import _STANDARD_RATIOS, WindowDataset, _make_split, _ratio_borders

# canonical name -> (candidate file names, border rule)
_DATASETS: dict[str, tuple[tuple[str, ...], str]] = {
    "ETTh1": (("ETTh1.csv",), "ett_hour"),
    "ETTh2": (("ETTh2.csv",), "ett_hour"),
    "ETTm1": (("ETTm1.csv",), "ett_minute"),
    "ETTm2": (("ETTm2.csv",), "ett_minute"),
    "weather": (("weather.csv",), "ratio"),
    "exchange": (("exchange_rate.csv",), "ratio"),
    "ili": (("national_illness.csv",), "ratio"),
    "electricity": (("electricity.csv", "ECL.csv"), "ratio"),
    "traffic": (("traffic.csv",), "ratio"),
}
_ALIASES = {
    "exchange_rate": "exchange",
    "national_illness": "ili",
    "illness": "ili",
    "ecl": "electricity",
}
_LOOKUP = {name.lower(): name for name in _DATASETS}
_LOOKUP.update(_ALIASES)
# file stem -> dataset, so a path such as /my/data/ETTh2.csv gets the ETT borders
_STEMS = {Path(f).stem.lower(): name for name, (files, _) in _DATASETS.items() for f in files}

_ETT_HOUR = (12 * 30 * 24, 16 * 30 * 24, 20 * 30 * 24)  # 8640, 11520, 14400
_ETT_MINUTE = tuple(4 * b for b in _ETT_HOUR)  # 34560, 46080, 57600

_ENV_VAR = "COMPRESS_DATA_DIR"
_CACHE_ENV = "COMPRESS_DATA"  # compress.data.download's cache folder
_PACKAGE_DATA = Path(__file__).resolve().parent.parent / "_data"
_REPO_ROOT = Path(__file__).resolve().parent.parent.parent
_MISSING_TOKENS = frozenset({"", "nan", "na", "n/a", "null", "none", "?"})


def available() -> tuple[str, ...]:
    """Names ``load`` accepts (aliases: exchange_rate, national_illness, illness, ecl).

    Example:
        >>> "ETTh1" in available()
        True
    """
    return tuple(_DATASETS)


# ----------------------------------------------------------------------------- windows


# ----------------------------------------------------------------------------- loading


def load(
    name_or_path: str | os.PathLike,
    context_length: int,
    horizon: int,
    split: str = "train",
    *,
    stride: int = 1,
    scale: bool = True,
    columns: Sequence[str] | None = None,
    data_dir: str | os.PathLike | None = None,
    timestamps: str = "check",
) -> WindowDataset:
    """Load a benchmark (by name) or a CSV (by path) as windows of one split.

    Names: ETTh1, ETTh2, ETTm1, ETTm2, weather, exchange (exchange_rate), ili
    (national_illness, illness), electricity (ecl), traffic; case-insensitive. A name is
    looked up as a file in: ``data_dir``; the directories in ``$COMPRESS_DATA_DIR``
    (``os.pathsep``-separated); the download cache (``$COMPRESS_DATA``, default
    ``~/.cache/compress/data``: where ``compress.data.download`` puts files); the package's ``compress/_data`` (ships ETTh1);
    ``../shared/data`` beside the repository root; ``../shared/data`` from the working
    directory. A path whose file stem is a known name (``.../ETTm1.csv``) gets that
    set's borders; any other CSV gets the 70/10/20 borders.

    The CSV's ``date`` column and other non-numeric columns are dropped; all numeric
    columns are kept in file order. The ``date`` column is checked first (see
    ``timestamps``): rows out of time order, repeated timestamps and irregular steps are an
    error by default, because windows over them would be silently wrong.

    Args:
        name_or_path: dataset name or path to a CSV file.
        context_length: L, past rows per window.
        horizon: H, future rows per window.
        split: "train", "val" or "test".
        stride: step between consecutive windows.
        scale: z-score with the training rows' per-channel mean and std.
        columns: names of the channels to keep (in this order); ``None`` keeps all.
        data_dir: directory searched first for named datasets.
        timestamps: what to do with the ``date`` column: "check" (default: rows out of
            order, repeated timestamps or an irregular step are a ``ValueError`` naming
            them; the known quirks of the standard weather.csv only warn, so its published
            borders hold), "sort" (sort rows by time), "dedupe" (sort, keep the first row of
            each repeated timestamp); with "sort" / "dedupe" a remaining irregular step is a
            ``TimestampWarning``; "ignore" (file order, unchecked). See
            ``compress.data.timestamps``.

    Returns:
        A ``WindowDataset`` whose items are ``(past[L, C], future[H, C])`` float32.

    Raises:
        FileNotFoundError: the file is missing (the message lists where it looked).
        ValueError: unknown name, bad split, bad lengths, empty file, no numeric
            columns, missing values, unknown columns, series too short, timestamps out of
            order / repeated / irregular / unreadable (under ``timestamps="check"``).

    Example:
        >>> train = load("ETTh1", context_length=96, horizon=96, split="train")
        >>> len(train), train.n_channels, train.columns[-1]
        (8449, 7, 'OT')
    """
    _check_positive_int("context_length", context_length)
    _check_positive_int("horizon", horizon)
    _check_positive_int("stride", stride)
    _check_split(split)
    if timestamps not in _timestamps.POLICIES:
        raise ValueError(
            f"timestamps={timestamps!r} is not a policy; use one of "
            f"{_timestamps.POLICIES} (default 'check')"
        )

    path, dataset = _resolve(name_or_path, data_dir)
    header, numeric, lines, times = _read_csv(path)
    selected = _select_columns(path, header, numeric, columns)
    values = np.stack([numeric[c] for c in selected], axis=1)  # [T, C]
    order = _timestamps.apply(path, times, lines, timestamps, dataset)
    if order is not None:
        values, lines = values[order], lines[order]
    _check_finite(path, values, selected, lines)

    name = dataset if dataset is not None else path.stem
    rule = _DATASETS[dataset][1] if dataset is not None else "ratio"
    n_rows = values.shape[0]
    if rule == "ratio":
        train_end, val_end, test_end = _ratio_borders(n_rows, _STANDARD_RATIOS)
    else:
        train_end, val_end, test_end = _ETT_HOUR if rule == "ett_hour" else _ETT_MINUTE
        if n_rows < test_end:
            raise ValueError(
                f"{name} ({path}): the standard {name[:4]} borders need {test_end} rows, "
                f"the file has {n_rows}; is this the original ETDataset file?"
            )
    return _make_split(
        values, name, split, context_length, horizon, stride, scale, selected,
        (train_end, val_end, test_end),
    )



def _cache_dir() -> Path:
    """``$COMPRESS_DATA``, else ``$XDG_CACHE_HOME/compress/data``, else ``~/.cache/compress/data``."""
    env = os.environ.get(_CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "compress" / "data"


def _search_dirs(data_dir) -> list[Path]:
    dirs = []
    if data_dir is not None:
        dirs.append(Path(data_dir))
    env = os.environ.get(_ENV_VAR, "")
    dirs.extend(Path(p) for p in env.split(os.pathsep) if p)
    dirs.append(_cache_dir())
    dirs.append(_PACKAGE_DATA)
    dirs.append(_REPO_ROOT.parent / "shared" / "data")
    dirs.append(Path.cwd().parent / "shared" / "data")
    unique = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def _resolve(name_or_path, data_dir) -> tuple[Path, str | None]:
    """Return (file path, canonical dataset name or None)."""
    if isinstance(name_or_path, str) and name_or_path.lower() in _LOOKUP:
        dataset = _LOOKUP[name_or_path.lower()]
        files = _DATASETS[dataset][0]
        dirs = _search_dirs(data_dir)
        for d in dirs:
            for f in files:
                if (d / f).is_file():
                    return d / f, dataset
        looked = "\n  ".join(str(d / f) for d in dirs for f in files)
        raise FileNotFoundError(
            f"dataset {dataset!r}: no {' or '.join(files)} found. Looked in:\n  {looked}\n"
            f"Fix: compress.data.download({dataset!r}) (or `python -m compress.data download "
            f"{dataset}`) fetches it to {_cache_dir() / files[0]}; or put the file there "
            f"by hand, pass its path (load('/path/to/{files[0]}', ...)), pass data_dir=..., "
            f"or set {_ENV_VAR} to the folder that holds it."
        )
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(
            f"name_or_path must be a dataset name or a path; got {type(name_or_path).__name__}"
        )
    text = os.fspath(name_or_path)
    looks_like_path = (
        not isinstance(name_or_path, str)
        or text.lower().endswith((".csv", ".txt"))
        or os.sep in text
        or (os.altsep is not None and os.altsep in text)
        or os.path.exists(text)
    )
    if not looks_like_path:
        raise ValueError(
            f"unknown dataset {text!r}. Known names: {', '.join(_DATASETS)} "
            f"(aliases: {', '.join(_ALIASES)}). Or pass a path to a CSV file."
        )
    path = Path(text).expanduser()
    if not path.is_file():
        where = "is a directory, not a CSV file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(
            f"{path} {where} (resolved from the working directory {Path.cwd()}). "
            f"Fix: pass the path to an existing CSV file, or a dataset name "
            f"({', '.join(_DATASETS)})."
        )
    return path, _STEMS.get(path.stem.lower())


_CSV_CACHE: dict[str, tuple] = {}
_CSV_CACHE_SIZE = 4


def _read_csv(path: Path):
    """Parse a CSV into (header, {column: float64 [T]}, line numbers [T], Times).

    Cached on the sha256 of the bytes (not on path, size and mtime: a file rewritten with
    the same size within the file system's mtime resolution would be served stale).
    """
    raw = path.read_bytes()
    key = hashlib.sha256(raw).hexdigest()
    if key in _CSV_CACHE:
        return _CSV_CACHE[key]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # e.g. weather.csv copies with Latin-1 unit symbols
    reader = csv.reader(text.splitlines())
    header = None
    rows, lines = [], []
    for row in reader:
        if not row or all(not cell.strip() for cell in row):
            continue  # blank line
        if header is None:
            header = row
            continue
        if len(row) != len(header):
            raise ValueError(
                f"{path}: line {reader.line_num} has {len(row)} fields, the header has "
                f"{len(header)}; fix or remove that line"
            )
        rows.append(row)
        lines.append(reader.line_num)
    if header is None:
        raise ValueError(f"{path} is empty; expected a header line (date,col1,...) and data rows")
    if not rows:
        raise ValueError(f"{path} has a header but no data rows; expected one row per time step")

    numeric: dict[str, np.ndarray] = {}
    date_column = None
    for j, col in enumerate(header):
        if col.strip().lower() == "date":
            if date_column is None:
                date_column = j
            continue  # timestamps are never a channel
        if col in numeric:
            continue  # duplicate names keep the first
        cells = [row[j] for row in rows]
        parsed = _parse_column(path, col, cells, lines)
        if parsed is not None:
            numeric[col] = parsed
    if date_column is None:
        times = _timestamps.parse(None, ())
    else:
        times = _timestamps.parse(header[date_column], [row[date_column] for row in rows])
    result = (header, numeric, np.asarray(lines), times)
    if len(_CSV_CACHE) >= _CSV_CACHE_SIZE:
        _CSV_CACHE.pop(next(iter(_CSV_CACHE)))
    _CSV_CACHE[key] = result
    return result


def _parse_column(path, col, cells, lines):
    """float64 [T] for a numeric column (missing -> NaN), None for a text column."""
    try:
        return np.asarray(cells, dtype=np.float64)
    except ValueError:
        pass
    out = np.empty(len(cells))
    bad = None
    n_numbers = 0
    for i, cell in enumerate(cells):
        token = cell.strip()
        if token.lower() in _MISSING_TOKENS:
            out[i] = np.nan
            continue
        try:
            out[i] = float(token)
            n_numbers += 1
        except ValueError:
            if bad is None:
                bad = i
    if bad is None:
        return out
    if n_numbers == 0:
        return None  # a text column (labels, timestamps): dropped
    raise ValueError(
        f"{path}: column {col!r} is numeric but line {lines[bad]} (data row {bad}) holds "
        f"{cells[bad]!r}; fix the value, or leave it out with columns=[...]"
    )


def _select_columns(path, header, numeric, columns) -> list[str]:
    if columns is None:
        if not numeric:
            raise ValueError(
                f"{path}: no numeric columns (header: {', '.join(header)}); expected a "
                f"'date' column followed by one numeric column per channel"
            )
        return list(numeric)
    if isinstance(columns, str):
        columns = [columns]
    selected = list(columns)
    if not selected:
        raise ValueError("columns= is empty; pass None to keep all numeric columns")
    for c in selected:
        if not isinstance(c, str):
            raise TypeError(f"columns= takes column names (str); got {c!r}")
    missing = [c for c in selected if c not in numeric]
    if missing:
        text = [c for c in missing if c in header]
        absent = [c for c in missing if c not in header]
        parts = []
        if absent:
            parts.append(f"not in the file: {absent}")
        if text:
            parts.append(f"not numeric: {text}")
        raise ValueError(
            f"{path}: requested columns {'; '.join(parts)}. Numeric columns available: "
            f"{list(numeric)}"
        )
    return selected
