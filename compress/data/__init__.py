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
- The ``date`` column is checked: rows out of order, repeated timestamps and irregular
  steps are an error (or sorted / deduplicated on request, ``timestamps=``), except the
  known quirks of the standard weather.csv, which load unchanged with a warning.
- ``download(name)`` fetches a standard file (pinned sha256 where known) into the cache
  that ``load`` searches (``$COMPRESS_DATA``, default ``~/.cache/compress/data``);
  ``python -m compress.data list | download NAME`` from a shell.

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

from ._checks import SPLITS
from .fetch import DownloadError, download
from .generate import synthetic
from .loaders import available, load
from .timestamps import TimestampWarning
from .windows import WindowDataset, from_array

__all__ = [
    "DownloadError", "TimestampWarning", "WindowDataset", "available", "download",
    "from_array", "load", "synthetic",
]
