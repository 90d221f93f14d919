"""Benchmark data: standard splits, z-scoring, sliding windows, synthetic series.

``compress.data`` turns a forecasting benchmark (ETTh1/2, ETTm1/2, Weather, Exchange,
ILI, Electricity, Traffic) or any numeric CSV or array into windows of
``(past[L, C], future[H, C])`` with the splits and scaling the long-horizon forecasting
literature uses, so that numbers measured here are comparable with published ones:

- ETTh*: 12/4/4 months, borders at rows 8640, 11520, 14400;
  ETTm*: the same months at 15 minutes (34560, 46080, 57600);
  every other set: 70/10/20 % computed exactly as Informer / Autoformer /
  Time-Series-Library's ``Dataset_Custom`` does (``int(n * 0.7)``, ``int(n * 0.2)``,
  validation gets the rest).
- Validation and test windows start ``context_length`` rows before their border, so the
  first forecast target of the test split is the first test row.
- Every channel is z-scored with the mean and (population) standard deviation of the
  training rows only, as scikit-learn's ``StandardScaler`` fitted on the train split.

It is hand-written (``csv`` + numpy, no pandas) to keep ``import compress`` light and
the borders explicit and tested rather than implied by a dataframe library's defaults.
``synthetic`` generates seasonal/trend/regime-change series and KernelSynth-style
Gaussian-process series (Ansari et al., Chronos, 2024) for tests and pretraining mixes.

Example:
    >>> from compress import data
    >>> test = data.load("ETTh1", context_length=512, horizon=96, split="test")
    >>> past, future = test[0]            # [512, 7], [96, 7]
    >>> len(test), test.first_target_row
    (2785, 11520)
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["WindowDataset", "available", "from_array", "load", "synthetic"]

SPLITS = ("train", "val", "test")

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
_STANDARD_RATIOS = (0.7, 0.1, 0.2)

_ENV_VAR = "COMPRESS_DATA_DIR"
_PACKAGE_DATA = Path(__file__).resolve().parent / "_data"
_REPO_ROOT = Path(__file__).resolve().parent.parent
_MISSING_TOKENS = frozenset({"", "nan", "na", "n/a", "null", "none", "?"})


def available() -> tuple[str, ...]:
    """Names ``load`` accepts (aliases: exchange_rate, national_illness, illness, ecl).

    Example:
        >>> "ETTh1" in available()
        True
    """
    return tuple(_DATASETS)


# ----------------------------------------------------------------------------- windows


class WindowDataset(Dataset):
    """Sliding windows ``(past[L, C], future[H, C])`` over rows ``[start, end)`` of a series.

    Usually built by ``load`` or ``from_array``. Window ``i`` covers rows
    ``start + i * stride`` .. ``+ L + H``; its first target row is
    ``start + i * stride + context_length``.

    Args:
        values: the whole unscaled series, ``[T, C]`` (or ``[T]``).
        context_length: L, past rows per window.
        horizon: H, future rows per window.
        start: first row of this split (inclusive, counted in ``values``).
        end: last row of this split (exclusive); ``None`` means ``T``.
        mean: per-channel mean used for z-scoring (``[C]``); ``None`` means no scaling.
        std: per-channel standard deviation (``[C]``); ``None`` means no scaling.
        stride: step between consecutive windows.
        name: dataset name, for messages and reports.
        split: split name ("train", "val", "test" or anything descriptive).
        columns: channel names, ``C`` of them.

    Attributes:
        name, split, context_length, horizon, stride, start, end, n_channels, columns,
        mean, std (numpy float64 ``[C]``; zeros/ones when unscaled), scaled (bool),
        data (the scaled rows ``[end - start, C]`` as a float32 tensor).

    Example:
        >>> import numpy as np
        >>> ds = WindowDataset(np.arange(20.0), context_length=4, horizon=2)
        >>> len(ds), ds[0][0].shape, ds[0][1].shape
        (15, torch.Size([4, 1]), torch.Size([2, 1]))
    """

    def __init__(
        self,
        values,
        context_length: int,
        horizon: int,
        *,
        start: int = 0,
        end: int | None = None,
        mean=None,
        std=None,
        stride: int = 1,
        name: str = "series",
        split: str = "all",
        columns: Sequence[str] | None = None,
    ):
        _check_positive_int("context_length", context_length)
        _check_positive_int("horizon", horizon)
        _check_positive_int("stride", stride)
        values = np.asarray(values, dtype=np.float64)
        if values.ndim == 1:
            values = values[:, None]  # [T] -> [T, 1]
        if values.ndim != 2:
            raise ValueError(f"values must be [T, C] or [T]; got shape {values.shape}")
        n_rows, n_channels = values.shape
        end = n_rows if end is None else int(end)
        start = int(start)
        if not 0 <= start <= end <= n_rows:
            raise ValueError(
                f"{name}: split rows [{start}, {end}) do not fit a series of {n_rows} rows"
            )
        if columns is None:
            columns = [str(i) for i in range(n_channels)]
        columns = [str(c) for c in columns]
        if len(columns) != n_channels:
            raise ValueError(f"{len(columns)} column names for {n_channels} channels")

        self.name = name
        self.split = split
        self.context_length = int(context_length)
        self.horizon = int(horizon)
        self.stride = int(stride)
        self.start = start
        self.end = end
        self.n_channels = n_channels
        self.columns = columns
        self.scaled = mean is not None or std is not None
        self.mean = np.zeros(n_channels) if mean is None else np.asarray(mean, np.float64)
        self.std = np.ones(n_channels) if std is None else np.asarray(std, np.float64)
        if self.mean.shape != (n_channels,) or self.std.shape != (n_channels,):
            raise ValueError(
                f"mean and std must have shape ({n_channels},); "
                f"got {self.mean.shape} and {self.std.shape}"
            )

        n_split = end - start
        window = self.context_length + self.horizon
        if n_split < window:
            raise ValueError(
                f"{name} ({split} split): {n_split} rows (rows {start}..{end}) are fewer "
                f"than context_length + horizon = {self.context_length} + {self.horizon} "
                f"= {window}; use a shorter context_length or horizon, or a longer series"
            )
        segment = (values[start:end] - self.mean) / self.std  # [n_split, C], float64
        self.data = torch.from_numpy(segment.astype(np.float32))  # [n_split, C]
        self._len = (n_split - window) // self.stride + 1

    @property
    def first_target_row(self) -> int:
        """Row (in the source series) of the first forecast target of window 0."""
        return self.start + self.context_length

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = int(i)
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"window {i} out of range for {self._len} windows")
        s = i * self.stride
        m = s + self.context_length
        past = self.data[s:m].clone()  # [L, C]
        future = self.data[m : m + self.horizon].clone()  # [H, C]
        return past, future

    def inverse_transform(self, x):
        """Undo the z-scoring: ``x * std + mean`` over the last (channel) axis.

        Args:
            x: scaled values ``[..., C]``, numpy array or torch tensor.

        Returns:
            Values in the original units, same type (and, for tensors, dtype/device).

        Example:
            >>> ds = from_array(synthetic(length=400), 24, 12, split="test")
            >>> past, _ = ds[0]
            >>> ds.inverse_transform(past).shape
            torch.Size([24, 1])
        """
        if isinstance(x, torch.Tensor):
            std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device)
            mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device)
            return x * std + mean
        x = np.asarray(x)
        return x * self.std + self.mean

    def transform(self, x):
        """Apply this split's z-scoring (``(x - mean) / std``) to raw values ``[..., C]``.

        Example:
            >>> ds = from_array(synthetic(length=400), 24, 12)
            >>> ds.transform(ds.inverse_transform(ds[0][0])).shape
            torch.Size([24, 1])
        """
        if isinstance(x, torch.Tensor):
            std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device)
            mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device)
            return (x - mean) / std
        return (np.asarray(x) - self.mean) / self.std

    def loader(
        self,
        batch_size: int = 32,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        **kwargs,
    ) -> DataLoader:
        """A ``DataLoader`` over the windows, yielding ``(past[B, L, C], future[B, H, C])``.

        Shuffling draws from a generator seeded with ``seed``: two loaders made with the
        same seed give the same sequence of epochs.

        Args:
            batch_size: windows per batch.
            shuffle: reshuffle each epoch.
            drop_last: drop the last incomplete batch.
            seed: seed of the shuffling generator.
            **kwargs: passed to ``torch.utils.data.DataLoader`` (e.g. ``num_workers``).

        Example:
            >>> ds = from_array(synthetic(length=400), 24, 12)
            >>> past, future = next(iter(ds.loader(batch_size=8, shuffle=True)))
            >>> past.shape, future.shape
            (torch.Size([8, 24, 1]), torch.Size([8, 12, 1]))
        """
        _check_positive_int("batch_size", batch_size)
        generator = torch.Generator()
        generator.manual_seed(int(seed))
        return DataLoader(
            self,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            generator=generator,
            **kwargs,
        )

    def batches(
        self,
        batch_size: int = 32,
        limit: int | None = None,
        *,
        shuffle: bool = False,
        seed: int = 0,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Materialise batches as a list, e.g. for pruning calibration.

        Args:
            batch_size: windows per batch (the last batch may be smaller).
            limit: at most this many batches; ``None`` means all.
            shuffle: draw the windows in a random order (seeded) instead of in order,
                so a few batches cover the whole split.
            seed: seed for ``shuffle``.

        Returns:
            A list of ``(past[B, L, C], future[B, H, C])`` float32 tensors.

        Example:
            >>> ds = from_array(synthetic(length=400), 24, 12, split="val")
            >>> cal = ds.batches(4, limit=2)
            >>> len(cal), cal[0][0].shape
            (2, torch.Size([4, 24, 1]))
        """
        _check_positive_int("batch_size", batch_size)
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be a non-negative int or None; got {limit!r}")
        if shuffle:
            g = torch.Generator()
            g.manual_seed(int(seed))
            order = torch.randperm(self._len, generator=g)
        else:
            order = torch.arange(self._len)
        n_batches = math.ceil(self._len / batch_size)
        if limit is not None:
            n_batches = min(n_batches, limit)
        window = torch.arange(self.context_length + self.horizon)  # [L + H]
        out = []
        for b in range(n_batches):
            idx = order[b * batch_size : (b + 1) * batch_size]  # [B]
            rows = idx[:, None] * self.stride + window  # [B, L + H]
            x = self.data[rows]  # [B, L + H, C]
            past = x[:, : self.context_length].contiguous()  # [B, L, C]
            future = x[:, self.context_length :].contiguous()  # [B, H, C]
            out.append((past, future))
        return out

    def __repr__(self) -> str:
        return (
            f"WindowDataset(name={self.name!r}, split={self.split!r}, rows=[{self.start}, "
            f"{self.end}), context_length={self.context_length}, horizon={self.horizon}, "
            f"stride={self.stride}, n_channels={self.n_channels}, windows={self._len})"
        )


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
) -> WindowDataset:
    """Load a benchmark (by name) or a CSV (by path) as windows of one split.

    Names: ETTh1, ETTh2, ETTm1, ETTm2, weather, exchange (exchange_rate), ili
    (national_illness, illness), electricity (ecl), traffic; case-insensitive. A name is
    looked up as a file in: ``data_dir``; the directories in ``$COMPRESS_DATA_DIR``
    (``os.pathsep``-separated); the package's ``compress/_data`` (ships ETTh1);
    ``../shared/data`` beside the repository root; ``../shared/data`` from the working
    directory. A path whose file stem is a known name (``.../ETTm1.csv``) gets that
    set's borders; any other CSV gets the 70/10/20 borders.

    The CSV's ``date`` column and other non-numeric columns are dropped; all numeric
    columns are kept in file order.

    Args:
        name_or_path: dataset name or path to a CSV file.
        context_length: L, past rows per window.
        horizon: H, future rows per window.
        split: "train", "val" or "test".
        stride: step between consecutive windows.
        scale: z-score with the training rows' per-channel mean and std.
        columns: names of the channels to keep (in this order); ``None`` keeps all.
        data_dir: directory searched first for named datasets.

    Returns:
        A ``WindowDataset`` whose items are ``(past[L, C], future[H, C])`` float32.

    Raises:
        FileNotFoundError: the file is missing (the message lists where it looked).
        ValueError: unknown name, bad split, bad lengths, empty file, no numeric
            columns, missing values, unknown columns, series too short.

    Example:
        >>> train = load("ETTh1", context_length=96, horizon=96, split="train")
        >>> len(train), train.n_channels, train.columns[-1]
        (8449, 7, 'OT')
    """
    _check_positive_int("context_length", context_length)
    _check_positive_int("horizon", horizon)
    _check_positive_int("stride", stride)
    _check_split(split)

    path, dataset = _resolve(name_or_path, data_dir)
    header, numeric, lines = _read_csv(path)
    selected = _select_columns(path, header, numeric, columns)
    values = np.stack([numeric[c] for c in selected], axis=1)  # [T, C]
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


