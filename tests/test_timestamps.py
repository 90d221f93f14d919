"""compress.data: the date column is checked (order, repeats, steps), sorted or deduplicated
on request; the known quirks of the standard weather.csv only warn; the parse cache is keyed
on content."""

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

import compress.data as data
from compress.data import timestamps as ts

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_data_dirs(monkeypatch, tmp_path):
    monkeypatch.delenv("COMPRESS_DATA_DIR", raising=False)
    monkeypatch.setenv("COMPRESS_DATA", str(tmp_path / "empty_download_cache"))


def _stamp(t):
    return str(t.astype("datetime64[s]")).replace("T", " ")


def _file(path, stamps, values=None):
    """A CSV with a date column of `stamps` and one channel `a` (default 0, 1, 2, ...)."""
    values = range(len(stamps)) if values is None else values
    path.write_text("date,a\n" + "".join(f"{s},{v}\n" for s, v in zip(stamps, values)))
    return path


def _hourly(n, start="2021-03-01T00:00"):
    return [_stamp(np.datetime64(start) + np.timedelta64(i, "h")) for i in range(n)]


def _load(path, **kw):
    return data.load(path, 8, 4, "train", scale=False, **kw)


def _channel(ds):
    """Channel `a` of the training rows (the first int(0.7 n) rows)."""
    return ds.data[:, 0].tolist()


def _train(values):
    return [float(v) for v in values[: int(len(values) * 0.7)]]


