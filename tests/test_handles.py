"""TaskHandle (SPEC §9): what add_task / add_execute_task return, and stopping one task alone."""

from __future__ import annotations

import threading
import time
from typing import Any

import gevent
import pytest
from _manager_helpers import Draining, Gate, Unkillable, finish, ignore_cancellation, start, states, wait_thread
from gevent.event import Event
from greenlet import GreenletExit

import greentask as gt
from greentask import (
    ExecuteTaskType,
    ManagerEvent,
    NamedError,
    Stage,
    StopReason,
    StopTimeout,
    TaskHandle,
    TaskState,
    TaskType,
)
from greentask.testing import CallLog, FakeClock, FakeExecuteTask, FakeTask, consistently, eventually, settle

INIT, E, C = Stage.INITIALIZE, Stage.EXECUTE, Stage.CLEANUP


def add(manager: gt.TaskManager, kind: str, name: str, execute: Any, **kwargs: Any) -> tuple[TaskHandle, Any]:
    """Add a task (``kind`` "task": a FakeTask) or an execute task running ``execute``."""
    if kind == "task":
        task = FakeTask(name, execute=execute)
        return manager.add_task(name, task, **kwargs), task
    fake = FakeExecuteTask(name, execute=execute)
    return manager.add_execute_task(name, fake, **kwargs), fake


# -- the handle's members -------------------------------------------------------------


def test_add_task_and_add_execute_task_return_handles_with_name_and_kind() -> None:
    manager = gt.TaskManager()
    task = manager.add_task("db", FakeTask())
    execute = manager.add_execute_task("worker", FakeExecuteTask())
    function = manager.add_execute_task("fn", lambda ctx: None)
    assert all(isinstance(handle, TaskHandle) for handle in (task, execute, function))
    assert [(h.name, h.kind) for h in (task, execute, function)] == [
        ("db", "task"),
        ("worker", "execute"),
        ("fn", "execute"),
    ]
    assert [s.kind for s in manager.status()] == ["task", "execute", "execute"]


def test_status_and_state_follow_the_task_and_match_its_row_in_manager_status(fake_clock: FakeClock) -> None:
    fake_clock.advance(50)
    manager = gt.TaskManager()
    other = manager.add_task("other", FakeTask.blocking())
    handle = manager.add_task("db", FakeTask.blocking(), TaskType.ERROR)
    execute = manager.add_execute_task("worker", FakeExecuteTask.blocking(), ExecuteTaskType.ERROR)
    assert handle.status() == manager.status()[1]
    assert (handle.state, handle.status().state, handle.status().task_type) == (
        TaskState.PENDING,
        TaskState.PENDING,
        TaskType.ERROR,
    )
    runner = start(manager, gt.background(fake_clock))
    status = handle.status()
    assert status == manager.status()[1]
    assert execute.status() == manager.status()[2]
    assert other.status() == manager.status()[0]
    assert (status.name, status.kind, status.state, status.started_at, status.stopped_at) == (
        "db",
        "task",
        TaskState.RUNNING,
        50.0,
        None,
    )
    assert handle.state is TaskState.RUNNING
    fake_clock.advance(2)
    manager.stop()
    assert finish(runner) == []
    assert handle.status() == manager.status()[1]
    assert (handle.state, handle.status().stopped_at) == (TaskState.DONE, 52.0)
    assert (execute.state, execute.status().stopped_at) == (TaskState.STOPPED, 52.0)


def test_error_is_the_first_error_recorded_for_the_task() -> None:
    first, second = ValueError("execute failed"), OSError("cleanup failed too")
    manager = gt.TaskManager()
    failing = manager.add_task("failing", FakeTask(execute=first, cleanup=second))
    clean = manager.add_task("clean", FakeTask.blocking())
    execute = manager.add_execute_task("x", FakeExecuteTask.blocking())
    assert failing.error is None
    with gevent.Timeout(5):
        errors = manager.run()
    assert [(e.task_name, e.stage) for e in errors] == [("failing", E), ("failing", C)]
    assert failing.error is first
    assert clean.error is None
    assert execute.error is None


def test_restarts_is_zero_without_a_restart_policy() -> None:
    manager = gt.TaskManager()
    task = manager.add_task("a", FakeTask.blocking())
    execute = manager.add_execute_task("x", FakeExecuteTask.blocking())
    assert (task.restarts, execute.restarts) == (0, 0)
    runner = start(manager)
    manager.stop()
    assert finish(runner) == []
    assert (task.restarts, execute.restarts, task.status().restarts) == (0, 0, 0)


def test_a_task_is_done_only_once_it_is_cleaned_up() -> None:
    gate = Gate()
    manager = gt.TaskManager()
    first = manager.add_task("first", FakeTask.blocking())
    second = manager.add_task("second", FakeTask(execute=lambda ctx: ctx.wait(), cleanup=gate))
    runner = start(manager)
    assert not first.done
    assert not second.done
    manager.stop()
    settle()
    # Cleanup runs in reverse order: "second" is cleaning up, "first" has stopped but waits.
    assert (first.state, second.state) == (TaskState.STOPPED, TaskState.CLEANING_UP)
    assert not first.done
    assert not second.done
    gate.release()
    assert finish(runner) == []
    assert (first.state, second.state) == (TaskState.DONE, TaskState.DONE)
    assert first.done
    assert second.done