def from_array(
    array,
    context_length: int,
    horizon: int,
    split: str = "train",
    *,
    ratios: Sequence[float] = _STANDARD_RATIOS,
    stride: int = 1,
    scale: bool = True,
    columns: Sequence[str] | None = None,
    name: str = "array",
) -> WindowDataset:
    """Window an in-memory series with the same splits and scaling as ``load``.

    Borders follow ``Dataset_Custom``: ``n_train = int(T * ratios[0])``,
    ``n_test = int(T * ratios[2])``, validation gets the rest; val/test windows start
    ``context_length`` rows before their border. Statistics come from the train rows.

    Args:
        array: ``[T, C]`` or ``[T]`` numpy array, list or torch tensor.
        context_length: L, past rows per window.
        horizon: H, future rows per window.
        split: "train", "val" or "test".
        ratios: (train, val, test) fractions summing to 1.
        stride: step between consecutive windows.
        scale: z-score with the train rows' per-channel mean and std.
        columns: channel names (default "0", "1", ...).
        name: dataset name for messages and reports.

    Returns:
        A ``WindowDataset``.

    Example:
        >>> series = synthetic(length=1000, n_channels=3)   # [1000, 3]
        >>> test = from_array(series, 96, 24, split="test")
        >>> test.start, test.first_target_row, len(test)
        (704, 800, 177)
    """
    _check_positive_int("context_length", context_length)
    _check_positive_int("horizon", horizon)
    _check_positive_int("stride", stride)
    _check_split(split)
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    values = np.asarray(array, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]  # [T] -> [T, 1]
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] == 0:
        raise ValueError(
            f"{name}: expected a non-empty [T, C] or [T] array; got shape {values.shape}"
        )
    if columns is None:
        columns = [str(i) for i in range(values.shape[1])]
    columns = [str(c) for c in columns]
    if len(columns) != values.shape[1]:
        raise ValueError(f"{name}: {len(columns)} column names for {values.shape[1]} channels")
    _check_finite(name, values, columns)
    ratios = tuple(float(r) for r in ratios)
    if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"ratios must be three non-negative fractions summing to 1; got {ratios}")
    borders = _ratio_borders(values.shape[0], ratios)
    return _make_split(
        values, name, split, context_length, horizon, stride, scale, columns, borders
    )


