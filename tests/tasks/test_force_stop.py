"""ForceStop: a cooperative task stops normally; one that ignores ctx is killed after timeout."""

from __future__ import annotations

import math
from typing import Any

import gevent
import pytest
from gevent import getcurrent
from gevent.event import Event
from greenlet import GreenletExit

import greentask as gt
from greentask.tasks import ForceStop
from greentask.testing import CallLog, FakeClock, FakeExecuteTask, FakeTask, settle


def _run(task: ForceStop, ctx: gt.Context) -> gevent.Greenlet[..., Any]:
    """Run ``task.execute(ctx)``; the greenlet's value is ("ok", value) or ("raised", exc)."""

    def body() -> tuple[str, object]:
        try:
            return ("ok", task.execute(ctx))
        except BaseException as exc:
            return ("raised", exc)

    return gevent.spawn(body)


def _outcome(greenlet: gevent.Greenlet[..., Any]) -> tuple[str, Any]:
    with gevent.Timeout(5):
        return greenlet.get()  # type: ignore[no-any-return]


class _Ignoring:
    """An execute that ignores its context and blocks on an Event nobody sets."""

    def __init__(self) -> None:
        self.greenlet: Any = None
        self.started = Event()
        self.never = Event()

    def execute(self, ctx: gt.Context) -> None:
        self.greenlet = getcurrent()
        self.started.set()
        self.never.wait()


def test_a_task_that_honours_cancellation_stops_normally_with_its_value(hub_errors: list[Any]) -> None:
    clock = FakeClock()
    ctx, cancel = gt.with_cancel(gt.background(clock))

    def cooperative(ctx: gt.Context) -> int:
        ctx.wait()
        return 42

    force = _run(ForceStop(5.0, cooperative), ctx)
    settle()
    cancel()
    assert _outcome(force) == ("ok", 42)
    assert clock.now() == 0.0
    assert clock.pending_timers == 0
    assert hub_errors == []


def test_a_return_before_cancellation_is_passed_on_at_once() -> None:
    ctx, _cancel = gt.with_cancel(gt.background(FakeClock()))
    assert _outcome(_run(ForceStop(1.0, lambda ctx: "done"), ctx)) == ("ok", "done")


def test_an_error_of_the_inner_task_propagates_unchanged_and_is_not_printed_by_the_hub(
    hub_errors: list[Any],
) -> None:
    ctx, cancel = gt.with_cancel(gt.background(FakeClock()))
    error = ConnectionError("refused")
    force = _run(ForceStop(1.0, FakeExecuteTask(execute=error)), ctx)
    kind, raised = _outcome(force)
    assert kind == "raised"
    assert raised is error
    settle()
    assert hub_errors == []
    cancel()


def test_a_cancelled_raised_after_cancellation_is_passed_on() -> None:
    ctx, cancel = gt.with_cancel(gt.background(FakeClock()))

    def check_after_wait(ctx: gt.Context) -> None:
        ctx.wait()
        ctx.check()

    force = _run(ForceStop(1.0, check_after_wait), ctx)
    settle()
    cancel()
    kind, raised = _outcome(force)
    assert kind == "raised"
    assert isinstance(raised, gt.Cancelled)


def test_a_task_that_ignores_cancellation_is_killed_after_the_timeout(hub_errors: list[Any]) -> None:
    clock = FakeClock()
    ctx, cancel = gt.with_cancel(gt.background(clock))
    inner = _Ignoring()
    force = _run(ForceStop(5.0, inner), ctx)
    with gevent.Timeout(5):
        inner.started.wait()
    cancel()
    settle()
    clock.advance(4.999)
    assert not force.dead
    assert not inner.greenlet.dead
    clock.advance(0.001)
    kind, raised = _outcome(force)
    assert kind == "raised"
    assert isinstance(raised, gt.StopTimeout)
    assert str(raised) == "execute did not stop within 5.0s of cancellation; killed"
    assert raised.__cause__ is None
    assert inner.greenlet.dead
    assert clock.now() == 5.0
    assert hub_errors == []


def test_a_zero_timeout_kills_as_soon_as_cancelled() -> None:
    ctx, cancel = gt.with_cancel(gt.background(FakeClock()))
    inner = _Ignoring()
    force = _run(ForceStop(0, inner), ctx)
    with gevent.Timeout(5):
        inner.started.wait()
    cancel()
    _, raised = _outcome(force)
    assert isinstance(raised, gt.StopTimeout)
    assert inner.greenlet.dead


