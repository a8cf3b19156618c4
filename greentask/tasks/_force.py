"""ForceStop: kill an inner execute that does not stop within a timeout of cancellation."""

from __future__ import annotations

import logging
from typing import Any

import gevent
from greenlet import GreenletExit

from ..context import Context, _check_seconds, _task_label, with_timeout, without_cancel
from ..errors import StopTimeout
from ._common import check_inner_task, graceful_timeout, spawn_named
from ._server import KILL_GRACE, join_all
from ._wrap import InnerTask, Wrapper

__all__ = ["ForceStop"]

logger = logging.getLogger("greentask")


class _Outcome:
    """What the inner execute returned or raised (caught in its own greenlet)."""

    __slots__ = ("error", "value")

    def __init__(self) -> None:
        self.value: object = None
        self.error: BaseException | None = None


def _run_captured(execute: Any, ctx: Context, outcome: _Outcome) -> None:
    try:
        outcome.value = execute(ctx)
    except BaseException as exc:  # noqa: BLE001 - handed to the ForceStop greenlet, never to the hub
        outcome.error = exc


class ForceStop(Wrapper):
    """Give the inner execute ``timeout`` seconds after cancellation, then kill it.

    The inner ``execute`` runs in a child greenlet (named for the task) with the
    wrapper's own ``ctx``. While ``ctx`` is not cancelled, ``ForceStop`` waits for it.
    A task that honours cancellation stops on its own: whatever it returns or raises
    comes out of ``ForceStop.execute`` unchanged (a ``Cancelled`` it raises too, which
    the manager counts as a clean stop). Once ``ctx`` is cancelled, the child gets
    ``timeout`` seconds on the context clock; then it is killed with ``GreenletExit``
    and `StopTimeout` is raised (chained from any other error it raised while dying).
    Unlike Go, the greenlet really stops, as soon as it next yields to the hub. One
    that catches the kill and keeps blocking is given another ``timeout`` seconds to
    die, then abandoned (logged) and `StopTimeout` says so.

    Inside a `TaskManager` with a ``stop_timeout``, the kill comes before the
    manager's own (``ctx.stop_deadline``), by a margin of a tenth of the budget (at
    most 1 s): ``timeout`` applies when it ends earlier than that. So
    ``ForceStop(10, task)`` in ``TaskManager(stop_timeout=10)`` kills the inner execute
    after about 9 s, and the `StopTimeout` it raises is ForceStop's, with its message.

    If the ``ForceStop`` greenlet itself is killed (the manager's kill), it kills the
    child and waits (up to 1 s on the context clock) for it to die before it ends:
    nothing the task spawned outlives it, and a `Subprocess` inside has reaped its
    process by then. ``initialize`` and ``cleanup`` call the inner task's, if it has
    them, unbounded.

    Args:
        timeout: seconds (context clock) between cancellation and the kill (>= 0).
        task: a `greentask.Task`, an object with ``execute(ctx)``, or ``fn(ctx)``.

    Raises:
        TypeError: ``timeout`` is not a number; ``task`` is None, a class (not an
            instance), an ``async def`` function or has no execute.
        ValueError: ``timeout`` is negative or NaN.

    Example::

        def legacy(ctx):
            while True:
                blocking_poll()   # never looks at ctx

        manager.add_task("legacy", ForceStop(5.0, legacy_task))   # killed 5s after shutdown
    """

    def __init__(self, timeout: float, task: InnerTask) -> None:
        self._timeout = _check_seconds("timeout", timeout)
        check_inner_task("ForceStop", task)
        super().__init__(task)

    @property
    def timeout(self) -> float:
        """Seconds between cancellation and the kill."""
        return self._timeout

    def execute(self, ctx: Context) -> object:
        """Run the inner execute; kill it ``timeout`` seconds after ``ctx`` is cancelled.

        Returns:
            What the inner execute returned.

        Raises:
            StopTimeout: it was still running ``timeout`` seconds after cancellation.
            BaseException: whatever the inner execute raised, unchanged.
        """
        outcome = _Outcome()
        child = spawn_named(ctx, "greentask ForceStop inner execute", _run_captured, self._execute, ctx, outcome)
        abandoned = False
        try:
            gevent.wait([child, ctx], count=1)  # type: ignore[type-var]
            if not child.dead:
                timeout = graceful_timeout(ctx, self._timeout, ctx.clock.now())
                if not self._join(child, ctx, timeout):
                    child.kill(block=False)
                    killed = self._join(child, ctx, timeout)
                    if not killed:
                        abandoned = True
                        logger.error("greentask: %s: the inner execute refuses to die; abandoned", _task_label(ctx))
                    self._raise_stop_timeout(outcome, killed, timeout)
        finally:
            if not child.dead:
                child.kill(block=False)  # once more, on the way out
                # ForceStop itself was killed (the manager's kill): the child goes first.
                if not abandoned and not join_all(ctx, [child], KILL_GRACE):
                    logger.error("greentask: %s: the inner execute refuses to die; abandoned", _task_label(ctx))
        if outcome.error is not None:
            raise outcome.error
        return outcome.value

    def _join(self, child: gevent.Greenlet[..., Any], ctx: Context, timeout: float) -> bool:
        """Wait up to ``timeout`` (context clock) for ``child`` to finish; True if it did."""
        timer, cancel = with_timeout(without_cancel(ctx), timeout)
        try:
            gevent.wait([child, timer], count=1)  # type: ignore[type-var]
        finally:
            cancel()
        return bool(child.dead)

    def _raise_stop_timeout(self, outcome: _Outcome, killed: bool, timeout: float) -> None:
        seconds = round(timeout, 3)
        if killed:
            msg = f"execute did not stop within {seconds}s of cancellation; killed"
        else:
            msg = f"execute did not stop within {seconds}s of cancellation and refused to die; abandoned"
        dying = outcome.error
        if dying is not None and not isinstance(dying, GreenletExit):
            raise StopTimeout(msg) from dying
        raise StopTimeout(msg) from None