def _ratio_borders(n_rows: int, ratios: Sequence[float]) -> tuple[int, int, int]:
    # exactly Dataset_Custom: int() truncation, validation takes the remainder
    num_train = int(n_rows * ratios[0])
    num_test = int(n_rows * ratios[2])
    num_vali = n_rows - num_train - num_test
    return num_train, num_train + num_vali, n_rows


def _make_split(values, name, split, context_length, horizon, stride, scale, columns, borders):
    train_end, val_end, test_end = borders
    if split == "train":
        start, end = 0, train_end
    elif split == "val":
        start, end = train_end - context_length, val_end
    else:
        start, end = val_end - context_length, test_end
    if start < 0:
        raise ValueError(
            f"{name} ({split} split): context_length {context_length} reaches before the "
            f"first row (the {split} border is row {start + context_length}); use "
            f"context_length <= {start + context_length}"
        )
    if end - start < context_length + horizon:
        own = f"{end - start} rows" if split == "train" else (
            f"{end - start - context_length} rows, {end - start} rows with the "
            f"{context_length} context rows before its border"
        )
        raise ValueError(
            f"{name}: the {split} split has {own} (rows {start}..{end} of "
            f"{values.shape[0]}), fewer than context_length + horizon = "
            f"{context_length} + {horizon} = {context_length + horizon}; use a shorter "
            f"context_length or horizon, or a longer series"
        )
    mean = std = None
    if scale:
        train = values[:train_end]  # [n_train, C]
        if train.shape[0] == 0:
            raise ValueError(f"{name}: the train split is empty; cannot compute scaling statistics")
        mean = train.mean(axis=0)
        std = train.std(axis=0)  # population std, as StandardScaler
        std = np.where(std > 0, std, 1.0)  # constant channel: leave unscaled, as StandardScaler
    return WindowDataset(
        values, context_length, horizon, start=start, end=end, mean=mean, std=std,
        stride=stride, name=name, split=split, columns=columns,
    )


