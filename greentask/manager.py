"""TaskManager: initialize tasks in order, execute them concurrently, clean up in reverse.

Design
------
``run`` reads top to bottom as the phases of SPEC §3 (oklog/run's ``group.go`` shape):

1. initialize each task serially, each with its own task context (SPEC §9);
2. start every ``execute`` in one ``gevent.pool.Group``;
3. wait for the run context to be cancelled, then stop the executes in the manager's
   `StopOrder` (SPEC §10), killing stragglers after their ``stop_timeout``;
4. clean up in reverse add order with never-cancelled children of the task contexts;
5. return the errors in the order they happened.

The rules live in one module each; this one is the public face:

=====================  =========================================================
`greentask._types`     `TaskType`, `ExecuteTaskType`, `StopOrder`, the protocols
`greentask._record`    one task's record and its state machine
`greentask._policy`    the policy table of §3 and the shutdown texts
`greentask._stages`    running an initialize/cleanup under a timeout and the force
`greentask._shutdown`  the cancel hook, ``handle.stop()``, stop orders, kills (§9-10)
`greentask._supervisor` outcomes, runtime initializations, restarts (§9, §11)
`greentask._nested`    a manager as a task of another: supervision trees (§12)
`greentask.handle`     `TaskHandle`
=====================  =========================================================

There is no polling monitor: each execute greenlet judges its own outcome in O(1).
Cancellation is the run context's: one ``cancel`` sets the flag everywhere and wakes
every waiting task cooperatively in O(N); ``kill`` is only the ``stop_timeout``
fallback. The run context's synchronous cancel hook records the `StopReason`, logs
it, and emits the "cancelled" event at the moment cancellation happens, whoever did it.
"""

from __future__ import annotations

import contextlib
import enum
from collections import deque
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import Event
from gevent.hub import get_hub
from gevent.pool import Group

from ._base import (
    _STATE_MESSAGES,
    _allocate_lock,
    _get_ident,
    _Phase,
)
from ._checks import _is_async, check_stage, check_task_object
from ._nested import _Nested
from ._record import _Record
from ._supervisor import _Outcome
from ._types import ExecuteTask, ExecuteTaskType, StopOrder, Task, TaskType
from .context import (
    _RUN_KEY,
    Context,
    _check_context,
    _check_seconds,
    _task_context,
    background,
    with_deadline,
)
from .errors import (
    ManagerEvent,
    ManagerStateError,
    NamedError,
    Stage,
    StopReason,
    TaskState,
    TaskStatus,
)
from .handle import TaskHandle
from .restart import Restart

__all__ = ["ExecuteTask", "ExecuteTaskType", "StopOrder", "Task", "TaskManager", "TaskType"]


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


def _check_stop_order(value: object) -> StopOrder:
    if isinstance(value, StopOrder):
        return value
    if isinstance(value, str) and not isinstance(value, enum.Enum):
        with contextlib.suppress(ValueError):
            return StopOrder(value)
    msg = f'stop_order must be StopOrder.TOGETHER, StopOrder.REVERSE, "together" or "reverse", got {value!r}'
    raise ValueError(msg)


def _check_restart(name: str, restart: object, task_type: object) -> Restart | None:
    if restart is None:
        return None
    if not isinstance(restart, Restart):
        msg = f"restart must be a greentask.Restart or None, got {restart!r}"
        raise TypeError(msg)
    if restart.on == "always" and task_type is TaskType.STOP_GROUP:
        msg = f'task {name!r}: restart on="always" cannot be used with TaskType.STOP_GROUP (it would never return)'
        raise ValueError(msg)
    return restart


class _RunInfo:
    """Stored in the run context: on_cancel callbacks of its contexts run in ``after_group``."""

    __slots__ = ("after_group",)

    def __init__(self, after_group: Group) -> None:
        self.after_group = after_group


