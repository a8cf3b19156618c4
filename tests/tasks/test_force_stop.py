"""ForceStop: a cooperative task stops normally; one that ignores ctx is killed after timeout."""

from __future__ import annotations

import logging
import math
import signal
from typing import Any

import gevent
import pytest
from _children import STUBBORN, Pipe, assert_reaped, python
from _taskctx import task_context
from gevent import getcurrent
from gevent.event import Event
from greenlet import GreenletExit

import greentask as gt
from greentask.tasks import ForceStop, Subprocess
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
        (1.0, FakeTask, TypeError, "ForceStop's task is the class FakeTask, not an instance"),
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


# -- the stop budget (SPEC §15) ------------------------------------------------------


@pytest.mark.parametrize(
    ("timeout", "manager", "killed_at"),
    [
        (10.0, 10.0, 9.0),  # equal: its kill comes a margin before the manager's
        (60.0, 10.0, 9.0),  # larger: the manager's budget wins
        (2.0, 10.0, 2.0),  # smaller: its own applies
        (10.0, None, 10.0),  # no manager deadline
        (10.0, 5.0, 4.5),  # the margin: a tenth of the budget
    ],
)
def test_the_inner_execute_is_killed_within_the_stop_budget(
    timeout: float, manager: float | None, killed_at: float
) -> None:
    clock = FakeClock()
    ctx, stop = task_context(clock, "legacy")
    inner = _Ignoring()
    force = _run(ForceStop(timeout, inner), ctx)
    with gevent.Timeout(5):
        inner.started.wait()
    stop(manager)
    settle()
    clock.advance(round(killed_at - 0.01, 2))
    assert not inner.greenlet.dead
    clock.advance(0.01)
    kind, raised = _outcome(force)
    assert kind == "raised"
    assert str(raised) == f"execute did not stop within {killed_at}s of cancellation; killed"
    assert inner.greenlet.dead


def test_in_a_manager_its_own_stop_timeout_reports_before_the_managers_kill() -> None:
    clock = FakeClock()
    inner = _Ignoring()
    manager = gt.TaskManager(stop_timeout=10)
    manager.add_task("legacy", ForceStop(10, inner))
    runner = gevent.spawn(manager.run, gt.background(clock))
    with gevent.Timeout(5):
        inner.started.wait()
    manager.stop()
    settle()
    clock.advance(9.0)
    with gevent.Timeout(5):
        [error] = runner.get()
    assert str(error.error) == "execute did not stop within 9.0s of cancellation; killed"  # ForceStop's own


# -- nothing outlives the task (SPEC §15) ------------------------------------------------


def test_a_killed_force_stop_ends_only_after_its_inner_greenlet() -> None:
    ctx, _stop = task_context(FakeClock(), "legacy")
    inner = _Ignoring()
    force = gevent.spawn(ForceStop(10.0, inner).execute, ctx)
    with gevent.Timeout(5):
        inner.started.wait()
        force.kill()  # as the manager does once its stop_timeout ran out
    assert force.dead
    assert inner.greenlet.dead  # already: not merely scheduled to die


def test_a_subprocess_inside_a_killed_force_stop_is_reaped_before_it_ends() -> None:
    with Pipe() as pipe:
        child = Subprocess(python(STUBBORN), stop_timeout=60, stdout=pipe.fd)
        inner_greenlets: list[Any] = []

        def execute(ctx: gt.Context) -> None:
            inner_greenlets.append(getcurrent())
            child.execute(ctx)

        ctx, _stop = task_context(FakeClock(), "worker")
        force = gevent.spawn(ForceStop(60.0, execute).execute, ctx)
        with gevent.Timeout(10):
            _, pid = pipe.readline().split()
            force.kill()
    assert inner_greenlets[0].dead
    assert child.returncode == -signal.SIGKILL
    assert_reaped(int(pid))


def test_in_a_manager_a_force_stop_around_a_stubborn_subprocess_leaves_no_child() -> None:
    clock = FakeClock()
    with Pipe() as pipe:
        child = Subprocess(python(STUBBORN), stop_timeout=60, stdout=pipe.fd)
        inner_greenlets: list[Any] = []

        def execute(ctx: gt.Context) -> None:
            inner_greenlets.append(getcurrent())
            child.execute(ctx)

        manager = gt.TaskManager(stop_timeout=1)
        manager.add_task("worker", ForceStop(60.0, execute))
        runner = gevent.spawn(manager.run, gt.background(clock))
        with gevent.Timeout(10):
            _, pid = pipe.readline().split()
            manager.stop()
            assert pipe.readline() == "got SIGTERM"
            clock.advance(1.0)
            [error] = runner.get()
    assert isinstance(error.error, gt.StopTimeout)
    assert inner_greenlets[0].dead
    assert child.returncode == -signal.SIGKILL
    assert_reaped(int(pid))


# -- names and mistakes (SPEC §15) -------------------------------------------------------


def test_the_inner_greenlet_carries_the_task_name() -> None:
    names: list[str] = []
    ctx, _stop = task_context(FakeClock(), "legacy")
    assert _outcome(_run(ForceStop(1.0, lambda ctx: names.append(getcurrent().name)), ctx))[0] == "ok"
    assert _outcome(_run(ForceStop(1.0, lambda ctx: names.append(getcurrent().name)), gt.background()))[0] == "ok"
    assert names == ["legacy", "greentask ForceStop inner execute"]


def test_an_inner_execute_refusing_to_die_is_logged_naming_manager_and_task(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    ctx, stop = task_context(clock, "legacy")
    caught = Event()

    def stubborn(ctx: gt.Context) -> None:
        try:
            Event().wait()
        except GreenletExit:
            caught.set()
            Event().wait()

    force = _run(ForceStop(2.0, stubborn), ctx)
    settle()
    stop(None)
    settle()
    clock.advance(2.0)
    with gevent.Timeout(5):
        caught.wait()
    with caplog.at_level(logging.ERROR, logger="greentask"):
        clock.advance(2.0)
        _outcome(force)
    assert "greentask: web: task 'legacy': the inner execute refuses to die; abandoned" in caplog.messages