def _search_dirs(data_dir) -> list[Path]:
    dirs = []
    if data_dir is not None:
        dirs.append(Path(data_dir))
    env = os.environ.get(_ENV_VAR, "")
    dirs.extend(Path(p) for p in env.split(os.pathsep) if p)
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
            f"Fix: download the file (the Autoformer / Time-Series-Library benchmark "
            f"copy) and pass its path, e.g. load('/path/to/{files[0]}', ...), or pass "
            f"data_dir=..., or set {_ENV_VAR} to the folder that holds it."
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


_CSV_CACHE: dict[tuple, tuple] = {}
_CSV_CACHE_SIZE = 4


def _read_csv(path: Path):
    """Parse a CSV into (header, {column: float64 [T]}, line numbers [T]). Cached."""
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key in _CSV_CACHE:
        return _CSV_CACHE[key]
    raw = path.read_bytes()
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
    for j, col in enumerate(header):
        if col.strip().lower() == "date" or col in numeric:
            continue  # timestamps are never a channel; duplicate names keep the first
        cells = [row[j] for row in rows]
        parsed = _parse_column(path, col, cells, lines)
        if parsed is not None:
            numeric[col] = parsed
    result = (header, numeric, np.asarray(lines))
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


# ----------------------------------------------------------------------------- synthetic