def test_an_execute_task_is_done_once_it_stopped_or_failed() -> None:
    boom = OSError("failed while stopping")

    def fail_when_cancelled(ctx: gt.Context) -> None:
        ctx.wait()
        raise boom

    manager = gt.TaskManager()
    manager.add_task("anchor", FakeTask.blocking())
    returned = manager.add_execute_task("returned", FakeExecuteTask(), ExecuteTaskType.ERROR)
    blocking = manager.add_execute_task("blocking", FakeExecuteTask.blocking(), ExecuteTaskType.ERROR)
    failing = manager.add_execute_task("failing", fail_when_cancelled, ExecuteTaskType.ERROR)
    runner = start(manager)
    assert manager.phase == "executing"
    assert (returned.state, returned.done) == (TaskState.STOPPED, True)
    assert not blocking.done
    assert not failing.done
    manager.stop()
    errors = finish(runner)
    assert [(e.task_name, e.error) for e in errors] == [("failing", boom)]
    assert (blocking.state, blocking.done) == (TaskState.STOPPED, True)
    assert (failing.state, failing.done) == (TaskState.FAILED, True)


def test_tasks_skipped_after_an_initialize_failure_stay_pending_and_are_done() -> None:
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask(initialize=ValueError("no")))
    skipped = manager.add_task("skipped", FakeTask())
    waiter = gevent.spawn(skipped.wait_running)  # blocked before run: woken when it becomes done
    with gevent.Timeout(5):
        [error] = manager.run()
    assert error.task_name == "a"
    assert skipped.state is TaskState.PENDING
    assert skipped.done
    assert skipped.wait(0) is True
    assert skipped.wait_running(0) is False
    with gevent.Timeout(5):
        assert waiter.get() is False


# -- wait(timeout) and wait_running(timeout) ----------------------------------------------


def test_wait_before_run_times_out_on_the_real_clock() -> None:
    manager = gt.TaskManager()
    handle = manager.add_task("a", FakeTask.blocking())
    began = time.monotonic()
    assert handle.wait(0.05) is False
    assert handle.wait_running(0.05) is False
    assert time.monotonic() - began >= 0.09  # real seconds


def test_wait_timeout_is_measured_on_the_managers_clock_once_run_started(fake_clock: FakeClock) -> None:
    manager = gt.TaskManager()
    handle = manager.add_task("a", FakeTask.blocking())
    runner = start(manager, gt.background(fake_clock))
    waiter = gevent.spawn(handle.wait, 5)
    settle()
    consistently(lambda: not waiter.dead, duration=0.05)  # real time does not count
    fake_clock.advance(4.5)
    assert not waiter.dead
    fake_clock.advance(0.5)
    settle()
    assert waiter.dead
    assert waiter.value is False
    manager.stop()
    assert finish(runner) == []


def test_wait_returns_true_once_the_task_is_done() -> None:
    manager = gt.TaskManager()
    task = manager.add_task("a", FakeTask.blocking())
    execute = manager.add_execute_task("x", FakeExecuteTask.blocking())
    waiters = [gevent.spawn(task.wait), gevent.spawn(execute.wait, 60)]
    runner = start(manager)
    assert not any(waiter.dead for waiter in waiters)
    manager.stop()
    assert finish(runner) == []
    with gevent.Timeout(5):
        assert [waiter.get() for waiter in waiters] == [True, True]
    assert task.wait(0) is True
    assert execute.wait() is True


def test_wait_for_an_execute_task_returns_while_the_manager_keeps_running() -> None:
    release = Event()
    manager = gt.TaskManager()
    manager.add_task("anchor", FakeTask.blocking())
    execute = manager.add_execute_task("x", lambda ctx: release.wait(), ExecuteTaskType.ERROR)
    runner = start(manager)
    waiter = gevent.spawn(execute.wait)
    settle()
    assert not waiter.dead
    release.set()
    settle()
    assert waiter.value is True
    assert manager.phase == "executing"
    manager.stop()
    assert finish(runner) == []


@pytest.mark.parametrize(("timeout", "error"), [(-1, ValueError), ("1", TypeError), (float("nan"), ValueError)])
def test_wait_and_wait_running_reject_a_bad_timeout(timeout: Any, error: type[Exception]) -> None:
    handle = gt.TaskManager().add_task("a", FakeTask())
    with pytest.raises(error, match="timeout"):
        handle.wait(timeout)
    with pytest.raises(error, match="timeout"):
        handle.wait_running(timeout)


