"""Wall-clock limits that work in any thread and leave SIGALRM alone.

Why this module exists: the usual Python time limit (``signal.setitimer`` + a SIGALRM
handler) only works on the main thread, and it takes over the process-wide timer, so it
silently cancels or shifts a timer the caller had set. Graph building (torch-pruning can
spin for minutes on some attention code) must be stoppable when `compress.prune` runs in a
worker thread, a notebook executor or a web server, and nested budgets are needed (a
whole-build limit with smaller per-call limits inside it).

How: one daemon *watchdog* thread keeps the deadlines of every active limit. When one
passes, it raises an exception asynchronously in the thread that owns the limit, through
CPython's ``PyThreadState_SetAsyncExc`` (what debuggers use). No signal is touched. The
injected exception derives from `BaseException`, so an ``except Exception`` in the timed
code cannot swallow it; the `time_limit` that set the deadline turns it into its own error
(`TimeLimitExceeded` by default) when the block unwinds.

Limits nest: an inner limit that expires raises its error, which the code inside the
outer limit may catch and carry on; an outer limit that expires while an inner one is
active unwinds through the inner one untouched.

Limitation (documented, inherent to the mechanism): the exception is delivered at the
next Python bytecode, so a single long call into C (one huge matmul, a blocking
``time.sleep``) finishes before the limit fires.
"""
from __future__ import annotations

import ctypes
import heapq
import itertools
import math
import sys
import threading
import time
from typing import Callable, List, Optional

__all__ = ["time_limit", "TimeLimitExceeded", "remaining"]


class TimeLimitExceeded(TimeoutError):
    """A `time_limit` block ran past its limit."""


class _Expired(BaseException):
    """Injected into the timed thread; `token` says which limit expired."""

    token = None


_lock = threading.Lock()
_wake = threading.Condition(_lock)
_heap: List[tuple] = []  # (deadline, seq, limit)
_seq = itertools.count()
_watchdog: Optional[threading.Thread] = None
_local = threading.local()
# thread id -> the limit whose exception the watchdog last injected there and that no
# `__exit__` has seen delivered or cleared yet. An inner limit's exit clears a pending
# exception only when it is its own, so an outer limit that expired at the same moment
# (a watchdog woken late fires both) is never lost; and an inner limit never overwrites a
# pending outer one (the outer unwinds through the inner anyway).
_pending: dict = {}


def _set_async(thread_id: int, exc) -> int:
    return ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                                      ctypes.py_object(exc) if exc is not None else None)


def _watch() -> None:
    with _lock:
        while True:
            while _heap and _heap[0][2].done:
                heapq.heappop(_heap)
            if not _heap:
                _wake.wait()
                continue
            deadline, _, limit = _heap[0]
            delay = deadline - time.monotonic()
            if delay > 0:
                _wake.wait(delay)
                continue
            heapq.heappop(_heap)
            if not limit.done and not limit.fired:
                top = sys._current_frames().get(limit.thread_id)
                if top is not None and top.f_code in _OWN_CODE:
                    # The thread stands in a limit's own __enter__/__exit__ (we hold the GIL, so
                    # it is stopped between two bytecodes there). An exception injected now
                    # would surface at that method's first bytecode, before its handler, and
                    # escape as the raw internal class: look again in half a millisecond.
                    heapq.heappush(_heap, (time.monotonic() + 0.0005, next(_seq), limit))
                    continue
                limit.fired = True
                pending = _pending.get(limit.thread_id)
                if pending is not None and not pending.done and pending.seq < limit.seq:
                    continue  # an outer limit's exception is already on its way
                _pending[limit.thread_id] = limit
                _set_async(limit.thread_id, limit.exc_class)


def _ensure_watchdog() -> None:
    global _watchdog
    if _watchdog is None or not _watchdog.is_alive():
        _watchdog = threading.Thread(target=_watch, name="compress-time-limit", daemon=True)
        _watchdog.start()