# KernelSynth bank (Ansari et al. 2024, Chronos, appendix): periods in steps of the series.
_KS_PERIODS = (24, 48, 96, 168, 336, 672, 7, 14, 30, 60, 365, 730, 4, 26, 52, 6, 12, 40, 10)
_KS_MAX_KERNELS = 5
_KS_MAX_GP_LENGTH = 1024


def synthetic(
    n_series: int = 1,
    length: int = 2048,
    n_channels: int = 1,
    *,
    seed: int = 0,
    trend: bool = True,
    seasonalities: Iterable[float] = (24, 168),
    noise: float = 0.1,
    regime_changes: int = 0,
    kernel_synth: bool = False,
):
    """Generate synthetic series for tests and pretraining mixes. Deterministic by seed.

    Default mode, per channel: a random level and linear trend, one sinusoid (plus a
    weaker second harmonic) per period in ``seasonalities`` with random amplitude and
    phase, and Gaussian noise of standard deviation ``noise``. ``regime_changes`` random
    change points (shared by the channels of a series) each add a level and a slope shift
    to the rest of the series.

    ``kernel_synth=True`` follows KernelSynth (Chronos): per channel, pick 1..5 kernels
    (with replacement) from a bank of ExpSineSquared (periods 4..730 steps), DotProduct,
    RBF, RationalQuadratic, White and Constant kernels, combine them with random + or x,
    and draw one sample of the zero-mean GP prior on normalised time [0, 1]. ``trend`` and
    ``seasonalities`` are then unused; ``noise`` and ``regime_changes`` still apply. The
    Cholesky runs on at most 1024 points: a longer series is the GP sample at 1024
    evenly spaced points, linearly interpolated, so periods shorter than about
    ``4 * length / 1024`` steps are smoothed away.

    Series ``i`` is the same whatever ``n_series`` is (seeds come from
    ``numpy.random.SeedSequence(seed).spawn``).

    Args:
        n_series: number of independent series.
        length: rows per series.
        n_channels: channels per series.
        seed: random seed.
        trend: add a random level and linear trend (default mode).
        seasonalities: periods, in steps (default mode).
        noise: standard deviation of added Gaussian noise.
        regime_changes: number of level/slope change points per series.
        kernel_synth: draw from a random Gaussian-process kernel instead.

    Returns:
        A float64 array ``[length, n_channels]``, or a list of ``n_series`` of them when
        ``n_series > 1``.

    Example:
        >>> x = synthetic(length=512, n_channels=2, seed=1)
        >>> x.shape
        (512, 2)
        >>> len(synthetic(n_series=3, length=256, kernel_synth=True))
        3
    """
    _check_positive_int("n_series", n_series)
    _check_positive_int("length", length)
    _check_positive_int("n_channels", n_channels)
    if (
        isinstance(regime_changes, bool)
        or not isinstance(regime_changes, (int, np.integer))
        or regime_changes < 0
    ):
        raise ValueError(f"regime_changes must be a non-negative int; got {regime_changes!r}")
    if regime_changes >= length:
        raise ValueError(f"regime_changes ({regime_changes}) must be fewer than length ({length})")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0; got {noise!r}")
    periods = tuple(float(p) for p in seasonalities)
    if any(not p > 0 for p in periods):
        raise ValueError(f"seasonalities must be positive periods (in steps); got {periods}")

    out = []
    for child in np.random.SeedSequence(seed).spawn(n_series):
        rng = np.random.default_rng(child)
        if kernel_synth:
            x = np.stack([_kernel_synth_sample(rng, length) for _ in range(n_channels)], axis=1)
        else:
            x = _structured_sample(rng, length, n_channels, trend, periods)
        x = x + _regime_shifts(rng, length, n_channels, regime_changes)
        if noise > 0:
            x = x + noise * rng.standard_normal((length, n_channels))
        out.append(x)  # [length, n_channels]
    return out[0] if n_series == 1 else out


