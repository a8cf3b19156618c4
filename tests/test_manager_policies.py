"""TaskManager failure policies: STRICT, ERROR, STOP_GROUP for tasks and execute tasks (SPEC §3)."""

from __future__ import annotations

from typing import Any

import gevent
import pytest
from gevent.event import Event
from greenlet import GreenletExit

import greentask as gt
from greentask import ExecuteTaskType, NamedError, Stage, StopReason, TaskState, TaskType, UnexpectedStop
from greentask._policy import Action as _Action
from greentask._policy import policy as _policy
from greentask.testing import FakeClock, FakeExecuteTask, FakeTask, settle

E = Stage.EXECUTE

ALL_TYPES = [
    pytest.param("task", TaskType.STRICT, id="task-strict"),
    pytest.param("task", TaskType.ERROR, id="task-error"),
    pytest.param("task", TaskType.STOP_GROUP, id="task-stop-group"),
    pytest.param("execute", ExecuteTaskType.STRICT, id="execute-strict"),
    pytest.param("execute", ExecuteTaskType.ERROR, id="execute-error"),
]
STRICT_TYPES = [
    pytest.param("task", TaskType.STRICT, id="task-strict"),
    pytest.param("execute", ExecuteTaskType.STRICT, id="execute-strict"),
]
ERROR_TYPES = [
    pytest.param("task", TaskType.ERROR, id="task-error"),
    pytest.param("execute", ExecuteTaskType.ERROR, id="execute-error"),
]


def add(manager: gt.TaskManager, kind: str, name: str, task_type: Any, execute: Any) -> FakeExecuteTask:
    """Add a fake of ``kind`` ("task" or "execute") with the given execute stub."""
    if kind == "task":
        task = FakeTask(name, execute=execute)
        manager.add_task(name, task, task_type)
        return task
    fake = FakeExecuteTask(name, execute=execute)
    manager.add_execute_task(name, fake, task_type)
    return fake


def named(kind: str, name: str, error: BaseException, task_type: Any) -> NamedError:
    if kind == "task":
        return NamedError(name, E, error, task_type=task_type)
    return NamedError(name, E, error, execute_task_type=task_type)


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


# -- the table as a pure function ---------------------------------------------------


def test_policy_failure_always_cancels_all() -> None:
    assert _policy(TaskType.STRICT, failed=True) == _Action(False, True, False)
    assert _policy(TaskType.ERROR, failed=True) == _Action(False, True, False)
    assert _policy(TaskType.STOP_GROUP, failed=True) == _Action(False, True, True)
    assert _policy(ExecuteTaskType.STRICT, failed=True) == _Action(False, True, False)
    assert _policy(ExecuteTaskType.ERROR, failed=True) == _Action(False, True, False)


def test_policy_clean_return() -> None:
    strict = _Action(record_unexpected_stop=True, cancel_all=True, counts_for_stop_group=False)
    nothing = _Action(record_unexpected_stop=False, cancel_all=False, counts_for_stop_group=False)
    counted = _Action(record_unexpected_stop=False, cancel_all=False, counts_for_stop_group=True)
    assert _policy(TaskType.STRICT, failed=False) == strict
    assert _policy(ExecuteTaskType.STRICT, failed=False) == strict
    assert _policy(TaskType.ERROR, failed=False) == nothing
    assert _policy(ExecuteTaskType.ERROR, failed=False) == nothing
    assert _policy(TaskType.STOP_GROUP, failed=False) == counted


# -- a failure ----------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "task_type"), ALL_TYPES)
def test_failure_cancels_every_other_task(kind: str, task_type: Any) -> None:
    boom = ConnectionError("refused")
    others = [FakeTask.blocking(), FakeTask.blocking()]
    manager = gt.TaskManager()
    manager.add_task("other-strict", others[0])
    manager.add_task("other-error", others[1], TaskType.ERROR)
    late = FakeExecuteTask.blocking()
    manager.add_execute_task("other-execute", late)
    add(manager, kind, "failing", task_type, boom)
    assert run(manager) == [named(kind, "failing", boom, task_type)]
    assert all(task.execute_calls[0].cancelled for task in [*others, late])
    assert manager.stop_reason == StopReason("policy", "failing", boom)
    assert others[0].execute_calls[0].cause is boom
    states = {s.name: s.state for s in manager.status()}
    assert states["failing"] is (TaskState.DONE if kind == "task" else TaskState.FAILED)
    assert manager.status()[-1].error is boom


