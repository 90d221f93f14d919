"""The wall-clock limit around graph building.

Tracing can spin for minutes on some attention code; this stops it with a clear error.
It uses SIGALRM, so it only works on the main thread (elsewhere it does nothing). Kept in
its own module so it can be swapped for a limit that also works off the main thread
(`compress.timeouts`) without touching the tracer.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Optional

from .errors import GraphBuildError

__all__ = ["time_limit"]


@contextlib.contextmanager
def time_limit(seconds: Optional[float], what: str):
    """Raise `GraphBuildError` if the block runs longer than `seconds` (main thread only)."""
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def handler(signum, frame):
        raise GraphBuildError(what)

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)

