"""TaskManager observability: status(), phase, events, stop_reason and its log line (SPEC §3)."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

import gevent
import pytest
from gevent.event import Event

import greentask as gt
from greentask import (
    ExecuteTaskType,
    ManagerEvent,
    NamedError,
    Stage,
    StopReason,
    TaskState,
    TaskStatus,
    TaskType,
    UnexpectedStop,
)
from greentask.testing import FakeClock, FakeExecuteTask, FakeTask, settle

INIT, E, C = Stage.INITIALIZE, Stage.EXECUTE, Stage.CLEANUP


def start(manager: gt.TaskManager, ctx: gt.Context | None = None) -> gevent.Greenlet[..., Any]:
    runner = gevent.spawn(manager.run, ctx)
    settle()
    return runner


def finish(runner: gevent.Greenlet[..., Any]) -> list[NamedError]:
    with gevent.Timeout(5):
        return runner.get()  # type: ignore[no-any-return]


def run(manager: gt.TaskManager, ctx: gt.Context | None = None) -> list[NamedError]:
    with gevent.Timeout(5):
        return manager.run(ctx)


def shutdown_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "greentask" and r.levelno == logging.INFO and "shutting down" in r.getMessage()
    ]


# -- status() -----------------------------------------------------------------------


def test_status_follows_every_transition_on_the_clock() -> None:
    clock = FakeClock(start=10.0)
    init_gate, stop_gate, cleanup_gate = Event(), Event(), Event()
    task = FakeTask(
        initialize=lambda ctx: init_gate.wait(),
        execute=lambda ctx: ctx.wait(),
        cleanup=lambda ctx: cleanup_gate.wait(),
    )
    manager = gt.TaskManager()
    manager.add_task("a", task, TaskType.ERROR)
    manager.add_execute_task("x", lambda ctx: (ctx.wait(), stop_gate.wait()))

    def snapshot() -> list[tuple[str, TaskState, float | None, float | None]]:
        return [(s.name, s.state, s.started_at, s.stopped_at) for s in manager.status()]

    assert manager.status() == [
        TaskStatus("a", "task", TaskType.ERROR, TaskState.PENDING, None, None, None),
        TaskStatus("x", "execute", ExecuteTaskType.STRICT, TaskState.PENDING, None, None, None),
    ]
    assert manager.phase == "new"
    runner = start(manager, gt.background(clock))
    assert manager.phase == "initializing"
    assert snapshot() == [("a", TaskState.INITIALIZING, None, None), ("x", TaskState.PENDING, None, None)]
    clock.advance(1)
    init_gate.set()
    settle()
    assert manager.phase == "executing"
    assert snapshot() == [("a", TaskState.RUNNING, 11.0, None), ("x", TaskState.RUNNING, 11.0, None)]
    clock.advance(2)
    manager.stop()
    settle()
    assert manager.phase == "stopping"
    assert snapshot() == [("a", TaskState.STOPPED, 11.0, 13.0), ("x", TaskState.STOPPING, 11.0, None)]  # SPEC §9
    clock.advance(1)
    stop_gate.set()
    settle()
    assert manager.phase == "cleaning_up"
    assert snapshot() == [("a", TaskState.CLEANING_UP, 11.0, 13.0), ("x", TaskState.STOPPED, 11.0, 14.0)]
    cleanup_gate.set()
    assert finish(runner) == []
    assert manager.phase == "done"
    assert snapshot() == [("a", TaskState.DONE, 11.0, 13.0), ("x", TaskState.STOPPED, 11.0, 14.0)]
    assert all(s.error is None for s in manager.status())


def test_status_of_failed_tasks_keeps_the_error_after_done(clock: FakeClock) -> None:
    boom, bang = ValueError("boom"), KeyError("bang")
    manager = gt.TaskManager()
    release = Event()

    def execute(ctx: gt.Context) -> None:
        release.wait()
        raise boom

    manager.add_task("a", FakeTask(execute=execute))
    manager.add_task("b", FakeTask.blocking())
    manager.add_execute_task("x", FakeExecuteTask(execute=bang), ExecuteTaskType.ERROR)
    runner = start(manager, gt.background(clock))
    status = {s.name: s for s in manager.status()}
    # x failed right away (and brought everything down); a is still inside its execute.
    assert (status["x"].state, status["x"].error) == (TaskState.FAILED, bang)
    release.set()
    errors = finish(runner)
    assert [e.error for e in errors] == [bang, boom]
    status = {s.name: s for s in manager.status()}
    assert (status["a"].state, status["a"].error) == (TaskState.DONE, boom)
    assert (status["b"].state, status["b"].error) == (TaskState.DONE, None)
    assert (status["x"].state, status["x"].error) == (TaskState.FAILED, bang)


def test_status_after_an_initialize_failure() -> None:
    boom = ValueError("init")
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask())
    manager.add_task("b", FakeTask(initialize=boom, cleanup=KeyError("cleanup")))
    manager.add_task("c", FakeTask())
    assert len(run(manager)) == 2
    assert [(s.name, s.state, s.error, s.started_at) for s in manager.status()] == [
        ("a", TaskState.DONE, None, None),
        ("b", TaskState.DONE, boom, None),  # the first error is the one kept
        ("c", TaskState.PENDING, None, None),
    ]


def test_status_is_a_snapshot() -> None:
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask(), TaskType.STOP_GROUP)
    before = manager.status()
    assert run(manager) == []
    assert before[0].state is TaskState.PENDING
    assert manager.status()[0].state is TaskState.DONE
    with pytest.raises(AttributeError):
        before[0].state = TaskState.DONE  # type: ignore[misc]


def test_name_phase_and_repr() -> None:
    manager = gt.TaskManager(name="svc")
    manager.add_task("a", FakeTask(), TaskType.STOP_GROUP)
    assert manager.name == "svc"
    assert repr(manager) == "<TaskManager 'svc' new tasks=1>"
    assert run(manager) == []
    assert repr(manager) == "<TaskManager 'svc' done tasks=1>"


# -- events -------------------------------------------------------------------------


def test_one_task_stop_group_run_emits_the_documented_sequence(clock: FakeClock) -> None:
    events: list[ManagerEvent] = []
    task = FakeTask(
        initialize=lambda ctx: ctx.sleep(1),
        execute=lambda ctx: ctx.sleep(2),
        cleanup=lambda ctx: ctx.sleep(3),
    )
    manager = gt.TaskManager(on_event=events.append)
    manager.add_task("only", task, TaskType.STOP_GROUP)
    runner = start(manager, gt.background(clock))
    clock.advance(1)
    clock.advance(2)
    clock.advance(3)
    assert finish(runner) == []
    assert [(e.kind, e.task_name, e.at) for e in events] == [
        ("initializing", "only", 0.0),
        ("initialized", "only", 1.0),
        ("executing", None, 1.0),
        ("started", "only", 1.0),
        ("stopped", "only", 3.0),
        ("cancelled", None, 3.0),
        ("cleaning_up", "only", 3.0),
        ("cleaned_up", "only", 6.0),
        ("done", None, 6.0),
    ]
    assert [e.error for e in events if e.kind != "cancelled"] == [None] * 8
    [cancelled] = [e for e in events if e.kind == "cancelled"]
    assert isinstance(cancelled.error, gt.Cancelled)  # no cause given: the ctx's err


def test_failure_events_carry_the_error() -> None:
    init_error, exec_error, cleanup_error = ValueError("i"), OSError("e"), KeyError("c")
    events: list[ManagerEvent] = []
    manager = gt.TaskManager(on_event=events.append)
    manager.add_task("a", FakeTask(execute=exec_error, cleanup=cleanup_error))
    assert len(run(manager)) == 2
    assert [(e.kind, e.task_name, e.error) for e in events] == [
        ("initializing", "a", None),
        ("initialized", "a", None),
        ("executing", None, None),
        ("started", "a", None),
        ("failed", "a", exec_error),
        ("cancelled", None, exec_error),
        ("cleaning_up", "a", None),
        ("failed", "a", cleanup_error),
        ("cleaned_up", "a", None),
        ("done", None, None),
    ]
    events.clear()
    manager = gt.TaskManager(on_event=events.append)
    manager.add_task("b", FakeTask(initialize=init_error))
    assert len(run(manager)) == 1
    assert [(e.kind, e.task_name, e.error) for e in events] == [
        ("initializing", "b", None),
        ("failed", "b", init_error),
        ("cancelled", None, init_error),
        ("cleaning_up", "b", None),
        ("cleaned_up", "b", None),
        ("done", None, None),
    ]


def test_cancelled_event_carries_the_stop_cause() -> None:
    cause = KeyError("maintenance")
    events: list[ManagerEvent] = []
    manager = gt.TaskManager()
    manager.subscribe(events.append)
    manager.add_task("a", FakeTask.blocking())
    runner = start(manager)
    manager.stop(cause)
    assert finish(runner) == []
    [cancelled] = [e for e in events if e.kind == "cancelled"]
    assert cancelled.error is cause
    assert cancelled.task_name is None


def test_execute_task_events() -> None:
    events: list[ManagerEvent] = []
    bad_error = UnexpectedStop("odd")
    manager = gt.TaskManager(on_event=events.append)
    manager.add_task("anchor", FakeTask.blocking())
    runner = start(manager)
    manager.add_execute_task("job", FakeExecuteTask(), ExecuteTaskType.ERROR)
    manager.add_execute_task("bad", FakeExecuteTask(execute=bad_error), ExecuteTaskType.ERROR)
    assert finish(runner) == [NamedError("bad", E, bad_error, execute_task_type=ExecuteTaskType.ERROR)]
    assert [(e.kind, e.task_name, e.error) for e in events if e.task_name in ("job", "bad")] == [
        ("started", "job", None),
        ("stopped", "job", None),
        ("started", "bad", None),
        ("failed", "bad", bad_error),
    ]


def test_subscribe_and_unsubscribe() -> None:
    first: list[str] = []
    second: list[str] = []
    manager = gt.TaskManager()
    unsubscribe_first = manager.subscribe(lambda e: first.append(e.kind))
    unsubscribe_second = manager.subscribe(lambda e: second.append(e.kind))
    unsubscribe_second()
    unsubscribe_second()  # idempotent
    manager.add_task("a", FakeTask(), TaskType.STOP_GROUP)
    assert run(manager) == []
    assert first[0] == "initializing"
    assert first[-1] == "done"
    assert second == []
    unsubscribe_first()


def test_a_callback_can_unsubscribe_itself_while_an_event_is_delivered() -> None:
    seen: list[str] = []
    others: list[str] = []
    manager = gt.TaskManager()

    def once(event: ManagerEvent) -> None:
        seen.append(event.kind)
        unsubscribe()

    unsubscribe = manager.subscribe(once)
    manager.subscribe(lambda e: others.append(e.kind))
    manager.add_task("a", FakeTask(), TaskType.STOP_GROUP)
    assert run(manager) == []
    assert seen == ["initializing"]
    assert others[:2] == ["initializing", "initialized"]


def test_a_raising_callback_is_logged_and_does_not_break_the_run(caplog: pytest.LogCaptureFixture) -> None:
    delivered: list[str] = []

    def broken(event: ManagerEvent) -> None:
        raise RuntimeError(f"subscriber broke on {event.kind}")

    manager = gt.TaskManager(on_event=broken)
    manager.subscribe(lambda e: delivered.append(e.kind))
    other = FakeTask.blocking()
    manager.add_task("a", FakeTask(), TaskType.STOP_GROUP)
    manager.add_task("b", other)
    with caplog.at_level(logging.ERROR, logger="greentask"):
        assert run(manager) == []
    assert delivered == [
        "initializing",
        "initialized",
        "initializing",
        "initialized",
        "executing",
        "started",
        "stopped",
        "cancelled",
        "started",
        "stopped",
        "cleaning_up",
        "cleaned_up",
        "cleaning_up",
        "cleaned_up",
        "done",
    ]
    failures = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "greentask"]
    assert len(failures) == len(delivered)
    assert all(r.exc_info is not None and isinstance(r.exc_info[1], RuntimeError) for r in failures)
    assert "event callback" in failures[0].getMessage()
    assert other.execute_calls[0].cancelled


def test_no_subscriber_means_no_events_and_no_cost() -> None:
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask(), TaskType.STOP_GROUP)
    assert run(manager) == []


# -- stop_reason and the log line ---------------------------------------------------


def test_stop_reason_for_a_failed_task(caplog: pytest.LogCaptureFixture) -> None:
    boom = ConnectionError("refused")
    manager = gt.TaskManager()
    manager.add_task("db", FakeTask(execute=boom))
    assert manager.stop_reason is None
    with caplog.at_level(logging.INFO, logger="greentask"):
        assert len(run(manager)) == 1
    assert manager.stop_reason == StopReason("policy", "db", boom)
    assert shutdown_lines(caplog) == [
        "greentask: shutting down: task 'db' failed in execute: ConnectionError('refused')"
    ]


def test_stop_reason_for_an_unexpected_stop(caplog: pytest.LogCaptureFixture) -> None:
    manager = gt.TaskManager(name="svc")
    manager.add_task("worker", FakeTask(execute=None))
    with caplog.at_level(logging.INFO, logger="greentask"):
        [error] = run(manager)
    assert manager.stop_reason == StopReason("policy", "worker", error.error)
    assert shutdown_lines(caplog) == ["svc: shutting down: task 'worker' stopped unexpectedly in execute"]


def test_stop_reason_for_a_completed_stop_group(caplog: pytest.LogCaptureFixture) -> None:
    gate = Event()
    manager = gt.TaskManager()
    manager.add_task("first", FakeTask(execute=None), TaskType.STOP_GROUP)
    manager.add_task("last", FakeTask(execute=lambda ctx: gate.wait()), TaskType.STOP_GROUP)
    with caplog.at_level(logging.INFO, logger="greentask"):
        runner = start(manager)
        assert manager.stop_reason is None
        gate.set()
        assert finish(runner) == []
    assert manager.stop_reason == StopReason("policy", "last", None)
    assert shutdown_lines(caplog) == ["greentask: shutting down: stop group completed (last: task 'last')"]


@pytest.mark.parametrize(
    ("cause", "line"),
    [(None, "stop() called"), (KeyError("deploy"), "stop() called: KeyError('deploy')")],
)
def test_stop_reason_for_stop(caplog: pytest.LogCaptureFixture, cause: BaseException | None, line: str) -> None:
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask.blocking())
    with caplog.at_level(logging.INFO, logger="greentask"):
        runner = start(manager)
        manager.stop(cause)
        assert finish(runner) == []
    assert manager.stop_reason == StopReason("stop", None, cause)
    assert shutdown_lines(caplog) == [f"greentask: shutting down: {line}"]


@pytest.mark.parametrize(
    ("cause", "line"),
    [(None, "run context cancelled"), (OSError("parent"), "run context cancelled: OSError('parent')")],
)
def test_stop_reason_for_the_parent_context(
    caplog: pytest.LogCaptureFixture, cause: BaseException | None, line: str
) -> None:
    parent, cancel = gt.with_cancel(gt.background())
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask.blocking())
    with caplog.at_level(logging.INFO, logger="greentask"):
        runner = start(manager, parent)
        cancel(cause)
        assert finish(runner) == []
    assert manager.stop_reason == StopReason("context", None, cause)
    assert shutdown_lines(caplog) == [f"greentask: shutting down: {line}"]


def test_stop_reason_for_a_parent_deadline(clock: FakeClock) -> None:
    parent, cancel = gt.with_timeout(gt.background(clock), 5)
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask.blocking())
    runner = start(manager, parent)
    clock.advance(5)
    assert finish(runner) == []
    assert manager.stop_reason == StopReason("context", None, None)
    cancel()


def test_stop_reason_for_an_initialize_failure(caplog: pytest.LogCaptureFixture) -> None:
    boom = ValueError("no config")
    manager = gt.TaskManager()
    manager.add_task("config", FakeTask(initialize=boom))
    with caplog.at_level(logging.INFO, logger="greentask"):
        assert len(run(manager)) == 1
    assert manager.stop_reason == StopReason("policy", "config", boom)
    assert shutdown_lines(caplog) == [
        "greentask: shutting down: task 'config' failed in initialize: ValueError('no config')"
    ]


def test_stop_reason_is_set_once(caplog: pytest.LogCaptureFixture) -> None:
    boom = ValueError("first")
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask(execute=boom))

    def stop_late(ctx: gt.Context) -> None:
        ctx.wait()
        manager.stop(KeyError("late"))

    manager.add_task("b", FakeTask(execute=stop_late))
    with caplog.at_level(logging.INFO, logger="greentask"):
        assert len(run(manager)) == 1
    assert manager.stop_reason == StopReason("policy", "a", boom)
    assert len(shutdown_lines(caplog)) == 1


# -- NamedError from a run ----------------------------------------------------------


def test_every_error_names_exactly_one_task_type_in_every_stage() -> None:
    manager = gt.TaskManager()
    manager.add_task("t", FakeTask(execute=ValueError("x"), cleanup=KeyError("y")), TaskType.ERROR)
    manager.add_execute_task("e", FakeExecuteTask(execute=OSError("z")), ExecuteTaskType.ERROR)
    errors = run(manager)
    init_manager = gt.TaskManager()
    init_manager.add_task("i", FakeTask(initialize=RuntimeError("w")), TaskType.STOP_GROUP)
    errors += run(init_manager)
    assert {(e.task_name, e.stage) for e in errors} == {("t", E), ("t", C), ("e", E), ("i", INIT)}
    for error in errors:
        if error.task_name == "e":
            assert (error.task_type, error.execute_task_type) == (None, ExecuteTaskType.ERROR)
        elif error.task_name == "t":
            assert (error.task_type, error.execute_task_type) == (TaskType.ERROR, None)
        else:
            assert (error.task_type, error.execute_task_type) == (TaskType.STOP_GROUP, None)
    assert str(next(e for e in errors if e.task_name == "e")) == "execute: task 'e': OSError('z')"
    assert str(next(e for e in errors if e.task_name == "i")) == "initialize: task 'i': RuntimeError('w')"


def test_recorded_errors_keep_their_traceback() -> None:
    def execute(ctx: gt.Context) -> None:
        raise ValueError("deep")

    manager = gt.TaskManager()
    manager.add_task("a", FakeTask(execute=execute))
    [error] = run(manager)
    assert error.error.__traceback__ is not None
    frames = []
    tb: TracebackType | None = error.error.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    assert frames[-1] == "execute"
