"""Repeatable and RepeatTimer: run an inner execute again and again until cancelled.

Both swallow (and log) what a run raises, so one bad run does not bring the program
down. What counts as "the loop is over" is decided by the wrapper's own context, like
the manager does: once it is cancelled, a ``Cancelled`` / ``GreenletExit`` escaping the
inner execute just ends the loop. Before that, a ``Cancelled`` from the inner task's own
deadline is an error of that run (logged, then the loop goes on), while any other
``BaseException`` (a ``GreenletExit`` from ``kill``, ``gevent.Timeout``,
``KeyboardInterrupt``, ``SystemExit``) passes through and ends the wrapper.
"""

from __future__ import annotations

import logging
import math
from typing import Protocol

import gevent
from greenlet import GreenletExit

from ..context import Cancelled, Context, _check_seconds, _task_label, with_deadline
from ._common import check_inner_task
from ._wrap import InnerTask, Wrapper

__all__ = ["RepeatTimer", "Repeatable"]

logger = logging.getLogger("greentask")


class _BackoffLike(Protocol):
    def next_delay(self) -> float: ...

    def reset(self) -> None: ...


def _describe(exc: BaseException) -> str:
    """``repr(exc)``, or a placeholder if its ``__repr__`` raises (it is user code)."""
    try:
        return repr(exc)
    except Exception:  # noqa: BLE001 - the log line must still be written
        return f"<{type(exc).__qualname__} (its repr failed)>"


def _run_once(wrapper: Wrapper, ctx: Context) -> bool:
    """Run the inner execute once; return True if it failed (the failure is logged)."""
    try:
        wrapper._execute(ctx)
    except Exception as exc:
        logger.exception("greentask: %s: a run failed: %s", _task_label(ctx), _describe(exc))
        return True
    except GreenletExit as exc:
        if ctx.cancelled:
            return False  # the loop ends: the caller sees ctx.cancelled
        if not isinstance(exc, Cancelled):
            raise  # a kill: let it end this greenlet
        logger.exception("greentask: %s: a run was cancelled by its own context: %s", _task_label(ctx), _describe(exc))
        return True
    return False


class Repeatable(Wrapper):
    """Run the inner task's ``execute`` again and again until cancelled.

    Each run gets the wrapper's own ``ctx``. What a run raises is logged (with its
    traceback) to the ``greentask`` logger and swallowed; once ``ctx`` is cancelled
    the loop ends after the current run, and a ``Cancelled`` / ``GreenletExit`` that
    run raises is then just the end of it, so ``execute`` returns cleanly. Between
    runs it always yields to the hub (``gevent.idle()``, so timers and I/O run too),
    so an inner task that fails at once cannot freeze the process.

    With ``backoff``, a failed run is followed by a wait of ``backoff.next_delay()``
    seconds (on the context clock; cancellation cuts it short) and a clean run resets
    the backoff. Without it, the next run starts right after the yield.

    ``initialize`` and ``cleanup`` call the inner task's, if it has them, once each:
    a run that fails is retried with the same initialized task. Log lines name the
    manager and the task (``greentask: web: task 'poller': a run failed: ...``).

    When to use the manager's ``restart=gt.Restart(...)`` instead: `Repeatable` is a
    loop inside one execute, for a body whose failures are routine and need no
    fresh start (a poll, a retried fetch); nobody but the log sees them. Add the task
    with ``manager.add_task(..., restart=gt.Restart(...))`` instead when a failure
    should start the whole task over (``cleanup``, then ``initialize`` and ``execute``
    again, e.g. to reconnect), when failing too often should give up and stop the
    manager (a restart budget), or when restarts should be visible: in
    ``manager.status()`` / ``TaskHandle.restarts``, the health server's ``/status``
    and the manager's events.

    Args:
        task: a `greentask.Task`, an object with ``execute(ctx)``, or ``fn(ctx)``.
        backoff: a `Backoff` (anything with ``next_delay()`` and ``reset()``), or None.

    Raises:
        TypeError: ``task`` is None, a class (not an instance), an ``async def``
            function or has no execute; ``backoff`` is not a Backoff.

    Example::

        def poll(ctx):
            fetch_jobs()          # errors are logged, then it runs again

        manager.add_execute_task("poller", Repeatable(poll, backoff=Backoff(initial=0.5)))
    """

    def __init__(self, task: InnerTask, *, backoff: _BackoffLike | None = None) -> None:
        check_inner_task("Repeatable", task)
        super().__init__(task)
        if backoff is not None and not (
            callable(getattr(backoff, "next_delay", None)) and callable(getattr(backoff, "reset", None))
        ):
            msg = f"backoff must be a Backoff (with next_delay() and reset()) or None, got {backoff!r}"
            raise TypeError(msg)
        self._backoff = backoff

    @property
    def backoff(self) -> _BackoffLike | None:
        """The `Backoff` used between failed runs, or None."""
        return self._backoff

    def execute(self, ctx: Context) -> None:
        """Run the inner execute until ``ctx`` is cancelled; see the class docstring."""
        backoff = self._backoff
        while not ctx.cancelled:
            failed = _run_once(self, ctx)
            if ctx.cancelled:
                return
            if backoff is None:
                gevent.idle()
            elif failed:
                delay = backoff.next_delay()
                logger.debug("greentask: %s: running it again in %.3fs", _task_label(ctx), delay)
                if not ctx.sleep(delay):
                    return
            else:
                backoff.reset()
                gevent.idle()