def test_an_error_raised_while_dying_is_chained_to_the_stop_timeout() -> None:
    clock = FakeClock()
    ctx, cancel = gt.with_cancel(gt.background(clock))
    started = Event()

    def dies_badly(ctx: gt.Context) -> None:
        try:
            started.set()
            Event().wait()
        finally:
            raise RuntimeError("could not flush")

    force = _run(ForceStop(1.0, dies_badly), ctx)
    with gevent.Timeout(5):
        started.wait()
    cancel()
    settle()
    clock.advance(1.0)
    _, raised = _outcome(force)
    assert isinstance(raised, gt.StopTimeout)
    assert isinstance(raised.__cause__, RuntimeError)
    assert str(raised.__cause__) == "could not flush"


def test_a_task_that_survives_the_kill_is_abandoned_after_another_timeout() -> None:
    clock = FakeClock()
    ctx, cancel = gt.with_cancel(gt.background(clock))
    caught = Event()
    holder: list[Any] = []

    def stubborn(ctx: gt.Context) -> None:
        holder.append(getcurrent())
        try:
            Event().wait()
        except GreenletExit:
            caught.set()
            Event().wait()  # keeps blocking after the first kill

    force = _run(ForceStop(2.0, stubborn), ctx)
    settle()
    cancel()
    settle()
    clock.advance(2.0)
    with gevent.Timeout(5):
        caught.wait()
    assert not force.dead
    clock.advance(2.0)
    _, raised = _outcome(force)
    assert isinstance(raised, gt.StopTimeout)
    assert "abandoned" in str(raised)
    # On its way out ForceStop kills it once more; the second kill is not caught.
    with gevent.Timeout(5):
        holder[0].join()
    assert holder[0].dead


def test_killing_the_force_stop_greenlet_kills_the_inner_one() -> None:
    ctx, _cancel = gt.with_cancel(gt.background(FakeClock()))
    inner = _Ignoring()
    force = _run(ForceStop(10.0, inner), ctx)
    with gevent.Timeout(5):
        inner.started.wait()
        force.kill()
        inner.greenlet.join()
    assert inner.greenlet.dead
    _, raised = _outcome(force)
    assert isinstance(raised, GreenletExit)


def test_initialize_and_cleanup_pass_through() -> None:
    log = CallLog()
    inner = FakeTask("inner", initialize=lambda ctx: 1, cleanup=lambda ctx: 2, log=log)
    force = ForceStop(1.0, inner)
    ctx = gt.background()
    assert force.initialize(ctx) == 1
    assert force.cleanup(ctx) == 2
    assert log.stages("inner") == [gt.Stage.INITIALIZE, gt.Stage.CLEANUP]
    assert force.timeout == 1.0
    assert ForceStop(1.0, _Ignoring()).initialize(ctx) is None


@pytest.mark.parametrize(
    ("timeout", "task", "error", "match"),
    [
        (-1, FakeExecuteTask(), ValueError, "timeout must be a non-negative"),
        (math.nan, FakeExecuteTask(), ValueError, "timeout must be a non-negative"),
        ("5", FakeExecuteTask(), TypeError, "timeout must be a number"),
        (1.0, None, TypeError, "task cannot be None"),
        (1.0, "not a task", TypeError, "task must be callable"),
    ],
)
def test_bad_arguments_are_rejected(timeout: object, task: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ForceStop(timeout, task)  # type: ignore[arg-type]


def test_inside_a_task_manager_a_stuck_task_is_killed_and_reported() -> None:
    clock = FakeClock()
    log = CallLog()
    inner = _Ignoring()
    wrapped = FakeTask("stuck", execute=inner.execute, log=log)
    polite = FakeTask.blocking("polite", log=log)
    manager = gt.TaskManager()
    manager.add_task("stuck", ForceStop(3.0, wrapped))
    manager.add_task("polite", ForceStop(3.0, polite))
    runner = gevent.spawn(manager.run, gt.background(clock))
    with gevent.Timeout(5):
        inner.started.wait()
    settle()
    manager.stop()
    settle()
    clock.advance(3.0)
    with gevent.Timeout(5):
        errors = runner.get()
    assert [(e.task_name, e.stage, type(e.error)) for e in errors] == [
        ("stuck", gt.Stage.EXECUTE, gt.StopTimeout),
    ]
    assert inner.greenlet.dead
    assert [s.value for s in log.stages("stuck")] == ["initialize", "execute", "cleanup"]
    assert [s.value for s in log.stages("polite")] == ["initialize", "execute", "cleanup"]
