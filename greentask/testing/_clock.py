"""FakeClock: a `greentask.Clock` whose time moves only when a test says so.

Timers live in a heap ordered by (deadline, creation order). `FakeClock.advance`
steps to each due deadline in turn, fires that timer in the hub, and settles the
process (every woken greenlet runs until quiet) before the next one, so a timer armed
while advancing fires in the same advance if it is due. With ``autojump_threshold``
a helper greenlet jumps time to the next timer whenever no other greenlet has run for
that many real seconds (trio's ``MockClock`` idea).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import Event
from gevent.hub import get_hub

from ._settle import park_and_count, settle

__all__ = ["FakeClock"]


class _FakeTimer:
    __slots__ = ("args", "callback", "cancelled", "clock", "when")

    def __init__(self, clock: FakeClock, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.clock = clock
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.clock._cancelled += 1

    def run(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.callback(*self.args)


class FakeClock:
    """A manual clock for deterministic tests; pass it to ``gt.background(clock)``.

    Args:
        start: the initial time.
        autojump_threshold: if set, whenever every greenlet has been blocked for this
            many *real* seconds, time jumps to the next pending timer. ``0`` jumps as
            soon as the process is quiet.

    Example::

        clock = FakeClock()
        ctx, cancel = gt.with_timeout(gt.background(clock), 5)
        clock.advance(4.999)
        assert not ctx.cancelled
        clock.advance(0.001)
        assert ctx.cancelled
    """

    def __init__(self, start: float = 0.0, autojump_threshold: float | None = None) -> None:
        if isinstance(start, bool) or not isinstance(start, int | float) or math.isnan(start):
            msg = f"start must be a number of seconds, got {start!r}"
            raise TypeError(msg)
        if autojump_threshold is not None and (
            isinstance(autojump_threshold, bool)
            or not isinstance(autojump_threshold, int | float)
            or not autojump_threshold >= 0
        ):
            msg = f"autojump_threshold must be None or a non-negative number of seconds, got {autojump_threshold!r}"
            raise ValueError(msg)
        self._now = float(start)
        self._heap: list[tuple[float, int, _FakeTimer]] = []
        self._seq = 0
        self._cancelled = 0
        self._autojump_threshold = autojump_threshold
        self._autojumper: gevent.Greenlet[..., Any] | None = None
        self._timer_added = Event()

    def now(self) -> float:
        """The fake current time."""
        return self._now

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> _FakeTimer:
        """Arm a timer; it fires (in the hub) when `advance` reaches ``when``."""
        timer = _FakeTimer(self, float(when), callback, args)
        self._seq += 1
        heapq.heappush(self._heap, (timer.when, self._seq, timer))
        if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
            self._compact()
        if self._autojump_threshold is not None:
            self._ensure_autojumper()
            self._timer_added.set()
        return timer

    @property
    def pending_timers(self) -> int:
        """How many armed timers have not fired or been cancelled."""
        return sum(1 for _, _, timer in self._heap if not timer.cancelled)

    def next_deadline(self) -> float | None:
        """The time of the next pending timer, or None."""
        self._drop_cancelled_head()
        return self._heap[0][0] if self._heap else None

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing due timers in deadline order.

        At each due deadline the clock reads that deadline, the timer fires and woken
        greenlets run until the process is quiet; a timer armed meanwhile fires in
        the same call if it is due. Returns only when everything woken has run.

        Raises:
            ValueError: ``seconds`` is negative (time can't go backwards) or NaN.
            RuntimeError: called from the hub.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            msg = f"seconds must be a number, got {seconds!r}"
            raise TypeError(msg)
        if not seconds >= 0:
            msg = f"seconds must be non-negative (time can't go backwards), got {seconds!r}"
            raise ValueError(msg)
        target = self._now + seconds
        settle()
        while True:
            self._drop_cancelled_head()
            if not self._heap or self._heap[0][0] > target:
                break
            self._fire_next()
        self._now = target
        settle()

    def _fire_next(self) -> None:
        when, _, timer = heapq.heappop(self._heap)
        self._now = max(self._now, when)
        get_hub().loop.run_callback(timer.run)
        settle()

    def _drop_cancelled_head(self) -> None:
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
            self._cancelled -= 1

    def _compact(self) -> None:
        self._heap = [entry for entry in self._heap if not entry[2].cancelled]
        heapq.heapify(self._heap)
        self._cancelled = 0

    # -- autojump ---------------------------------------------------------------

    def _ensure_autojumper(self) -> None:
        if self._autojumper is None or self._autojumper.dead:
            jumper = gevent.Greenlet(self._autojump_loop)
            jumper._greentask_internal = True  # type: ignore[attr-defined]
            self._autojumper = jumper
            jumper.start()

    def _autojump_loop(self) -> None:
        threshold = self._autojump_threshold
        assert threshold is not None
        wait = (lambda: gevent.sleep(threshold)) if threshold > 0 else gevent.idle
        while True:
            self._drop_cancelled_head()
            if not self._heap:
                self._timer_added.clear()
                self._timer_added.wait()
                continue
            quiet = park_and_count(wait) <= 0
            self._drop_cancelled_head()
            if quiet and self._heap:
                when, _, timer = heapq.heappop(self._heap)
                self._now = max(self._now, when)
                get_hub().loop.run_callback(timer.run)

    def close(self) -> None:
        """Stop the autojump helper greenlet, if any (the fixture does this)."""
        jumper, self._autojumper = self._autojumper, None
        if jumper is not None:
            jumper.kill(block=True)

    def __repr__(self) -> str:
        return f"<FakeClock now={self._now!r} pending={self.pending_timers}>"