@pytest.mark.parametrize("kind", ["task", "execute"])
def test_wait_running_returns_true_once_the_execute_started(kind: str) -> None:
    manager = gt.TaskManager()
    handle, fake = add(manager, kind, "a", lambda ctx: ctx.wait())
    waiter = gevent.spawn(handle.wait_running)
    runner = start(manager)
    assert waiter.dead
    assert waiter.value is True
    assert handle.state is TaskState.RUNNING
    assert fake.execute_call_count == 1
    assert handle.wait_running(0) is True
    manager.stop()
    assert finish(runner) == []
    assert handle.wait_running(0) is True  # it did execute, so still True once done


def test_wait_running_times_out_on_the_managers_clock(fake_clock: FakeClock) -> None:
    gate = Gate()
    manager = gt.TaskManager()
    handle = manager.add_task("a", FakeTask(initialize=gate, execute=lambda ctx: ctx.wait()))
    runner = start(manager, gt.background(fake_clock))
    assert gate.entered.is_set()
    waiter = gevent.spawn(handle.wait_running, 3)
    settle()
    consistently(lambda: not waiter.dead, duration=0.05)
    fake_clock.advance(2.5)
    assert not waiter.dead
    fake_clock.advance(0.5)
    settle()
    assert waiter.value is False
    gate.release()
    settle()
    assert handle.wait_running(0) is True
    manager.stop()
    assert finish(runner) == []


def test_wait_running_is_false_for_a_task_that_became_done_without_executing() -> None:
    manager = gt.TaskManager()
    dropped = manager.add_task("dropped", FakeTask())
    dropped_execute = manager.add_execute_task("dropped-x", FakeExecuteTask())
    dropped.stop()
    dropped_execute.stop()
    with gevent.Timeout(1):
        assert dropped.wait_running() is False
        assert dropped_execute.wait_running() is False


# -- stop(): basics ---------------------------------------------------------------------


def test_stop_rejects_a_cause_that_is_not_an_exception() -> None:
    handle = gt.TaskManager().add_task("a", FakeTask())
    with pytest.raises(TypeError, match="cause"):
        handle.stop("because")  # type: ignore[arg-type]


def test_stop_is_idempotent_the_first_cause_wins() -> None:
    first, second = KeyError("first"), KeyError("second")
    manager = gt.TaskManager()
    manager.add_task("anchor", FakeTask.blocking())
    task = FakeTask.blocking()
    handle = manager.add_task("a", task)
    runner = start(manager)
    handle.stop(first)
    handle.stop(second)
    settle()
    handle.stop()
    settle()
    assert task.execute_calls[0].cause is first
    assert task.cleanup_call_count == 1
    assert handle.state is TaskState.DONE
    manager.stop()
    assert finish(runner) == []
    assert task.cleanup_call_count == 1


# -- stop() before run ------------------------------------------------------------------


def test_stop_before_run_drops_the_task_from_the_run() -> None:
    log = CallLog()
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask.blocking("a", log=log))
    dropped = manager.add_task("b", FakeTask.blocking("b", log=log))
    manager.add_task("c", FakeTask.blocking("c", log=log))
    dropped.stop()
    assert dropped.state is TaskState.DONE
    assert dropped.done
    runner = start(manager)
    assert log.calls == [("a", INIT), ("c", INIT), ("a", E), ("c", E)]
    manager.stop()
    assert finish(runner) == []
    assert log.calls[4:] == [("c", C), ("a", C)]
    assert log.stages("b") == []
    # status() keeps the dropped task like any other, in add order.
    assert [(s.name, s.state) for s in manager.status()] == [
        ("a", TaskState.DONE),
        ("b", TaskState.DONE),
        ("c", TaskState.DONE),
    ]
    assert (dropped.status().started_at, dropped.error) == (None, None)


def test_stop_before_run_drops_an_execute_task() -> None:
    log = CallLog()
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask.blocking("a", log=log))
    dropped = manager.add_execute_task("x", FakeExecuteTask.blocking("x", log=log))
    dropped.stop()
    assert (dropped.state, dropped.done) == (TaskState.STOPPED, True)
    runner = start(manager)
    manager.stop()
    assert finish(runner) == []
    assert log.stages("x") == []
    assert states(manager) == {"a": TaskState.DONE, "x": TaskState.STOPPED}


def test_a_stop_group_task_dropped_before_run_does_not_hold_the_group_back() -> None:
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask(), TaskType.STOP_GROUP)
    dropped = manager.add_task("b", FakeTask.blocking(), TaskType.STOP_GROUP)
    other = FakeTask.blocking()
    manager.add_task("other", other)
    dropped.stop()
    with gevent.Timeout(5):
        assert manager.run() == []
    assert manager.stop_reason == StopReason("policy", "a", None)
    assert other.execute_calls[0].cancelled


# -- stop() while initializing ------------------------------------------------------------


