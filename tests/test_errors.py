"""greentask.errors: the exception tree, NamedError, the value types and errors_to_group."""

from __future__ import annotations

import dataclasses

import pytest
from greenlet import GreenletExit

import greentask as gt
from greentask import (
    ExecuteTaskType,
    ManagerEvent,
    ManagerStateError,
    NamedError,
    Stage,
    StopReason,
    StopTimeout,
    TaskState,
    TaskStatus,
    TaskType,
    UnexpectedStop,
    errors_to_group,
)

# -- the exception tree -------------------------------------------------------------


def test_exception_tree() -> None:
    assert issubclass(UnexpectedStop, Exception)
    assert issubclass(StopTimeout, Exception)
    assert issubclass(ManagerStateError, RuntimeError)
    assert issubclass(gt.Cancelled, GreenletExit)
    assert issubclass(gt.DeadlineExceeded, gt.Cancelled)
    assert not issubclass(gt.Cancelled, Exception)


def test_stage_values_and_str() -> None:
    assert [s.value for s in Stage] == ["initialize", "execute", "cleanup"]
    assert str(Stage.EXECUTE) == "execute"
    assert f"{Stage.CLEANUP}" == "cleanup"
    assert Stage("initialize") is Stage.INITIALIZE


def test_task_state_values_and_str() -> None:
    assert [s.value for s in TaskState] == [
        "pending",
        "initializing",
        "running",
        "stopping",
        "restarting",
        "stopped",
        "failed",
        "cleaning_up",
        "done",
    ]
    assert str(TaskState.CLEANING_UP) == "cleaning_up"


def test_task_type_str_and_values() -> None:
    assert [t.value for t in TaskType] == ["strict", "error", "stop_group"]
    assert [t.value for t in ExecuteTaskType] == ["strict", "error"]
    assert str(TaskType.STOP_GROUP) == "TaskType.STOP_GROUP"
    assert str(ExecuteTaskType.ERROR) == "ExecuteTaskType.ERROR"


# -- NamedError ---------------------------------------------------------------------


def test_named_error_str() -> None:
    error = NamedError("db", Stage.EXECUTE, ConnectionError("refused"), task_type=TaskType.STRICT)
    assert str(error) == "execute: task 'db': ConnectionError('refused')"
    error = NamedError("it's", Stage.CLEANUP, KeyError("k"), execute_task_type=ExecuteTaskType.ERROR)
    assert str(error) == "cleanup: task \"it's\": KeyError('k')"
    error = NamedError("cfg", Stage.INITIALIZE, StopTimeout("slow"), task_type=TaskType.ERROR)
    assert str(error) == "initialize: task 'cfg': StopTimeout('slow')"


