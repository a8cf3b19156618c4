"""The clock seam (greentask/_clock.py): the real MonotonicClock and its loop timers."""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Callable
from typing import Any

import gevent
import pytest
from gevent import getcurrent
from gevent.event import Event
from gevent.hub import get_hub

from greentask import _clock
from greentask._clock import REAL_CLOCK, Clock, MonotonicClock, TimerHandle
from greentask.testing import FakeClock


def test_real_clock_reads_time_monotonic() -> None:
    before = time.monotonic()
    now = REAL_CLOCK.now()
    after = time.monotonic()
    assert before <= now <= after
    assert MonotonicClock().now() >= now


def test_clocks_satisfy_the_protocol() -> None:
    assert isinstance(REAL_CLOCK, Clock)
    assert isinstance(FakeClock(), Clock)
    assert not isinstance(object(), Clock)
    assert repr(REAL_CLOCK) == "MonotonicClock()"


def test_call_at_runs_the_callback_with_args_in_the_hub_and_never_early() -> None:
    fired = Event()
    calls: list[tuple[Any, ...]] = []
    when = REAL_CLOCK.now() + 0.02

    def callback(*args: Any) -> None:
        calls.append((*args, getcurrent() is get_hub(), time.monotonic() >= when))
        fired.set()

    handle = REAL_CLOCK.call_at(when, callback, "a", 1)
    assert isinstance(handle, TimerHandle)
    with gevent.Timeout(5):
        fired.wait()
    assert calls == [("a", 1, True, True)]


def test_call_at_in_the_past_fires_soon() -> None:
    fired = Event()
    REAL_CLOCK.call_at(REAL_CLOCK.now() - 10, fired.set)
    with gevent.Timeout(5):
        assert fired.wait() is True


def test_timers_fire_in_deadline_order() -> None:
    order: list[int] = []
    done = Event()
    now = REAL_CLOCK.now()

    def last() -> None:
        order.append(3)
        done.set()

    REAL_CLOCK.call_at(now + 0.03, last)
    REAL_CLOCK.call_at(now + 0.01, order.append, 1)
    REAL_CLOCK.call_at(now + 0.02, order.append, 2)
    with gevent.Timeout(5):
        done.wait()
    assert order == [1, 2, 3]


def test_a_cancelled_timer_never_fires() -> None:
    fired: list[str] = []
    later = Event()
    now = REAL_CLOCK.now()
    handle = REAL_CLOCK.call_at(now + 0.01, fired.append, "cancelled one")
    REAL_CLOCK.call_at(now + 0.04, later.set)  # fires after the cancelled one would have
    handle.cancel()
    handle.cancel()  # idempotent
    with gevent.Timeout(5):
        later.wait()
    assert fired == []


def test_cancel_after_firing_has_no_effect() -> None:
    fired = Event()
    handle = REAL_CLOCK.call_at(REAL_CLOCK.now(), fired.set)
    with gevent.Timeout(5):
        fired.wait()
    handle.cancel()
    assert fired.is_set()


def test_a_timer_keeps_the_hub_alive_while_nothing_else_is_pending() -> None:
    # The main greenlet waits on an Event only the timer sets: no LoopExit.
    fired = Event()
    REAL_CLOCK.call_at(REAL_CLOCK.now() + 0.02, fired.set)
    with gevent.Timeout(5):
        assert fired.wait() is True


class _Target:
    def __call__(self, *args: Any) -> None:
        """A weak-referenceable callback."""


@pytest.mark.parametrize("end", ["cancel", "fire"])
def test_a_finished_timer_lets_go_of_its_callback_and_args(end: str) -> None:
    callback, arg = _Target(), _Target()
    refs = [weakref.ref(callback), weakref.ref(arg)]
    fired = Event()
    handle = REAL_CLOCK.call_at(REAL_CLOCK.now() + (0 if end == "fire" else 3600), callback, arg)
    if end == "cancel":
        handle.cancel()
    else:
        REAL_CLOCK.call_at(REAL_CLOCK.now(), fired.set)
        with gevent.Timeout(5):
            fired.wait()
    del callback, arg
    gc.collect()
    assert [r() for r in refs] == [None, None]  # the handle itself is still alive here
    assert handle is not None


class _StuckTime:
    """A stand-in for the ``time`` module whose monotonic() lags behind libev's clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


def test_a_timer_woken_before_its_monotonic_deadline_re_arms(monkeypatch: pytest.MonkeyPatch) -> None:
    # libev's cached clock can run ahead of time.monotonic(); the callback must still
    # never run before time.monotonic() reaches the deadline.
    stuck = _StuckTime(1000.0)
    monkeypatch.setattr(_clock, "time", stuck)
    arms: list[float] = []
    original_arm: Callable[[Any], None] = _clock._LoopTimer._arm

    def counting_arm(self: Any) -> None:
        arms.append(stuck.now)
        if len(arms) == 2:
            stuck.now = 1000.01  # time catches up once the first wake-up came too early
        original_arm(self)

    monkeypatch.setattr(_clock._LoopTimer, "_arm", counting_arm)
    fired = Event()
    seen: list[float] = []

    def callback() -> None:
        seen.append(stuck.now)
        fired.set()

    REAL_CLOCK.call_at(1000.01, callback)
    with gevent.Timeout(5):
        fired.wait()
    assert arms == [1000.0, 1000.0]  # armed, woke early, re-armed
    assert seen == [1000.01]  # fired only once monotonic time reached the deadline