def test_stop_while_initializing_cleans_up_once_initialize_returned_and_never_executes() -> None:
    log = CallLog()
    gate = Gate()
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask.blocking("a", log=log))
    task = FakeTask("b", initialize=gate, execute=lambda ctx: ctx.wait(), log=log)
    handle = manager.add_task("b", task)
    manager.add_task("c", FakeTask.blocking("c", log=log))
    runner = start(manager)
    assert gate.entered.is_set()
    with gevent.Timeout(1):
        handle.stop()  # returns at once, while its initialize still runs
    settle()
    assert task.cleanup_call_count == 0  # not before its initialize returned
    assert not handle.done
    gate.release()
    settle()
    assert task.cleanup_call_count == 1  # at once, not at shutdown
    assert (handle.state, handle.done) == (TaskState.DONE, True)
    assert manager.phase == "executing"
    assert log.stages("c") == [INIT, E]
    manager.stop()
    assert finish(runner) == []
    assert log.stages("b") == [INIT, C]
    assert log.calls[-2:] == [("c", C), ("a", C)]
    assert handle.wait_running(0) is False


def test_stop_during_the_initialize_phase_of_a_task_not_yet_initialized_drops_it() -> None:
    log = CallLog()
    gate = Gate()
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask("a", initialize=gate, execute=lambda ctx: ctx.wait(), log=log))
    pending = manager.add_task("b", FakeTask.blocking("b", log=log))
    queued = manager.add_execute_task("x", FakeExecuteTask.blocking("x", log=log))
    runner = start(manager)
    assert pending.state is TaskState.PENDING
    pending.stop()
    queued.stop()
    gate.release()
    settle()
    assert log.calls == [("a", INIT), ("a", E)]
    assert (pending.state, pending.done) == (TaskState.DONE, True)
    assert (queued.state, queued.done) == (TaskState.STOPPED, True)
    manager.stop()
    assert finish(runner) == []
    assert log.stages("b") == []
    assert log.stages("x") == []


def test_stop_of_a_runtime_task_still_queued_for_initialize_drops_it() -> None:
    log = CallLog()
    gate = Gate()
    manager = gt.TaskManager()
    manager.add_task("anchor", FakeTask.blocking("anchor", log=log))
    runner = start(manager)
    manager.add_task("first", FakeTask("first", initialize=gate, execute=lambda ctx: ctx.wait(), log=log))
    queued = manager.add_task("queued", FakeTask.blocking("queued", log=log))
    settle()
    queued.stop()
    settle()
    assert (queued.state, queued.done) == (TaskState.DONE, True)
    gate.release()
    settle()
    assert log.stages("first") == [INIT, E]
    assert manager.phase == "executing"
    manager.stop()
    assert finish(runner) == []
    assert log.stages("queued") == []


def test_stop_of_a_runtime_task_while_it_initializes_cleans_it_up_once_initialize_returned() -> None:
    log = CallLog()
    gate = Gate()
    manager = gt.TaskManager()
    manager.add_task("anchor", FakeTask.blocking("anchor", log=log))
    runner = start(manager)
    task = FakeTask("late", initialize=gate, execute=lambda ctx: ctx.wait(), log=log)
    handle = manager.add_task("late", task)
    settle()
    assert handle.state is TaskState.INITIALIZING
    handle.stop()
    settle()
    assert task.cleanup_call_count == 0
    gate.release()
    settle()
    assert log.stages("late") == [INIT, C]
    assert (handle.state, handle.done) == (TaskState.DONE, True)
    assert manager.phase == "executing"
    manager.stop()
    assert finish(runner) == []
    assert log.stages("late") == [INIT, C]


def test_stop_of_an_execute_task_added_while_running() -> None:
    manager = gt.TaskManager()
    manager.add_task("anchor", FakeTask.blocking())
    runner = start(manager)
    execute = FakeExecuteTask.blocking()
    handle = manager.add_execute_task("late", execute)
    assert isinstance(handle, TaskHandle)
    settle()
    assert handle.state is TaskState.RUNNING
    handle.stop()
    settle()
    assert (handle.state, handle.done, handle.error) == (TaskState.STOPPED, True, None)
    assert execute.execute_calls[0].cancelled
    assert manager.phase == "executing"
    manager.stop()
    assert finish(runner) == []


def test_stop_while_initializing_cancels_the_initialize_context_alone() -> None:
    cause = KeyError("stop b")
    manager = gt.TaskManager()
    first = FakeTask.blocking()
    manager.add_task("a", first)
    task = FakeTask(initialize=lambda ctx: ctx.wait(), execute=lambda ctx: ctx.wait())
    handle = manager.add_task("b", task)
    third = FakeTask.blocking()
    manager.add_task("c", third)
    runner = start(manager)
    assert task.initialize_call_count == 1
    handle.stop(cause)
    settle()
    init_ctx = task.initialize_calls[0]
    assert init_ctx.cancelled
    assert init_ctx.cause is cause
    assert task.execute_call_count == 0
    assert task.cleanup_call_count == 1
    assert third.execute_call_count == 1
    assert not first.execute_calls[0].cancelled
    manager.stop()
    assert finish(runner) == []
    assert task.cleanup_call_count == 1


