"""The policy table of SPEC §3 and the texts that explain a shutdown.

`POLICIES` maps (task type, failed) to an `Action` for an outcome *before* the run
context was cancelled; finishing a task is one dict lookup. After cancellation (or
after ``handle.stop()``) no policy applies: a clean return is clean, a raise is
recorded. Restarts (SPEC §11) are decided before this table is consulted: see
`greentask._supervisor`.
"""

from __future__ import annotations

from typing import NamedTuple

from ._types import ExecuteTaskType, TaskType
from .errors import Stage, StopReason, UnexpectedStop
from .errors import _safe_repr as safe_repr

__all__ = ["POLICIES", "UNEXPECTED_STOP", "Action", "describe", "policy", "safe_repr"]

#: `UnexpectedStop`'s message (SPEC §15: goasync's text, then what happened).
UNEXPECTED_STOP = (
    "unexpected shutdown for task process: returned before the manager was cancelled "
    "(a STRICT task must run until cancelled)"
)


class Action(NamedTuple):
    record_unexpected_stop: bool
    cancel_all: bool
    counts_for_stop_group: bool


def policy(task_type: TaskType | ExecuteTaskType, failed: bool) -> Action:
    """The policy table of SPEC §3 for an outcome *before* cancellation.

    ========== ========================= ==========================================
    type       it raises                 it returns before cancellation
    ========== ========================= ==========================================
    STRICT     record, cancel all        record `UnexpectedStop`, cancel all
    ERROR      record, cancel all        nothing: the others keep running
    STOP_GROUP record, cancel all        counted; once every STOP_GROUP task has
                                         returned (or raised), cancel all
    ========== ========================= ==========================================
    """
    stop_group = task_type is TaskType.STOP_GROUP
    if failed:
        return Action(record_unexpected_stop=False, cancel_all=True, counts_for_stop_group=stop_group)
    strict = task_type is TaskType.STRICT or task_type is ExecuteTaskType.STRICT
    return Action(record_unexpected_stop=strict, cancel_all=strict, counts_for_stop_group=stop_group)


#: `policy` for every (task type, failed). (TaskType.STRICT == ExecuteTaskType.STRICT
#: as strings, and their actions are equal.)
POLICIES: dict[tuple[TaskType | ExecuteTaskType, bool], Action] = {
    (task_type, failed): policy(task_type, failed)
    for task_type in (*TaskType, *ExecuteTaskType)
    for failed in (False, True)
}


def describe(reason: StopReason, stage: Stage) -> str:
    """The shutdown line's reason: ``task 'db' failed in execute: ConnectionError(...)``."""
    if reason.kind == "policy" and reason.task_name is not None and reason.error is not None:
        if isinstance(reason.error, UnexpectedStop):
            return f"task {reason.task_name!r} stopped unexpectedly in {stage.value}"
        return f"task {reason.task_name!r} failed in {stage.value}: {safe_repr(reason.error)}"
    return str(reason)