class RepeatTimer(Wrapper):
    """Run the inner task's ``execute`` every ``interval`` seconds, on a fixed grid.

    The first run starts at once, at ``t0 = ctx.clock.now()``; the next ones at
    ``t0 + k * interval`` for k = 1, 2, ..., computed from ``t0`` each time, so no drift
    accumulates however long the runs take. A run that overruns its slot is never
    interrupted; the next run is at the first grid point at or after its end: the
    ticks it missed are skipped, never run back to back. Runs never overlap.

    What a run raises is logged to the ``greentask`` logger (naming manager and task)
    and swallowed (see the module docstring for ``Cancelled``). Cancellation of ``ctx`` during the wait
    between runs returns at once; during a run, once that run returns.
    ``initialize`` and ``cleanup`` call the inner task's, if it has them.

    All times are on the context clock, so `greentask.testing.FakeClock` drives it.

    Args:
        interval: seconds between the starts of two runs (> 0, finite).
        task: a `greentask.Task`, an object with ``execute(ctx)``, or ``fn(ctx)``.

    Raises:
        TypeError: ``interval`` is not a number; ``task`` is None, a class (not an
            instance), an ``async def`` function or has no execute.
        ValueError: ``interval`` is not positive and finite.

    Example::

        def report(ctx):
            metrics.flush()

        manager.add_execute_task("metrics", RepeatTimer(10.0, report))   # at t0, t0+10, t0+20 ...
    """

    def __init__(self, interval: float, task: InnerTask) -> None:
        self._interval = _check_seconds("interval", interval, positive=True, finite=True)
        check_inner_task("RepeatTimer", task)
        super().__init__(task)

    @property
    def interval(self) -> float:
        """Seconds between the starts of two runs."""
        return self._interval

    def execute(self, ctx: Context) -> None:
        """Run the inner execute on the grid until ``ctx`` is cancelled."""
        clock = ctx.clock
        interval = self._interval
        start = clock.now()
        tick = 0
        while not ctx.cancelled:
            _run_once(self, ctx)
            if ctx.cancelled:
                return
            now = clock.now()
            tick = _next_tick(start, interval, tick, now)
            when = start + tick * interval
            if when <= now:  # the run ended right on a grid point: go again, after a yield
                gevent.idle()
                continue
            # A deadline child fires at exactly `when` (no now + delay rounding) and
            # wakes early, with its timer released, when ctx is cancelled.
            wait_ctx, cancel = with_deadline(ctx, when)
            try:
                wait_ctx.wait()
            finally:
                cancel()


def _next_tick(start: float, interval: float, tick: int, now: float) -> int:
    """The smallest k > tick with ``start + k * interval >= now``."""
    k = tick + 1
    if start + k * interval >= now:
        return k
    k = max(k, math.ceil((now - start) / interval))
    while k > tick + 1 and start + (k - 1) * interval >= now:  # float rounding, downwards
        k -= 1
    while start + k * interval < now:  # float rounding, upwards
        k += 1
    return k
