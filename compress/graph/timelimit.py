"""The wall-clock limits around graph building (the whole build, and each grouping call).

Tracing and torch-pruning's grouping can spin for minutes on some attention and padding
code; these limits stop it with a clear error. The mechanism is
`compress.timeouts.time_limit`: it works in any thread (a watchdog thread raises in the
tracing thread), never touches SIGALRM, and nests: an inner limit (a grouping call's
budget) that expires raises its own error, which the build catches to skip that root,
while an outer one (the whole build) unwinds through it. `TimeLimitExceeded.what` says
which limit ran out. Kept in its own module so the tracer only sees
`time_limit(seconds, what, message)`.
"""
from __future__ import annotations

from typing import Optional

from ..timeouts import time_limit as _time_limit
from .errors import GraphBuildError

__all__ = ["time_limit", "TimeLimitExceeded"]


class TimeLimitExceeded(GraphBuildError):
    """A graph-building step ran past its limit; `what` names the step."""

    def __init__(self, message: str, what: str = ""):
        super().__init__(message)
        self.what = what


def time_limit(seconds: Optional[float], what: str, message: Optional[str] = None) -> _time_limit:
    """Raise `TimeLimitExceeded(message, what)` if the block runs longer than `seconds`.

    Args:
        seconds: the limit; None or 0 for none.
        what: what the block does (also the default message).
        message: the error message.

    Example:
        >>> with time_limit(5, "a quick step"):
        ...     pass
    """
    text = message or f"{what} took longer than {seconds:g}s" if seconds else what
    return _time_limit(seconds or None, text, error=lambda msg: TimeLimitExceeded(msg, what))