def test_named_error_is_a_frozen_record_not_an_exception() -> None:
    boom = ValueError("boom")
    error = NamedError("db", Stage.EXECUTE, boom, task_type=TaskType.STRICT)
    assert not isinstance(error, BaseException)
    assert error.error is boom
    with pytest.raises(dataclasses.FrozenInstanceError):
        error.task_name = "other"  # type: ignore[misc]
    assert error == NamedError("db", Stage.EXECUTE, boom, task_type=TaskType.STRICT)
    assert error != NamedError("db", Stage.EXECUTE, boom, execute_task_type=ExecuteTaskType.STRICT)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({}, ValueError, "exactly one of task_type and execute_task_type must be set"),
        (
            {"task_type": TaskType.STRICT, "execute_task_type": ExecuteTaskType.STRICT},
            ValueError,
            "exactly one of task_type and execute_task_type must be set",
        ),
        ({"task_type": "strict"}, TypeError, "task_type must be a TaskType or None, got 'strict'"),
        ({"task_type": ExecuteTaskType.STRICT}, TypeError, "task_type must be a TaskType or None"),
        ({"execute_task_type": TaskType.STRICT}, TypeError, "execute_task_type must be an ExecuteTaskType or None"),
    ],
)
def test_named_error_needs_exactly_one_task_type(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(")):
        NamedError("db", Stage.EXECUTE, ValueError(), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1, Stage.EXECUTE, ValueError()), "task_name must be a string, got 1"),
        (("db", "execute", ValueError()), "stage must be a Stage, got 'execute'"),
        (("db", Stage.EXECUTE, "boom"), "error must be an exception, got 'boom'"),
    ],
)
def test_named_error_bad_fields(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(TypeError) as info:
        NamedError(*args, task_type=TaskType.STRICT)  # type: ignore[arg-type, misc]
    assert str(info.value) == message


# -- the value types ----------------------------------------------------------------


def test_task_status_and_manager_event_are_frozen() -> None:
    status = TaskStatus("a", "task", TaskType.STRICT, TaskState.RUNNING, None, 1.0, None)
    event = ManagerEvent("started", "a", None, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.state = TaskState.DONE  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.kind = "stopped"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("reason", "text"),
    [
        (StopReason("policy", "db", ConnectionError("refused")), "task 'db' failed: ConnectionError('refused')"),
        (StopReason("policy", "db", UnexpectedStop("x")), "task 'db' stopped unexpectedly"),
        (StopReason("policy", "batch", None), "stop group completed (last: task 'batch')"),
        (StopReason("stop", None, None), "stop() called"),
        (StopReason("stop", None, KeyError("deploy")), "stop() called: KeyError('deploy')"),
        (StopReason("context", None, None), "run context cancelled"),
        (StopReason("context", None, OSError("gone")), "run context cancelled: OSError('gone')"),
    ],
)
def test_stop_reason_str(reason: StopReason, text: str) -> None:
    assert str(reason) == text


# -- errors_to_group ----------------------------------------------------------------


def named(name: str, stage: Stage, error: BaseException) -> NamedError:
    return NamedError(name, stage, error, task_type=TaskType.STRICT)


def test_errors_to_group_of_nothing_is_none() -> None:
    assert errors_to_group([]) is None
    assert errors_to_group(iter([])) is None
    assert errors_to_group(()) is None


def test_errors_to_group_builds_an_exception_group_in_order() -> None:
    first, second, third = ConnectionError("refused"), ValueError("bad"), StopTimeout("slow")
    group = errors_to_group(
        [named("db", Stage.EXECUTE, first), named("web", Stage.EXECUTE, second), named("db", Stage.CLEANUP, third)]
    )
    assert isinstance(group, ExceptionGroup)
    assert group.exceptions == (first, second, third)
    assert str(group) == "3 task errors (3 sub-exceptions)"
    assert first.__notes__ == ["greentask: task 'db', stage execute"]
    assert second.__notes__ == ["greentask: task 'web', stage execute"]
    assert third.__notes__ == ["greentask: task 'db', stage cleanup"]


def test_errors_to_group_of_one_error() -> None:
    boom = ValueError("boom")
    group = errors_to_group(iter([named("a", Stage.INITIALIZE, boom)]))
    assert isinstance(group, ExceptionGroup)
    assert group.message == "1 task error"
    assert group.exceptions == (boom,)


def test_errors_to_group_is_a_base_exception_group_when_one_error_is_not_an_exception() -> None:
    interrupt = KeyboardInterrupt()
    boom = ValueError("boom")
    group = errors_to_group([named("a", Stage.EXECUTE, boom), named("b", Stage.EXECUTE, interrupt)])
    assert isinstance(group, BaseExceptionGroup)
    assert not isinstance(group, ExceptionGroup)
    assert group.exceptions == (boom, interrupt)
    with pytest.raises(BaseExceptionGroup) as info:
        raise group
    assert info.value.subgroup(KeyboardInterrupt) is not None


def test_errors_to_group_adds_each_note_once() -> None:
    boom = ValueError("boom")
    errors = [named("a", Stage.EXECUTE, boom)]
    errors_to_group(errors)
    errors_to_group(errors)
    assert boom.__notes__ == ["greentask: task 'a', stage execute"]
    # The same exception object recorded in two stages gets one note per stage.
    errors_to_group([named("a", Stage.EXECUTE, boom), named("a", Stage.CLEANUP, boom)])
    assert boom.__notes__ == ["greentask: task 'a', stage execute", "greentask: task 'a', stage cleanup"]


def test_errors_to_group_keeps_existing_notes() -> None:
    boom = ValueError("boom")
    boom.add_note("from the driver")
    group = errors_to_group([named("a", Stage.EXECUTE, boom)])
    assert group is not None
    assert boom.__notes__ == ["from the driver", "greentask: task 'a', stage execute"]


def test_errors_to_group_of_a_real_run_puts_the_trigger_first() -> None:
    import gevent

    from greentask.testing import FakeTask

    trigger = ConnectionError("refused")

    def late(ctx: gt.Context) -> None:
        ctx.wait()
        raise ValueError("while stopping")

    manager = gt.TaskManager()
    manager.add_task("late", FakeTask(execute=late))
    manager.add_task("db", FakeTask(execute=trigger))
    with gevent.Timeout(5):
        errors = manager.run()
    group = errors_to_group(errors)
    assert group is not None
    assert group.exceptions[0] is trigger
    assert manager.stop_reason is not None
    assert manager.stop_reason.error is group.exceptions[0]


@pytest.mark.parametrize(
    ("errors", "message"),
    [
        (None, "errors must be an iterable of NamedError, got None"),
        (5, "errors must be an iterable of NamedError, got 5"),
        ("abc", "errors must be an iterable of NamedError, got 'abc'"),
        (ValueError("x"), "errors must be an iterable of NamedError, got ValueError('x')"),
        ([ValueError("x")], "errors must hold NamedError objects only, got ValueError('x')"),
        ([None], "errors must hold NamedError objects only, got None"),
    ],
)
def test_errors_to_group_bad_argument(errors: object, message: str) -> None:
    with pytest.raises(TypeError) as info:
        errors_to_group(errors)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_errors_to_group_rejects_a_single_named_error() -> None:
    error = named("a", Stage.EXECUTE, ValueError("x"))
    with pytest.raises(TypeError, match="errors must be an iterable of NamedError"):
        errors_to_group(error)  # type: ignore[arg-type]


class _BrokenRepr(Exception):
    def __repr__(self) -> str:
        raise RuntimeError("repr boom")


@pytest.mark.parametrize(
    ("reason", "text"),
    [
        (StopReason("policy", "db", _BrokenRepr()), "task 'db' failed: <_BrokenRepr object (repr() failed)>"),
        (StopReason("stop", None, _BrokenRepr()), "stop() called: <_BrokenRepr object (repr() failed)>"),
        (StopReason("context", None, _BrokenRepr()), "run context cancelled: <_BrokenRepr object (repr() failed)>"),
    ],
)
def test_a_stop_reason_whose_error_has_a_broken_repr_still_prints(reason: StopReason, text: str) -> None:
    assert str(reason) == text
