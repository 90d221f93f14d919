"""The wall-clock limit around graph building.

Tracing can spin for minutes on some attention code; this stops it with a clear error.
The limit is `compress.timeouts.time_limit`: it works in any thread (a watchdog thread
raises in the tracing thread) and never touches SIGALRM, so a caller's own alarm timer
keeps running. Kept in its own module so the tracer only sees `time_limit(seconds, what)`.
"""
from __future__ import annotations

from typing import Optional

from ..timeouts import time_limit as _time_limit
from .errors import GraphBuildError

__all__ = ["time_limit"]


def time_limit(seconds: Optional[float], what: str) -> _time_limit:
    """Raise `GraphBuildError(what)` if the block runs longer than `seconds` (None: no limit).

    Any thread; a non-positive `seconds` is a ValueError. Nests inside other
    `compress.timeouts.time_limit` blocks (an outer whole-build budget, say).
    """
    return _time_limit(seconds, what, error=GraphBuildError)