@pytest.mark.parametrize(("kind", "task_type"), ALL_TYPES)
def test_failure_while_running_cancels_the_others(kind: str, task_type: Any) -> None:
    """The failure comes later, while everything runs (not during start-up)."""
    trigger = Event()

    def fail(ctx: gt.Context) -> None:
        trigger.wait()
        raise ValueError("later")

    other = FakeTask.blocking()
    manager = gt.TaskManager()
    manager.add_task("other", other)
    add(manager, kind, "failing", task_type, fail)
    runner = start(manager)
    assert not other.execute_calls[0].cancelled
    trigger.set()
    errors = finish(runner)
    assert [(e.task_name, type(e.error)) for e in errors] == [("failing", ValueError)]
    assert other.execute_calls[0].cancelled


# -- a clean return before cancellation ---------------------------------------------


@pytest.mark.parametrize(("kind", "task_type"), STRICT_TYPES)
def test_strict_clean_return_records_unexpected_stop_and_cancels_all(kind: str, task_type: Any) -> None:
    other = FakeTask.blocking()
    manager = gt.TaskManager()
    manager.add_task("other", other)
    add(manager, kind, "quitter", task_type, None)
    [error] = run(manager)
    assert error.task_name == "quitter"
    assert error.stage is E
    assert type(error.error) is UnexpectedStop
    assert str(error.error).startswith(
        "unexpected shutdown for task process: returned before the manager was cancelled"
    )
    assert (error.task_type, error.execute_task_type) == ((task_type, None) if kind == "task" else (None, task_type))
    assert other.execute_calls[0].cancelled
    assert manager.stop_reason == StopReason("policy", "quitter", error.error)
    assert next(s for s in manager.status() if s.name == "quitter").error is error.error


@pytest.mark.parametrize(("kind", "task_type"), ERROR_TYPES)
def test_error_clean_return_does_not_cancel_the_others(kind: str, task_type: Any) -> None:
    other = FakeTask.blocking()
    manager = gt.TaskManager()
    manager.add_task("other", other)
    quitter = add(manager, kind, "quitter", task_type, lambda ctx: "returned value")
    runner = start(manager)
    assert quitter.execute_call_count == 1
    assert manager.phase == "executing"
    assert manager.stop_reason is None
    assert not other.execute_calls[0].cancelled
    assert {s.name: s.state for s in manager.status()} == {"other": TaskState.RUNNING, "quitter": TaskState.STOPPED}
    manager.stop()
    assert finish(runner) == []


@pytest.mark.parametrize(("kind", "task_type"), ALL_TYPES)
def test_clean_return_after_cancellation_is_clean(kind: str, task_type: Any) -> None:
    manager = gt.TaskManager()
    manager.add_task("other", FakeTask.blocking())
    add(manager, kind, "task", task_type, lambda ctx: ctx.wait())
    runner = start(manager)
    manager.stop()
    assert finish(runner) == []
    assert all(s.error is None for s in manager.status())


@pytest.mark.parametrize(("kind", "task_type"), ALL_TYPES)
def test_failure_after_cancellation_is_still_recorded(kind: str, task_type: Any) -> None:
    late = OSError("raised while stopping")

    def execute(ctx: gt.Context) -> None:
        ctx.wait()
        raise late

    manager = gt.TaskManager()
    manager.add_task("other", FakeTask.blocking())
    add(manager, kind, "late", task_type, execute)
    runner = start(manager)
    manager.stop()
    assert finish(runner) == [named(kind, "late", late, task_type)]
    assert manager.stop_reason == StopReason("stop", None, None)


