"""Errors, stages and the small value types the manager reports.

Exception tree::

    BaseException
     +-- GreenletExit                     (gevent)
     |    +-- Cancelled                    greentask.context: a context was cancelled
     |         +-- DeadlineExceeded        ... because its deadline passed
     +-- Exception
          +-- UnexpectedStop               a STRICT task returned before cancellation
          +-- StopTimeout                  something did not stop in time
          +-- RestartLimitExceeded         a task with ``restart`` failed too often
          +-- RuntimeError
               +-- ManagerStateError       the manager is in the wrong state for a call

Value types: `Stage`, `TaskState`, `TaskStatus`, `ManagerEvent`, `StopReason` and
`NamedError` (a record, not an exception), plus `errors_to_group()` to turn a list of
`NamedError` into one `ExceptionGroup` for callers who prefer raising.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from ._types import ExecuteTaskType, TaskType

__all__ = [
    "ManagerEvent",
    "ManagerStateError",
    "NamedError",
    "RestartLimitExceeded",
    "Stage",
    "StopReason",
    "StopTimeout",
    "TaskState",
    "TaskStatus",
    "UnexpectedStop",
    "errors_to_group",
]


class UnexpectedStop(Exception):
    """Raised (recorded) when a STRICT task returns before the manager was cancelled."""


class StopTimeout(Exception):
    """Recorded when a stage did not finish in its allotted time and was killed.

    Used for an ``initialize`` over ``initialize_timeout``, an ``execute`` still running
    ``stop_timeout`` seconds after cancellation (killed or abandoned), a ``cleanup`` over
    ``cleanup_timeout``, and by `greentask.tasks.ForceStop` / `Subprocess`.
    """


class RestartLimitExceeded(Exception):
    """Recorded when a task with a ``restart`` policy gives up (SPEC §11).

    It failed more than ``max_restarts`` times within ``within`` seconds; its last
    failure is ``__cause__`` (None after a clean return under ``on="always"``). The
    task's policy then applies to this error as to any failure.
    """


class ManagerStateError(RuntimeError):
    """Raised when a `TaskManager` method is called in a state that forbids it.

    For example adding a task to a manager that is already running, or running a
    manager twice.
    """


class Stage(enum.StrEnum):
    """The lifecycle stage in which an error happened."""

    INITIALIZE = "initialize"
    EXECUTE = "execute"
    CLEANUP = "cleanup"

    def __str__(self) -> str:
        return self.value


class TaskState(enum.StrEnum):
    """Where a task is in its lifecycle.

    Tasks from ``add_task`` go PENDING -> INITIALIZING -> RUNNING -> STOPPING ->
    STOPPED or FAILED -> CLEANING_UP -> DONE (RUNNING -> STOPPED or FAILED directly
    when the execute ends before its context is cancelled). Execute tasks go PENDING
    -> RUNNING -> (STOPPING ->) STOPPED or FAILED. A task whose initialize failed goes
    INITIALIZING -> FAILED -> CLEANING_UP -> DONE; one never initialized (skipped)
    stays PENDING. A restarted task goes FAILED or STOPPED -> (CLEANING_UP ->)
    RESTARTING (the backoff wait) -> INITIALIZING (tasks) or RUNNING (execute tasks).
    A task dropped by ``handle.stop()`` before it started goes PENDING -> DONE (an
    execute task PENDING -> STOPPED).
    """

    PENDING = "pending"
    INITIALIZING = "initializing"
    RUNNING = "running"
    STOPPING = "stopping"
    RESTARTING = "restarting"
    STOPPED = "stopped"
    FAILED = "failed"
    CLEANING_UP = "cleaning_up"
    DONE = "done"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class NamedError:
    """One error recorded by a `TaskManager` run: which task, in which stage, what.

    Exactly one of ``task_type`` (tasks from ``add_task``, in every stage) and
    ``execute_task_type`` (tasks from ``add_execute_task``) is set.

    ``str()`` reads like ``execute: task 'db': ConnectionError('refused')``.

    Raises:
        TypeError: a field has the wrong type.
        ValueError: not exactly one of ``task_type`` and ``execute_task_type`` is set.
    """

    task_name: str
    stage: Stage
    error: BaseException
    task_type: TaskType | None = None
    execute_task_type: ExecuteTaskType | None = None

    def __post_init__(self) -> None:

        if not isinstance(self.task_name, str):
            msg = f"task_name must be a string, got {self.task_name!r}"
            raise TypeError(msg)
        if not isinstance(self.stage, Stage):
            msg = f"stage must be a Stage, got {self.stage!r}"
            raise TypeError(msg)
        if not isinstance(self.error, BaseException):
            msg = f"error must be an exception, got {self.error!r}"
            raise TypeError(msg)
        if self.task_type is not None and not isinstance(self.task_type, TaskType):
            msg = f"task_type must be a TaskType or None, got {self.task_type!r}"
            raise TypeError(msg)
        if self.execute_task_type is not None and not isinstance(self.execute_task_type, ExecuteTaskType):
            msg = f"execute_task_type must be an ExecuteTaskType or None, got {self.execute_task_type!r}"
            raise TypeError(msg)
        if (self.task_type is None) == (self.execute_task_type is None):
            msg = (
                "exactly one of task_type and execute_task_type must be set, "
                f"got task_type={self.task_type!r}, execute_task_type={self.execute_task_type!r}"
            )
            raise ValueError(msg)

    def __str__(self) -> str:
        return f"{self.stage.value}: task {self.task_name!r}: {_safe_repr(self.error)}"


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """A snapshot of one task, as returned by `TaskManager.status()`.

    ``started_at`` / ``stopped_at`` are context-clock times (``ctx.clock.now()``):
    when ``execute`` (last) started and when it returned or raised. ``restarts`` counts
    the restarts of a task with a ``restart`` policy (SPEC §11). Rows of a nested
    manager's tasks carry path names (``"pipeline/db"``).
    """

    name: str
    kind: str  # "task" or "execute"
    task_type: TaskType | ExecuteTaskType
    state: TaskState
    error: BaseException | None
    started_at: float | None
    stopped_at: float | None
    restarts: int = 0


@dataclass(frozen=True, slots=True)
class ManagerEvent:
    """A lifecycle event delivered to ``on_event`` / ``subscribe`` callbacks.

    ``kind`` is one of "initializing", "initialized", "started", "stopped",
    "failed", "restarting", "cleaning_up", "cleaned_up" (per task; ``task_name`` set,
    a path name such as ``"pipeline/db"`` for a nested manager's task) or "executing",
    "cancelled", "done" (the manager; ``task_name`` None). ``error`` is the task's error
    for "failed", the cancellation cause for "cancelled", else None. ``at`` is the
    context-clock time.
    """

    kind: str
    task_name: str | None
    error: BaseException | None
    at: float


@dataclass(frozen=True, slots=True)
class StopReason:
    """Why a manager's run context was cancelled (`TaskManager.stop_reason`).

    ``kind`` is "context" (the ``ctx`` given to ``run`` was cancelled), "stop"
    (`TaskManager.stop` was called; ``error`` is its cause) or "policy" (a task's
    outcome; ``task_name`` and ``error`` say which and what, ``error`` None when a
    stop group completed).
    """

    kind: str
    task_name: str | None
    error: BaseException | None

    def __str__(self) -> str:
        if self.kind == "policy" and self.task_name is not None:
            if self.error is None:
                return f"stop group completed (last: task {self.task_name!r})"
            if isinstance(self.error, UnexpectedStop):
                return f"task {self.task_name!r} stopped unexpectedly"
            return f"task {self.task_name!r} failed: {_safe_repr(self.error)}"
        if self.kind == "stop":
            return "stop() called" + (f": {_safe_repr(self.error)}" if self.error is not None else "")
        return "run context cancelled" + (f": {_safe_repr(self.error)}" if self.error is not None else "")


def _safe_repr(obj: object) -> str:
    """``repr(obj)``, or a placeholder when that raises (user exceptions can be broken)."""
    try:
        return repr(obj)
    except BaseException:  # noqa: BLE001 - a broken __repr__ must not break the manager
        return f"<{type(obj).__name__} object (repr() failed)>"


def errors_to_group(errors: Iterable[NamedError]) -> BaseExceptionGroup[BaseException] | None:
    """Bundle a run's errors into one exception group, or return None if there are none.

    Each exception gets a note naming its task and stage (added once, even when called
    again). The order is kept: `TaskManager.run` returns errors in the order they
    happened, so the error of the task that triggered the shutdown comes first.
    The result is an `ExceptionGroup` when every error is an `Exception`, else a
    `BaseExceptionGroup`.

    Args:
        errors: the `NamedError` objects, e.g. what `TaskManager.run` returned.

    Returns:
        The group, or None when ``errors`` is empty.

    Raises:
        TypeError: ``errors`` is not an iterable of `NamedError`.

    Example::

        errors = manager.run()
        if (group := gt.errors_to_group(errors)) is not None:
            raise group
    """
    if isinstance(errors, NamedError | BaseException | str | bytes) or not isinstance(errors, Iterable):
        msg = f"errors must be an iterable of NamedError, got {errors!r}"
        raise TypeError(msg)
    items = list(errors)
    for item in items:
        if not isinstance(item, NamedError):
            msg = f"errors must hold NamedError objects only, got {item!r}"
            raise TypeError(msg)
    if not items:
        return None
    excs: list[BaseException] = []
    for item in items:
        note = f"greentask: task {item.task_name!r}, stage {item.stage.value}"
        exc = item.error
        if note not in getattr(exc, "__notes__", ()):
            exc.add_note(note)
        excs.append(exc)
    count = len(excs)
    msg = f"{count} task error{'s' if count != 1 else ''}"
    return BaseExceptionGroup(msg, excs)
