"""FakeClock: a `greentask.Clock` whose time moves only when a test says so.

Timers live in a heap ordered by (deadline, creation order). `FakeClock.advance`
steps to each due deadline in turn, fires that timer in the hub, and settles the
process (every woken greenlet runs until quiet) before the next one, so a timer armed
while advancing fires in the same advance if it is due. A timer armed for a time that
has already been reached fires soon, in the hub, like a real timer would.

With ``autojump_threshold`` a helper greenlet (flagged ``_greentask_internal``, so the
leak check and `settle` ignore it) jumps time to the next timer whenever no other
greenlet has run for that many real seconds (trio's ``MockClock`` idea). The helper
holds the clock only weakly: an abandoned clock does not keep it alive.
"""

from __future__ import annotations

import heapq
import math
import weakref
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import gevent
from gevent import getcurrent
from gevent.event import Event
from gevent.hub import get_hub

from ._settle import QUIET_TURNS, park_and_count, settle

if TYPE_CHECKING:
    from .._clock import Clock

__all__ = ["FakeClock"]


class _FakeTimer:
    """A pending `FakeClock` timer (a `greentask.context.TimerHandle`)."""

    __slots__ = ("args", "callback", "cancelled", "clock", "when")

    def __init__(self, clock: FakeClock, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.clock: FakeClock | None = clock
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        """Make sure the callback will not run (idempotent; no effect once fired)."""
        if not self.cancelled:
            self.cancelled = True
            clock, self.clock = self.clock, None
            if clock is not None:
                clock._cancelled += 1

    def run(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.callback(*self.args)

    def __repr__(self) -> str:
        state = "done" if self.cancelled else "pending"
        return f"<FakeClock timer at {self.when!r} {state}: {self.callback!r}>"


def _check_time(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"{name} must be a number of seconds, got {value!r}"
        raise TypeError(msg)
    if math.isnan(value):
        msg = f"{name} must be a number of seconds, got {value!r}"
        raise ValueError(msg)
    return float(value)


def _check_threshold(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"autojump_threshold must be None or a non-negative number of seconds, got {value!r}"
        raise TypeError(msg)
    if not (value >= 0 and math.isfinite(value)):
        msg = f"autojump_threshold must be None or a non-negative number of seconds, got {value!r}"
        raise ValueError(msg)
    return float(value)


class FakeClock:
    """A manual clock for deterministic tests; pass it to ``gt.background(clock)``.

    Time starts at ``start`` and moves only through `advance` (or autojump). Every
    duration in greentask is measured on the context clock, so a context, a
    `greentask.TaskManager` or a provided task built on a ``FakeClock`` context sleeps,
    times out and stops on fake time.

    Timer callbacks run in the hub, as with the real clock. ``advance`` must be called
    from a greenlet (the test's main greenlet is fine), never from the hub.

    Args:
        start: the initial time (a finite number).
        autojump_threshold: if set, whenever every greenlet has been blocked for this
            many *real* seconds, time jumps to the next pending timer, which fires.
            ``0`` jumps as soon as the process is quiet. Can be changed later through
            the `autojump_threshold` property. Call `close` (or use the clock as a
            context manager) to stop the helper greenlet; the ``fake_clock`` fixture
            does.

    Raises:
        TypeError: ``start`` or ``autojump_threshold`` is not a number.
        ValueError: ``start`` is not finite, or ``autojump_threshold`` is negative.

    Example::

        clock = FakeClock()
        ctx, cancel = gt.with_timeout(gt.background(clock), 5)
        clock.advance(4.999)
        assert not ctx.cancelled
        clock.advance(0.001)
        assert ctx.cancelled
    """

    def __init__(self, start: float = 0.0, autojump_threshold: float | None = None) -> None:
        start = _check_time("start", start)
        if not math.isfinite(start):
            msg = f"start must be a finite number of seconds, got {start!r}"
            raise ValueError(msg)
        self._now = start
        self._heap: list[tuple[float, int, _FakeTimer]] = []
        self._seq = 0
        self._cancelled = 0
        self._advancing = False
        self._due_scheduled = False
        self._autojump_threshold: float | None = None
        self._jumper: gevent.Greenlet[..., Any] | None = None
        self._wakeup = Event()
        # Lets a parked autojump helper notice that the clock has been collected.
        weakref.finalize(self, self._wakeup.set)
        self.autojump_threshold = autojump_threshold

    # -- the Clock protocol -------------------------------------------------------

    def now(self) -> float:
        """The fake current time."""
        return self._now

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> _FakeTimer:
        """Arm a timer: ``callback(*args)`` runs in the hub once the clock reaches ``when``.

        A timer whose time has already been reached fires soon (on the next turn of the
        event loop), without an `advance`.

        Returns:
            a handle whose ``cancel()`` makes sure the callback does not run.

        Raises:
            TypeError: ``when`` is not a number or ``callback`` is not callable.
            ValueError: ``when`` is NaN.
        """
        when = _check_time("when", when)
        if not callable(callback):
            msg = f"callback must be callable, got {callback!r}"
            raise TypeError(msg)
        timer = _FakeTimer(self, when, callback, args)
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, timer))
        if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
            self._compact()
        if when <= self._now and not self._advancing and not self._due_scheduled:
            self._due_scheduled = True
            get_hub().loop.run_callback(self._fire_due)
        if self._autojump_threshold is not None:
            self._ensure_jumper()
            self._wakeup.set()
        return timer

    # -- inspecting ---------------------------------------------------------------

    @property
    def pending_timers(self) -> int:
        """How many armed timers have neither fired nor been cancelled."""
        return sum(1 for _, _, timer in self._heap if not timer.cancelled)

    def next_deadline(self) -> float | None:
        """The time of the next pending timer, or None when there is none."""
        self._drop_cancelled_head()
        return self._heap[0][0] if self._heap else None

    # -- moving time --------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing due timers in deadline order.

        First settles the process (so greenlets started before the call arm their
        timers at the current time). Then, for each pending timer due by the target
        time, in deadline order (ties in creation order): the clock reads that
        deadline, the timer fires and woken greenlets run until the process is quiet
        (`settle`). A timer armed meanwhile fires in the same call if it is due, so a
        periodic task sleeping 1 s fires three times in ``advance(3.5)``. Finally the
        clock reads the target time. Returns only when everything woken has run.

        Args:
            seconds: how far to move (a finite, non-negative number).

        Raises:
            TypeError: ``seconds`` is not a number.
            ValueError: ``seconds`` is negative (time can't go backwards), NaN or
                infinite.
            RuntimeError: called from the hub, or from inside another ``advance``.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            msg = f"seconds must be a number, got {seconds!r}"
            raise TypeError(msg)
        if not seconds >= 0:
            msg = f"seconds must be non-negative (time can't go backwards), got {seconds!r}"
            raise ValueError(msg)
        if not math.isfinite(seconds):
            msg = f"seconds must be finite, got {seconds!r}"
            raise ValueError(msg)
        if getcurrent() is get_hub():
            msg = "advance() cannot be called from the hub; call it from a greenlet"
            raise RuntimeError(msg)
        if self._advancing:
            msg = "advance() is already running; a greenlet it woke cannot advance the clock again"
            raise RuntimeError(msg)
        target = self._now + seconds
        self._advancing = True
        try:
            settle()
            while True:
                timer = self._pop_due(target)
                if timer is None:
                    break
                self._now = max(self._now, timer.when)
                get_hub().loop.run_callback(timer.run)
                settle()
            self._now = max(self._now, target)
        finally:
            self._advancing = False

    def _pop_due(self, limit: float) -> _FakeTimer | None:
        """Remove and return the next pending timer due by ``limit``, if any."""
        self._drop_cancelled_head()
        heap = self._heap
        if not heap or heap[0][0] > limit:
            return None
        timer = heapq.heappop(heap)[2]
        timer.clock = None  # out of the heap: a late cancel() must not count
        return timer

    def _fire_due(self) -> None:
        """Hub callback: fire, in order, the timers armed for a time already reached."""
        self._due_scheduled = False
        hub = get_hub()
        while (timer := self._pop_due(self._now)) is not None:
            try:
                timer.run()
            except BaseException as exc:  # noqa: BLE001 - reported like a failing loop callback
                hub.handle_error(timer, type(exc), exc, exc.__traceback__)

    def _drop_cancelled_head(self) -> None:
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
            self._cancelled -= 1

    def _compact(self) -> None:
        self._heap = [entry for entry in self._heap if not entry[2].cancelled]
        heapq.heapify(self._heap)
        self._cancelled = 0

    # -- autojump -----------------------------------------------------------------

    @property
    def autojump_threshold(self) -> float | None:
        """Real seconds of quiet after which time jumps to the next timer; None: never.

        Setting it starts or stops the autojump helper greenlet.
        """
        return self._autojump_threshold

    @autojump_threshold.setter
    def autojump_threshold(self, value: float | None) -> None:
        self._autojump_threshold = _check_threshold(value)
        if self._autojump_threshold is None:
            self._stop_jumper()
        elif self._heap:
            self._ensure_jumper()
        self._wakeup.set()

    def _ensure_jumper(self) -> None:
        jumper = self._jumper
        if jumper is None or jumper.dead:
            jumper = gevent.Greenlet(_autojump_loop, weakref.ref(self), self._wakeup)
            jumper._greentask_internal = True  # type: ignore[attr-defined]
            jumper.name = "FakeClock-autojump"
            self._jumper = jumper
            jumper.start()

    def _stop_jumper(self) -> None:
        jumper, self._jumper = self._jumper, None
        if jumper is not None and not jumper.dead:
            if getcurrent() is get_hub():
                jumper.kill(block=False)
            else:
                jumper.kill(block=True)

    def _jump(self) -> None:
        """Autojump: move to the next pending timer and fire it (in the hub)."""
        timer = self._pop_due(math.inf)
        if timer is not None:
            self._now = max(self._now, timer.when)
            get_hub().loop.run_callback(timer.run)

    def close(self) -> None:
        """Turn autojump off and stop its helper greenlet (the ``fake_clock`` fixture does this).

        The clock keeps working with `advance`; setting `autojump_threshold` again
        turns autojump back on.
        """
        self.autojump_threshold = None

    def __enter__(self) -> FakeClock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FakeClock now={self._now!r} pending={self.pending_timers}>"


def _autojump_loop(ref: weakref.ref[FakeClock], wakeup: Event) -> None:
    """Body of the autojump helper; it holds the clock only while not blocked."""
    me = getcurrent()
    quiet_turns = 0
    while True:
        clock = ref()
        if clock is None or clock._jumper is not me or clock._autojump_threshold is None:
            return
        threshold = clock._autojump_threshold
        if clock.next_deadline() is None:
            quiet_turns = 0
            wakeup.clear()
            del clock
            wakeup.wait()
            continue
        del clock
        if threshold == 0:
            # Quiet as `settle` means it: two empty turns of the loop in a row.
            quiet_turns = quiet_turns + 1 if park_and_count(gevent.idle) <= 0 else 0
            quiet = quiet_turns >= QUIET_TURNS
        else:
            quiet = park_and_count(partial(gevent.sleep, threshold)) <= 0
        clock = ref()
        if clock is None:
            return
        if quiet and not clock._advancing and clock._jumper is me and clock._autojump_threshold is not None:
            quiet_turns = 0
            clock._jump()
        del clock


if TYPE_CHECKING:

    def _fake_clock_is_a_clock(clock: FakeClock) -> Clock:
        return clock  # mypy checks that FakeClock satisfies the Clock protocol
