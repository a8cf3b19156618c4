"""The task protocols and policy enums: what a task is and how its outcome is judged.

Kept apart from `greentask.manager` so that `greentask.errors` (whose value types name
these enums) does not import the manager, and the manager imports both.
"""

from __future__ import annotations

import enum
from typing import Protocol, runtime_checkable

from .context import Context

__all__ = ["ExecuteTask", "ExecuteTaskType", "StopOrder", "Task", "TaskType"]


class TaskType(enum.StrEnum):
    """Failure policy of a task added with `TaskManager.add_task`.

    ========== ========================= ==========================================
    type       it raises                 it returns before cancellation
    ========== ========================= ==========================================
    STRICT     record, cancel all        record `UnexpectedStop`, cancel all
    ERROR      record, cancel all        nothing: the others keep running
    STOP_GROUP record, cancel all        counted; once every STOP_GROUP task has
                                         returned (or raised), cancel all
    ========== ========================= ==========================================
    """

    STRICT = "strict"
    ERROR = "error"
    STOP_GROUP = "stop_group"

    def __str__(self) -> str:
        return f"TaskType.{self.name}"


class ExecuteTaskType(enum.StrEnum):
    """Failure policy of a task added with `TaskManager.add_execute_task` (see `TaskType`)."""

    STRICT = "strict"
    ERROR = "error"

    def __str__(self) -> str:
        return f"ExecuteTaskType.{self.name}"


@runtime_checkable
class Task(Protocol):
    """A long-running task: ``initialize``, ``execute`` and ``cleanup``, each given a ctx.

    Returning means success (the value is ignored); raising means failure.
    """

    def initialize(self, ctx: Context) -> object:
        """Prepare; runs serially in add order before any execute."""

    def execute(self, ctx: Context) -> object:
        """Do the work until ``ctx`` is cancelled; runs concurrently with the others."""

    def cleanup(self, ctx: Context) -> object:
        """Release resources; runs serially in reverse add order, ctx never cancelled."""


@runtime_checkable
class ExecuteTask(Protocol):
    """A task with only ``execute(ctx)``; a plain callable ``fn(ctx)`` works too."""

    def execute(self, ctx: Context) -> object:
        """Do the work until ``ctx`` is cancelled."""


class StopOrder(enum.StrEnum):
    """How a `TaskManager` stops its tasks once its run context is cancelled (SPEC §10).

    ``TOGETHER`` (default, goasync's): every task context is cancelled at once and
    ``stop_timeout`` counts from that moment for everyone.

    ``REVERSE`` (Erlang/OTP's termination order): first every execute task is cancelled
    and waited for; then each task from ``add_task`` still executing, in reverse add
    order, one at a time: the next one's context is cancelled only once the previous
    one's execute has returned (or was killed after its ``stop_timeout``). The HTTP
    server drains while the worker it feeds and the database keep serving.
    The strings ``"together"`` and ``"reverse"`` are accepted wherever a `StopOrder` is.
    """

    TOGETHER = "together"
    REVERSE = "reverse"

    def __str__(self) -> str:
        return f"StopOrder.{self.name}"