class time_limit:
    """Raise `error(message)` if the ``with`` block runs longer than `seconds`.

    Works in any thread, never touches signals (a caller's own SIGALRM timer keeps
    running), and nests (see the module docstring).

    Args:
        seconds: the limit; None or ``math.inf`` means no limit. Zero, negative or NaN is
            a ValueError.
        message: the error message (default: "... took longer than N s").
        error: the exception class raised on expiry, called as ``error(message)``.

    Example:
        >>> import time
        >>> try:
        ...     with time_limit(0.05, "too slow"):
        ...         while True:
        ...             time.sleep(0.001)
        ... except TimeLimitExceeded as e:
        ...     print(e)
        too slow
    """

    def __init__(self, seconds: Optional[float], message: Optional[str] = None,
                 error: Callable[[str], BaseException] = TimeLimitExceeded):
        if seconds is not None:
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
                try:
                    seconds = float(seconds)  # numpy scalars, 0-d tensors
                except (TypeError, ValueError):
                    raise TypeError(f"time limit must be a number of seconds or None, got {seconds!r}") from None
            if math.isnan(seconds) or seconds <= 0:
                raise ValueError(f"time limit must be a positive number of seconds (or None for no limit), "
                                 f"got {seconds!r}")
            if math.isinf(seconds):
                seconds = None
        self.seconds = None if seconds is None else float(seconds)
        self.message = message or (f"the block took longer than {self.seconds:g} s" if self.seconds else "")
        self.error = error
        self.done = self.fired = False
        self.thread_id = None
        self.deadline = None
        self.seq = None
        self.exc_class = type("TimeLimitExpired", (_Expired,), {"token": self})

    def __enter__(self) -> "time_limit":
        if self.seconds is None:
            return self
        self.thread_id = threading.get_ident()
        self.deadline = time.monotonic() + self.seconds
        stack = getattr(_local, "stack", None)
        if stack is None:
            stack = _local.stack = []
        stack.append(self)
        with _lock:
            _ensure_watchdog()
            self.seq = next(_seq)  # entry order: a smaller seq is an outer limit of the same thread
            heapq.heappush(_heap, (self.deadline, self.seq, self))
            _wake.notify()
        return self

    def _ours(self, exc_type) -> bool:
        return exc_type is not None and issubclass(exc_type, _Expired) and exc_type.token is self

    def __exit__(self, exc_type, exc, tb):
        if self.seconds is None:
            return False
        try:
            with _lock:
                self.done = True
                _wake.notify()
                pending = _pending.get(self.thread_id)
                if (pending is not None and exc_type is not None and issubclass(exc_type, _Expired)
                        and exc_type.token is pending):
                    del _pending[self.thread_id]  # delivered: it is the exception unwinding now
                    pending = None
                if pending is self:
                    # expired as the block ended, not delivered: drop our pending exception
                    # (only ours: an outer limit's stays pending and unwinds this block)
                    del _pending[self.thread_id]
                    _set_async(self.thread_id, None)
        except _Expired as late:  # delivered during this exit
            if late.token is not self:
                raise
            exc_type = type(late)
        finally:
            stack = getattr(_local, "stack", [])
            if stack and stack[-1] is self:
                stack.pop()
            elif self in stack:
                stack.remove(self)
        if self._ours(exc_type):
            raise self.error(self.message) from None
        return False


_OWN_CODE = frozenset({time_limit.__enter__.__code__, time_limit.__exit__.__code__,
                       time_limit._ours.__code__})


def remaining() -> Optional[float]:
    """Seconds left before the tightest active `time_limit` of this thread expires (None: no limit).

    Example:
        >>> with time_limit(10):
        ...     0 < remaining() <= 10
        True
    """
    stack = getattr(_local, "stack", [])
    if not stack:
        return None
    return max(0.0, min(lim.deadline for lim in stack) - time.monotonic())
