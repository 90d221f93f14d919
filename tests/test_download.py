"""compress.data.download against a local HTTP server on 127.0.0.1 (no internet): success and
load() finding the file, checksums, a broken connection, cache hits, offline messages, the CLI."""

import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import compress.data as data
from compress.data import fetch as dl

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"

BODY = ("date,a,b,OT\n" + "".join(
    f"2020-01-{1 + i // 24:02d} {i % 24:02d}:00:00,{i},{2 * i},{i % 7}\n" for i in range(200)
)).encode()
DIGEST = hashlib.sha256(BODY).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    hits: list = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).hits.append(self.path)
        if self.path == "/ok.csv":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)
        elif self.path == "/no-length.csv":  # no Content-Length: read until the server closes
            self.send_response(200)
            self.end_headers()
            self.wfile.write(BODY)
            self.close_connection = True
        elif self.path == "/broken.csv":  # promises more than it sends, then hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY) + 5000))
            self.end_headers()
            self.wfile.write(BODY[:1000])
            self.wfile.flush()
            self.close_connection = True
        else:
            self.send_error(404, "no such file")

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Handler.hits = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler.hits
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def cache(monkeypatch, tmp_path):
    folder = tmp_path / "cache"
    monkeypatch.setenv("COMPRESS_DATA", str(folder))
    monkeypatch.delenv("COMPRESS_DATA_DIR", raising=False)
    return folder


def _closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/weather.csv"  # nothing listens there: refused


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------- success


def test_download_puts_the_verified_file_in_the_cache_and_load_finds_it(server, cache, capsys):
    base, hits = server
    path = data.download("weather", url=base + "/ok.csv", sha256=DIGEST)
    assert path == cache / "weather.csv" and path.read_bytes() == BODY
    assert _leftovers(cache) == ["weather.csv"]  # no temporary file left
    err = capsys.readouterr().err
    assert "downloading weather.csv" in err and "100%" in err  # progress with the total
    ds = data.load("weather", 24, 12, "test")  # found in the cache, before shared/data
    assert ds.n_channels == 3 and ds.columns == ["a", "b", "OT"]
    assert hits == ["/ok.csv"]


def test_progress_can_be_turned_off_and_a_missing_length_still_downloads(server, cache, capsys):
    base, _ = server
    data.download("traffic", url=base + "/no-length.csv", sha256=DIGEST, progress=False)
    assert capsys.readouterr().err == ""
    assert (cache / "traffic.csv").read_bytes() == BODY


def test_dest_puts_the_file_elsewhere_and_load_finds_it_through_data_dir(server, tmp_path):
    base, _ = server
    dest = tmp_path / "mine" / "sub"
    path = data.download("ETTh2", dest=dest, url=base + "/ok.csv", sha256=DIGEST, progress=False)
    assert path == dest / "ETTh2.csv" and path.read_bytes() == BODY
    with pytest.raises(ValueError, match="standard ETTh borders need 14400 rows"):
        data.load("ETTh2", 24, 12, data_dir=dest)  # found there; the tiny file is too short


def test_an_unpinned_download_warns_with_the_digest_to_pin(server, cache):
    base, _ = server
    assert dl._SOURCES["traffic"].sha256 is None
    with pytest.warns(UserWarning, match=f"no sha256 is pinned.*{DIGEST}"):
        data.download("traffic", url=base + "/ok.csv", progress=False)
    assert (cache / "traffic.csv").read_bytes() == BODY


# ---------------------------------------------------------------- cache hits


def test_a_file_in_place_is_returned_without_contacting_the_server(server, cache):
    base, hits = server
    first = data.download("weather", url=base + "/ok.csv", sha256=DIGEST, progress=False)
    again = data.download("weather", url=base + "/ok.csv", sha256=DIGEST, progress=False)
    offline = data.download("weather", url=_closed_port_url(), sha256=DIGEST, progress=False)
    assert first == again == offline and hits == ["/ok.csv"]
    data.download("weather", url=base + "/ok.csv", sha256=DIGEST, progress=False, force=True)
    assert hits == ["/ok.csv", "/ok.csv"]


def test_a_file_in_place_that_does_not_match_the_checksum_is_refused_not_replaced(cache):
    cache.mkdir(parents=True)
    (cache / "ETTm1.csv").write_bytes(BODY)  # ETTm1 has a pinned sha256; this is not it
    with pytest.raises(data.DownloadError, match="already there but its sha256 is"):
        data.download("ETTm1", url=_closed_port_url(), progress=False)
    assert (cache / "ETTm1.csv").read_bytes() == BODY
    assert data.download("ETTm1", sha256=DIGEST) == cache / "ETTm1.csv"  # your own copy


# ---------------------------------------------------------------- failures leave nothing


