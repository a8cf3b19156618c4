"""The clock seam: every wait on time in greentask goes through a `Clock`.

A clock tells the time (`Clock.now`) and runs a callback in the hub at a given time
(`Clock.call_at`). The real clock uses ``time.monotonic()`` and timers on gevent's
loop; `greentask.testing.FakeClock` keeps its own time and fires timers when a test
advances it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import gevent

__all__ = ["Clock", "MonotonicClock", "TimerHandle"]


@runtime_checkable
class TimerHandle(Protocol):
    """A pending timer; `cancel` makes sure its callback will not run."""

    def cancel(self) -> None:
        """Stop the timer (idempotent; no effect once it has fired)."""


@runtime_checkable
class Clock(Protocol):
    """Where greentask reads the time and arms its timers.

    Callbacks given to `call_at` run in the gevent hub, so they must not block
    (like ``rawlink`` callbacks).
    """

    def now(self) -> float:
        """The current time in seconds (an arbitrary epoch, monotonic)."""

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run ``callback(*args)`` in the hub once ``now() >= when``."""


def _nothing(*args: Any) -> None:
    """The callback of a timer that fired or was cancelled (drops the real one)."""


class _LoopTimer:
    """A one-shot gevent loop timer that never fires before its monotonic deadline.

    libev reads its own cached clock, which can run a little behind
    ``time.monotonic()``: a timer that wakes early is re-armed for the rest. Once it
    fired or was cancelled it lets go of the callback and its arguments, so a handle
    kept by someone does not keep (say) a whole context tree alive.
    """

    __slots__ = ("_args", "_callback", "_watcher", "_when")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._when = when
        self._callback: Callable[..., Any] = callback
        self._args = args
        self._watcher: Any = None
        self._arm()

    def _arm(self) -> None:
        loop = gevent.get_hub().loop
        watcher = loop.timer(max(0.0, self._when - time.monotonic()))
        watcher.start(self._fire, update=True)
        self._watcher = watcher

    def _fire(self) -> None:
        self._watcher.close()
        if time.monotonic() < self._when:  # the loop's cached time ran behind; re-arm
            self._arm()
            return
        self._watcher = None
        callback, args = self._callback, self._args
        self._callback, self._args = _nothing, ()
        callback(*args)

    def cancel(self) -> None:
        """Stop the timer (idempotent; no effect once it has fired)."""
        watcher = self._watcher
        if watcher is not None:
            self._watcher = None
            self._callback, self._args = _nothing, ()
            watcher.close()


class MonotonicClock:
    """The real clock: ``time.monotonic()`` time and timers on gevent's loop."""

    __slots__ = ()

    def now(self) -> float:
        """Return ``time.monotonic()``."""
        return time.monotonic()

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run ``callback(*args)`` in the hub at monotonic time ``when``."""
        return _LoopTimer(when, callback, args)

    def __repr__(self) -> str:
        return "MonotonicClock()"


REAL_CLOCK = MonotonicClock()