def test_a_stop_group_task_stopped_while_initializing_counts_as_returned() -> None:
    gate = Gate()
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask(), TaskType.STOP_GROUP)
    handle = manager.add_task("b", FakeTask(initialize=gate, execute=lambda ctx: ctx.wait()), TaskType.STOP_GROUP)
    other = FakeTask.blocking()
    manager.add_task("other", other)
    runner = start(manager)
    handle.stop()
    gate.release()
    # "a" returns at once and "b" counts as returned: the group is complete.
    assert finish(runner) == []
    assert manager.stop_reason is not None
    assert manager.stop_reason.kind == "policy"
    assert other.execute_calls[0].cancelled


# -- stop() while executing -------------------------------------------------------------


def test_stop_while_executing_cancels_that_task_alone_with_the_cause() -> None:
    cause = KeyError("enough")
    manager = gt.TaskManager()
    first, second, execute = FakeTask.blocking(), FakeTask.blocking(), FakeExecuteTask.blocking()
    manager.add_task("a", first)
    handle = manager.add_task("b", second)
    manager.add_execute_task("x", execute)
    runner = start(manager)
    handle.stop(cause)
    ctx = second.execute_calls[0]
    assert ctx.cancelled
    assert ctx.cause is cause
    assert isinstance(ctx.err, gt.Cancelled)
    settle()
    assert not first.execute_calls[0].cancelled
    assert not execute.execute_calls[0].cancelled
    assert manager.phase == "executing"
    assert manager.stop_reason is None
    assert states(manager) == {"a": TaskState.RUNNING, "b": TaskState.DONE, "x": TaskState.RUNNING}
    manager.stop()
    assert finish(runner) == []


@pytest.mark.parametrize("kind", ["task", "execute"])
def test_a_clean_return_after_stop_is_a_clean_stop_without_policy(kind: str) -> None:
    anchor = FakeTask.blocking()
    events: list[ManagerEvent] = []
    manager = gt.TaskManager(on_event=events.append)
    manager.add_task("anchor", anchor)
    handle, _ = add(manager, kind, "strict", lambda ctx: ctx.wait())  # STRICT: a return would be unexpected
    runner = start(manager)
    handle.stop()
    settle()
    assert handle.state is (TaskState.DONE if kind == "task" else TaskState.STOPPED)
    assert handle.error is None
    assert manager.phase == "executing"
    assert not anchor.execute_calls[0].cancelled
    assert [e.kind for e in events if e.task_name == "strict"][-1] in ("stopped", "cleaned_up")
    assert "failed" not in [e.kind for e in events]
    manager.stop()
    assert finish(runner) == []
    assert manager.stop_reason == StopReason("stop", None, None)


@pytest.mark.parametrize("kind", ["task", "execute"])
def test_a_cancelled_escaping_after_stop_is_a_clean_stop(kind: str) -> None:
    def execute(ctx: gt.Context) -> None:
        ctx.wait()
        ctx.check()  # raises Cancelled: the task's context was cancelled

    manager = gt.TaskManager()
    manager.add_task("anchor", FakeTask.blocking())
    handle, _ = add(manager, kind, "a", execute)
    runner = start(manager)
    handle.stop()
    settle()
    assert handle.error is None
    assert handle.state is (TaskState.DONE if kind == "task" else TaskState.STOPPED)
    assert manager.phase == "executing"
    manager.stop()
    assert finish(runner) == []


@pytest.mark.parametrize("kind", ["task", "execute"])
def test_a_raise_after_stop_is_recorded_in_execute_without_policy(kind: str) -> None:
    boom = OSError("flush failed")

    def execute(ctx: gt.Context) -> None:
        ctx.wait()
        raise boom

    anchor = FakeTask.blocking()
    manager = gt.TaskManager()
    manager.add_task("anchor", anchor)
    handle, fake = add(manager, kind, "a", execute)
    runner = start(manager)
    handle.stop()
    settle()
    assert handle.error is boom
    assert handle.state is (TaskState.DONE if kind == "task" else TaskState.FAILED)
    assert manager.phase == "executing"  # no policy: the others keep running
    assert manager.stop_reason is None
    assert not anchor.execute_calls[0].cancelled
    if kind == "task":
        assert fake.cleanup_call_count == 1
    manager.stop()
    expected = (
        NamedError("a", E, boom, task_type=TaskType.STRICT)
        if kind == "task"
        else NamedError("a", E, boom, execute_task_type=ExecuteTaskType.STRICT)
    )
    assert finish(runner) == [expected]


def test_a_stop_group_task_stopped_while_executing_counts_as_returned() -> None:
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask(), TaskType.STOP_GROUP)
    handle = manager.add_task("b", FakeTask.blocking(), TaskType.STOP_GROUP)
    other = FakeTask.blocking()
    manager.add_task("other", other)
    runner = start(manager)
    assert manager.phase == "executing"  # "b" has not returned yet
    handle.stop()
    assert finish(runner) == []
    assert manager.stop_reason == StopReason("policy", "b", None)
    assert other.execute_calls[0].cancelled


