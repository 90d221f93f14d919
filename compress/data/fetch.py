"""Fetch the standard long-horizon benchmark files into a cache, with pinned checksums.

The README's tables use ETTm1, ETTm2 and Weather, which a user cannot get from the package
(only ETTh1 ships: the others are too large, and ETT's licence forbids modified copies).
``download(name)`` fetches a file from its public source into the cache directory
(``$COMPRESS_DATA``, default ``$XDG_CACHE_HOME/compress/data`` or ``~/.cache/compress/data``),
where ``compress.data.load(name)`` finds it.

Why hand-written (``urllib``, no new dependency) and what it guarantees:

- atomic: bytes go to a temporary file in the destination folder and are renamed into place
  (``os.replace``) only once complete and verified, so a broken connection, a checksum
  mismatch or Ctrl-C never leaves a partial file where ``load`` would read it;
- verified: the sha256 is compared with the pinned one (``_SOURCES``) where we could compute
  it from a copy we hold; the rest download with a warning that prints the digest to pin;
- a file already in place is returned without touching the network (verified locally when
  a checksum is pinned);
- offline, the error says which URL failed and the exact path to put the file at by hand.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from .loaders import _DATASETS, _LOOKUP, _cache_dir

_CHUNK = 1 << 16


class DownloadError(OSError):
    """A benchmark file could not be fetched or verified; nothing was written in its place."""


@dataclass(frozen=True)
class _Source:
    url: str
    sha256: str | None  # None: not pinned (no copy of the same file to compute it from)


_ETT = "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/"
# Time-Series-Library's mirror of the Autoformer benchmark collection (the original is a
# Google Drive folder, which cannot be fetched without a browser session).
_TSLIB = "https://huggingface.co/datasets/thuml/Time-Series-Library/resolve/main/"

# Pinned digests are the sha256 of the copies in the project's shared/data folder
# (ETTh1, ETTm1, ETTm2 byte-identical to ETDataset; weather.csv the common benchmark copy).
# None of these URLs could be fetched from the machine this was written on (no internet):
# the addresses are the ones in common use, unverified here. Public projects report
# sha256 values for the unpinned files (ETTh2 a3dc2c59..., electricity 7e45845d...,
# traffic cb06463d..., TSLib's exchange_rate 48b4d9d3... and national_illness 93601f64...);
# our shared copies of exchange_rate.csv and national_illness.csv differ from those, so
# nothing is pinned for them until someone checks a download against the source.
_SOURCES: dict[str, _Source] = {
    "ETTh1": _Source(_ETT + "ETTh1.csv",
                     "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066"),
    "ETTh2": _Source(_ETT + "ETTh2.csv", None),
    "ETTm1": _Source(_ETT + "ETTm1.csv",
                     "6ce1759b1a18e3328421d5d75fadcb316c449fcd7cec32820c8dafda71986c9e"),
    "ETTm2": _Source(_ETT + "ETTm2.csv",
                     "db973ca252c6410a30d0469b13d696cf919648d0f3fd588c60f03fdbdbadd1fd"),
    "weather": _Source(_TSLIB + "weather/weather.csv",
                       "34ee981d07313e51da2a50bb600072c8ae4a69cb4b0651f4cb93a069d7a2ba63"),
    "electricity": _Source(_TSLIB + "electricity/electricity.csv", None),
    "traffic": _Source(_TSLIB + "traffic/traffic.csv", None),
    "exchange": _Source(_TSLIB + "exchange_rate/exchange_rate.csv", None),
    "ili": _Source(_TSLIB + "illness/national_illness.csv", None),
}


def _canonical(name) -> str:
    if not isinstance(name, str) or name.lower() not in _LOOKUP:
        raise ValueError(
            f"unknown dataset {name!r}. Downloadable: {', '.join(_SOURCES)} (aliases: "
            f"exchange_rate, national_illness, illness, ecl)"
        )
    return _LOOKUP[name.lower()]


def _file_name(dataset: str) -> str:
    return _DATASETS[dataset][0][0]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    name: str,
    dest: str | os.PathLike | None = None,
    url: str | None = None,
    sha256: str | None = None,
    *,
    progress: bool = True,
    force: bool = False,
    timeout: float = 60.0,
) -> Path:
    """Fetch a standard benchmark file (once) and return its path.

    Names: ETTh1, ETTh2, ETTm1, ETTm2, weather, electricity, traffic, exchange, ili (the
    aliases ``load`` accepts too). The file lands in ``dest`` or the cache directory
    (``$COMPRESS_DATA``, default ``~/.cache/compress/data``, honouring ``$XDG_CACHE_HOME``),
    where ``compress.data.load(name)`` finds it; a file in another ``dest`` is found with
    ``load(name, ..., data_dir=dest)``.

    Args:
        name: dataset name.
        dest: folder to put the file in (created if missing); default the cache directory.
        url: fetch from here instead of the registered source (a mirror, a local server).
        sha256: expected hex digest; overrides the pinned one (also for a file in place).
        progress: print progress (bytes, and % when the size is known) to stderr.
        force: download again even if the file is already in place.
        timeout: seconds to wait for the server at each step.

    Returns:
        The path of the verified file.

    Raises:
        ValueError: unknown name, a malformed ``sha256``, ``dest`` is a file.
        DownloadError: the server is unreachable, answered an error, or closed the
            connection early; the bytes do not match the checksum; a file already in
            place does not match it. Nothing is left at the destination in any case.

    Example:
        >>> path = download("ETTm1")  # doctest: +SKIP
        >>> train = load("ETTm1", 512, 96, "train")  # doctest: +SKIP
    """
    dataset = _canonical(name)
    source = _SOURCES[dataset]
    url = url or source.url
    expected = source.sha256 if sha256 is None else _check_digest(sha256)
    folder = Path(dest).expanduser() if dest is not None else _cache_dir()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"dest={str(folder)!r} is a file; pass the folder to put {_file_name(dataset)} in")
    final = folder / _file_name(dataset)

    if final.is_file() and not force:
        if expected is not None:
            found = _sha256_file(final)
            if found != expected:
                raise DownloadError(
                    f"{final} is already there but its sha256 is {found}, not the expected "
                    f"{expected}. Fix: delete it (or pass force=True) to download it again, "
                    f"or pass sha256={found!r} if this copy is the one you want."
                )
        return final

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create {folder} for {final.name}: {e}. Fix: pass dest=...") from e
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            digest, size = _fetch(url, out, final.name, progress, timeout, final, expected)
            out.flush()
            os.fsync(out.fileno())
        if expected is not None and digest != expected:
            whose = f"{dataset} is pinned to" if sha256 is None else "sha256= asks for"
            raise DownloadError(
                f"{url} sent {size} bytes whose sha256 is {digest}, but {whose} "
                f"{expected}; nothing was saved. The source may have changed or the "
                f"transfer was corrupted. Fix: check the source; if you trust this file, "
                f"pass sha256={digest!r}."
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache file is not
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if expected is None:
        warnings.warn(
            f"{dataset}: no sha256 is pinned for {url}, so the file is not verified. The "
            f"file saved at {final} has sha256 {digest}; pass sha256=... to pin it.",
            UserWarning, stacklevel=2,
        )
    return final


def _check_digest(sha256) -> str:
    text = str(sha256).strip().lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"sha256={sha256!r} is not a sha256 hex digest (64 hex characters)")
    return text


def _fetch(url, out, label, progress, timeout, final, expected):
    """Stream ``url`` into ``out``; return (sha256 hex, bytes). Raises DownloadError."""
    import http.client  # here, not at import: they pull in ssl (~50 ms) for every user
    import urllib.error
    import urllib.request

    digest = hashlib.sha256()
    size = 0
    by_hand = (
        f"By hand (e.g. on an offline machine): fetch {url} elsewhere and put the file at "
        f"{final}" + (f" (its sha256 must be {expected})" if expected else "")
        + "; or pass url= for a mirror."
    )
    request = urllib.request.Request(url, headers={"User-Agent": "compress-data"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            total = response.length  # Content-Length, None when not sent
            shown = _Progress(label, total, progress)
            while True:
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                try:
                    out.write(chunk)
                except OSError as e:  # disk full, quota: not the network's fault
                    raise DownloadError(f"cannot write {final.name} into {final.parent}: {e}; "
                                        f"nothing was saved. Fix: free space or pass dest=...") from e
                digest.update(chunk)
                size += len(chunk)
                shown.update(size)
            shown.close(size)
            if total is not None and size < total:
                raise DownloadError(
                    f"{url}: the connection closed after {size} of {total} bytes; nothing "
                    f"was saved. Fix: try again. {by_hand}"
                )
    except DownloadError:
        raise
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{url} answered HTTP {e.code} ({e.reason}); nothing was saved. {by_hand}") from e
    except http.client.HTTPException as e:  # IncompleteRead: closed before Content-Length
        raise DownloadError(
            f"{url}: the transfer broke after {size} bytes ({type(e).__name__}); nothing was "
            f"saved. Fix: try again. {by_hand}"
        ) from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        # URLError: refused / unknown host; OSError: reset, timeout; ValueError: not a URL
        reason = getattr(e, "reason", e)
        raise DownloadError(f"could not download {url} ({reason}); nothing was saved. {by_hand}") from e
    return digest.hexdigest(), size


class _Progress:
    """'name  1.2 / 10.4 MB  12%' on stderr, redrawn at most 5 times a second."""

    def __init__(self, label, total, enabled):
        self.label, self.total, self.enabled = label, total, enabled
        self.last = 0.0
        if enabled:
            size = f" ({_human(total)})" if total else " (size unknown)"
            print(f"downloading {label}{size}", file=sys.stderr, flush=True)

    def _line(self, size):
        if self.total:
            return f"\r  {self.label}  {_human(size)} / {_human(self.total)}  {100 * size / self.total:3.0f}%"
        return f"\r  {self.label}  {_human(size)}"

    def update(self, size):
        now = time.monotonic()
        if self.enabled and now - self.last >= 0.2:
            self.last = now
            print(self._line(size), end="", file=sys.stderr, flush=True)

    def close(self, size):
        if self.enabled:
            print(self._line(size), file=sys.stderr, flush=True)


def _human(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _status() -> list[tuple[str, str, str, str]]:
    """(name, 'cached' | 'found' | 'missing', path, 'pinned' | 'unpinned') for each dataset."""
    from .loaders import _search_dirs

    cache = _cache_dir()
    rows = []
    for dataset, source in _SOURCES.items():
        pinned = "pinned" if source.sha256 else "unpinned"
        files = _DATASETS[dataset][0]
        state, where = "missing", cache / files[0]
        for d in _search_dirs(None):
            hit = next((d / f for f in files if (d / f).is_file()), None)
            if hit is not None:
                state, where = ("cached" if d == cache else "found"), hit
                break
        rows.append((dataset, state, str(where), pinned))
    return rows
