"""Synthetic series for tests and pretraining mixes.

Seasonal + trend + noise + regime-change series, and KernelSynth-style Gaussian-process
series (Ansari et al., Chronos, 2024), deterministic by seed.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from ._checks import _check_positive_int

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