def _no_timestamp_warnings(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error", data.TimestampWarning)
        return fn(*args, **kw)


# ---------------------------------------------------------------- detection (default "check")


def test_when_rows_are_out_of_order_then_the_error_names_them_and_the_fix(tmp_path):
    stamps = _hourly(60)
    stamps[20], stamps[21] = stamps[21], stamps[20]
    path = _file(tmp_path / "u.csv", stamps)
    with pytest.raises(ValueError) as e:
        _load(path)
    msg = str(e.value)
    assert "earlier than the row before" in msg
    assert "data row 21 (line 23)" in msg and repr(stamps[21]) in msg and repr(stamps[20]) in msg
    assert "timestamps='sort'" in msg and "timestamps='ignore'" in msg


def test_when_a_timestamp_repeats_then_the_error_names_it_and_the_fix(tmp_path):
    stamps = _hourly(60)
    stamps.insert(31, stamps[30])
    path = _file(tmp_path / "d.csv", stamps)
    with pytest.raises(ValueError) as e:
        _load(path)
    msg = str(e.value)
    assert "1 repeated timestamp(s)" in msg and "data row 31 (line 33)" in msg
    assert repr(stamps[30]) in msg and "timestamps='dedupe'" in msg


def test_when_steps_are_missing_then_the_error_gives_the_usual_step_and_the_gap(tmp_path):
    stamps = _hourly(60)
    del stamps[40:43]  # 3 missing hours
    path = _file(tmp_path / "g.csv", stamps)
    with pytest.raises(ValueError) as e:
        _load(path)
    msg = str(e.value)
    assert "1 irregular step(s) (the usual step is 1:00:00)" in msg
    assert "data row 40 (line 42)" in msg and "a step of 4:00:00" in msg
    assert "fill the missing rows" in msg and "timestamps='ignore'" in msg


def test_when_timestamps_cannot_be_read_then_the_error_names_the_cell(tmp_path):
    stamps = _hourly(60)
    stamps[7] = "yesterday"
    path = _file(tmp_path / "r.csv", stamps)
    with pytest.raises(ValueError, match=r"cannot read the timestamps.*data row 7 \(line 9\).*'yesterday'.*timestamps='ignore'"):
        _load(path)
    assert _load(path, timestamps="ignore").end == int(60 * 0.7)


def test_an_unknown_policy_is_refused_before_reading():
    with pytest.raises(ValueError, match="timestamps='sorted' is not a policy.*'check', 'sort', 'dedupe', 'ignore'"):
        data.load("ETTh1", 8, 4, timestamps="sorted")


# ---------------------------------------------------------------- the options


def test_sort_orders_rows_by_time_keeping_each_rows_values(tmp_path):
    stamps = _hourly(60)
    values = list(range(60))
    for i, j in ((5, 50), (12, 13)):
        stamps[i], stamps[j] = stamps[j], stamps[i]
        values[i], values[j] = values[j], values[i]
    path = _file(tmp_path / "u.csv", stamps, values)
    ds = _no_timestamp_warnings(_load, path, timestamps="sort")
    assert _channel(ds) == _train(range(60))


def test_sort_still_refuses_repeats_and_dedupe_keeps_the_first_row(tmp_path):
    stamps = _hourly(60)
    stamps.insert(31, stamps[30])
    values = list(range(30)) + [30, 999] + list(range(31, 60))
    path = _file(tmp_path / "d.csv", stamps, values)
    with pytest.raises(ValueError, match="(?s)repeated timestamp.*timestamps='dedupe'"):
        _load(path, timestamps="sort")
    with pytest.warns(data.TimestampWarning, match=r"dropped 1 row\(s\).*31 \(line 33"):
        ds = _load(path, timestamps="dedupe")
    assert _channel(ds) == _train(range(60))


def test_dedupe_also_sorts(tmp_path):
    stamps = _hourly(40)
    stamps = stamps[20:] + stamps[:21]  # out of order, and stamps[20] twice
    path = _file(tmp_path / "ud.csv", stamps)
    with pytest.warns(data.TimestampWarning, match="dropped 1 row"):
        ds = _load(path, timestamps="dedupe")
    # file rows 0..19 hold hours 20..39, rows 20..40 hours 0..20 (each row's value is its
    # row number): sorted, hours 0..19 are values 20..39; hour 20 is rows 0 and 40, row 0
    # (first in the file) is kept; hours 21..39 are values 1..19
    assert _channel(ds) == _train(list(range(20, 40)) + [0] + list(range(1, 20)))
    assert ds.end == int(40 * 0.7)


def test_with_sort_or_dedupe_a_remaining_gap_is_a_warning_not_an_error(tmp_path):
    stamps = _hourly(60)
    del stamps[40:43]
    path = _file(tmp_path / "g.csv", stamps)
    for policy in ("sort", "dedupe"):
        with pytest.warns(data.TimestampWarning, match=r"irregular step.*a step of 4:00:00"):
            assert _load(path, timestamps=policy).end == int(57 * 0.7)


def test_ignore_uses_the_rows_in_file_order_without_a_warning(tmp_path):
    stamps = _hourly(60)
    stamps[20], stamps[21] = stamps[21], stamps[20]
    stamps.insert(40, stamps[39])
    path = _file(tmp_path / "x.csv", stamps)
    ds = _no_timestamp_warnings(_load, path, timestamps="ignore")
    assert _channel(ds) == _train(range(61))


# ---------------------------------------------------------------- what counts as regular


@pytest.mark.parametrize("stamps", [
    [f"{2000 + i // 12}-{i % 12 + 1:02d}-01" for i in range(40)],  # monthly, month start
    [_stamp(np.datetime64(f"{2000 + (i + 1) // 12}-{(i + 1) % 12 + 1:02d}-01") - np.timedelta64(1, "D"))[:10]
     for i in range(40)],  # monthly, month end (31, 29, 31, 30, ...)
    [f"{2000 + i // 4}-{3 * (i % 4) + 1:02d}-15 12:00:00" for i in range(40)],  # quarterly
    [str(d) for d in np.busday_offset("2024-01-01", np.arange(40))],  # business days
    [f"{1990 + i // 365}/1/{1 + i % 28} 0:00" for i in range(28)],  # YYYY/M/D H:MM
    [f"{1 + i}.06.2020 00:00:00" for i in range(28)],  # D.M.YYYY H:MM:SS (Jena raw files)
    [f"6/{1 + i}/2020 13:30" for i in range(28)],  # M/D/YYYY H:MM
    [f"2020-06-01T{i:02d}:00:00+02:00" for i in range(24)],  # ISO with an offset
    [str(1000 + 15 * i) for i in range(40)],  # plain numbers
    [f"{0.1 * i:.1f}" for i in range(40)],  # plain numbers with rounding noise
])
def test_regular_series_in_every_readable_format_load_without_a_warning(tmp_path, stamps):
    ds = _no_timestamp_warnings(_load, _file(tmp_path / "ok.csv", stamps))
    assert ds.end == int(len(stamps) * 0.7)


def test_a_file_without_a_date_column_is_not_checked(tmp_path):
    path = tmp_path / "n.csv"
    path.write_text("a,b\n" + "".join(f"{i},{2 * i}\n" for i in range(40)))
    assert _no_timestamp_warnings(_load, path).end == int(40 * 0.7)


def test_parse_reads_one_format_per_column():
    assert ts.parse("date", ["2020-01-01 00:00:00", "2020/1/1 1:00"]).bad == 1
    assert ts.parse("date", ["2020/1/1 0:00", "2020/1/1 1:00"]).values[1] == np.datetime64("2020-01-01T01:00")
    assert ts.parse("date", ["13/1/2020 0:00"]).bad == 0  # M/D/YYYY: there is no month 13


# ---------------------------------------------------------------- the standard files


def _weather_like(path, extra_repeat=False):
    """10-minute rows around the two known quirks of the standard weather.csv."""
    t = np.datetime64("2020-05-12T00:00") + np.timedelta64(10, "m") * np.arange(3000)
    t = list(t[t <= np.datetime64("2020-05-29T09:30")]) + list(
        np.datetime64("2020-05-29T11:10") + np.timedelta64(10, "m") * np.arange(200))
    stamps = [_stamp(x) for x in t]
    stamps.insert(stamps.index("2020-05-12 06:00:00"), "2020-05-12 06:00:00")
    if extra_repeat:
        stamps.insert(500, stamps[500])
    return _file(path, stamps)


def test_the_known_weather_quirks_warn_and_load_unchanged(tmp_path):
    path = _weather_like(tmp_path / "weather.csv")
    with pytest.warns(data.TimestampWarning, match=r"known timestamp irregularities.*2020-05-12 06:00:00.*2020-05-29 11:10:00"):
        ds = data.load(path, 8, 4, scale=False)
    assert ds.name == "weather"
    n = len(path.read_text().splitlines()) - 1
    assert ds.end == int(n * 0.7)  # no row dropped: the literature's borders


def test_any_other_irregularity_in_a_standard_file_is_still_an_error(tmp_path):
    path = _weather_like(tmp_path / "weather.csv", extra_repeat=True)
    with pytest.raises(ValueError, match="2 repeated timestamp"):
        data.load(path, 8, 4)
    other = _weather_like(tmp_path / "my_series.csv")  # same quirks, not the standard file
    with pytest.raises(ValueError, match="1 repeated timestamp"):
        data.load(other, 8, 4)


STANDARD = ["ETTh1.csv", "ETTm1.csv", "ETTm2.csv", "exchange_rate.csv", "national_illness.csv", "weather.csv"]


@pytest.mark.parametrize("name", STANDARD)
def test_every_standard_file_in_shared_data_loads_under_the_default_check(name):
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"no ../shared/data/{name}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = data.load(path, 96, 96, "test")
    quirks = [w for w in caught if issubclass(w.category, data.TimestampWarning)]
    if name == "weather.csv":
        assert len(quirks) == 1 and "data row 19044 (line 19046)" in str(quirks[0].message)
        assert len(ds) == 10444  # the published test-window count: nothing was dropped
    else:
        assert quirks == []


def test_weather_with_dedupe_drops_exactly_the_repeated_row():
    path = SHARED / "weather.csv"
    if not path.exists():
        pytest.skip("no ../shared/data/weather.csv")
    with pytest.warns(data.TimestampWarning):  # the dropped row, then the remaining gap
        ds = data.load(path, 96, 96, "train", timestamps="dedupe")
    assert ds.end == int(52695 * 0.7)


# ---------------------------------------------------------------- the parse cache


def test_a_file_rewritten_with_the_same_size_and_mtime_is_parsed_again(tmp_path):
    path = _file(tmp_path / "c.csv", _hourly(60), [1] * 60)
    first = _load(path)
    st = os.stat(path)
    _file(path, _hourly(60), [2] * 60)  # same length in bytes
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns
    assert _channel(first) == [1.0] * 42
    assert _channel(_load(path)) == [2.0] * 42  # a (path, size, mtime) cache returns 1.0