def test_a_wrong_checksum_is_an_error_and_leaves_nothing(server, cache):
    base, _ = server
    with pytest.raises(data.DownloadError) as e:
        data.download("weather", url=base + "/ok.csv", sha256="0" * 64, progress=False)
    assert DIGEST in str(e.value) and "nothing was saved" in str(e.value)
    assert _leftovers(cache) == []


def test_the_pinned_checksum_is_checked_when_only_the_url_is_overridden(server, cache):
    base, _ = server
    with pytest.raises(data.DownloadError, match="ETTm1 is pinned to 6ce1759b"):
        data.download("ETTm1", url=base + "/ok.csv", progress=False)
    assert _leftovers(cache) == []


def test_a_broken_connection_is_an_error_and_leaves_no_partial_file(server, cache):
    base, _ = server
    with pytest.raises(data.DownloadError, match=r"closed after 1000 of \d+ bytes|transfer broke"):
        data.download("weather", url=base + "/broken.csv", sha256=DIGEST, progress=False)
    assert _leftovers(cache) == []
    with pytest.raises(data.DownloadError, match="closed after|transfer broke"):
        data.download("traffic", url=base + "/broken.csv", progress=False)  # unpinned too
    assert _leftovers(cache) == []


def test_an_interrupt_mid_download_leaves_no_partial_file(server, cache, monkeypatch):
    base, _ = server

    def interrupt(self, size):
        raise KeyboardInterrupt

    monkeypatch.setattr(dl._Progress, "update", interrupt)
    with pytest.raises(KeyboardInterrupt):
        data.download("weather", url=base + "/ok.csv", sha256=DIGEST)
    assert _leftovers(cache) == []


def test_an_http_error_names_the_status(server, cache):
    base, _ = server
    with pytest.raises(data.DownloadError, match="answered HTTP 404"):
        data.download("weather", url=base + "/missing.csv", progress=False)
    assert _leftovers(cache) == []


def test_offline_the_error_gives_the_url_and_the_exact_path_to_put_the_file_at(cache):
    url = _closed_port_url()
    with pytest.raises(data.DownloadError) as e:
        data.download("weather", url=url, progress=False)
    msg = str(e.value)
    assert url in msg and str(cache / "weather.csv") in msg and "put the file at" in msg
    assert dl._SOURCES["weather"].sha256 in msg  # so a copy made by hand can be checked
    assert isinstance(e.value, OSError) and _leftovers(cache) == []


def test_bad_arguments_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'ettx'.*ETTh1"):
        data.download("ettx")
    with pytest.raises(ValueError, match="not a sha256 hex digest"):
        data.download("weather", sha256="abc")
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        data.download("weather", dest=tmp_path / "f")


# ---------------------------------------------------------------- registry


def test_every_loadable_dataset_has_a_source_and_pins_match_the_shared_copies():
    assert set(dl._SOURCES) == set(data.available())
    pinned = {name: s.sha256 for name, s in dl._SOURCES.items() if s.sha256}
    assert set(pinned) == {"ETTh1", "ETTm1", "ETTm2", "weather"}
    checked = 0
    for name, digest in pinned.items():
        path = SHARED / dl._file_name(name)
        if path.exists():
            assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, name
            checked += 1
    if not checked:
        pytest.skip("no ../shared/data copies to check the pins against")


def test_the_cache_folder_honours_compress_data_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("COMPRESS_DATA", str(tmp_path / "c"))
    assert dl._cache_dir() == tmp_path / "c"
    monkeypatch.delenv("COMPRESS_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dl._cache_dir() == tmp_path / "xdg" / "compress" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert dl._cache_dir() == Path.home() / ".cache" / "compress" / "data"


def test_load_says_how_to_download_a_missing_dataset(cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        data.load("traffic", 96, 96)
    msg = str(e.value)
    assert "compress.data.download('traffic')" in msg and str(cache / "traffic.csv") in msg


# ---------------------------------------------------------------- CLI


def test_cli_download_then_list(server, cache, capsys):
    from compress.data.__main__ import main

    base, _ = server
    assert main(["download", "weather", "--url", base + "/ok.csv", "--sha256", DIGEST, "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(cache / "weather.csv")
    assert main(["list"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    assert set(rows) == set(data.available())
    assert rows["weather"][1:] == ["cached", "pinned", str(cache / "weather.csv")]
    assert rows["traffic"][1:3] == ["missing", "unpinned"] and rows["traffic"][3] == str(cache / "traffic.csv")


def test_cli_failures_exit_1_with_the_message_and_bad_names_exit_2(cache, capsys):
    from compress.data.__main__ import main

    assert main(["download", "weather", "--url", _closed_port_url(), "--no-progress"]) == 1
    assert "put the file at" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["download", "nope"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["download", "weather", "traffic", "--url", "http://x/y.csv"])


def test_python_dash_m_compress_data_runs(cache):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "compress.data", "list"], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert str(cache / "traffic.csv") in out.stdout
