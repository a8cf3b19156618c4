"""What happens while the manager executes: starting executes, judging their outcome,
runtime initializations and restarts (SPEC §3, §9, §11).

Each execute greenlet runs `_Supervisor._execute`, which hands the outcome to
`_finished`: it classifies it in O(1) by the *task context's* and the run context's
state (never by the exception's type), then either restarts the task (SPEC §11),
applies the policy table (`greentask._policy`) or just records it (after cancellation
or ``handle.stop()``, no policy applies).

Runtime initializations (``add_task`` while executing, and the re-initialize of a
restart) go through one queue drained by one manager greenlet, so two ``initialize``
calls never overlap for the whole life of the manager; the queue is dropped when
cancellation begins (queued tasks are never initialized).

A restart cycle runs in a manager greenlet: cleanup (tasks) -> RESTARTING, the backoff
wait (woken at once by cancellation or ``handle.stop()``) -> initialize (tasks, through
the queue) -> execute with a fresh task context. The budget is `restart._Intensity`.
"""

from __future__ import annotations

import copy
import enum
import logging
from typing import Any

import gevent
from greenlet import GreenletExit

from . import _base
from ._base import _Phase, _SubtreeFailed
from ._policy import POLICIES, UNEXPECTED_STOP, safe_repr
from ._record import _Record
from ._shutdown import _Shutdown
from ._types import StopOrder, TaskType
from .context import Context, _release, _task_context, _TaskContext, background, with_deadline
from .errors import RestartLimitExceeded, Stage, StopReason, StopTimeout, TaskState, UnexpectedStop
from .restart import _Intensity

logger = logging.getLogger("greentask")

__all__ = ["_Outcome", "_Supervisor"]


class _Outcome(enum.Enum):
    OK = "ok"
    CANCELLED = "cancelled"  # a Cancelled escaped after the task's context was cancelled: clean
    FAILED = "failed"