class TaskManager(_Nested):
    """Runs tasks through initialize -> execute -> cleanup, with failure policies.

    Args:
        initialize_timeout: seconds (context clock) each ``initialize`` may take; one
            that overruns is killed and recorded as `StopTimeout`. None: unbounded.
        stop_timeout: seconds after a task's context is cancelled that its execute
            gets to return; then it is killed with ``GreenletExit`` (recorded as
            `StopTimeout`), and one still alive after another ``stop_timeout`` is
            abandoned (recorded too), so `run` always returns. None: wait forever.
            A task's own ``stop_timeout`` (``add_task(..., stop_timeout=)``) overrides it.
        cleanup_timeout: seconds each ``cleanup`` may take; overruns are killed and
            recorded as `StopTimeout`.
        on_event: called with every `ManagerEvent` (like `subscribe`).
        name: used in log messages.
        stop_order: `StopOrder.TOGETHER` (default: every task is cancelled at once) or
            `StopOrder.REVERSE` (execute tasks first, then the tasks from `add_task` one
            at a time in reverse add order); the strings "together"/"reverse" work too.

    Raises:
        TypeError: a timeout is not a number, ``on_event`` is not callable, ``name``
            is not a string.
        ValueError: a timeout is negative or NaN, ``name`` is empty, ``stop_order`` is
            not a `StopOrder`.

    Example::

        manager = gt.TaskManager(stop_timeout=10, stop_order=gt.StopOrder.REVERSE)
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
        self._initialize_timeout = _check_optional_seconds("initialize_timeout", initialize_timeout)
        self._stop_timeout = _check_optional_seconds("stop_timeout", stop_timeout)
        self._cleanup_timeout = _check_optional_seconds("cleanup_timeout", cleanup_timeout)
        self._name = _check_name(name)
        self._stop_order = _check_stop_order(stop_order)
        self._subscribers = []
        if on_event is not None:
            if not callable(on_event):
                msg = f"on_event must be callable or None, got {on_event!r}"
                raise TypeError(msg)
            self.subscribe(on_event)
        self._order = []
        self._queued = []
        self._records = {}
        self._seq = 0
        self._task_ids: set[int] = set()
        self._nested_in = None
        self._parent_manager = None
        self._forward = None
        self._error_counter: dict[tuple[str, str], int] = {}
        self._timeout_counter: dict[str, int] = {}
        self._queue_lock = _allocate_lock()  # a real OS lock: guards _queued across threads
        self._reset()

    def _reset(self) -> None:
        """The per-run state (a nested manager restarted as a subtree gets it afresh)."""
        self._phase = _Phase.NEW
        self._finished_executes = deque()
        self._running = {}
        self._watches = []
        self._stop_group_last = None
        self._stop_group_left = sum(
            1 for r in self._order if r.task_type is TaskType.STOP_GROUP and not r.stop_requested
        )
        self._errors = []
        self._reported = 0
        self._fatal = None
        self._stop_reason = None
        self._stop_stage = Stage.EXECUTE
        self._ctx = None
        self._cancel = None
        self._run_state = None
        self._clock_now = _zero
        self._group = Group()
        self._helpers = Group()
        self._after_group = Group()
        self._forced = Event()
        self._active_stages = {}
        self._hub = None
        self._thread_id = None
        self._init_queue = deque()
        self._initializer = None
        self._keepalive: Any = None

    # -- adding tasks -----------------------------------------------------------

    def add_task(
        self,
        name: str,
        task: Task,
        task_type: TaskType = TaskType.STRICT,
        *,
        stop_timeout: float | None = None,
        restart: Restart | None = None,
    ) -> TaskHandle:
        """Add a task with ``initialize``/``execute``/``cleanup``; returns its `TaskHandle`.

        Before `run`, tasks initialize in add order, execute concurrently and clean up
        in reverse add order. While the manager executes (SPEC §9) a task may be added
        from any greenlet or OS thread: the call returns at once and its ``initialize``
        runs in a manager greenlet, one runtime initialization at a time, then its
        execute starts; it is cleaned up at shutdown in reverse add order like the others.
        A `TaskManager` that has never run can be added as a task (a supervision tree,
        SPEC §12). Names need not be unique.

        Args:
            name: a non-empty string, used in errors, events, logs and `status`.
            task: an object with callable ``initialize(ctx)``, ``execute(ctx)`` and
                ``cleanup(ctx)`` (see `Task`), not a class, no ``async def``.
            task_type: the failure policy (see `TaskType`); the enum's string value
                (``"strict"``, ...) is accepted too.
            stop_timeout: this task's stop budget, overriding the manager's.
            restart: a `Restart` policy (SPEC §11); None never restarts.

        Returns:
            The task's `TaskHandle`.

        Raises:
            TypeError: bad ``name``; ``task`` is None, a class, lacks a callable stage or
                has an ``async def`` one; bad ``restart``.
            ValueError: ``name`` is empty, ``task_type`` is not a `TaskType`, the same
                object was already added with ``add_task``, STOP_GROUP once `run` has
                started, ``restart(on="always")`` with STOP_GROUP.
            ManagerStateError: during the initialize phase, once cancellation has
                begun, after shutdown; a nested manager that already ran or is already
                part of a tree.
        """
        name = _check_name(name)
        label = f"task {name!r}"
        check_task_object(label, task)
        if isinstance(task, TaskManager):
            self._check_nestable(task)
        for stage in ("initialize", "execute", "cleanup"):
            check_stage(label, task, stage)
        task_type = _coerce_type(task_type, TaskType)
        stop_timeout = _check_optional_seconds("stop_timeout", stop_timeout)
        restart = _check_restart(name, restart, task_type)
        if id(task) in self._task_ids:
            msg = f"{label}: this object was already added with add_task (its initialize/cleanup would run twice)"
            raise ValueError(msg)
        if self._phase is not _Phase.NEW:
            if self._phase is _Phase.EXECUTING and self._hub is not None and _get_ident() != self._thread_id:
                return self._in_hub(self._add_task_at_runtime, name, task, task_type, stop_timeout, restart)  # type: ignore[no-any-return]
            return self._add_task_at_runtime(name, task, task_type, stop_timeout, restart)
        record = self._new_record(name, task, task.execute, "task", task_type, stop_timeout, restart)
        self._order.append(record)
        if task_type is TaskType.STOP_GROUP:
            self._stop_group_left += 1
        return TaskHandle(self, record)

    def _add_task_at_runtime(
        self, name: str, task: Any, task_type: TaskType, stop_timeout: float | None, restart: Restart | None
    ) -> TaskHandle:
        """In the hub's thread: accept during the execute phase, else refuse."""
        self._refuse_unless_executing()
        if task_type is TaskType.STOP_GROUP:
            msg = f"task {name!r}: TaskType.STOP_GROUP tasks can only be added before run() starts"
            raise ValueError(msg)
        if id(task) in self._task_ids:
            msg = f"task {name!r}: this object was already added with add_task (its initialize/cleanup would run twice)"
            raise ValueError(msg)
        record = self._new_record(name, task, task.execute, "task", task_type, stop_timeout, restart)
        self._order.append(record)
        self._enqueue_initialize(record)
        return TaskHandle(self, record)

    def _refuse_unless_executing(self) -> None:
        phase = self._phase
        cancelled = self._ctx is not None and self._ctx.cancelled
        if phase is _Phase.EXECUTING and not cancelled:
            return
        reason = _STATE_MESSAGES[phase] if not cancelled or phase is _Phase.DONE else None
        reason = reason or "task manager is shutting down"
        msg = f"{reason}; will not manage task"
        raise ManagerStateError(msg)

    def add_execute_task(
        self,
        name: str,
        task: ExecuteTask | Callable[[Context], object],
        task_type: ExecuteTaskType = ExecuteTaskType.STRICT,
        *,
        stop_timeout: float | None = None,
        restart: Restart | None = None,
    ) -> TaskHandle:
        """Add an execute-only task: an object with ``execute(ctx)`` or a callable.

        Before `run` and during the initialize phase the task is queued and started
        after every ``initialize`` succeeded (discarded, ending STOPPED, if one fails).
        While running it starts at once. Once this returns during the execute phase, the
        task's ``execute`` is guaranteed to run and to be waited for before `run`
        returns. Callable from any greenlet and from another OS thread, at any time:
        while running the work is handed to the manager's hub (the call returns or
        raises as usual); before the execute phase the queue is guarded by a real lock,
        so an add racing the start of `run` is either queued and started or refused,
        never lost. The same function may be added any number of times.

        Args:
            name: a non-empty string, used in errors, events, logs and `status`.
            task: an object with a callable ``execute(ctx)`` (a full `Task` works; only
                its ``execute`` is used), or a callable ``fn(ctx)``; not a class, no
                ``async def``.
            task_type: the failure policy (see `ExecuteTaskType`); the enum's string
                value is accepted too.
            stop_timeout: this task's stop budget, overriding the manager's.
            restart: a `Restart` policy (SPEC §11); None never restarts.

        Returns:
            The task's `TaskHandle`.

        Raises:
            TypeError: bad ``name``, ``task`` or ``restart``.
            ValueError: ``task_type`` is not an `ExecuteTaskType`.
            ManagerStateError: cancellation has begun, or the manager has shut down.
        """
        name = _check_name(name)
        if task is None or isinstance(task, type) or _is_async(task):
            check_task_object(f"task {name!r}", task)  # raises, naming the task
        execute = getattr(task, "execute", None)
        if callable(execute):
            if _is_async(execute):
                check_stage(f"task {name!r}", task, "execute")
        else:
            if not callable(task):
                msg = f"task {name!r} must be callable or have a callable execute(ctx)"
                raise TypeError(msg)
            execute = task
        if type(task_type) is not ExecuteTaskType:
            task_type = _coerce_type(task_type, ExecuteTaskType)
        stop_timeout = _check_optional_seconds("stop_timeout", stop_timeout)
        restart = _check_restart(name, restart, task_type)
        if self._phase is _Phase.EXECUTING:
            if _get_ident() != self._thread_id:
                return self._in_hub(self._add_execute, name, task, execute, task_type, stop_timeout, restart)  # type: ignore[no-any-return]
        else:
            handle = self._queue_before_executing(name, task, execute, task_type, stop_timeout, restart)
            if handle is not None:
                return handle
        return self._add_execute(name, task, execute, task_type, stop_timeout, restart)

    def _queue_before_executing(
        self,
        name: str,
        task: object,
        execute: Callable[[Context], object],
        task_type: ExecuteTaskType,
        stop_timeout: float | None,
        restart: Restart | None,
    ) -> TaskHandle | None:
        """Queue the task if the execute phase has not begun; None if it has (or is over).

        Under a real lock: another OS thread may add while `run` starts the execute
        phase, which takes the queue under the same lock.
        """
        with self._queue_lock:
            if self._phase is _Phase.NEW or (
                self._phase is _Phase.INITIALIZING and not (self._ctx is not None and self._ctx.cancelled)
            ):
                record = self._new_record(name, task, execute, "execute", task_type, stop_timeout, restart)
                self._queued.append(record)
                return TaskHandle(self, record)
        if self._phase is _Phase.EXECUTING and self._hub is not None and _get_ident() != self._thread_id:
            return self._in_hub(self._add_execute, name, task, execute, task_type, stop_timeout, restart)  # type: ignore[no-any-return]
        return None

    def _add_execute(
        self,
        name: str,
        task: object,
        execute: Callable[[Context], object],
        task_type: ExecuteTaskType,
        stop_timeout: float | None,
        restart: Restart | None,
    ) -> TaskHandle:
        """Start the task now if the manager is executing, else refuse (in the hub's thread)."""
        self._refuse_unless_executing()
        record = self._new_record(name, task, execute, "execute", task_type, stop_timeout, restart)
        self._start(record)
        return TaskHandle(self, record)

    def _in_hub(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call ``fn(*args)`` in the manager's hub from another OS thread; return or raise its outcome."""
        lock = _allocate_lock()
        lock.acquire()
        outcome: list[tuple[bool, Any]] = []

        def call_in_hub() -> None:
            try:
                outcome.append((True, fn(*args)))
            except BaseException as exc:  # noqa: BLE001 - handed back to the thread
                outcome.append((False, exc))
            finally:
                lock.release()

        self._hub.loop.run_callback_threadsafe(call_in_hub)
        while not lock.acquire(timeout=0.05):
            if self._phase is _Phase.DONE and not outcome:
                msg = "task manager has already shut down; will not manage task"
                raise ManagerStateError(msg)
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    def _new_record(
        self,
        name: str,
        task: Any,
        execute: Callable[[Context], object],
        kind: str,
        task_type: TaskType | ExecuteTaskType,
        stop_timeout: float | None,
        restart: Restart | None,
    ) -> _Record:
        record = _Record(name, task, execute, kind, task_type, self._name, stop_timeout, restart)
        if kind == "task":
            self._task_ids.add(id(task))
            if isinstance(task, TaskManager):
                self._adopt(task, record)
        self._seq += 1
        record.seq = self._seq
        self._records[self._seq] = record
        return record

    # -- running ----------------------------------------------------------------

    def run(self, ctx: Context | None = None) -> list[NamedError]:
        """Run every task to completion and return the errors, in the order they happened.

        Blocks the calling greenlet: initializes each task in add order, executes all
        of them concurrently, waits until the run context (a child of ``ctx``) is
        cancelled (by ``ctx``, a task's policy or `stop`), stops every execute in the
        manager's `StopOrder`, then cleans up in reverse order. Returns ``[]`` when all
        went well. A ``KeyboardInterrupt`` or ``SystemExit`` raised in a task is
        recorded, triggers the same orderly shutdown, and is re-raised at the end. One
        thrown into the greenlet that runs `run` (or a ``GreenletExit`` kill of it) acts
        like `stop` with that exception as the cause; a second one while executes are
        being waited for kills them at once. While ``run`` waits it keeps the hub alive,
        so it never gets ``LoopExit`` when every task is idle.

        Args:
            ctx: the parent of the run context; defaults to `background()`. Its clock
                measures every timeout and ``status``/event time.

        Returns:
            The recorded errors in the order they happened, ``[]`` when all went well.

        Raises:
            ManagerStateError: the manager is running or has already run, or it is
                part of a supervision tree (its parent runs it).
            TypeError: ``ctx`` is not a `Context`.
            KeyboardInterrupt, SystemExit: re-raised after shutdown and cleanup.
        """
        if self._nested_in is not None:
            msg = "task manager is part of a supervision tree; it runs as a task of its parent, not with run()"
            raise ManagerStateError(msg)
        if self._phase is not _Phase.NEW:
            msg = f"{_STATE_MESSAGES[self._phase]}; will not run again"
            raise ManagerStateError(msg)
        self._begin(background() if ctx is None else _check_context("ctx", ctx))
        try:
            # 1. Initialize each task serially, in add order.
            if self._initialize_phase():
                # 2. Execute every task concurrently; 3. once cancelled, stop them in order.
                self._execute_phase()
            # 4. Clean up in reverse order, with contexts that are never cancelled.
            self._cleanup_phase()
        finally:
            self._finish()
        # 5. Return the errors in the order they happened.
        if self._fatal is not None:
            raise self._fatal
        return list(self._errors)

    def _begin(self, parent: Context) -> None:
        self._phase = _Phase.INITIALIZING
        run_ctx, cancel = _task_context(parent, _RunInfo(self._after_group), linked=True, key=_RUN_KEY)
        self._ctx, self._cancel = run_ctx, cancel
        state = run_ctx._state
        assert state is not None
        self._run_state = state
        self._clock_now = run_ctx.clock.now
        self._hub = get_hub()
        self._thread_id = _get_ident()
        self._keepalive = self._hub.loop.async_()  # a ref'd watcher: no LoopExit while idle
        self._keepalive.start(_noop)
        if state.err is not None:
            self._on_cancelled()
        else:
            state.hook = self._on_cancelled

    def _initialize_phase(self) -> bool:
        """Initialize serially; False when a failure (or a cancelled start-up) ends it."""
        ok = True
        for record in list(self._order):
            if record.stop_requested:
                continue
            if not ok:
                record.never = True  # skipped: stays PENDING
                record.changed()
                continue
            outcome, errors = self._initialize_one(record)
            if record.stop_requested:  # stopped by its handle while initializing
                if outcome is _Outcome.FAILED:
                    self._record_stage_errors(record, errors, Stage.INITIALIZE)
                self._cleanup_one(record)
                record.changed()
                continue
            if outcome is _Outcome.OK:
                continue
            ok = False
            if outcome is _Outcome.CANCELLED:
                record.state = TaskState.STOPPED  # shutdown during start-up: clean (§15)
            else:
                self._record_stage_errors(record, errors, Stage.INITIALIZE)
                self._policy_failure(record, errors[0], Stage.INITIALIZE)
        if not ok:
            with self._queue_lock:  # queued execute tasks are discarded, never run
                queued, self._queued = self._queued, []
            for record in queued:
                self._drop(record)
        return ok

    def _execute_phase(self) -> None:
        with self._queue_lock:  # see _queue_before_executing
            self._phase = _Phase.EXECUTING
            queued, self._queued = self._queued, []
        self._emit("executing", None, None)
        for record in list(self._order):
            if record.initialized and record.state is TaskState.INITIALIZING:
                if record.stop_requested:  # stopped by its handle after its initialize returned
                    self._cleanup_one(record)
                    record.changed()
                else:
                    self._start(record)
        for record in queued:
            if not record.stop_requested:
                self._start(record)
        if self._stop_group_last is not None and self._stop_group_left == 0:
            # Every STOP_GROUP task was stopped by its handle before the execute phase.
            self._cancel_run(StopReason("policy", self._stop_group_last, None), None)
        self._wait_for_cancellation()
        self._phase = _Phase.STOPPING
        self._stop_executes()
        self._join_helpers()
        self._wait_on_cancel_callbacks()

    def _wait_for_cancellation(self) -> None:
        ctx = self._ctx
        assert ctx is not None
        try:
            ctx.wait()
        except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt or a kill delivered to run()
            self._cancel_run(StopReason("stop", None, exc), exc)
            self._keep_fatal(exc)

    def _join_helpers(self) -> None:
        """Wait for the manager's own greenlets (stops by handle, restarts, initializer)."""
        while len(self._helpers):
            try:
                self._helpers.join()
            except BaseException as exc:  # noqa: BLE001 - a further interruption: force
                self._keep_fatal(exc)
                self._force()

    def _wait_on_cancel_callbacks(self) -> None:
        """on_cancel callbacks of the manager's contexts run before cleanup (SPEC §15)."""
        self._callbacks_started()
        self._await_callbacks(self._after_group, self._stop_timeout, self._name)

    def _cleanup_phase(self) -> None:
        self._phase = _Phase.CLEANING_UP
        for record in reversed(self._order):
            if record.initialized:
                self._cleanup_one(record)
                record.changed()
            elif record.state is TaskState.PENDING and not record.never:
                record.never = True
                record.changed()

    def _finish(self) -> None:
        if self._hub is not None:
            self._wait_on_cancel_callbacks()  # also those registered during cleanup
        keepalive = self._keepalive
        if keepalive is not None:
            keepalive.close()
            self._keepalive = None
        self._phase = _Phase.DONE
        with self._queue_lock:  # anything still queued never runs
            queued, self._queued = self._queued, []
        for record in queued:
            self._drop(record)
        self._emit("done", None, None)

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

    # -- observing ----------------------------------------------------------------

    @property
    def stop_reason(self) -> StopReason | None:
        """Why the run context was cancelled (set once), or None while it is not.

        A failed ``initialize`` is a "policy" reason too: ``task_name`` and ``error``
        name the task and its initialize error. For a nested manager's failure,
        ``task_name`` is the innermost task's path name (``"pipeline/db"``).
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

    @property
    def stop_order(self) -> StopOrder:
        """The `StopOrder` given to the constructor."""
        return self._stop_order

    def status(self) -> list[TaskStatus]:
        """A snapshot of every task, in add order (see `TaskStatus`).

        A nested manager's row is followed by the rows of its tasks, with path names
        (``"pipeline/db"``), depth first. Finished execute tasks are kept for the last
        `FINISHED_EXECUTE_HISTORY` of them, so a manager that adds one per connection
        does not grow without bound.
        """
        rows: list[TaskStatus] = []
        for record in list(self._records.values()):
            rows.append(record.snapshot())
            rows.extend(self._nested_rows(record))
        return rows

    def subscribe(self, callback: Callable[[ManagerEvent], object]) -> Callable[[], None]:
        """Deliver every `ManagerEvent` to ``callback``; returns ``unsubscribe()``.

        Callbacks run synchronously where the event happens (possibly in the hub) and
        must not block. One that raises anything is logged and otherwise ignored; a
        ``KeyboardInterrupt`` / ``SystemExit`` from it is treated like one from a task
        (orderly shutdown, re-raised from `run`). A nested manager's per-task events
        reach its parent's subscribers too, with path names.

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

    def _wait_record(self, record: _Record, timeout: float | None, *, running: bool) -> bool:
        """`TaskHandle.wait` / ``wait_running``."""
        if timeout is not None:
            timeout = _check_seconds("timeout", timeout)

        def reached() -> bool:
            if running:
                return record.started_at is not None or record.state is TaskState.RUNNING
            return record.is_done()

        if reached():
            return True
        if running and record.is_done():
            return False
        if running:
            if record.running_event is None:
                record.running_event = Event()
            event = record.running_event
        else:
            if record.done_event is None:
                record.done_event = Event()
            event = record.done_event
        event.clear()
        if self._ctx is None:
            event.wait(timeout)
        else:
            waits: list[Any] = [event]
            cancel = None
            if timeout is not None:
                timer_ctx, cancel = with_deadline(background(self._clock), self._now() + timeout)
                waits.append(timer_ctx)
            try:
                while not reached() and not (running and record.is_done()):
                    gevent.wait(waits, count=1)
                    if timeout is not None and waits[1].cancelled:
                        break
                    event.clear()
            finally:
                if cancel is not None:
                    cancel()
        return reached()

    # -- internal views for the runner, HealthServer and metrics -------------------

    def __repr__(self) -> str:
        return f"<TaskManager {self._name!r} {self._phase.value} tasks={len(self._records)}>"


def _zero() -> float:
    return 0.0


def _noop() -> None:  # pragma: no cover - the keep-alive watcher is never sent
    return None
