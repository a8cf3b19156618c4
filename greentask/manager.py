"""TaskManager: initialize tasks in order, execute them concurrently, clean up in reverse.

Design
------
``run`` reads top to bottom as the phases of SPEC §3 (oklog/run's ``group.go`` shape):

1. initialize each task serially (in ``run``'s greenlet, or in a helper greenlet when
   ``initialize_timeout`` bounds it);
2. spawn every ``execute`` in one ``gevent.pool.Group``;
3. wait for the run context to be cancelled, then for every execute greenlet to finish
   (killing stragglers after ``stop_timeout``);
4. clean up in reverse order with a never-cancelled child of the run context;
5. return the errors in the order they happened.

There is no polling monitor: each execute greenlet runs a small wrapper that catches
what the task raised, records it, and applies the policy table (`_policy`, a pure
function) right there, so finishing a task costs O(1) and the monitor never scans all
tasks. Cancellation is the run context's: one ``cancel`` sets the flag everywhere and
wakes every waiting task cooperatively in O(N); ``kill`` is only the ``stop_timeout``
fallback. The run context's synchronous cancel hook records the `StopReason`, logs
it, and emits the "cancelled" event at the moment cancellation happens, whoever did it.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

import gevent
from gevent.event import Event
from gevent.hub import get_hub
from gevent.monkey import get_original
from gevent.pool import Group
from greenlet import GreenletExit

from .context import (
    CancelFunc,
    Context,
    _check_context,
    _check_seconds,
    _State,
    background,
    with_cancel,
    with_deadline,
    without_cancel,
)
from ._types import ExecuteTask, ExecuteTaskType, StopOrder, Task, TaskType
from .errors import (
    ManagerEvent,
    ManagerStateError,
    NamedError,
    Stage,
    StopReason,
    StopTimeout,
    TaskState,
    TaskStatus,
    UnexpectedStop,
)

__all__ = ["ExecuteTask", "ExecuteTaskType", "Task", "TaskManager", "TaskType"]

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


class _Action(NamedTuple):
    record_unexpected_stop: bool
    cancel_all: bool
    counts_for_stop_group: bool


def _policy(task_type: TaskType | ExecuteTaskType, failed: bool) -> _Action:
    """The policy table of SPEC §3 for an outcome *before* cancellation.

    After cancellation nothing is cancelled any more and a clean return is just clean;
    failures are still recorded by the caller.
    """
    stop_group = task_type is TaskType.STOP_GROUP
    if failed:
        return _Action(record_unexpected_stop=False, cancel_all=True, counts_for_stop_group=stop_group)
    strict = task_type is TaskType.STRICT or task_type is ExecuteTaskType.STRICT
    return _Action(record_unexpected_stop=strict, cancel_all=strict, counts_for_stop_group=stop_group)


#: `_policy` for every (task type, failed), so finishing a task is one dict lookup.
#: (TaskType.STRICT == ExecuteTaskType.STRICT as strings, and their actions are equal.)
_POLICIES: dict[tuple[TaskType | ExecuteTaskType, bool], _Action] = {
    (task_type, failed): _policy(task_type, failed)
    for task_type in (*TaskType, *ExecuteTaskType)
    for failed in (False, True)
}


class _Record:
    """Book-keeping for one task; `TaskStatus` is its snapshot."""

    __slots__ = (
        "abandoned",
        "error",
        "execute",
        "greenlet",
        "killed",
        "kind",
        "name",
        "seq",
        "started_at",
        "state",
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
    ) -> None:
        self.name = name
        self.task = task
        self.execute = execute
        self.kind = kind
        self.task_type = task_type
        self.state = TaskState.PENDING
        self.error: BaseException | None = None
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self.greenlet: gevent.Greenlet[..., Any] | None = None
        self.killed: str | None = None  # the StopTimeout message, once killed
        self.abandoned = False
        self.seq = 0  # key in TaskManager._records

    def snapshot(self) -> TaskStatus:
        return TaskStatus(
            name=self.name,
            kind=self.kind,
            task_type=self.task_type,
            state=self.state,
            error=self.error,
            started_at=self.started_at,
            stopped_at=self.stopped_at,
        )


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        msg = f"name must be a non-empty string, got {name!r}"
        raise TypeError(msg)
    if not name:
        msg = "name must be a non-empty string, got ''"
        raise ValueError(msg)
    return name


def _check_optional_seconds(name: str, value: object) -> float | None:
    return None if value is None else _check_seconds(name, value)


def _coerce_type(value: object, enum_cls: type[TaskType] | type[ExecuteTaskType]) -> Any:
    if isinstance(value, enum_cls):
        return value
    if isinstance(value, str) and not isinstance(value, enum.Enum):
        for member in enum_cls:
            if member.value == value:
                return member
    choices = ", ".join(f"{enum_cls.__name__}.{m.name}" for m in enum_cls)
    msg = f"task_type must be one of {choices}, got {value!r}"
    raise ValueError(msg)


def _capture(fn: Callable[[Context], object], ctx: Context) -> BaseException | None:
    """Call a stage; return what it raised (never let the hub print it)."""
    try:
        fn(ctx)
    except BaseException as exc:  # noqa: BLE001 - every outcome is recorded
        return exc
    return None


class TaskManager:
    """Runs tasks through initialize -> execute -> cleanup, with failure policies.

    Args:
        initialize_timeout: seconds (context clock) each ``initialize`` may take; one
            that overruns is killed and recorded as `StopTimeout`. None: unbounded.
        stop_timeout: seconds after cancellation that execute tasks get to return;
            then the rest are killed with ``GreenletExit`` (each recorded as
            `StopTimeout`), and one still alive after another ``stop_timeout`` is
            abandoned (recorded too), so `run` always returns. None: wait forever.
        cleanup_timeout: seconds each ``cleanup`` may take; overruns are killed and
            recorded as `StopTimeout`.
        on_event: called with every `ManagerEvent` (like `subscribe`).
        name: used in log messages.

    Raises:
        TypeError: a timeout is not a number, ``on_event`` is not callable, ``name``
            is not a string.
        ValueError: a timeout is negative or NaN, ``name`` is empty.

    Example::

        manager = gt.TaskManager(stop_timeout=10)
        manager.add_task("db", Database())
        manager.add_task("http", gt.tasks.Server(server))
        sys.exit(gt.run(manager))
    """

    def __init__(
        self,
        *,
        initialize_timeout: float | None = None,
        stop_timeout: float | None = None,
        cleanup_timeout: float | None = None,
        on_event: Callable[[ManagerEvent], object] | None = None,
        name: str = "greentask",
        stop_order: StopOrder | str = StopOrder.TOGETHER,
    ) -> None:
        self._stop_order = StopOrder(stop_order)
        self._initialize_timeout = _check_optional_seconds("initialize_timeout", initialize_timeout)
        self._stop_timeout = _check_optional_seconds("stop_timeout", stop_timeout)
        self._cleanup_timeout = _check_optional_seconds("cleanup_timeout", cleanup_timeout)
        self._name = _check_name(name)
        self._subscribers: list[Callable[[ManagerEvent], object]] = []
        if on_event is not None:
            if not callable(on_event):
                msg = f"on_event must be callable or None, got {on_event!r}"
                raise TypeError(msg)
            self.subscribe(on_event)

        self._phase = _Phase.NEW
        self._tasks: list[_Record] = []  # from add_task, in add order
        self._queued: list[_Record] = []  # execute tasks added before the execute phase
        self._records: dict[int, _Record] = {}  # every task, in add order (for status)
        self._seq = 0
        self._finished_executes: deque[int] = deque()
        self._running: dict[_Record, None] = {}  # execute greenlets not yet finished
        self._stop_group_left = 0
        self._errors: list[NamedError] = []
        self._fatal: BaseException | None = None  # KeyboardInterrupt / SystemExit to re-raise
        self._stop_reason: StopReason | None = None
        self._stop_stage = Stage.EXECUTE  # the stage of a "policy" stop reason's error, for the log
        self._ctx: Context | None = None
        self._cancel: CancelFunc | None = None
        self._group = Group()
        self._run_state: _State | None = None  # the run context's cancel state (hot path)
        self._clock_now: Callable[[], float] = _zero  # the run context's clock.now (hot path)
        self._drained = Event()
        self._forced = Event()
        self._hub: Any = None
        self._thread_id: int | None = None
        self._queue_lock = _allocate_lock()  # a real OS lock: guards _queued across threads

    # -- adding tasks -----------------------------------------------------------

    def add_task(self, name: str, task: Task, task_type: TaskType = TaskType.STRICT) -> None:
        """Add a task with ``initialize``/``execute``/``cleanup``; only before `run`.

        Tasks initialize in add order, execute concurrently and clean up in reverse
        add order. Names need not be unique.

        Args:
            name: a non-empty string, used in errors, events, logs and `status`.
            task: any object with callable ``initialize(ctx)``, ``execute(ctx)`` and
                ``cleanup(ctx)`` (see `Task`).
            task_type: the failure policy (see `TaskType`); the enum's string value
                (``"strict"``, ...) is accepted too.

        Raises:
            TypeError: ``name`` is not a string, ``task`` is None or lacks a callable
                stage.
            ValueError: ``name`` is empty or ``task_type`` is not a `TaskType`.
            ManagerStateError: the manager is running or has shut down.
        """
        name = _check_name(name)
        if task is None:
            msg = "task cannot be None"
            raise TypeError(msg)
        for stage in ("initialize", "execute", "cleanup"):
            if not callable(getattr(task, stage, None)):
                msg = f"task {name!r} has no callable {stage}(ctx)"
                raise TypeError(msg)
        task_type = _coerce_type(task_type, TaskType)
        if self._phase is not _Phase.NEW:
            msg = f"{_STATE_MESSAGES[self._phase]}; will not manage task"
            raise ManagerStateError(msg)
        record = _Record(name, task, task.execute, "task", task_type)
        self._tasks.append(record)
        self._remember(record)
        if task_type is TaskType.STOP_GROUP:
            self._stop_group_left += 1

    def add_execute_task(
        self,
        name: str,
        task: ExecuteTask | Callable[[Context], object],
        task_type: ExecuteTaskType = ExecuteTaskType.STRICT,
    ) -> None:
        """Add an execute-only task: an object with ``execute(ctx)`` or a callable.

        Before `run` and during the initialize phase the task is queued and started
        after every ``initialize`` succeeded (discarded if one fails). While running it
        starts at once. Once this returns during the execute phase, the task's
        ``execute`` is guaranteed to run and to be waited for before `run` returns.
        Callable from any greenlet and from another OS thread, at any time: while
        running the work is handed to the manager's hub (the call returns or raises as
        usual); before the execute phase the queue is guarded by a real lock, so an add
        racing the start of `run` is either queued and started or refused, never lost.

        Args:
            name: a non-empty string, used in errors, events, logs and `status`.
            task: an object with a callable ``execute(ctx)`` (a full `Task` works; only
                its ``execute`` is used), or a callable ``fn(ctx)``.
            task_type: the failure policy (see `ExecuteTaskType`); the enum's string
                value is accepted too.

        Raises:
            TypeError: bad ``name`` or ``task``.
            ValueError: ``task_type`` is not an `ExecuteTaskType`.
            ManagerStateError: cancellation has begun, or the manager has shut down.
        """
        name = _check_name(name)
        if task is None:
            msg = "task cannot be None"
            raise TypeError(msg)
        execute = getattr(task, "execute", None)
        if not callable(execute):
            if not callable(task):
                msg = f"task {name!r} must be callable or have a callable execute(ctx)"
                raise TypeError(msg)
            execute = task
        if type(task_type) is not ExecuteTaskType:
            task_type = _coerce_type(task_type, ExecuteTaskType)
        if self._phase is _Phase.EXECUTING:
            hub = self._hub
            if _get_ident() != self._thread_id:
                self._add_from_thread(hub, name, task, execute, task_type)
                return
        elif self._queue_before_executing(name, task, execute, task_type):
            return
        self._add_execute(name, task, execute, task_type)

    def _queue_before_executing(
        self, name: str, task: object, execute: Callable[[Context], object], task_type: ExecuteTaskType
    ) -> bool:
        """Queue the task if the execute phase has not begun; False if it has (or is over).

        Under a real lock: another OS thread may add while `run` starts the execute
        phase, which takes the queue under the same lock.
        """
        with self._queue_lock:
            if self._phase is _Phase.NEW or (
                self._phase is _Phase.INITIALIZING and not (self._ctx is not None and self._ctx.cancelled)
            ):
                record = _Record(name, task, execute, "execute", task_type)
                self._queued.append(record)
                self._remember(record)
                return True
        if self._phase is _Phase.EXECUTING and self._hub is not None and _get_ident() != self._thread_id:
            self._add_from_thread(self._hub, name, task, execute, task_type)
            return True
        return False

    def _add_execute(
        self, name: str, task: object, execute: Callable[[Context], object], task_type: ExecuteTaskType
    ) -> None:
        """Start the task now if the manager is executing, else refuse (in the hub's thread)."""
        phase = self._phase
        cancelled = self._ctx is not None and self._ctx.cancelled
        if phase is _Phase.EXECUTING and not cancelled:
            record = _Record(name, task, execute, "execute", task_type)
            self._remember(record)
            self._start(record)
        else:
            reason = _STATE_MESSAGES[phase] if not cancelled or phase is _Phase.DONE else None
            reason = reason or "task manager is shutting down"
            msg = f"{reason}; will not manage task"
            raise ManagerStateError(msg)

    def _add_from_thread(
        self, hub: Any, name: str, task: object, execute: Callable[[Context], object], task_type: ExecuteTaskType
    ) -> None:
        lock = _allocate_lock()
        lock.acquire()
        outcome: list[BaseException | None] = []

        def add_in_hub() -> None:
            try:
                self._add_execute(name, task, execute, task_type)
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - handed back to the thread
                outcome.append(exc)
            finally:
                lock.release()

        hub.loop.run_callback_threadsafe(add_in_hub)
        while not lock.acquire(timeout=0.05):
            if self._phase is _Phase.DONE and not outcome:
                msg = "task manager has already shut down; will not manage task"
                raise ManagerStateError(msg)
        if outcome[0] is not None:
            raise outcome[0]

    def _remember(self, record: _Record) -> None:
        self._seq += 1
        record.seq = self._seq
        self._records[self._seq] = record

    # -- running ----------------------------------------------------------------

    def run(self, ctx: Context | None = None) -> list[NamedError]:
        """Run every task to completion and return the errors, in the order they happened.

        Blocks the calling greenlet: initializes each task in add order, executes all
        of them concurrently, waits until the run context (a child of ``ctx``) is
        cancelled (by ``ctx``, a task's policy or `stop`), waits for every execute to
        finish, then cleans up in reverse order. Returns ``[]`` when all went well.
        A ``KeyboardInterrupt`` or ``SystemExit`` raised in a task is recorded,
        triggers the same orderly shutdown, and is re-raised at the end. One thrown
        into the greenlet that runs `run` (or a ``GreenletExit`` kill of it) acts like
        `stop` with that exception as the cause; a second one while executes are being
        waited for kills them at once. While ``run`` waits it keeps the hub alive, so
        it never gets ``LoopExit`` when every task is idle.

        Args:
            ctx: the parent of the run context; defaults to `background()`. Its clock
                measures every timeout and ``status``/event time.

        Returns:
            The recorded errors in the order they happened, ``[]`` when all went well.

        Raises:
            ManagerStateError: the manager is running or has already run.
            TypeError: ``ctx`` is not a `Context`.
            KeyboardInterrupt, SystemExit: re-raised after shutdown and cleanup.
        """
        if self._phase is not _Phase.NEW:
            msg = f"{_STATE_MESSAGES[self._phase]}; will not run again"
            raise ManagerStateError(msg)
        parent = background() if ctx is None else _check_context("ctx", ctx)
        self._phase = _Phase.INITIALIZING
        run_ctx, cancel = with_cancel(parent)
        self._ctx, self._cancel = run_ctx, cancel
        self._run_state = run_ctx._state
        self._clock_now = run_ctx.clock.now
        self._hub = get_hub()
        self._thread_id = _get_ident()
        keepalive = self._hub.loop.async_()  # a ref'd watcher: no LoopExit while idle
        keepalive.start(_noop)
        try:
            state = run_ctx._state
            assert state is not None
            if state.err is not None:
                self._on_cancelled()
            else:
                state.hook = self._on_cancelled

            # 1. Initialize each task serially, in add order.
            initialized, ok = self._initialize_all(run_ctx)
            if ok:
                # 2. Execute every task concurrently.
                self._execute_all()
                # 3. Wait for cancellation, then for every execute to finish.
                self._wait_for_cancellation(run_ctx)
                self._join_executes()
            else:
                # The failed initialize triggers the shutdown, like a failed execute would.
                failed = initialized[-1]
                self._stop_stage = Stage.INITIALIZE
                self._cancel_run(StopReason("policy", failed.name, failed.error), failed.error)
                with self._queue_lock:  # queued execute tasks are discarded, never run
                    self._queued.clear()
            # 4. Clean up in reverse order, with a context that is never cancelled.
            self._phase = _Phase.CLEANING_UP
            self._cleanup_all(initialized, without_cancel(run_ctx))
        finally:
            keepalive.close()
            self._phase = _Phase.DONE
            self._emit("done", None, None)
        # 5. Return the errors in the order they happened.
        if self._fatal is not None:
            raise self._fatal
        return list(self._errors)

    def _initialize_all(self, ctx: Context) -> tuple[list[_Record], bool]:
        """Initialize serially; return the tasks to clean up (a failed one included)."""
        done: list[_Record] = []
        for record in self._tasks:
            record.state = TaskState.INITIALIZING
            self._emit("initializing", record.name, None)
            done.append(record)
            exc = self._call_stage(record, record.task.initialize, ctx, self._initialize_timeout, Stage.INITIALIZE)
            if exc is not None:
                record.state = TaskState.FAILED
                self._emit("failed", record.name, record.error)
                return done, False
            self._emit("initialized", record.name, None)
        return done, True

    def _execute_all(self) -> None:
        with self._queue_lock:  # see _queue_before_executing
            self._phase = _Phase.EXECUTING
            queued, self._queued = self._queued, []
        self._emit("executing", None, None)
        for record in self._tasks:
            self._start(record)
        for record in queued:
            self._start(record)

    def _start(self, record: _Record) -> None:
        record.state = TaskState.RUNNING
        record.started_at = self._now()
        self._running[record] = None
        record.greenlet = self._group.spawn(self._execute, record)

    def _execute(self, record: _Record) -> None:
        """The body of every execute greenlet: run the task, then apply the policy."""
        ctx = self._ctx
        assert ctx is not None
        try:
            if self._subscribers:
                self._emit("started", record.name, None)
            record.execute(ctx)
        except BaseException as exc:  # noqa: BLE001 - classified below
            self._finished(record, exc)
        else:
            self._finished(record, None)

    def _finished(self, record: _Record, exc: BaseException | None) -> None:
        if record.abandoned:  # run() has already returned without it
            return
        record.stopped_at = self._now()
        del self._running[record]
        state = self._run_state
        assert state is not None
        cancelled = state.err is not None
        if record.killed is not None:
            # Killed after stop_timeout: one StopTimeout, then whatever it raised dying.
            self._fail(record, StopTimeout(record.killed), Stage.EXECUTE)
            if exc is not None and not isinstance(exc, GreenletExit):
                self._record_error(record, exc, Stage.EXECUTE)
                self._keep_fatal(exc)
        elif exc is None or (cancelled and isinstance(exc, GreenletExit)):
            # A clean stop (the common case: no exception, not cancelled, no killing).
            action = None if cancelled else _POLICIES[record.task_type, False]
            if action is not None and action.record_unexpected_stop:
                self._fail(record, UnexpectedStop("unexpected shutdown for task process"), Stage.EXECUTE)
            else:
                record.state = TaskState.STOPPED
                self._emit("stopped", record.name, None)
            if action is not None and (action.cancel_all or action.counts_for_stop_group):
                self._apply(record, action, record.error)
        else:
            self._fail(record, exc, Stage.EXECUTE)
            self._keep_fatal(exc)
            if cancelled:
                if record.task_type is TaskType.STOP_GROUP:
                    self._stop_group_left -= 1
            else:
                self._apply(record, _POLICIES[record.task_type, True], exc)
        if record.kind == "execute":
            self._forget_finished_execute(record)
        if not self._running and self._phase is _Phase.STOPPING:
            self._drained.set()

    def _keep_fatal(self, exc: BaseException) -> None:
        """Remember the first KeyboardInterrupt / SystemExit, to re-raise from run()."""
        if isinstance(exc, KeyboardInterrupt | SystemExit) and self._fatal is None:
            self._fatal = exc

    def _apply(self, record: _Record, action: _Action, error: BaseException | None) -> None:
        if action.counts_for_stop_group:
            self._stop_group_left -= 1
            if self._stop_group_left == 0 and not action.cancel_all:
                self._cancel_run(StopReason("policy", record.name, None), None)
                return
        if action.cancel_all:
            self._cancel_run(StopReason("policy", record.name, error), error)

    def _fail(self, record: _Record, exc: BaseException, stage: Stage) -> None:
        record.state = TaskState.FAILED
        self._record_error(record, exc, stage)
        self._emit("failed", record.name, exc)

    def _record_error(self, record: _Record, exc: BaseException, stage: Stage) -> None:
        if record.error is None:
            record.error = exc
        if record.kind == "task":
            named = NamedError(record.name, stage, exc, task_type=record.task_type)  # type: ignore[arg-type]
        else:
            named = NamedError(record.name, stage, exc, execute_task_type=record.task_type)  # type: ignore[arg-type]
        self._errors.append(named)
        logger.debug("greentask: %s", named, exc_info=exc)

    def _forget_finished_execute(self, record: _Record) -> None:
        finished = self._finished_executes
        finished.append(record.seq)
        if len(finished) > FINISHED_EXECUTE_HISTORY:
            self._records.pop(finished.popleft(), None)

    # -- cancellation -------------------------------------------------------------

    def stop(self, cause: BaseException | None = None) -> None:
        """Cancel a running manager (no-op otherwise); `run` then shuts down in order.

        Safe to call from one of the manager's own tasks (the caller is not killed and
        its return afterwards is clean) and from another OS thread.

        Args:
            cause: becomes ``ctx.cause`` for the tasks and ``stop_reason.error``.

        Raises:
            TypeError: ``cause`` is neither an exception nor None.
        """
        if cause is not None and not isinstance(cause, BaseException):
            msg = f"cause must be an exception or None, got {cause!r}"
            raise TypeError(msg)
        hub = self._hub
        if hub is not None and _get_ident() != self._thread_id:
            hub.loop.run_callback_threadsafe(self._cancel_run, StopReason("stop", None, cause), cause)
            return
        self._cancel_run(StopReason("stop", None, cause), cause)

    def _cancel_run(self, reason: StopReason, cause: BaseException | None) -> None:
        if self._cancel is None or self._ctx is None or self._ctx.cancelled:
            return
        # The run context is not cancelled yet, so no reason has been set: this is the first.
        self._stop_reason = reason
        self._cancel(cause)

    def _on_cancelled(self) -> None:
        """Synchronous hook: the run context has just been cancelled, by anyone."""
        ctx = self._ctx
        assert ctx is not None
        if self._stop_reason is None:
            self._stop_reason = StopReason("context", None, ctx.cause if ctx.cause is not ctx.err else None)
        if self._phase is _Phase.EXECUTING:
            self._phase = _Phase.STOPPING
        logger.info("%s: shutting down: %s", self._name, _describe(self._stop_reason, self._stop_stage))
        self._emit("cancelled", None, ctx.cause)

    def _wait_for_cancellation(self, ctx: Context) -> None:
        try:
            ctx.wait()
        except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt or a kill delivered to run()
            self._cancel_run(StopReason("stop", None, exc), exc)
            self._keep_fatal(exc)
        self._phase = _Phase.STOPPING

    def _join_executes(self) -> None:
        if not self._running:
            return
        timeout = self._stop_timeout
        clock = self._clock
        deadline = None if timeout is None else clock.now() + timeout
        if self._wait_drained(deadline):
            return
        forced = self._forced.is_set()
        for record in list(self._running):
            if forced:
                record.killed = f"task {record.name!r} was still running when shutdown was forced; killed"
            else:
                record.killed = f"task {record.name!r} did not stop within {timeout}s of cancellation; killed"
            greenlet = record.greenlet
            assert greenlet is not None
            # Every greenlet here has started: its start callback was queued before the
            # cancellation that woke us (callbacks run in order), so the kill always reaches
            # the wrapper in _execute, which records the outcome.
            greenlet.kill(block=False)
        # kill(block=False) only queues each GreenletExit, and delivering 100,000 of them
        # takes far longer than a short stop_timeout: start the grace period once they are
        # all delivered, or every task not reached yet would be "abandoned" while dying.
        # Hub callbacks run in order, so this marker runs after the last kill.
        delivered = Event()
        self._hub.loop.run_callback(delivered.set)
        try:
            delivered.wait()
        except BaseException as exc:  # noqa: BLE001 - a further interruption: go on to the grace period
            self._keep_fatal(exc)
        grace = timeout if timeout is not None else 1.0
        if self._wait_drained(clock.now() + grace, honour_force=False):
            return
        when = "when shutdown was forced" if forced else f"within {timeout}s of cancellation"
        now = self._now()
        for record in list(self._running):
            del self._running[record]
            record.abandoned = True
            record.stopped_at = now
            # One StopTimeout per task: this one replaces the "killed" one, never added to it.
            message = f"task {record.name!r} did not stop {when} nor die within {grace}s of GreenletExit; abandoned"
            self._fail(record, StopTimeout(message), Stage.EXECUTE)
            logger.error("%s: abandoned task %r: its greenlet refuses to die", self._name, record.name)

    def _wait_drained(self, deadline: float | None, *, honour_force: bool = True) -> bool:
        """Wait until every execute finished (True), the deadline passed or a force."""
        while self._running:
            waits: list[Any] = [self._drained]
            timer_cancel = None
            if deadline is not None:
                timer_ctx, timer_cancel = with_deadline(background(self._clock), deadline)
                waits.append(timer_ctx)
            if honour_force:
                waits.append(self._forced)
            try:
                gevent.wait(waits, count=1)
            except BaseException as exc:  # noqa: BLE001 - a second interruption: force
                self._keep_fatal(exc)
                self._forced.set()
            finally:
                if timer_cancel is not None:
                    timer_cancel()
            if not self._running:
                return True
            if honour_force and self._forced.is_set():
                return False
            if deadline is not None and self._clock.now() >= deadline:
                return False
        return True

    def _force(self) -> None:
        """Kill every remaining execute now (the runner's second signal)."""
        self._forced.set()
        self._cancel_run(StopReason("stop", None, None), None)

    # -- stages under a timeout ---------------------------------------------------

    def _call_stage(
        self, record: _Record, fn: Callable[[Context], object], ctx: Context, timeout: float | None, stage: Stage
    ) -> BaseException | None:
        """Run ``initialize`` or ``cleanup``; record and return what it raised."""
        if timeout is None:
            exc = _capture(fn, ctx)
            errors = [] if exc is None else [exc]
        else:
            errors = self._call_with_timeout(record, fn, ctx, timeout, stage)
        for exc in errors:
            self._keep_fatal(exc)
            self._record_error(record, exc, stage)
        return errors[0] if errors else None

    def _call_with_timeout(
        self, record: _Record, fn: Callable[[Context], object], ctx: Context, timeout: float, stage: Stage
    ) -> list[BaseException]:
        """Run a stage in a helper greenlet; kill it after ``timeout`` (clock time)."""
        helper = gevent.spawn(_capture, fn, ctx)
        clock = self._clock
        try:
            finished = self._join_greenlet(helper, clock.now() + timeout)
        except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt or a kill delivered to run()
            # As if it had landed inside the stage (it does when there is no timeout):
            # stop the stage and record the interruption as its error.
            helper.kill(block=False)
            with contextlib.suppress(BaseException):
                self._join_greenlet(helper, clock.now() + timeout)
            return [exc]
        if finished:
            return [] if helper.value is None else [helper.value]
        helper.kill(block=False)
        verb = "initialize" if stage is Stage.INITIALIZE else "clean up"
        errors: list[BaseException] = [StopTimeout(f"task {record.name!r} did not {verb} within {timeout}s; killed")]
        if self._join_greenlet(helper, clock.now() + timeout):
            dying = helper.value
            if dying is not None and not isinstance(dying, GreenletExit):
                errors.append(dying)
        else:
            errors[0] = StopTimeout(f"task {record.name!r} did not {verb} within {timeout}s; abandoned")
        return errors

    def _join_greenlet(self, greenlet: gevent.Greenlet[..., Any], deadline: float) -> bool:
        timer_ctx, cancel = with_deadline(background(self._clock), deadline)
        try:
            gevent.wait([greenlet, timer_ctx], count=1)  # type: ignore[type-var]
        finally:
            cancel()
        return greenlet.dead

    def _cleanup_all(self, records: list[_Record], ctx: Context) -> None:
        for record in reversed(records):
            record.state = TaskState.CLEANING_UP
            self._emit("cleaning_up", record.name, None)
            exc = self._call_stage(record, record.task.cleanup, ctx, self._cleanup_timeout, Stage.CLEANUP)
            if exc is not None:
                self._emit("failed", record.name, exc)
            record.state = TaskState.DONE
            self._emit("cleaned_up", record.name, None)

    # -- observing ----------------------------------------------------------------

    @property
    def stop_reason(self) -> StopReason | None:
        """Why the run context was cancelled (set once), or None while it is not.

        A failed ``initialize`` is a "policy" reason too: ``task_name`` and ``error``
        name the task and its initialize error.
        """
        return self._stop_reason

    @property
    def phase(self) -> str:
        """ "new", "initializing", "executing", "stopping", "cleaning_up" or "done"."""
        return self._phase.value

    @property
    def name(self) -> str:
        """The name given to the constructor (used in logs)."""
        return self._name

    def status(self) -> list[TaskStatus]:
        """A snapshot of every task, in add order (see `TaskStatus`).

        Finished execute tasks are kept for the last `FINISHED_EXECUTE_HISTORY` of
        them, so a manager that adds one per connection does not grow without bound.
        """
        return [record.snapshot() for record in self._records.values()]

    def subscribe(self, callback: Callable[[ManagerEvent], object]) -> Callable[[], None]:
        """Deliver every `ManagerEvent` to ``callback``; returns ``unsubscribe()``.

        Callbacks run synchronously where the event happens (possibly in the hub) and
        must not block; one that raises is logged and otherwise ignored.

        Args:
            callback: called as ``callback(event)``.

        Returns:
            ``unsubscribe()``: stops the deliveries (idempotent).

        Raises:
            TypeError: ``callback`` is not callable.
        """
        if not callable(callback):
            msg = f"callback must be callable, got {callback!r}"
            raise TypeError(msg)
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def _emit(self, kind: str, task_name: str | None, error: BaseException | None) -> None:
        if not self._subscribers:
            return
        event = ManagerEvent(kind, task_name, error, self._now())
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                logger.exception("%s: event callback %r failed on %s", self._name, callback, kind)

    @property
    def _clock(self) -> Any:
        ctx = self._ctx
        return background().clock if ctx is None else ctx.clock

    def _now(self) -> float:
        return float(self._clock_now())

    # -- internal views for the runner, HealthServer and metrics -------------------

    def _tree(self) -> list[tuple[str, TaskManager]]:
        """This manager and its nested managers: ``(path, manager)``, root first as its name."""
        return [(self._name, self)]

    def _task_objects(self) -> list[tuple[str, object]]:
        """``(path name, task object)`` of every task, depth first (the user's objects)."""
        return [(record.name, record.task) for record in self._records.values()]

    def _error_counts(self) -> dict[tuple[str, str], int]:
        """``(path name, stage) -> count`` of recorded errors and restarted failures."""
        counts: dict[tuple[str, str], int] = {}
        for named in self._errors:
            key = (named.task_name, named.stage.value)
            counts[key] = counts.get(key, 0) + 1
        return counts

    def _stop_timeout_counts(self) -> dict[str, int]:
        """``path name -> count`` of `StopTimeout` errors recorded for the task."""
        counts: dict[str, int] = {}
        for named in self._errors:
            if isinstance(named.error, StopTimeout):
                counts[named.task_name] = counts.get(named.task_name, 0) + 1
        return counts

    def _stop_description(self) -> str:
        """Why the manager is stopping, as its log line says it, or "" if it is not."""
        reason = self._stop_reason
        return "" if reason is None else _describe(reason, self._stop_stage)

    def __repr__(self) -> str:
        return f"<TaskManager {self._name!r} {self._phase.value} tasks={len(self._records)}>"


def _describe(reason: StopReason, stage: Stage) -> str:
    if reason.kind == "policy" and reason.task_name is not None and reason.error is not None:
        if isinstance(reason.error, UnexpectedStop):
            return f"task {reason.task_name!r} stopped unexpectedly in {stage.value}"
        return f"task {reason.task_name!r} failed in {stage.value}: {reason.error!r}"
    return str(reason)


def _zero() -> float:
    return 0.0


def _noop() -> None:  # pragma: no cover - the keep-alive watcher is never sent
    return None
