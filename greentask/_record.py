"""`_Record`: the manager's book-keeping for one task, and its state machine.

One record per task, for the manager's whole life: created by ``add_task`` /
``add_execute_task``, viewed by `TaskHandle` and `TaskStatus` snapshots, kept across
restarts (a restart gets a fresh task context, not a fresh record). The record is also
the value the task's context carries (`greentask.context._TASK_KEY`), which is how
``ctx.task_name``, ``ctx.stop_deadline`` and the provided tasks' log labels find it.

States (SPEC §3, §9, §11)::

    PENDING -> INITIALIZING -> RUNNING -> STOPPING -> STOPPED | FAILED -> CLEANING_UP -> DONE
                               RUNNING -> STOPPED | FAILED             (ended before cancelled)
    STOPPED | FAILED -> (CLEANING_UP ->) RESTARTING -> INITIALIZING | RUNNING   (restarted)
    PENDING -> DONE (task) | STOPPED (execute)                  (dropped before it started)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gevent.pool import Group

from .errors import TaskState, TaskStatus

if TYPE_CHECKING:
    from collections.abc import Callable

    import gevent
    from gevent.event import Event

    from ._types import ExecuteTaskType, TaskType
    from .context import CancelFunc, Context
    from .restart import Restart, _Intensity
    from .tasks._backoff import Backoff

__all__ = ["_Record"]

_ENDED = (TaskState.STOPPED, TaskState.FAILED)


class _Record:
    """Book-keeping for one task; `TaskStatus` is its snapshot."""

    __slots__ = (
        "abandoned",
        "backoff",
        "callbacks",
        "cancel",
        "ctx",
        "done_event",
        "error",
        "execute",
        "first_error",
        "greenlet",
        "initialized",
        "intensity",
        "killed",
        "kind",
        "name",
        "never",
        "owner",
        "restart",
        "restart_pending",
        "restarts",
        "running_event",
        "seq",
        "started_at",
        "state",
        "stop_counted",
        "stop_deadline",
        "stop_requested",
        "stop_timeout",
        "stopped_at",
        "task",
        "task_type",
    )

    def __init__(
        self,
        name: str,
        task: Any,
        execute: Callable[[Context], object],
        kind: str,
        task_type: TaskType | ExecuteTaskType,
        owner: str,
        stop_timeout: float | None = None,
        restart: Restart | None = None,
    ) -> None:
        self.name = name
        self.task = task
        self.execute = execute
        self.kind = kind
        self.task_type = task_type
        self.owner = owner  # the manager's name
        self.stop_timeout = stop_timeout
        self.restart = restart
        self.done_event: Event | None = None
        self.running_event: Event | None = None
        self.seq = 0  # key in TaskManager._records
        self.callbacks: Group | None = None  # its contexts' on_cancel callbacks running now
        self.reset()

    def reset(self) -> None:
        """The per-run fields, fresh (also a subtree restart's: same handle, fresh run)."""
        self.intensity: _Intensity | None = None
        self.backoff: Backoff | None = None
        self.restarts = 0
        self.restart_pending = False  # failed, about to be restarted: not done
        self.state = TaskState.PENDING
        self.error: BaseException | None = None  # shown in status: latest restarted failure or first recorded
        self.first_error: BaseException | None = None  # the first recorded error (handle.error)
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self.greenlet: gevent.Greenlet[..., Any] | None = None
        self.ctx: Context | None = None
        self.cancel: CancelFunc | None = None
        self.stop_deadline: float | None = None  # ctx.stop_deadline, once being stopped
        self.killed: str | None = None  # the StopTimeout message, once killed
        self.abandoned = False
        self.initialized = False  # its initialize ran: it is owed exactly one cleanup
        self.stop_requested = False  # handle.stop() took effect: no policy, leaves the order
        self.stop_counted = False  # a STOP_GROUP task counted towards its group
        self.never = False  # will never be initialized / started (done while PENDING)

    def callback_started(self, greenlet: gevent.Greenlet[..., Any]) -> None:
        """An ``on_cancel`` callback of one of its contexts started: its cleanup waits for it."""
        group = self.callbacks
        if group is None:
            self.callbacks = group = Group()
        group.add(greenlet)

    @property
    def label(self) -> str:
        """``"web: task 'db'"``: the manager and the task, for log lines of the provided tasks."""
        return f"{self.owner}: task {self.name!r}"

    def snapshot(self) -> TaskStatus:
        return TaskStatus(
            name=self.name,
            kind=self.kind,
            task_type=self.task_type,
            state=self.state,
            error=self.error,
            started_at=self.started_at,
            stopped_at=self.stopped_at,
            restarts=self.restarts,
        )

    def is_done(self) -> bool:
        """Finished for good (`TaskHandle.done`)."""
        if self.never or self.restart_pending:
            return self.never
        if self.kind == "task":
            return self.state is TaskState.DONE
        return self.state in _ENDED

    def changed(self) -> None:
        """Wake `TaskHandle.wait` / ``wait_running`` callers (only when someone waits)."""
        event = self.running_event
        if event is not None and (self.state is TaskState.RUNNING or self.is_done()):
            event.set()
        event = self.done_event
        if event is not None and self.is_done():
            event.set()

    def __repr__(self) -> str:
        return f"<_Record {self.name!r} {self.kind} {self.state.value}>"
