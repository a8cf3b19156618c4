"""Every bad argument of the TaskManager API raises TypeError/ValueError naming the argument."""

from __future__ import annotations

import math
from typing import Any

import gevent
import pytest

import greentask as gt
from greentask import ExecuteTaskType, TaskType
from greentask.testing import FakeExecuteTask, FakeTask


class NoCleanup:
    def initialize(self, ctx: gt.Context) -> None: ...

    def execute(self, ctx: gt.Context) -> None: ...


class CleanupNotCallable(NoCleanup):
    cleanup = "not a method"


class NoInitialize:
    def execute(self, ctx: gt.Context) -> None: ...

    def cleanup(self, ctx: gt.Context) -> None: ...


# -- TaskManager(...) ---------------------------------------------------------------


@pytest.mark.parametrize("argument", ["initialize_timeout", "stop_timeout", "cleanup_timeout"])
@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("5", TypeError, "must be a number of seconds, got '5'"),
        (True, TypeError, "must be a number of seconds, got True"),
        ([1], TypeError, "must be a number of seconds, got [1]"),
        (-1, ValueError, "must be a non-negative number of seconds, got -1"),
        (-0.5, ValueError, "must be a non-negative number of seconds, got -0.5"),
        (math.nan, ValueError, "must be a non-negative number of seconds, got nan"),
    ],
)
def test_bad_timeouts(argument: str, value: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as info:
        gt.TaskManager(**{argument: value})  # type: ignore[arg-type]
    assert str(info.value) == f"{argument} {message}"


@pytest.mark.parametrize("argument", ["initialize_timeout", "stop_timeout", "cleanup_timeout"])
@pytest.mark.parametrize("value", [None, 0, 0.0, 1, 2.5, math.inf])
def test_good_timeouts(argument: str, value: float | None) -> None:
    gt.TaskManager(**{argument: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("", ValueError, "name must be a non-empty string, got ''"),
        (None, TypeError, "name must be a non-empty string, got None"),
        (5, TypeError, "name must be a non-empty string, got 5"),
        (b"svc", TypeError, "name must be a non-empty string, got b'svc'"),
    ],
)
def test_bad_manager_name(value: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as info:
        gt.TaskManager(name=value)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_bad_on_event() -> None:
    with pytest.raises(TypeError, match=r"^on_event must be callable or None, got 'print'$"):
        gt.TaskManager(on_event="print")  # type: ignore[arg-type]


def test_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        gt.TaskManager(1.0)  # type: ignore[call-arg]


# -- add_task -----------------------------------------------------------------------


@pytest.mark.parametrize("adder", ["add_task", "add_execute_task"])
@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("", ValueError, "name must be a non-empty string, got ''"),
        (None, TypeError, "name must be a non-empty string, got None"),
        (7, TypeError, "name must be a non-empty string, got 7"),
    ],
)
def test_bad_task_name(adder: str, value: object, error: type[Exception], message: str) -> None:
    manager = gt.TaskManager()
    with pytest.raises(error) as info:
        getattr(manager, adder)(value, FakeTask())
    assert str(info.value) == message
    assert manager.status() == []


@pytest.mark.parametrize(
    ("task", "message"),
    [
        (None, "task cannot be None"),
        (object(), "task 'db' has no callable initialize(ctx)"),
        (NoInitialize(), "task 'db' has no callable initialize(ctx)"),
        (NoCleanup(), "task 'db' has no callable cleanup(ctx)"),
        (CleanupNotCallable(), "task 'db' has no callable cleanup(ctx)"),
        (FakeExecuteTask(), "task 'db' has no callable initialize(ctx)"),
        (lambda ctx: None, "task 'db' has no callable initialize(ctx)"),
    ],
)
def test_add_task_bad_task(task: object, message: str) -> None:
    manager = gt.TaskManager()
    with pytest.raises(TypeError) as info:
        manager.add_task("db", task)  # type: ignore[arg-type]
    assert str(info.value) == message
    assert manager.status() == []