@pytest.mark.parametrize("kind", ["task", "execute"])
def test_a_stopped_task_is_killed_after_its_own_stop_timeout(fake_clock: FakeClock, kind: str) -> None:
    anchor = FakeTask.blocking()
    manager = gt.TaskManager(stop_timeout=10)
    manager.add_task("anchor", anchor)
    handle, fake = add(manager, kind, "stubborn", ignore_cancellation, stop_timeout=2)
    runner = start(manager, gt.background(fake_clock))
    fake_clock.advance(3)
    handle.stop()
    assert fake.execute_calls[0].stop_deadline == 5.0
    fake_clock.advance(1.9)
    assert handle.state is TaskState.STOPPING
    assert handle.error is None
    fake_clock.advance(0.1)
    assert isinstance(handle.error, StopTimeout)
    assert "killed" in str(handle.error)
    assert handle.status().stopped_at == 5.0
    if kind == "task":
        assert fake.cleanup_call_count == 1
        assert handle.state is TaskState.DONE
    else:
        assert handle.state is TaskState.FAILED
    assert manager.phase == "executing"
    assert not anchor.execute_calls[0].cancelled
    manager.stop()
    errors = finish(runner)
    assert [(e.task_name, e.stage, type(e.error)) for e in errors] == [("stubborn", E, StopTimeout)]
    assert errors[0].error is handle.error


def test_a_stopped_task_without_its_own_stop_timeout_uses_the_managers(fake_clock: FakeClock) -> None:
    manager = gt.TaskManager(stop_timeout=4)
    manager.add_task("anchor", FakeTask.blocking())
    handle = manager.add_task("stubborn", FakeTask(execute=ignore_cancellation))
    runner = start(manager, gt.background(fake_clock))
    handle.stop()
    fake_clock.advance(3.9)
    assert handle.error is None
    fake_clock.advance(0.1)
    assert isinstance(handle.error, StopTimeout)
    manager.stop()
    assert [type(e.error) for e in finish(runner)] == [StopTimeout]


def test_a_stopped_task_that_refuses_to_die_is_abandoned_after_another_stop_timeout(fake_clock: FakeClock) -> None:
    unkillable = Unkillable()
    task = FakeTask(execute=unkillable)
    manager = gt.TaskManager()
    manager.add_task("anchor", FakeTask.blocking())
    handle = manager.add_task("zombie", task, stop_timeout=2)
    runner = start(manager, gt.background(fake_clock))
    handle.stop()
    fake_clock.advance(2)
    assert unkillable.kills == 1
    assert task.cleanup_call_count == 0
    fake_clock.advance(1.9)
    assert task.cleanup_call_count == 0
    fake_clock.advance(0.1)
    assert isinstance(handle.error, StopTimeout)
    assert "abandoned" in str(handle.error)
    assert task.cleanup_call_count == 1
    assert manager.phase == "executing"
    manager.stop()
    errors = finish(runner)
    assert [(e.task_name, type(e.error)) for e in errors] == [("zombie", StopTimeout)]
    unkillable.finish()
    settle()
    assert task.cleanup_call_count == 1


# -- stop() once done, once the manager is cancelled ------------------------------------------


def test_stop_after_the_task_is_done_has_no_effect() -> None:
    manager = gt.TaskManager()
    manager.add_task("anchor", FakeTask.blocking())
    execute = manager.add_execute_task("x", FakeExecuteTask(), ExecuteTaskType.ERROR)
    task = FakeTask.blocking()
    handle = manager.add_task("a", task)
    runner = start(manager)
    assert execute.done
    execute.stop(KeyError("late"))
    settle()
    assert (execute.state, execute.error) == (TaskState.STOPPED, None)
    assert manager.phase == "executing"
    manager.stop()
    assert finish(runner) == []
    handle.stop()
    settle()
    assert (handle.state, handle.error, task.cleanup_call_count) == (TaskState.DONE, None, 1)


def test_stop_once_the_manager_is_cancelled_has_no_effect() -> None:
    log = CallLog()
    first_cause, handle_cause = KeyError("manager"), KeyError("handle")
    draining = Draining("a")
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask("a", execute=draining, log=log))
    second = FakeTask.blocking("b", log=log)
    handle = manager.add_task("b", second)
    manager.add_task("c", FakeTask.blocking("c", log=log))
    runner = start(manager)
    manager.stop(first_cause)
    handle.stop(handle_cause)
    settle()
    assert second.execute_calls[0].cause is first_cause
    assert second.cleanup_call_count == 0  # no cleanup at once: the shutdown does it, in order
    assert not runner.dead
    draining.release()
    assert finish(runner) == []
    assert [call for call in log.calls if call[1] is C] == [("c", C), ("b", C), ("a", C)]
    assert manager.stop_reason == StopReason("stop", None, first_cause)