# -- Cancelled / GreenletExit -------------------------------------------------------


@pytest.mark.parametrize("exc_type", [gt.Cancelled, GreenletExit, gt.DeadlineExceeded])
@pytest.mark.parametrize(("kind", "task_type"), ALL_TYPES)
def test_cancellation_escaping_execute_after_cancellation_is_a_clean_stop(
    kind: str, task_type: Any, exc_type: type[BaseException]
) -> None:
    def execute(ctx: gt.Context) -> None:
        ctx.wait()
        raise exc_type()

    manager = gt.TaskManager()
    manager.add_task("other", FakeTask.blocking())
    add(manager, kind, "task", task_type, execute)
    runner = start(manager)
    manager.stop()
    assert finish(runner) == []
    assert next(s for s in manager.status() if s.name == "task").error is None


def test_ctx_check_and_cancellable_blocks_stop_cleanly() -> None:
    def checking(ctx: gt.Context) -> None:
        ctx.wait()
        ctx.check()

    def interrupted(ctx: gt.Context) -> None:
        with ctx.cancellable():
            Event().wait()
        # swallowed at the end of the block; an explicit checkpoint raises Cancelled
        ctx.check()

    manager = gt.TaskManager()
    manager.add_task("checking", FakeTask(execute=checking))
    manager.add_task("interrupted", FakeTask(execute=interrupted))
    runner = start(manager)
    manager.stop()
    assert finish(runner) == []


@pytest.mark.parametrize(("kind", "task_type"), ALL_TYPES)
def test_deadline_from_the_tasks_own_timeout_before_cancellation_is_a_failure(kind: str, task_type: Any) -> None:
    def execute(ctx: gt.Context) -> None:
        own, cancel = gt.with_timeout(ctx, 1)
        try:
            own.wait()
            own.check()
        finally:
            cancel()

    clock = FakeClock()
    other = FakeTask.blocking()
    manager = gt.TaskManager()
    manager.add_task("other", other)
    add(manager, kind, "timed", task_type, execute)
    runner = start(manager, gt.background(clock))
    clock.advance(0.5)
    assert manager.phase == "executing"
    clock.advance(0.5)
    [error] = finish(runner)
    assert error.task_name == "timed"
    assert type(error.error) is gt.DeadlineExceeded
    assert other.execute_calls[0].cancelled
    assert manager.stop_reason is not None
    assert manager.stop_reason.kind == "policy"
    assert manager.stop_reason.error is error.error


@pytest.mark.parametrize("exc_type", [gt.Cancelled, GreenletExit])
def test_cancellation_error_raised_before_cancellation_is_a_failure(exc_type: type[BaseException]) -> None:
    other = FakeTask.blocking()
    manager = gt.TaskManager()
    manager.add_task("other", other)
    manager.add_task("liar", FakeTask(execute=exc_type), TaskType.ERROR)
    [error] = run(manager)
    assert (error.task_name, type(error.error)) == ("liar", exc_type)
    assert other.execute_calls[0].cancelled


def test_greenlet_killed_from_outside_before_cancellation_is_a_failure() -> None:
    victims: list[Any] = []

    def execute(ctx: gt.Context) -> None:
        victims.append(gevent.getcurrent())
        ctx.wait()

    manager = gt.TaskManager()
    manager.add_task("victim", FakeTask(execute=execute), TaskType.ERROR)
    manager.add_task("other", FakeTask.blocking())
    runner = start(manager)
    victims[0].kill(block=False)
    [error] = finish(runner)
    assert (error.task_name, type(error.error)) == ("victim", GreenletExit)


# -- STOP_GROUP ---------------------------------------------------------------------


