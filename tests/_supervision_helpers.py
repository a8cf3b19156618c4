"""Helpers for the supervision tests (SPEC §11 restarts, §12 nested managers).

They drive the public API only: run a manager in a background greenlet, script a stage
call by call (`Steps`), and record the events a manager delivers (`Events`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any, cast

import gevent
import pytest
from gevent.event import Event

import greentask as gt
from greentask.testing import settle

#: Real seconds any wait in these tests may take before the test fails instead of hanging.
LIMIT = 5.0

#: What one call of a scripted stage does (see `Steps`).
Step = Callable[[gt.Context], object] | type[BaseException] | BaseException | None


#: Managers started by `start`, so that a test failing half-way does not also leak them.
_STARTED: list[tuple[gt.TaskManager, gevent.Greenlet[..., Any]]] = []


def start(manager: gt.TaskManager, ctx: gt.Context | None = None) -> gevent.Greenlet[..., Any]:
    """Run ``manager.run(ctx)`` in a greenlet and let it get as far as it can."""
    runner: gevent.Greenlet[..., Any] = gevent.spawn(manager.run, ctx)
    _STARTED.append((manager, runner))
    settle()
    return runner


@pytest.fixture(autouse=True)
def stop_leftover_managers() -> Iterator[None]:
    """After a test that failed half-way: stop what `start` started, so only the failure is reported.

    Import it into a test module to use it (``from _supervision_helpers import
    stop_leftover_managers``). A passing test leaves nothing for it to do; it runs
    before the leak check, which still catches anything left by the library itself.
    """
    yield
    while _STARTED:
        manager, runner = _STARTED.pop()
        if runner.dead:
            continue
        manager.stop()
        runner.join(1.0)
        if not runner.dead:
            runner.kill(block=True, timeout=1.0)


def finish(runner: gevent.Greenlet[..., Any], timeout: float = LIMIT) -> list[gt.NamedError]:
    """The errors ``run`` returned; fails the test if it has not returned within ``timeout`` real seconds."""
    with gevent.Timeout(timeout):
        return runner.get()  # type: ignore[no-any-return]


def run(manager: gt.TaskManager, ctx: gt.Context | None = None) -> list[gt.NamedError]:
    """``manager.run(ctx)`` in the calling greenlet, bounded in real time."""
    with gevent.Timeout(LIMIT):
        return manager.run(ctx)


def block(ctx: gt.Context) -> None:
    """A step that waits until its context is cancelled, then returns (a clean stop)."""
    ctx.wait()


def after(seconds: float, then: Step = None) -> Callable[[gt.Context], object]:
    """A step that runs ``seconds`` on the context clock, then does ``then`` (returns if cancelled first)."""

    def step(ctx: gt.Context) -> object:
        if not ctx.sleep(seconds):
            return None
        return _do(then, ctx)

    return step


def until(gate: Event, then: Step = None) -> Callable[[gt.Context], object]:
    """A step that waits for ``gate`` (or cancellation: then it returns), then does ``then``."""

    def step(ctx: gt.Context) -> object:
        waitables: list[Any] = [gate, ctx]
        gevent.wait(waitables, count=1)
        if ctx.cancelled:
            return None
        return _do(then, ctx)

    return step


def _do(step: Step, ctx: gt.Context) -> object:
    if step is None:
        return None
    if isinstance(step, BaseException):
        raise step.with_traceback(None)
    if isinstance(step, type):
        raise cast("type[BaseException]", step)()
    return step(ctx)


class Steps:
    """A stage stub that does its next scripted step on each call; the last step repeats.

    A step is an exception class (a fresh instance is raised), an exception instance
    (raised), None (return at once) or a callable ``step(ctx)`` (`block`, `after`,
    `until`). Records the contexts, the context-clock time of each call and every
    exception that left the stub, in order.

    Example::

        execute = Steps(ConnectionError, ConnectionError, block)  # fails twice, then runs
    """

    def __init__(self, *steps: Step) -> None:
        if not steps:
            msg = "Steps needs at least one step"
            raise ValueError(msg)
        self.steps = steps
        self.contexts: list[gt.Context] = []
        self.times: list[float] = []
        self.raised: list[BaseException] = []

    @property
    def calls(self) -> int:
        return len(self.contexts)

    def __call__(self, ctx: gt.Context) -> object:
        step = self.steps[min(self.calls, len(self.steps) - 1)]
        self.contexts.append(ctx)
        self.times.append(ctx.clock.now())
        try:
            return _do(step, ctx)
        except BaseException as exc:
            self.raised.append(exc)
            raise


class Events:
    """Every `ManagerEvent` a manager delivers to a ``subscribe`` callback, in order.

    ``probe`` (optional) is called at each event and its value kept in `probes`, to
    sample state (a handle's state, its restart count) at the moment of the event.
    """

    def __init__(self, manager: gt.TaskManager, probe: Callable[[gt.ManagerEvent], object] | None = None) -> None:
        self.events: list[gt.ManagerEvent] = []
        self.probes: list[object] = []
        self._probe = probe
        self.unsubscribe = manager.subscribe(self._on_event)

    def _on_event(self, event: gt.ManagerEvent) -> None:
        self.events.append(event)
        if self._probe is not None:
            self.probes.append(self._probe(event))

    def kinds(self, task_name: str | None) -> list[str]:
        """The kinds of the events about ``task_name`` (None: the manager's own), in order."""
        return [event.kind for event in self.events if event.task_name == task_name]

    def of(self, task_name: str | None, *kinds: str) -> list[gt.ManagerEvent]:
        """The events about ``task_name`` whose kind is one of ``kinds`` (every kind if none given)."""
        return [e for e in self.events if e.task_name == task_name and (not kinds or e.kind in kinds)]

    def index(self, kind: str, task_name: str | None) -> int:
        """The position of the first ``kind`` event about ``task_name`` (ValueError if none)."""
        for i, event in enumerate(self.events):
            if event.kind == kind and event.task_name == task_name:
                return i
        msg = f"no {kind!r} event for {task_name!r} in {[(e.kind, e.task_name) for e in self.events]!r}"
        raise ValueError(msg)


def states(manager: gt.TaskManager) -> dict[str, gt.TaskState]:
    """``name -> state`` for every row of ``manager.status()`` (names are unique in these tests)."""
    return {status.name: status.state for status in manager.status()}


def error_lines(records: list[Any]) -> list[str]:
    """The messages of the ERROR records of the ``greentask`` logger among ``records``."""
    return [r.getMessage() for r in records if r.name == "greentask" and r.levelname == "ERROR"]


def restart_line(task: str, stage: str, error: str, number: int, most: int, within: str, delay: str) -> re.Pattern[str]:
    """The pattern of SPEC §11's log line for a restarted failure, tolerant of float spelling.

    ``task 'db' failed in execute: ConnectionError('refused'); restart 2 of at most 3
    within 60.0s in 0.4s``
    """
    return re.compile(
        rf"task {re.escape(repr(task))} failed in {stage}: {re.escape(error)}; "
        rf"restart {number} of at most {most} within {within}(\.0)?s in {delay}(\.0)?s"
    )
