"""`_ManagerCore`: the state every part of a `TaskManager` shares, and its small helpers.

The manager is split by job into mixins over this core:

- `greentask._stages` runs one ``initialize`` / ``cleanup`` in a named helper greenlet,
  under its timeout and the forced stop;
- `greentask._shutdown` stops tasks: the run context's cancel hook, ``handle.stop()``,
  the TOGETHER / REVERSE orders of SPEC §10, kill after ``stop_timeout``, abandon;
- `greentask._supervisor` runs what happens at runtime: serialized runtime
  initializations and restarts (SPEC §9, §11);
- `greentask._nested` makes a manager usable as a task of another (SPEC §12);
- `greentask.manager.TaskManager` is the public face: adding tasks, ``run`` as the phases.

This module holds recording (errors, events) and time, which all of them use.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gevent.monkey import get_original
from gevent.pool import Group

from ._policy import describe, safe_repr
from ._types import StopOrder
from .context import CancelFunc, Context, _State, background
from .errors import ManagerEvent, NamedError, Stage, StopReason, StopTimeout, TaskState

if TYPE_CHECKING:
    from gevent.event import Event

    from ._record import _Record

logger = logging.getLogger("greentask")

_get_ident: Callable[[], int] = get_original("_thread", "get_ident")
_allocate_lock: Callable[[], Any] = get_original("_thread", "allocate_lock")

#: How many finished execute tasks `TaskManager.status` remembers. Execute tasks come
#: and go (one per connection, per job); keeping all of them would grow without bound.
FINISHED_EXECUTE_HISTORY = 1000


class _Phase(enum.Enum):
    NEW = "new"
    INITIALIZING = "initializing"
    EXECUTING = "executing"
    STOPPING = "stopping"
    CLEANING_UP = "cleaning_up"
    DONE = "done"


_STATE_MESSAGES = {
    _Phase.INITIALIZING: "task manager is already running",
    _Phase.EXECUTING: "task manager is already running",
    _Phase.STOPPING: "task manager is shutting down",
    _Phase.CLEANING_UP: "task manager is shutting down",
    _Phase.DONE: "task manager has already shut down",
}


class _Watch:
    """Execute records the shutdown waits for; its event is set once all finished.

    ``remaining`` None means every record still running (``_running``): the whole-manager
    stop builds no per-task set.
    """

    __slots__ = ("event", "remaining")

    def __init__(self, remaining: set[_Record] | None, event: Event) -> None:
        self.remaining = remaining
        self.event = event


class _ManagerCore:
    """Shared state and the recording helpers (see the module docstring)."""

    _name: str
    _initialize_timeout: float | None
    _stop_timeout: float | None
    _cleanup_timeout: float | None
    _stop_order: StopOrder
    _subscribers: list[Callable[[ManagerEvent], object]]
    _phase: _Phase
    _order: list[_Record]  # tasks from add_task, in add order (runtime ones included)
    _queued: list[_Record]  # execute tasks added before the execute phase
    _records: dict[int, _Record]  # every task, in add order (for status)
    _seq: int
    _finished_executes: deque[int]
    _running: dict[_Record, None]  # records whose execute greenlet has not finished
    _watches: list[_Watch]
    _stop_group_left: int
    _stop_group_last: str | None  # the last STOP_GROUP task counted
    _errors: list[NamedError]
    _fatal: BaseException | None
    _stop_reason: StopReason | None
    _stop_stage: Stage
    _ctx: Context | None
    _cancel: CancelFunc | None
    _run_state: _State | None
    _clock_now: Callable[[], float]
    _group: Group  # execute greenlets
    _helpers: Group  # the manager's own greenlets: runtime initialize, stop by handle, restarts
    _after_group: Group  # on_cancel callbacks of the manager's contexts
    _forced: Event
    _active_stages: dict[Any, Event]  # running initialize/cleanup helper -> its force event
    _hub: Any
    _thread_id: int | None
    _queue_lock: Any
    _init_queue: deque[_Record]
    _initializer: Any
    _nested_in: Any  # the parent manager's record of this manager, when nested
    _parent_manager: Any  # the parent manager, when nested
    _forward: Callable[[str, str, BaseException | None], None] | None
    _error_counter: dict[tuple[str, str], int]
    _timeout_counter: dict[str, int]
    _reported: int  # how many of _errors a nested manager already handed to its parent

    # -- time ---------------------------------------------------------------------

    @property
    def _clock(self) -> Any:
        ctx = self._ctx
        return background().clock if ctx is None else ctx.clock

    def _now(self) -> float:
        return float(self._clock_now())

    def _run_cancelled(self) -> bool:
        state = self._run_state
        return state is not None and state.err is not None

    def _timeout_for(self, record: _Record) -> float | None:
        return self._stop_timeout if record.stop_timeout is None else record.stop_timeout

    # -- recording ----------------------------------------------------------------

    def _keep_fatal(self, exc: BaseException) -> None:
        """Remember the first KeyboardInterrupt / SystemExit, to re-raise from run()."""
        if isinstance(exc, KeyboardInterrupt | SystemExit) and self._fatal is None:
            self._fatal = exc

    def _record_error(self, record: _Record, exc: BaseException, stage: Stage) -> None:
        """Add one error to the run's result (and the task's status).

        A nested manager's `_SubtreeFailed` is not recorded itself: its errors are, each
        with the nested task's name as a path prefix (SPEC §12).
        """
        if isinstance(exc, _SubtreeFailed):
            for named in exc.errors:
                self._record_error_as(record, named.error, named.stage, f"{record.name}/{named.task_name}", named)
            return
        self._record_error_as(record, exc, stage, record.name, None)

    def _record_error_as(
        self, record: _Record, exc: BaseException, stage: Stage, name: str, nested: NamedError | None
    ) -> None:
        if record.first_error is None:
            record.first_error = exc
            record.error = exc
        self._keep_fatal(exc)
        if nested is None:  # a nested manager counted its own
            self._count_error(name, stage, exc)
        if nested is not None:
            named = NamedError(name, stage, exc, task_type=nested.task_type, execute_task_type=nested.execute_task_type)
        elif record.kind == "task":
            named = NamedError(name, stage, exc, task_type=record.task_type)  # type: ignore[arg-type]
        else:
            named = NamedError(name, stage, exc, execute_task_type=record.task_type)  # type: ignore[arg-type]
        self._errors.append(named)
        logger.debug("greentask: %s", named, exc_info=exc)

    def _count_error(self, name: str, stage: Stage, exc: BaseException | None) -> None:
        """Metrics: recorded errors and restarted failures, per task and stage (O(1))."""
        key = (name, stage.value)
        counter = self._error_counter
        counter[key] = counter.get(key, 0) + 1
        if isinstance(exc, StopTimeout):
            self._timeout_counter[name] = self._timeout_counter.get(name, 0) + 1

    def _fail(self, record: _Record, exc: BaseException, stage: Stage) -> None:
        record.state = TaskState.FAILED
        self._record_error(record, exc, stage)
        self._emit("failed", record.name, exc)

    # -- events -------------------------------------------------------------------

    def _emit(self, kind: str, task_name: str | None, error: BaseException | None) -> None:
        forward = self._forward
        if forward is not None and task_name is not None:
            forward(kind, task_name, error)
        if not self._subscribers:
            return
        event = ManagerEvent(kind, task_name, error, self._now())
        for callback in list(self._subscribers):
            try:
                callback(event)
            except BaseException as exc:  # noqa: BLE001 - user code cannot break the manager
                self._subscriber_failed(callback, kind, exc)

    def _subscriber_failed(self, callback: object, kind: str, exc: BaseException) -> None:
        logger.error(
            "%s: event callback %s failed on %s: %s",
            self._name,
            safe_repr(callback),
            kind,
            safe_repr(exc),
            exc_info=exc,
        )
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            # Like one raised by a task: orderly shutdown, then re-raised from run().
            self._keep_fatal(exc)
            self._cancel_run(StopReason("stop", None, exc), exc)

    def _cancel_run(self, reason: StopReason, cause: BaseException | None) -> None:
        if self._cancel is None or self._ctx is None or self._ctx.cancelled:
            return
        # The run context is not cancelled yet, so no reason has been set: this is the first.
        self._stop_reason = reason
        self._cancel(cause)

    def _where(self, name: str) -> tuple[str, str]:
        """``(root manager's name, path name)`` of a task, for log lines in a tree."""
        manager: Any = self
        path = name
        while manager._nested_in is not None and manager._parent_manager is not None:
            path = f"{manager._nested_in.name}/{path}"
            manager = manager._parent_manager
        return manager._name, path

    def _stop_description(self) -> str:
        """Why the manager is stopping, as its log line says it, or "" if it is not."""
        reason = self._stop_reason
        return "" if reason is None else describe(reason, self._stop_stage)


class _SubtreeFailed(Exception):
    """Raised by a nested manager's stage to tell its parent that it recorded errors.

    Never recorded itself: the parent records ``errors`` (the child's, path-named)
    instead (SPEC §12). ``errors`` are the child's `NamedError` objects, not yet
    prefixed with the nested task's name.
    """

    def __init__(self, errors: list[NamedError], reason: StopReason | None) -> None:
        self.errors = errors
        self.reason = reason  # the child's stop reason (names its innermost task)
        first = errors[0].error if errors else None
        super().__init__(f"{len(errors)} error(s) in a nested manager; first: {safe_repr(first)}")

    @property
    def first(self) -> BaseException | None:
        return self.errors[0].error if self.errors else None