class _Supervisor(_Shutdown):
    # -- contexts and starting --------------------------------------------------------

    def _new_context(self, record: _Record) -> Context:
        """A fresh task context for the next initialize/execute of ``record`` (O(1))."""
        run_ctx = self._ctx
        assert run_ctx is not None
        if record.kind == "execute":
            # One object: it shares the run context's state until stopped alone.
            ctx: Context = _TaskContext(run_ctx, record)
            record.ctx, record.cancel = ctx, None
        else:
            # Linked to the run context while it initializes (so start-up sees a stop);
            # under REVERSE it is detached when its execute starts.
            ctx, record.cancel = _task_context(run_ctx, record, linked=True)
            record.ctx = ctx
        record.stop_deadline = None
        return ctx

    def _start(self, record: _Record) -> None:
        """Start ``record``'s execute in the manager's Group (its context must be fresh)."""
        if record.kind == "execute":
            self._new_context(record)
        ctx = record.ctx
        assert ctx is not None
        if self._stop_order is StopOrder.REVERSE and record.kind == "task" and not ctx.cancelled:
            _release(ctx)  # cancelled at its turn, not with the run context
        record.state = TaskState.RUNNING
        record.started_at = now = self._now()
        record.killed = None
        self._running[record] = None
        greenlet = record.greenlet = self._group.spawn(self._execute, record, ctx)
        greenlet.name = record.name
        if ctx.cancelled:  # born cancelled (the run context already was)
            self._mark_stopping(record, now)
        if record.running_event is not None:
            record.changed()

    def _execute(self, record: _Record, ctx: Context) -> None:
        """The body of every execute greenlet: run the task, then judge the outcome."""
        try:
            if self._subscribers or self._forward is not None:
                self._emit("started", record.name, None)
            record.execute(ctx)
        except BaseException as exc:  # noqa: BLE001 - classified below
            self._finished(record, exc, ctx)
        else:
            self._finished(record, None, ctx)

    # -- judging an outcome ---------------------------------------------------------

    def _finished(self, record: _Record, exc: BaseException | None, ctx: Any) -> None:
        if record.abandoned:
            # Its StopTimeout is recorded; what it raises while run() has not returned
            # yet is recorded too (SPEC §9), after that nothing is.
            if exc is not None and not isinstance(exc, GreenletExit) and self._phase is not _Phase.DONE:
                self._record_error(record, exc, Stage.EXECUTE)
                self._emit("failed", record.name, exc)
            return
        record.stopped_at = self._now()
        del self._running[record]
        if self._watches:
            self._left(record)
        stopping = record.stop_requested or self._run_cancelled()
        task_cancelled = ctx is not None and ctx.cancelled
        if record.killed is not None:
            # Killed after stop_timeout: one StopTimeout, then whatever it raised dying.
            self._fail(record, StopTimeout(record.killed), Stage.EXECUTE)
            if exc is not None and not isinstance(exc, GreenletExit):
                self._record_error(record, exc, Stage.EXECUTE)
            self._count_stop_group(record)
        elif exc is None or (task_cancelled and isinstance(exc, GreenletExit)):
            if stopping:
                record.state = TaskState.STOPPED
                self._emit("stopped", record.name, None)
                if record.task_type is TaskType.STOP_GROUP:
                    self._count_stop_group(record)
            else:
                self._returned_early(record)
        elif stopping:
            self._fail(record, exc, Stage.EXECUTE)
            self._count_stop_group(record)
        elif record.restart is not None:
            self._restart_or_give_up(record, exc, Stage.EXECUTE)
        else:
            self._fail(record, exc, Stage.EXECUTE)
            self._policy_failure(record, exc, Stage.EXECUTE)
        if ctx is not None:
            _release(ctx)
        if record.kind == "execute" and not record.restart_pending:
            # The record and its context refer to each other: break the cycle, so a
            # finished execute task is freed by reference counting, not by the GC
            # (with 100,000 short tasks that is the difference between 48 collections
            # and 2,500).
            record.ctx = None
            self._forget_finished_execute(record)
        if record.done_event is not None or record.running_event is not None:
            record.changed()

    def _returned_early(self, record: _Record) -> None:
        """A clean return before cancellation: the policy table's right-hand column."""
        action = POLICIES[record.task_type, False]
        restart = record.restart
        if restart is not None and (action.record_unexpected_stop or restart.on == "always"):
            failure = UnexpectedStop(UNEXPECTED_STOP) if action.record_unexpected_stop else None
            self._restart_or_give_up(record, failure, Stage.EXECUTE)
        elif action.record_unexpected_stop:
            error = UnexpectedStop(UNEXPECTED_STOP)
            self._fail(record, error, Stage.EXECUTE)
            self._policy_failure(record, error, Stage.EXECUTE)
        else:
            record.state = TaskState.STOPPED
            self._emit("stopped", record.name, None)
            if action.counts_for_stop_group:
                self._count_stop_group(record)

    def _policy_failure(self, record: _Record, error: BaseException, stage: Stage) -> None:
        """A failure before cancellation: cancel all (the task's policy, every type)."""
        if record.task_type is TaskType.STOP_GROUP and not record.stop_counted:
            record.stop_counted = True
            self._stop_group_left -= 1
        if self._run_cancelled():
            return
        self._stop_stage = stage
        reason = StopReason("policy", record.name, error)
        cause: BaseException = error
        if isinstance(error, _SubtreeFailed):
            inner = error.reason
            if inner is not None and inner.task_name is not None:
                reason = StopReason("policy", f"{record.name}/{inner.task_name}", inner.error)
            elif error.first is not None:
                reason = StopReason("policy", record.name, error.first)
            if reason.error is not None:
                cause = reason.error
        self._cancel_run(reason, cause)

    def _forget_finished_execute(self, record: _Record) -> None:
        finished = self._finished_executes
        finished.append(record.seq)
        if len(finished) > _base.FINISHED_EXECUTE_HISTORY:
            self._records.pop(finished.popleft(), None)

    # -- restarts (SPEC §11) ----------------------------------------------------------

    def _restart_or_give_up(self, record: _Record, failure: BaseException | None, stage: Stage) -> None:
        """Restart ``record`` within its budget, or record one RestartLimitExceeded."""
        restart = record.restart
        assert restart is not None
        now = self._now()
        if record.intensity is None:
            record.intensity = _Intensity(restart)
            if restart.backoff is not None:
                record.backoff = copy.copy(restart.backoff)
                record.backoff.reset()
        shown = failure.first if isinstance(failure, _SubtreeFailed) else failure
        if not record.intensity.allow(now):
            error = RestartLimitExceeded(
                f"task {record.name!r} failed {restart.max_restarts + 1} times within {restart.within}s; not restarting"
            )
            error.__cause__ = shown
            record.restart_pending = False
            self._fail(record, error, stage)
            self._policy_failure(record, error, stage)
            return
        delay = 0.0
        backoff = record.backoff
        if backoff is not None:
            started = record.started_at
            if stage is Stage.EXECUTE and started is not None and now - started >= restart.within:
                backoff.reset()  # that run lasted `within`: a fresh start, not a crash loop
            delay = backoff.next_delay()
        record.restart_pending = True
        count = record.intensity.in_window(now)
        if shown is not None and not isinstance(failure, _SubtreeFailed):
            self._count_error(record.name, stage, shown)
        if shown is not None:
            record.state = TaskState.FAILED
            record.error = shown
            who, where = record.name, stage
            if isinstance(failure, _SubtreeFailed) and failure.errors:  # name the nested task that failed
                who, where = f"{record.name}/{failure.errors[0].task_name}", failure.errors[0].stage
            root, who = self._where(who)
            logger.error(
                "%s: task %r failed in %s: %s; restart %d of at most %d within %ss in %ss",
                root,
                who,
                where.value,
                safe_repr(shown),
                count,
                restart.max_restarts,
                restart.within,
                round(delay, 3),
                exc_info=shown,
            )
            self._emit("failed", record.name, shown)
        else:
            record.state = TaskState.STOPPED
            logger.info(
                "%s: task %r returned; restart %d of at most %d within %ss in %ss",
                *self._where(record.name),
                count,
                restart.max_restarts,
                restart.within,
                round(delay, 3),
            )
            self._emit("stopped", record.name, None)
        self._helpers.spawn(self._restart_cycle, record, delay, shown).name = record.name

    def _restart_cycle(self, record: _Record, delay: float, failure: BaseException | None) -> None:
        """A manager greenlet: cleanup -> RESTARTING (wait) -> initialize/execute again."""
        if record.kind == "task" and record.initialized:
            self._cleanup_one(record, restarting=True)
        if self._restart_cancelled(record):
            self._end_restart(record, failure)
            return
        record.state = TaskState.RESTARTING
        record.restarts += 1
        self._emit("restarting", record.name, failure)
        record.changed()
        self._restart_wait(record, delay)
        if self._restart_cancelled(record):
            self._end_restart(record, failure)
            return
        if record.kind == "task":
            self._enqueue_initialize(record)  # stays RESTARTING until its turn
        else:
            record.restart_pending = False
            self._start(record)

    def _restart_cancelled(self, record: _Record) -> bool:
        return record.stop_requested or self._run_cancelled()

    def _restart_wait(self, record: _Record, delay: float) -> None:
        """The backoff wait; cancellation of the manager or ``handle.stop()`` ends it at once."""
        run_ctx = self._ctx
        assert run_ctx is not None
        waits: list[Any] = [run_ctx]
        if record.ctx is not None:
            waits.append(record.ctx)  # handle.stop() cancels it
        if delay <= 0:
            gevent.idle()  # still yield to the hub: a crash loop cannot freeze the process
            return
        timer_ctx, cancel = with_deadline(background(self._clock), self._now() + delay)
        try:
            gevent.wait([*waits, timer_ctx], count=1)
        finally:
            cancel()

    def _end_restart(self, record: _Record, failure: BaseException | None) -> None:
        """A restart cycle ended by cancellation: the task is finished for good."""
        record.restart_pending = False
        if record.kind == "task":
            record.state = TaskState.DONE  # its cleanup already ran in the cycle
        else:
            record.state = TaskState.FAILED if failure is not None else TaskState.STOPPED
            self._forget_finished_execute(record)
        record.changed()

    # -- initializing ---------------------------------------------------------------

    def _initialize_one(self, record: _Record) -> tuple[_Outcome, list[BaseException]]:
        """Initialize ``record`` with a fresh task context; errors are returned, not recorded."""
        ctx = self._new_context(record)
        record.state = TaskState.INITIALIZING
        self._emit("initializing", record.name, None)
        errors = self._run_stage(record, record.task.initialize, ctx, self._initialize_timeout, Stage.INITIALIZE)
        record.initialized = True  # owed one cleanup, a failed initialize included (§3)
        if not errors:
            self._emit("initialized", record.name, None)
            return _Outcome.OK, []
        if isinstance(errors[0], GreenletExit) and ctx.cancelled:
            return _Outcome.CANCELLED, []  # shutdown during startup is clean (§15)
        return _Outcome.FAILED, errors

    def _record_stage_errors(self, record: _Record, errors: list[BaseException], stage: Stage) -> None:
        record.state = TaskState.FAILED
        for exc in errors:
            self._record_error(record, exc, stage)
        self._emit("failed", record.name, errors[0])

    def _enqueue_initialize(self, record: _Record) -> None:
        self._init_queue.append(record)
        if self._initializer is None:
            self._initializer = self._helpers.spawn(self._run_initializer)
            self._initializer.name = f"{self._name}: initializer"

    def _run_initializer(self) -> None:
        """One manager greenlet drains the queue: runtime initializations never overlap."""
        queue = self._init_queue
        try:
            while queue:
                record = queue.popleft()
                if self._run_cancelled() or record.stop_requested:
                    self._skip_initialize(record)
                else:
                    self._initialize_at_runtime(record)
        finally:
            self._initializer = None

    def _skip_initialize(self, record: _Record) -> None:
        if record.restart_pending:
            self._end_restart(record, record.error)
        else:
            record.never = True  # stays PENDING, done
            record.changed()

    def _initialize_at_runtime(self, record: _Record) -> None:
        outcome, errors = self._initialize_one(record)
        if outcome is _Outcome.OK and not self._restart_cancelled(record):
            record.restart_pending = False
            self._start(record)
            return
        if outcome is _Outcome.FAILED and not self._restart_cancelled(record):
            if record.restart is not None:
                self._restart_or_give_up(record, errors[0], Stage.INITIALIZE)
                return
            record.restart_pending = False
            self._record_stage_errors(record, errors, Stage.INITIALIZE)
            self._cleanup_one(record)  # goasync's rule: the failed task's own cleanup
            self._policy_failure(record, errors[0], Stage.INITIALIZE)
            record.changed()
            return
        # Stopped or cancelled meanwhile: never executes.
        record.restart_pending = False
        if errors:
            self._record_stage_errors(record, errors, Stage.INITIALIZE)
        else:
            record.state = TaskState.STOPPED
        if record.stop_requested:
            self._cleanup_one(record)  # leaves the order; the manager's cleanup skips it
        record.changed()
