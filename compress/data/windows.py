"""Sliding windows, standard split borders and train-statistics z-scoring.

``WindowDataset`` is what every loader returns; ``from_array`` windows an in-memory
series with the ``Dataset_Custom`` borders (Informer / Autoformer / Time-Series-Library:
``int(n * 0.7)`` train, ``int(n * 0.2)`` test, validation the rest), with validation and
test windows starting ``context_length`` rows before their border.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ._checks import _check_finite, _check_positive_int, _check_split

_STANDARD_RATIOS = (0.7, 0.1, 0.2)


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