# -- stop() from another OS thread, and in the hub's thread ------------------------------------


def test_stop_from_another_os_thread_takes_effect_soon() -> None:
    cause = KeyError("from a thread")
    manager = gt.TaskManager()
    anchor, task = FakeTask.blocking(), FakeTask.blocking()
    manager.add_task("anchor", anchor)
    handle = manager.add_task("a", task)
    runner = start(manager)
    thread = threading.Thread(target=handle.stop, args=(cause,), daemon=True)
    thread.start()
    wait_thread(thread)
    eventually(lambda: task.execute_calls[0].cancelled, timeout=5)
    assert task.execute_calls[0].cause is cause
    eventually(lambda: handle.state is TaskState.DONE, timeout=5)
    assert task.cleanup_call_count == 1
    assert not anchor.execute_calls[0].cancelled
    assert manager.phase == "executing"
    manager.stop()
    assert finish(runner) == []
    assert task.cleanup_call_count == 1


def test_stop_in_the_hubs_thread_has_taken_effect_when_it_returns() -> None:
    seen: list[TaskState] = []
    holder: list[TaskHandle] = []

    def execute(ctx: gt.Context) -> None:
        ctx.rawlink(lambda _: seen.append(holder[0].state))  # runs when ctx is cancelled
        ctx.wait()
        seen.append(holder[0].state)  # a task woken by the cancellation sees STOPPING

    manager = gt.TaskManager()
    manager.add_task("anchor", FakeTask.blocking())
    task = FakeTask(execute=execute)
    holder.append(manager.add_task("a", task))
    runner = start(manager)
    holder[0].stop()
    assert holder[0].state is TaskState.STOPPING
    assert task.execute_calls[0].cancelled
    settle()
    assert seen == [TaskState.STOPPING, TaskState.STOPPING]
    manager.stop()
    assert finish(runner) == []


def test_stopped_while_running_but_before_execute_is_entered_still_runs_it_with_a_cancelled_context() -> None:
    holder: list[TaskHandle] = []

    def on_event(event: ManagerEvent) -> None:
        if event.kind == "started" and event.task_name == "a":
            holder[0].stop()

    manager = gt.TaskManager(on_event=on_event)
    manager.add_task("anchor", FakeTask.blocking())
    task = FakeTask.blocking()
    holder.append(manager.add_task("a", task))
    runner = start(manager)
    assert task.execute_call_count == 1
    assert task.execute_calls[0].cancelled
    assert holder[0].state is TaskState.DONE
    assert task.cleanup_call_count == 1
    manager.stop()
    assert finish(runner) == []


# -- cleanup after stop() -----------------------------------------------------------------------


def test_a_task_stopped_by_handle_is_cleaned_up_once_in_a_manager_greenlet_and_never_again() -> None:
    log = CallLog()
    cleaned_in: list[Any] = []
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask.blocking("a", log=log))
    task = FakeTask(
        "b", execute=lambda ctx: ctx.wait(), cleanup=lambda ctx: cleaned_in.append(gevent.getcurrent()), log=log
    )
    handle = manager.add_task("b", task)
    manager.add_task("c", FakeTask.blocking("c", log=log))
    runner = start(manager)
    handle.stop()
    assert task.cleanup_call_count == 0  # stop() returned at once
    settle()
    assert task.cleanup_call_count == 1
    assert cleaned_in[0] is not gevent.getcurrent()
    assert manager.phase == "executing"
    manager.stop()
    assert finish(runner) == []
    assert [call for call in log.calls if call[1] is C] == [("b", C), ("c", C), ("a", C)]


def test_a_task_stopped_from_another_task_is_not_cleaned_up_in_that_tasks_greenlet() -> None:
    callers: list[Any] = []
    cleaned_in: list[Any] = []
    holder: list[TaskHandle] = []

    def supervisor(ctx: gt.Context) -> None:
        callers.append(gevent.getcurrent())
        holder[0].stop()
        ctx.wait()

    manager = gt.TaskManager()
    task = FakeTask(execute=lambda ctx: ctx.wait(), cleanup=lambda ctx: cleaned_in.append(gevent.getcurrent()))
    holder.append(manager.add_task("worker", task))
    supervisor_task = FakeTask(execute=supervisor)
    manager.add_task("supervisor", supervisor_task)
    runner = start(manager)
    assert task.cleanup_call_count == 1
    assert cleaned_in[0] is not callers[0]
    assert not supervisor_task.execute_calls[0].cancelled
    manager.stop()
    assert finish(runner) == []
    assert task.cleanup_call_count == 1


