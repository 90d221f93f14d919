"""``python -m compress.data list | download NAME``: the benchmark files, from a shell.

Example (shell)::

    python -m compress.data list                 # each dataset: cached / found / missing, path
    python -m compress.data download ETTm1 weather
    python -m compress.data download ETTh1 --url http://mirror/ETTh1.csv --sha256 f18d...

Exit status: 0 done, 1 a download failed (the message says why and where to put the file
by hand), 2 bad arguments (unknown name, malformed checksum).
"""

from __future__ import annotations

import argparse
import sys

from .fetch import _SOURCES, DownloadError, _cache_dir, _status, download


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m compress.data",
        description="Fetch and list the standard long-horizon forecasting benchmark files. "
        f"Cache folder: $COMPRESS_DATA, now {_cache_dir()}.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="each dataset: cached / found elsewhere / missing, its path, "
                                "whether its checksum is pinned")
    d = sub.add_parser("download", help="fetch datasets into the cache (or --dest)")
    d.add_argument("names", nargs="+", metavar="NAME",
                   help=f"dataset names ({', '.join(_SOURCES)}) or 'all'")
    d.add_argument("--dest", default=None,
                   help="folder to put the files in (default: the cache folder, where "
                        "compress.data.load finds them)")
    d.add_argument("--url", default=None, help="fetch from this URL instead (one NAME only)")
    d.add_argument("--sha256", default=None, help="expected sha256 (one NAME only); overrides the pinned one")
    d.add_argument("--force", action="store_true", help="download again even if the file is in place")
    d.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "list":
        rows = _status()
        width = max(len(r[0]) for r in rows)
        for name, state, path, pinned in rows:
            print(f"{name:<{width}}  {state:<7}  {pinned:<8}  {path}")
        return 0
    names = list(_SOURCES) if args.names == ["all"] else args.names
    if (args.url or args.sha256) and len(names) != 1:
        parser.error("--url / --sha256 apply to one NAME; pass exactly one")
    failed = 0
    for name in names:
        try:
            path = download(name, dest=args.dest, url=args.url, sha256=args.sha256,
                            progress=not args.no_progress, force=args.force)
        except ValueError as e:
            parser.error(str(e))
        except DownloadError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        print(path)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