def _structured_sample(rng, length, n_channels, trend, periods):
    t = np.arange(length, dtype=np.float64)[:, None]  # [T, 1]
    x = np.zeros((length, n_channels))
    if trend:
        level = rng.normal(0.0, 1.0, n_channels)
        slope = rng.normal(0.0, 1.0, n_channels) / length  # about +-1 over the series
        x += level + slope * t
    for p in periods:
        amp = rng.uniform(0.5, 1.5, n_channels)
        phase = rng.uniform(0, 2 * np.pi, n_channels)
        harmonic = rng.uniform(0.0, 0.3, n_channels)
        w = 2 * np.pi * t / p  # [T, 1]
        x += amp * (np.sin(w + phase) + harmonic * np.sin(2 * (w + phase)))
    return x  # [T, C]


def _regime_shifts(rng, length, n_channels, k):
    x = np.zeros((length, n_channels))
    if k == 0:
        return x
    lo, hi = max(1, length // 10), max(2, length - length // 10)
    points = np.sort(rng.choice(np.arange(lo, hi), size=min(k, hi - lo), replace=False))
    t = np.arange(length, dtype=np.float64)[:, None]  # [T, 1]
    for c in points:
        level = rng.normal(0.0, 1.0, n_channels)
        slope = rng.normal(0.0, 2.0, n_channels) / length
        after = (t >= c).astype(np.float64)  # [T, 1]
        x += after * (level + slope * (t - c))
    return x  # [T, C]


def _ks_kernel(rng, length):
    """One random bank kernel: x [n] -> K [n, n], x in [0, 1] spanning `length` steps."""
    kind = rng.integers(5 + 1)  # periodic, dot, rbf, rq, white, constant
    if kind == 0:
        p = _KS_PERIODS[rng.integers(len(_KS_PERIODS))] / length
        return lambda x: np.exp(-2.0 * np.sin(np.pi * np.abs(x[:, None] - x[None, :]) / p) ** 2)
    if kind == 1:
        sigma0 = (0.0, 1.0, 10.0)[rng.integers(3)]
        return lambda x: sigma0**2 + x[:, None] * x[None, :]
    if kind == 2:
        ls = (0.1, 1.0, 10.0)[rng.integers(3)]
        return lambda x: np.exp(-((x[:, None] - x[None, :]) ** 2) / (2 * ls**2))
    if kind == 3:
        alpha = (0.1, 1.0, 10.0)[rng.integers(3)]
        return lambda x: (1 + (x[:, None] - x[None, :]) ** 2 / (2 * alpha)) ** -alpha
    if kind == 4:
        level = (0.1, 1.0)[rng.integers(2)]
        return lambda x: level * np.eye(len(x))
    return lambda x: np.ones((len(x), len(x)))


def _kernel_synth_sample(rng, length):
    n = min(length, _KS_MAX_GP_LENGTH)
    # periods are in steps of the full series: scale by length, not n
    x = np.linspace(0.0, 1.0, n)
    k = int(rng.integers(1, _KS_MAX_KERNELS + 1))
    kernels = [_ks_kernel(rng, length) for _ in range(k)]
    K = kernels[0](x)
    for kern in kernels[1:]:
        K = K + kern(x) if rng.random() < 0.5 else K * kern(x)
    z = rng.standard_normal(n)
    sample = _gp_sample(K, z)  # [n]
    if n < length:
        sample = np.interp(np.linspace(0.0, 1.0, length), x, sample)
    return sample  # [length]


def _gp_sample(K, z):
    scale = max(1.0, float(np.abs(np.diag(K)).max()))
    for jitter in (1e-8, 1e-6, 1e-4):
        try:
            chol = np.linalg.cholesky(K + jitter * scale * np.eye(len(K)))
            return chol @ z
        except np.linalg.LinAlgError:
            continue
    w, v = np.linalg.eigh(K)  # fall back: clip tiny negative eigenvalues
    return v @ (np.sqrt(np.clip(w, 0.0, None)) * z)
