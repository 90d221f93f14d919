"""`compress.timeouts.time_limit`: any thread, SIGALRM left alone, nestable, clear errors."""
import signal
import threading
import time

import pytest
import torch
from torch import nn

import compress
from compress.graph import GraphBuildError
from compress.timeouts import TimeLimitExceeded, remaining, time_limit


def spin(seconds):
    t = time.monotonic()
    while time.monotonic() - t < seconds:
        pass


def in_thread(fn):
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    assert not t.is_alive()
    return out


def test_when_a_block_overruns_in_a_worker_thread_then_it_is_stopped():
    def work():
        with time_limit(0.2, "too slow"):
            spin(10)

    t0 = time.monotonic()
    out = in_thread(work)
    assert isinstance(out.get("error"), TimeLimitExceeded) and str(out["error"]) == "too slow"
    assert time.monotonic() - t0 < 5


def test_when_the_timed_code_catches_exception_then_the_limit_still_fires():
    with pytest.raises(TimeLimitExceeded):
        with time_limit(0.1):
            while True:
                try:
                    spin(0.01)
                except Exception:  # noqa: BLE001 - the point of the test
                    pass


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no SIGALRM on this platform")
def test_when_the_caller_has_a_sigalrm_timer_then_it_is_neither_cancelled_nor_shifted():
    fired = []
    old = signal.signal(signal.SIGALRM, lambda s, f: fired.append(time.monotonic()))
    try:
        start = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, 0.6)
        with time_limit(5):
            spin(0.05)
        with pytest.raises(TimeLimitExceeded):
            with time_limit(0.1):
                spin(2)
        left = signal.getitimer(signal.ITIMER_REAL)[0]
        assert 0 < left <= 0.6 - 0.1
        spin(1.0)
        assert len(fired) == 1 and 0.55 <= fired[0] - start <= 0.9
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("bad", [0, -1, 0.0, float("nan")])
def test_when_the_limit_is_not_positive_then_it_is_a_value_error(bad):
    with pytest.raises(ValueError, match="positive"):
        time_limit(bad)


def test_when_limits_nest_then_inner_budgets_expire_inside_the_outer_one():
    inner_hits = []
    with pytest.raises(TimeLimitExceeded, match="outer"):
        with time_limit(0.6, "outer"):
            for _ in range(20):
                try:
                    with time_limit(0.1, "inner"):
                        assert remaining() <= 0.1
                        spin(0.3)
                except TimeLimitExceeded as e:
                    inner_hits.append(str(e))
    assert 2 <= len(inner_hits) <= 6 and set(inner_hits) == {"inner"}


def test_when_blocks_end_just_at_their_limit_then_no_exception_leaks_afterwards():
    for _ in range(100):
        try:
            with time_limit(0.002):
                spin(0.0019)
        except TimeLimitExceeded:
            pass
        spin(0.003)  # a stray injected exception would surface here
    assert remaining() is None


class SlowTracing(nn.Module):
    """A forecaster whose forward spins (like torch-pruning on some attention code)."""

    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(4, 8), nn.Linear(8, 4)

    def forward(self, x):
        if torch.is_grad_enabled():  # the tracer runs with gradients
            spin(30)
        return self.down(torch.relu(self.up(x)))


def test_when_graph_building_overruns_off_the_main_thread_then_prune_stops_with_graph_build_error():
    model = SlowTracing()
    out = in_thread(lambda: compress.prune(model, "magnitude", 0.5, example_inputs=torch.randn(2, 3, 4),
                                           time_limit_s=0.5))
    assert isinstance(out.get("error"), GraphBuildError), out
    assert "longer than 0.5s" in str(out["error"])


@pytest.mark.parametrize("bad", [0, -5])
def test_when_prune_gets_a_non_positive_time_limit_then_it_is_a_value_error(bad):
    with pytest.raises(ValueError, match="time_limit_s"):
        compress.prune(SlowTracing(), "magnitude", 0.5, example_inputs=torch.randn(2, 3, 4), time_limit_s=bad)