def test_an_error_task_that_returned_is_cleaned_up_at_once_when_stopped() -> None:
    log = CallLog()
    cleaned_in: list[Any] = []
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask.blocking("a", log=log))
    task = FakeTask("b", cleanup=lambda ctx: cleaned_in.append(gevent.getcurrent()), log=log)  # execute returns
    handle = manager.add_task("b", task, TaskType.ERROR)
    runner = start(manager)
    assert handle.state is TaskState.STOPPED
    assert not handle.done
    handle.stop()
    assert task.cleanup_call_count == 0  # stop() returns at once: the cleanup runs in a manager greenlet
    settle()
    assert task.cleanup_call_count == 1
    assert cleaned_in[0] is not gevent.getcurrent()
    assert (handle.state, handle.done) == (TaskState.DONE, True)
    assert manager.phase == "executing"
    manager.stop()
    assert finish(runner) == []
    assert task.cleanup_call_count == 1
    assert [call for call in log.calls if call[1] is C] == [("b", C), ("a", C)]


def test_stopping_is_the_state_while_a_stopped_task_drains() -> None:
    draining = Draining("a")
    manager = gt.TaskManager()
    manager.add_task("anchor", FakeTask.blocking())
    handle = manager.add_task("a", FakeTask(execute=draining))
    execute_drain = Draining("x")
    execute = manager.add_execute_task("x", execute_drain)
    runner = start(manager)
    handle.stop()
    execute.stop()
    settle()
    assert (handle.state, execute.state) == (TaskState.STOPPING, TaskState.STOPPING)
    assert not handle.done
    assert not execute.done
    draining.release()
    execute_drain.release()
    settle()
    assert (handle.state, execute.state) == (TaskState.DONE, TaskState.STOPPED)
    manager.stop()
    assert finish(runner) == []


def test_a_handle_rejects_a_bad_stop_timeout() -> None:
    manager = gt.TaskManager()
    with pytest.raises(ValueError, match="stop_timeout"):
        manager.add_task("a", FakeTask(), stop_timeout=-1)
    with pytest.raises(TypeError, match="stop_timeout"):
        manager.add_execute_task("x", FakeExecuteTask(), stop_timeout="1")  # type: ignore[arg-type]
    assert manager.status() == []


def test_a_killed_stopped_task_that_raises_while_dying_records_both(fake_clock: FakeClock) -> None:
    dying = OSError("flush failed while dying")

    def execute(ctx: gt.Context) -> None:
        try:
            Event().wait()
        except GreenletExit:
            raise dying from None

    manager = gt.TaskManager()
    manager.add_task("anchor", FakeTask.blocking())
    handle = manager.add_task("a", FakeTask(execute=execute), stop_timeout=1)
    runner = start(manager, gt.background(fake_clock))
    handle.stop()
    fake_clock.advance(1)
    assert manager.phase == "executing"
    manager.stop()
    errors = finish(runner)
    assert [(e.task_name, e.stage, type(e.error)) for e in errors] == [("a", E, StopTimeout), ("a", E, OSError)]
    assert handle.error is errors[0].error


def test_the_cleanup_after_a_stop_is_bounded_by_cleanup_timeout(fake_clock: FakeClock) -> None:
    manager = gt.TaskManager(cleanup_timeout=3)
    anchor = FakeTask.blocking()
    manager.add_task("anchor", anchor)
    task = FakeTask(execute=lambda ctx: ctx.wait(), cleanup=ignore_cancellation)
    handle = manager.add_task("a", task)
    runner = start(manager, gt.background(fake_clock))
    handle.stop()
    settle()
    assert handle.state is TaskState.CLEANING_UP
    fake_clock.advance(2.9)
    assert handle.error is None
    fake_clock.advance(0.1)
    assert isinstance(handle.error, StopTimeout)
    assert (handle.state, handle.done) == (TaskState.DONE, True)
    assert manager.phase == "executing"
    assert not anchor.execute_calls[0].cancelled
    manager.stop()
    errors = finish(runner)
    assert [(e.task_name, e.stage, type(e.error)) for e in errors] == [("a", C, StopTimeout)]
    assert task.cleanup_call_count == 1


def test_stop_before_run_from_another_os_thread_drops_the_task() -> None:
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask(), TaskType.STOP_GROUP)
    task = FakeTask.blocking()
    handle = manager.add_task("b", task)
    thread = threading.Thread(target=handle.stop, daemon=True)
    thread.start()
    wait_thread(thread)
    with gevent.Timeout(5):
        assert manager.run() == []
    assert (task.initialize_call_count, task.execute_call_count, task.cleanup_call_count) == (0, 0, 0)
    assert handle.state is TaskState.DONE


def test_events_of_a_task_stopped_by_its_handle() -> None:
    events: list[ManagerEvent] = []
    manager = gt.TaskManager(on_event=events.append)
    manager.add_task("anchor", FakeTask.blocking())
    handle = manager.add_task("a", FakeTask.blocking())
    runner = start(manager)
    handle.stop()
    settle()
    assert [e.kind for e in events if e.task_name == "a"] == [
        "initializing",
        "initialized",
        "started",
        "stopped",
        "cleaning_up",
        "cleaned_up",
    ]
    assert "cancelled" not in [e.kind for e in events]
    manager.stop()
    assert finish(runner) == []
    assert [e.kind for e in events if e.task_name == "a"].count("cleaned_up") == 1
