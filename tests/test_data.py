"""compress.data: standard borders, train-only scaling, windows, errors, synthetic series."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

import compress.data as data  # a submodule import, independent of compress.__getattr__

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED = ROOT / "compress" / "_data" / "ETTh1.csv"
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("COMPRESS_DATA_DIR", raising=False)
    monkeypatch.setenv("COMPRESS_DATA", str(tmp_path / "empty_download_cache"))


def _raw_etth1():
    return np.loadtxt(EMBEDDED, delimiter=",", skiprows=1, usecols=range(1, 8))  # [17420, 7]


def _ts(i, step_minutes=60):
    """ISO timestamp of row i of a regular series (2020-01-01 00:00 + i steps)."""
    t = np.datetime64("2020-01-01T00:00") + np.timedelta64(i * step_minutes, "m")
    return str(t).replace("T", " ") + ":00"


def _write(path, text):
    path.write_text(text)
    return path


def _csv(path, n_rows, n_channels=2, header=None):
    header = header or ["date"] + [f"c{j}" for j in range(n_channels)]
    rng = np.random.default_rng(0)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i in range(n_rows):
            w.writerow([_ts(i)] + [f"{v:.6f}" for v in rng.normal(size=len(header) - 1)])
    return path


# ---------------------------------------------------------------- borders and scaling


def test_embedded_etth1_is_byte_identical_to_the_shared_copy():
    if not (SHARED / "ETTh1.csv").exists():
        pytest.skip("no ../shared/data/ETTh1.csv")
    assert EMBEDDED.read_bytes() == (SHARED / "ETTh1.csv").read_bytes()
    assert (EMBEDDED.parent / "ETT_LICENSE.txt").exists()


@pytest.mark.parametrize("L,H", [(512, 96), (96, 96), (336, 720)])
def test_etth1_window_counts_follow_the_12_4_4_month_borders(L, H):
    train = data.load("ETTh1", L, H, "train")
    val = data.load("ETTh1", L, H, "val")
    test = data.load("ETTh1", L, H, "test")
    assert len(train) == 8640 - L - H + 1
    assert len(val) == 2880 - H + 1
    assert len(test) == 2880 - H + 1
    assert (train.start, train.end) == (0, 8640)
    assert (val.start, val.end) == (8640 - L, 11520)
    assert (test.start, test.end) == (11520 - L, 14400)
    assert val.first_target_row == 8640 and test.first_target_row == 11520


def test_test_targets_start_at_the_border_and_are_scaled_with_train_statistics():
    raw = _raw_etth1()
    mean, std = raw[:8640].mean(0), raw[:8640].std(0)
    L, H = 512, 96
    test = data.load("ETTh1", L, H, "test")
    np.testing.assert_allclose(test.mean, mean, rtol=1e-10)
    np.testing.assert_allclose(test.std, std, rtol=1e-10)
    past, future = test[0]
    assert past.shape == (L, 7) and future.shape == (H, 7) and past.dtype == torch.float32
    expected = (raw[11520 : 11520 + H] - mean) / std
    np.testing.assert_allclose(future.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(past.numpy(), (raw[11520 - L : 11520] - mean) / std, rtol=1e-5, atol=1e-5)
    last_past, last_future = test[-1]
    np.testing.assert_allclose(last_future[-1].numpy(), (raw[14399] - mean) / std, rtol=1e-5, atol=1e-5)


def test_scaling_statistics_come_from_the_train_rows_only():
    raw = _raw_etth1()
    train = data.load("ETTh1", 96, 96, "train")
    test = data.load("ETTh1", 96, 96, "test")
    np.testing.assert_allclose(train.mean, raw[:8640].mean(0))
    np.testing.assert_array_equal(train.mean, test.mean)
    np.testing.assert_array_equal(train.std, test.std)
    assert not np.allclose(test.mean, raw[:14400].mean(0))
    # from_array (70/10/20): changing every row past int(0.7 T) leaves the statistics alone
    n_train = int(len(raw) * 0.7)
    changed = raw.copy()
    changed[n_train:] *= 100.0
    a = data.from_array(raw, 96, 96, "val")
    b = data.from_array(changed, 96, 96, "val")
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.std, b.std)
    np.testing.assert_allclose(a.mean, raw[:n_train].mean(0))
    assert a.scaled and not data.load("ETTh1", 96, 96, "test", scale=False).scaled


def test_unscaled_windows_are_raw_values_and_inverse_transform_round_trips():
    raw = _raw_etth1()
    test = data.load("ETTh1", 96, 24, "test", scale=False)
    np.testing.assert_allclose(test[0][1].numpy(), raw[11520:11544], rtol=1e-6)
    scaled = data.load("ETTh1", 96, 24, "test")
    past, _ = scaled[0]
    np.testing.assert_allclose(scaled.inverse_transform(past).numpy(), raw[11424:11520], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scaled.inverse_transform(past.numpy()), raw[11424:11520], rtol=1e-4, atol=1e-4)


def test_stride_and_column_selection():
    ds = data.load("ETTh1", 96, 96, "test", stride=24, columns=["OT", "HUFL"])
    assert len(ds) == (2880 + 96 - 96 - 96) // 24 + 1
    assert ds.columns == ["OT", "HUFL"] and ds.n_channels == 2
    raw = _raw_etth1()
    full = data.load("ETTh1", 96, 96, "test")
    np.testing.assert_allclose(ds[1][0][:, 0].numpy(), full[24][0][:, 6].numpy())
    assert ds[1][0][0, 1] == full[24][0][0, 0]
    assert raw.shape[1] == 7


def test_ratio_borders_match_dataset_custom():
    T = 1001
    x = np.arange(T, dtype=float)
    n_train, n_test = int(T * 0.7), int(T * 0.2)
    n_val = T - n_train - n_test
    L, H = 48, 12
    train = data.from_array(x, L, H, "train", scale=False)
    val = data.from_array(x, L, H, "val", scale=False)
    test = data.from_array(x, L, H, "test", scale=False)
    assert (train.start, train.end) == (0, n_train)
    assert (val.start, val.end) == (n_train - L, n_train + n_val)
    assert (test.start, test.end) == (T - n_test - L, T)
    assert test[0][1][0, 0].item() == T - n_test
    assert len(test) == n_test - H + 1
    assert val[0][1][0, 0].item() == n_train


def test_names_are_case_insensitive_and_aliases_resolve(tmp_path):
    _csv(tmp_path / "exchange_rate.csv", 300, 3)
    a = data.load("exchange", 24, 12, data_dir=tmp_path)
    b = data.load("Exchange_Rate", 24, 12, data_dir=tmp_path)
    assert a.name == b.name == "exchange" and len(a) == len(b)
    assert data.load("etth1", 24, 12).name == "ETTh1"


def test_lookup_order_data_dir_then_env_then_embedded(tmp_path, monkeypatch):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    _csv(first / "weather.csv", 400, 2)
    _csv(second / "weather.csv", 400, 3)
    monkeypatch.setenv("COMPRESS_DATA_DIR", str(second))
    assert data.load("weather", 24, 12, data_dir=first).n_channels == 2
    assert data.load("weather", 24, 12, data_dir=tmp_path / "nothing_here").n_channels == 3
    assert data.load("weather", 24, 12).n_channels == 3
    monkeypatch.setenv("COMPRESS_DATA_DIR", str(tmp_path / "empty"))
    assert data.load("ETTh1", 24, 12).n_channels == 7  # embedded copy


def test_path_with_known_stem_gets_that_datasets_borders():
    ds = data.load(EMBEDDED, 96, 96, "test")
    assert ds.name == "ETTh1" and ds.first_target_row == 11520


def test_weather_loads_with_21_channels():
    if not (SHARED / "weather.csv").exists():
        pytest.skip("no ../shared/data/weather.csv")
    ds = data.load(SHARED / "weather.csv", 96, 96, "test")
    assert ds.n_channels == 21 and ds.columns[-1] == "OT" and ds.columns[0] == "p (mbar)"
    n = 52696
    assert ds.start == n - int(n * 0.2) - 96
    assert len(ds) == 10444  # the figure every long-horizon paper's loader gives
    assert torch.isfinite(ds[0][0]).all()


def test_latin1_file_reads(tmp_path):
    path = tmp_path / "w.csv"
    path.write_bytes("date,SWDR (W/m\xb2),OT\r\n".encode("latin-1") + b"".join(
        f"{_ts(i)},{i}.5,{i}\r\n".encode() for i in range(200)))
    ds = data.load(path, 24, 12)
    assert ds.columns == ["SWDR (W/m\xb2)", "OT"]


# ---------------------------------------------------------------- loaders


def test_loader_shuffling_is_deterministic_by_seed():
    ds = data.from_array(data.synthetic(length=600, n_channels=2), 24, 12)

    def first_batches(seed):
        return [p for p, _ in list(ds.loader(batch_size=16, shuffle=True, seed=seed))[:3]]

    a, b, c = first_batches(0), first_batches(0), first_batches(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    past, future = next(iter(ds.loader(batch_size=16)))
    assert past.shape == (16, 24, 2) and future.shape == (16, 12, 2)
    assert torch.equal(past[3], ds[3][0])
    assert len(list(ds.loader(batch_size=16, drop_last=True))) == len(ds) // 16


def test_batches_match_getitem_and_respect_limit():
    ds = data.load("ETTh1", 96, 24, "val", stride=3)
    cal = ds.batches(8, limit=2)
    assert len(cal) == 2 and cal[0][0].shape == (8, 96, 7) and cal[0][1].shape == (8, 24, 7)
    assert torch.equal(cal[1][0][5], ds[13][0]) and torch.equal(cal[1][1][5], ds[13][1])
    every = ds.batches(1000)
    assert sum(p.shape[0] for p, _ in every) == len(ds)
    shuffled = ds.batches(8, limit=1, shuffle=True, seed=3)
    assert torch.equal(shuffled[0][0], ds.batches(8, limit=1, shuffle=True, seed=3)[0][0])


def test_items_are_copies():
    ds = data.from_array(np.arange(100.0), 10, 5, scale=False)
    past, _ = ds[0]
    past += 1000
    assert ds[0][0][0, 0].item() == 0.0


# ---------------------------------------------------------------- errors


def test_missing_file_says_where_it_looked_and_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        data.load("traffic", 96, 96, data_dir=tmp_path)
    msg = str(e.value)
    assert "traffic.csv" in msg and str(tmp_path) in msg and "COMPRESS_DATA_DIR" in msg
    assert "compress.data.download('traffic')" in msg
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load(tmp_path / "nope.csv", 96, 96)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="ETTh1.*weather"):
        data.load("ettx9", 96, 96)


def test_no_numeric_columns(tmp_path):
    path = _write(tmp_path / "t.csv", "date,label\n2020,a\n2021,b\n")
    with pytest.raises(ValueError, match="no numeric columns"):
        data.load(path, 1, 1)


def test_nans_are_reported_with_column_and_rows(tmp_path):
    lines = ["date,a,b"] + [f"{_ts(i)},{i},{'' if i in (7, 9) else i}" for i in range(200)]
    lines[1 + 150] = f"{_ts(150)},nan,150"
    path = _write(tmp_path / "n.csv", "\n".join(lines) + "\n")
    with pytest.raises(ValueError) as e:
        data.load(path, 24, 12)
    msg = str(e.value)
    assert "'b'" in msg and "7, 9" in msg and "'a'" in msg and "150" in msg
    assert "file lines 9, 11" in msg  # header is line 1
    assert "Fix" in msg
    with pytest.raises(ValueError, match="'a'.*150"):
        data.load(path, 24, 12, columns=["a"])


def test_nan_in_a_column_not_selected_is_fine(tmp_path):
    lines = ["date,a,b"] + [f"{_ts(i)},{i},{'' if i == 5 else i}" for i in range(200)]
    path = _write(tmp_path / "n.csv", "\n".join(lines) + "\n")
    assert data.load(path, 24, 12, columns=["a"]).n_channels == 1


def test_text_in_a_numeric_column_names_the_line(tmp_path):
    lines = ["date,a"] + [f"{_ts(i)},{i}" for i in range(50)]
    lines[11] = f"{_ts(10)},oops"
    path = _write(tmp_path / "x.csv", "\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="'a'.*line 12.*oops"):
        data.load(path, 4, 2)


def test_empty_and_header_only_files(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        data.load(_write(tmp_path / "e.csv", ""), 4, 2)
    with pytest.raises(ValueError, match="no data rows"):
        data.load(_write(tmp_path / "h.csv", "date,a\n"), 4, 2)


def test_missing_requested_column_lists_the_available_ones(tmp_path):
    path = _csv(tmp_path / "c.csv", 100, 2)
    with pytest.raises(ValueError, match="'zz'.*c0.*c1"):
        data.load(path, 8, 4, columns=["c0", "zz"])
    with pytest.raises(ValueError, match="not numeric"):
        data.load(path, 8, 4, columns=["date"])


def test_short_series_reports_the_lengths(tmp_path):
    path = _csv(tmp_path / "s.csv", 100, 1)
    with pytest.raises(ValueError, match=r"10 rows.*34 rows.*24 \+ 12 = 36"):
        data.load(path, 24, 12, "val")  # val: 10 rows + 24 context = 34 < 36
    with pytest.raises(ValueError, match="fewer than context_length"):
        data.load(path, 64, 12, "train")
    with pytest.raises(ValueError, match="reaches before the first row"):
        data.load(path, 90, 1, "test")


def test_bad_split_and_lengths():
    with pytest.raises(ValueError, match="split must be one of"):
        data.load("ETTh1", 96, 96, "validation")
    for L, H in [(0, 96), (96, -1), (96.0, 96), (True, 96)]:
        with pytest.raises(ValueError, match="positive int"):
            data.load("ETTh1", L, H)


# ---------------------------------------------------------------- synthetic and arrays


def test_synthetic_shape_and_determinism():
    a = data.synthetic(length=500, n_channels=3, seed=7, regime_changes=2)
    b = data.synthetic(length=500, n_channels=3, seed=7, regime_changes=2)
    c = data.synthetic(length=500, n_channels=3, seed=8, regime_changes=2)
    assert a.shape == (500, 3) and np.array_equal(a, b) and not np.allclose(a, c)
    many = data.synthetic(n_series=3, length=500, n_channels=3, seed=7, regime_changes=2)
    assert isinstance(many, list) and len(many) == 3
    assert np.array_equal(many[0], a)  # series i does not depend on n_series
    assert np.isfinite(a).all()


def test_synthetic_seasonality_shows_in_the_spectrum():
    for period in (24, 50):
        x = data.synthetic(length=2400, seasonalities=(period,), trend=False, noise=0.3, seed=1)[:, 0]
        spectrum = np.abs(np.fft.rfft(x - x.mean()))
        peak = int(np.argmax(spectrum[1:]) + 1)
        assert abs(peak - 2400 / period) <= 1


def test_regime_changes_shift_the_level():
    base = data.synthetic(length=1000, trend=False, seasonalities=(), noise=0.0)
    assert np.allclose(base, 0.0)
    shifted = data.synthetic(length=1000, trend=False, seasonalities=(), noise=0.0, regime_changes=1)
    assert shifted[0, 0] == 0.0 and np.abs(shifted[-1, 0]) > 0


def test_kernel_synth_runs_and_is_deterministic():
    a = data.synthetic(n_series=4, length=300, n_channels=2, kernel_synth=True, seed=3)
    b = data.synthetic(n_series=4, length=300, n_channels=2, kernel_synth=True, seed=3)
    assert all(x.shape == (300, 2) and np.isfinite(x).all() for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert len({round(float(x.std()), 6) for x in a}) > 1  # different kernels per series
    long = data.synthetic(length=1500, kernel_synth=True, noise=0.0, seed=5)
    assert long.shape == (1500, 1) and np.isfinite(long).all()


def test_from_array_windows_synthetic_series_like_files():
    x = data.synthetic(length=1000, n_channels=2, seed=0)
    train = data.from_array(x, 96, 24)
    test = data.from_array(torch.tensor(x), 96, 24, "test", columns=["a", "b"])
    assert len(train) == 700 - 120 + 1 and test.columns == ["a", "b"]
    np.testing.assert_allclose(test.mean, x[:700].mean(0))
    np.testing.assert_allclose(test[0][1].numpy(), (x[800:824] - x[:700].mean(0)) / x[:700].std(0), rtol=1e-5, atol=1e-5)
    custom = data.from_array(x, 96, 24, "val", ratios=(0.5, 0.25, 0.25))
    assert (custom.start, custom.end) == (500 - 96, 750)
    with pytest.raises(ValueError, match="ratios"):
        data.from_array(x, 96, 24, ratios=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="non-finite"):
        data.from_array(np.array([1.0, np.nan] * 200), 8, 4)


def test_constant_channel_is_not_divided_by_zero():
    x = np.stack([np.ones(300), np.arange(300.0)], axis=1)
    ds = data.from_array(x, 24, 12)
    assert ds.std[0] == 1.0 and torch.isfinite(ds[0][0]).all()
