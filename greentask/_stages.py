"""Running one ``initialize`` or ``cleanup``: a named helper greenlet, a timeout, a force.

Every stage runs in a helper greenlet named after its task (so
``gevent.util.format_run_info()`` and tracebacks show the task), and the calling
manager greenlet waits for whichever comes first:

- the stage returns or raises (its exception is captured, never printed by the hub);
- ``initialize_timeout`` / ``cleanup_timeout`` passes on the context clock: the helper is
  killed and a `StopTimeout` recorded ("did not initialize within 2.0s; killed");
- the forced stop (`gt.run`'s second signal, SPEC §15): the helper is killed at once and
  a `StopTimeout` says the shutdown was forced.

A killed helper gets the same grace as an execute (the timeout, else 1 s) to die; one
that refuses is abandoned so that `run` always returns. An exception thrown into the
waiting manager greenlet (KeyboardInterrupt) stops the stage and is its error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import Event
from greenlet import GreenletExit

from ._base import _ManagerCore
from ._record import _Record
from .context import Context, background, with_deadline
from .errors import Stage, StopTimeout

__all__ = ["_Stages"]

_VERBS = {Stage.INITIALIZE: "initialize", Stage.CLEANUP: "clean up", Stage.EXECUTE: "execute"}


def _capture(fn: Callable[[Context], object], ctx: Context) -> BaseException | None:
    """Call a stage; return what it raised (never let the hub print it)."""
    try:
        fn(ctx)
    except BaseException as exc:  # noqa: BLE001 - every outcome is recorded
        return exc
    return None


class _Stages(_ManagerCore):
    def _run_stage(
        self, record: _Record, fn: Callable[[Context], object], ctx: Context, timeout: float | None, stage: Stage
    ) -> list[BaseException]:
        """Run ``initialize`` or ``cleanup``; return what it raised (not recorded here).

        A `StopTimeout` comes first when the stage was killed; what the stage raised
        while dying follows it.
        """
        helper = gevent.Greenlet(_capture, fn, ctx)
        helper.name = record.name
        force = Event()
        self._active_stages[helper] = force
        helper.start()
        clock = self._clock
        deadline = None if timeout is None else clock.now() + timeout
        try:
            try:
                finished = self._join_stage(helper, deadline, force)
            except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt or a kill delivered to the caller
                # As if it had landed inside the stage: stop the stage, it is the stage's error.
                helper.kill(block=False)
                with contextlib.suppress(BaseException):
                    self._join_stage(helper, clock.now() + (timeout or 1.0), None)
                return [exc]
            if finished:
                return [] if helper.value is None else [helper.value]
            helper.kill(block=False)
            verb = _VERBS[stage]
            if force.is_set():
                what = f"task {record.name!r} was still running {stage.value} when shutdown was forced"
            else:
                what = f"task {record.name!r} did not {verb} within {timeout}s"
            grace = timeout if timeout else 1.0
            errors: list[BaseException] = [StopTimeout(f"{what}; killed")]
            if self._join_stage(helper, clock.now() + grace, None):
                dying = helper.value
                if dying is not None and not isinstance(dying, GreenletExit):
                    errors.append(dying)
            else:
                errors[0] = StopTimeout(f"{what}; abandoned")
            return errors
        finally:
            self._active_stages.pop(helper, None)

    def _join_stage(self, greenlet: gevent.Greenlet[..., Any], deadline: float | None, force: Event | None) -> bool:
        """Wait for the helper, the deadline or the force; True if the helper finished."""
        waits: list[Any] = [greenlet]
        cancel = None
        if deadline is not None:
            timer_ctx, cancel = with_deadline(background(self._clock), deadline)
            waits.append(timer_ctx)
        if force is not None:
            waits.append(force)
        try:
            gevent.wait(waits, count=1)
        finally:
            if cancel is not None:
                cancel()
        return greenlet.dead

    def _force_stages(self) -> None:
        """Kill every initialize/cleanup running right now (the forced stop)."""
        for force in list(self._active_stages.values()):
            force.set()