def test_stop_group_shuts_down_only_after_every_member_returned() -> None:
    slow_done = Event()
    fast = FakeTask("fast", execute=None)
    slow = FakeTask("slow", execute=lambda ctx: slow_done.wait())
    forever = FakeTask.blocking("forever")
    manager = gt.TaskManager()
    manager.add_task("fast", fast, TaskType.STOP_GROUP)
    manager.add_task("slow", slow, TaskType.STOP_GROUP)
    manager.add_task("forever", forever)  # STRICT, would run forever
    runner = start(manager)
    assert fast.execute_call_count == 1
    # The slow member is not cancelled early, and neither is anyone else.
    assert manager.stop_reason is None
    assert not slow.execute_calls[0].cancelled
    assert not forever.execute_calls[0].cancelled
    assert {s.name: s.state for s in manager.status()} == {
        "fast": TaskState.STOPPED,
        "slow": TaskState.RUNNING,
        "forever": TaskState.RUNNING,
    }
    slow_done.set()
    assert finish(runner) == []
    assert forever.execute_calls[0].cancelled
    assert manager.stop_reason == StopReason("policy", "slow", None)


def test_stop_group_member_that_raised_counts_towards_completion() -> None:
    """A member that raised counts as returned; its error is recorded and shuts everything down."""
    boom = ValueError("member failed")
    gate = Event()

    def fail_later(ctx: gt.Context) -> None:
        gate.wait()
        raise boom

    manager = gt.TaskManager()
    manager.add_task("fine", FakeTask(execute=None), TaskType.STOP_GROUP)
    manager.add_task("failing", FakeTask(execute=fail_later), TaskType.STOP_GROUP)
    forever = FakeTask.blocking()
    manager.add_task("forever", forever)
    runner = start(manager)
    assert manager._stop_group_left == 1
    gate.set()
    assert finish(runner) == [NamedError("failing", E, boom, task_type=TaskType.STOP_GROUP)]
    assert manager._stop_group_left == 0
    assert forever.execute_calls[0].cancelled
    assert manager.stop_reason == StopReason("policy", "failing", boom)


def test_stop_group_is_not_completed_by_other_task_types() -> None:
    member_done = Event()
    manager = gt.TaskManager()
    member = FakeTask(execute=lambda ctx: member_done.wait())
    manager.add_task("member", member, TaskType.STOP_GROUP)
    manager.add_task("error", FakeTask(execute=None), TaskType.ERROR)
    manager.add_execute_task("exec", FakeExecuteTask(), ExecuteTaskType.ERROR)
    runner = start(manager)
    assert manager.stop_reason is None
    assert manager.phase == "executing"
    member_done.set()
    assert finish(runner) == []
    assert manager.stop_reason == StopReason("policy", "member", None)


def test_no_stop_group_means_no_stop_group_shutdown() -> None:
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask(execute=None), TaskType.ERROR)
    runner = start(manager)
    assert manager.phase == "executing"
    manager.stop()
    assert finish(runner) == []
    assert manager.stop_reason == StopReason("stop", None, None)


def test_stop_group_returning_after_cancellation_is_clean() -> None:
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask.blocking(), TaskType.STOP_GROUP)
    manager.add_task("b", FakeTask.blocking(), TaskType.STOP_GROUP)
    runner = start(manager)
    manager.stop(KeyError("bye"))
    assert finish(runner) == []
    assert manager.stop_reason is not None
    assert manager.stop_reason.kind == "stop"


def test_only_the_first_failure_triggers_the_shutdown() -> None:
    first, second = ValueError("first"), ValueError("second")
    gate = Event()

    def second_fails(ctx: gt.Context) -> None:
        gate.wait()
        raise second

    def first_fails(ctx: gt.Context) -> None:
        gate.wait()
        raise first

    manager = gt.TaskManager()
    manager.add_task("first", FakeTask(execute=first_fails))
    manager.add_task("second", FakeTask(execute=second_fails))
    runner = start(manager)
    gate.set()
    errors = finish(runner)
    assert [e.error for e in errors] == [first, second]
    assert manager.stop_reason == StopReason("policy", "first", first)
    assert gt.errors_to_group(errors).exceptions == (first, second)  # type: ignore[union-attr]