@pytest.mark.parametrize("task_type", ["forever", 1, None, ExecuteTaskType.STRICT, "STRICT"])
def test_add_task_bad_task_type(task_type: object) -> None:
    manager = gt.TaskManager()
    with pytest.raises(ValueError) as info:
        manager.add_task("db", FakeTask(), task_type)  # type: ignore[arg-type]
    assert str(info.value) == (
        f"task_type must be one of TaskType.STRICT, TaskType.ERROR, TaskType.STOP_GROUP, got {task_type!r}"
    )
    assert manager.status() == []


@pytest.mark.parametrize(("value", "expected"), [("strict", TaskType.STRICT), ("stop_group", TaskType.STOP_GROUP)])
def test_add_task_accepts_the_enum_values(value: str, expected: TaskType) -> None:
    manager = gt.TaskManager()
    manager.add_task("db", FakeTask(), value)  # type: ignore[arg-type]
    assert manager.status()[0].task_type is expected


def test_duplicate_names_are_allowed() -> None:
    manager = gt.TaskManager()
    manager.add_task("same", FakeTask(), TaskType.STOP_GROUP)
    manager.add_task("same", FakeTask(), TaskType.STOP_GROUP)
    manager.add_execute_task("same", FakeExecuteTask(), ExecuteTaskType.ERROR)
    with gevent.Timeout(5):
        assert manager.run() == []
    assert [s.name for s in manager.status()] == ["same", "same", "same"]


# -- add_execute_task ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "error", "message"),
    [
        (None, TypeError, "task cannot be None"),
        (42, TypeError, "task 'job' must be callable or have a callable execute(ctx)"),
        (object(), TypeError, "task 'job' must be callable or have a callable execute(ctx)"),
    ],
)
def test_add_execute_task_bad_task(task: object, error: type[Exception], message: str) -> None:
    manager = gt.TaskManager()
    with pytest.raises(error) as info:
        manager.add_execute_task("job", task)  # type: ignore[arg-type]
    assert str(info.value) == message
    assert manager.status() == []


@pytest.mark.parametrize("task_type", ["forever", 2, None, TaskType.STOP_GROUP, TaskType.STRICT])
def test_add_execute_task_bad_task_type(task_type: object) -> None:
    manager = gt.TaskManager()
    with pytest.raises(ValueError) as info:
        manager.add_execute_task("job", FakeExecuteTask(), task_type)  # type: ignore[arg-type]
    assert str(info.value) == (
        f"task_type must be one of ExecuteTaskType.STRICT, ExecuteTaskType.ERROR, got {task_type!r}"
    )


def test_add_execute_task_accepts_tasks_and_callables() -> None:
    manager = gt.TaskManager()
    manager.add_execute_task("fake", FakeExecuteTask(), "error")  # type: ignore[arg-type]
    manager.add_execute_task("full", FakeTask(), ExecuteTaskType.ERROR)  # only execute is used
    manager.add_execute_task("fn", lambda ctx: None, ExecuteTaskType.ERROR)
    assert [(s.name, s.kind, s.task_type) for s in manager.status()] == [
        ("fake", "execute", ExecuteTaskType.ERROR),
        ("full", "execute", ExecuteTaskType.ERROR),
        ("fn", "execute", ExecuteTaskType.ERROR),
    ]


# -- run / stop / subscribe ---------------------------------------------------------


@pytest.mark.parametrize("ctx", ["ctx", 1, object()])
def test_run_bad_ctx_leaves_the_manager_usable(ctx: object) -> None:
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask(), TaskType.STOP_GROUP)
    with pytest.raises(TypeError) as info:
        manager.run(ctx)  # type: ignore[arg-type]
    assert str(info.value) == f"ctx must be a greentask Context, got {ctx!r}"
    assert manager.phase == "new"
    with gevent.Timeout(5):
        assert manager.run() == []


@pytest.mark.parametrize("cause", ["reason", 1, ValueError])
def test_stop_bad_cause(cause: Any) -> None:
    manager = gt.TaskManager()
    with pytest.raises(TypeError) as info:
        manager.stop(cause)
    assert str(info.value) == f"cause must be an exception or None, got {cause!r}"


@pytest.mark.parametrize("callback", [None, "print", 3])
def test_subscribe_bad_callback(callback: Any) -> None:
    manager = gt.TaskManager()
    with pytest.raises(TypeError) as info:
        manager.subscribe(callback)
    assert str(info.value) == f"callback must be callable, got {callback!r}"
