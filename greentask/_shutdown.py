"""Stopping tasks: the run context's cancel hook, ``handle.stop()``, stop orders, kills.

Cancellation is cooperative first (SPEC §8: cancelling a context wakes every waiter in
O(N); ``kill`` is the fallback). One routine, `_Shutdown._reap`, waits for a set of
execute greenlets to finish, kills those still running at their ``stop_timeout``
(per task: its own, else the manager's; the budget counts from the moment its context
was cancelled), and abandons any that still refuse to die after another
``stop_timeout``. It is used by

- the whole-manager stop under `StopOrder.TOGETHER` (every task at once),
- `StopOrder.REVERSE` (SPEC §10): execute tasks at once, then each task from
  ``add_task`` in reverse add order, the next one cancelled only once the previous one
  is gone,
- ``handle.stop()`` of one running task (SPEC §9), in a manager greenlet, followed by
  that task's cleanup.

The forced stop (`gt.run`'s second signal) makes every ``_reap`` kill at once, and kills
the initialize or cleanup running at that moment and the ``on_cancel`` callbacks that
shutdown waits for (`_await_callbacks`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event
from greenlet import GreenletExit

from ._base import _get_ident, _ManagerCore, _Phase, _Watch
from ._record import _Record
from ._stages import _Stages
from ._types import StopOrder, TaskType
from .context import _own_state, background, with_deadline, without_cancel
from .errors import Stage, StopReason, StopTimeout, TaskState

logger = logging.getLogger("greentask")

__all__ = ["_Shutdown"]


class _Shutdown(_Stages, _ManagerCore):
    # -- the run context's cancellation ---------------------------------------------

    def _on_cancelled(self) -> None:
        """Synchronous hook: the run context has just been cancelled, by anyone."""
        ctx = self._ctx
        assert ctx is not None
        if self._stop_reason is None:
            self._stop_reason = StopReason("context", None, ctx.cause if ctx.cause is not ctx.err else None)
        if self._phase is _Phase.EXECUTING:
            self._phase = _Phase.STOPPING
        logger.info("%s: shutting down: %s", self._name, self._stop_description())
        # Mark what is being stopped now (TOGETHER: every task; REVERSE: the execute
        # tasks) STOPPING with its stop deadline, before any task is woken: the wake-ups
        # are hub callbacks that run after this hook.
        now = self._now()
        together = self._stop_order is StopOrder.TOGETHER
        default = self._stop_timeout
        running, stopping = TaskState.RUNNING, TaskState.STOPPING
        for record in self._running:  # _mark_stopping inlined: 100,000 tasks come through here
            if record.stop_requested:
                continue
            if together or record.kind == "execute":
                # Execute tasks' contexts are cancelled with the run context (shared or
                # child state); under REVERSE the tasks' wait for their turn.
                if record.state is running:
                    record.state = stopping
                timeout = default if record.stop_timeout is None else record.stop_timeout
                record.stop_deadline = None if timeout is None else now + timeout
        # Runtime tasks still queued for initialize are never initialized (SPEC §9).
        queue = self._init_queue
        while queue:
            self._skip_initialize(queue.popleft())
        self._emit("cancelled", None, ctx.cause)

    def _cancel_task(self, record: _Record, cause: BaseException | None) -> None:
        """Cancel one task's context alone (a shared execute-task context is split first)."""
        if record.cancel is not None:
            record.cancel(cause)
        elif record.ctx is not None:
            state = _own_state(record.ctx)
            if state is not None:
                state.cancel(cause)

    def _mark_stopping(self, record: _Record, now: float) -> None:
        if record.state is TaskState.RUNNING:
            record.state = TaskState.STOPPING
        timeout = self._timeout_for(record)
        record.stop_deadline = None if timeout is None else now + timeout

    # -- stopping one task by its handle --------------------------------------------

    def _stop_record(self, record: _Record, cause: BaseException | None) -> None:
        """`TaskHandle.stop`: in the hub's thread it has taken effect when this returns."""
        hub = self._hub
        if hub is not None and _get_ident() != self._thread_id:
            hub.loop.run_callback_threadsafe(self._stop_in_hub, record, cause)
            return
        self._stop_in_hub(record, cause)

    def _stop_in_hub(self, record: _Record, cause: BaseException | None) -> None:
        if record.stop_requested or record.is_done():
            return
        phase = self._phase
        if phase is _Phase.NEW:
            record.stop_requested = True
            self._drop(record)
            return
        if self._run_cancelled() or phase not in (_Phase.INITIALIZING, _Phase.EXECUTING):
            return  # the manager's own shutdown takes care of it
        record.stop_requested = True
        state = record.state
        if state is TaskState.PENDING:
            self._drop(record)  # queued: never initialized or started
        elif state is TaskState.INITIALIZING:
            self._count_stop_group(record)
            self._cancel_task(record, cause)  # whoever runs the initialize cleans up once it returned
        elif state is TaskState.RUNNING:
            self._mark_stopping(record, self._now())
            self._cancel_task(record, cause)
            self._count_stop_group(record)
            self._helpers.spawn(self._stop_running, record).name = record.name
        elif state in (TaskState.STOPPED, TaskState.FAILED) and record.kind == "task":
            if record.restart_pending:
                self._cancel_task(record, cause)  # the restart cycle sees stop_requested
            else:
                self._helpers.spawn(self._cleanup_now, record).name = record.name
        else:
            # RESTARTING or CLEANING_UP in a restart cycle: it ends the cycle.
            self._cancel_task(record, cause)
        record.changed()

    def _drop(self, record: _Record) -> None:
        """A task stopped before it started: never initialized or executed."""
        record.never = True
        record.state = TaskState.DONE if record.kind == "task" else TaskState.STOPPED
        self._count_stop_group(record)
        record.changed()

    def _count_stop_group(self, record: _Record) -> None:
        """A STOP_GROUP task counts once towards "every STOP_GROUP task has returned"."""
        if record.task_type is not TaskType.STOP_GROUP or record.stop_counted:
            return
        record.stop_counted = True
        self._stop_group_left -= 1
        self._stop_group_last = record.name
        if self._stop_group_left == 0 and self._phase is _Phase.EXECUTING:
            self._cancel_run(StopReason("policy", record.name, None), None)

    def _stop_running(self, record: _Record) -> None:
        """A manager greenlet: wait for (or kill) one stopped task, then clean it up."""
        self._reap([record], self._now())
        if record.kind == "task" and record.initialized:
            self._cleanup_now(record)

    def _cleanup_now(self, record: _Record) -> None:
        """Clean up a task that left the shutdown order (stopped by its handle)."""
        if not record.initialized:
            return
        self._cleanup_one(record)
        record.changed()

    def _cleanup_one(self, record: _Record, *, restarting: bool = False) -> None:
        """Run one task's cleanup (bounded by cleanup_timeout); it is owed no other.

        The task is DONE after it, unless ``restarting``: then it goes on from
        CLEANING_UP to RESTARTING (SPEC §11), never DONE in between.
        """
        if record.stop_requested:
            # Stopped alone: its contexts' on_cancel callbacks first, as the manager's
            # cleanup phase waits for all of them (SPEC §15).
            self._callbacks_started()
            if record.callbacks is not None:
                self._await_callbacks(
                    record.callbacks, self._timeout_for(record), f"{self._name}: task {record.name!r}"
                )
        record.initialized = False
        record.state = TaskState.CLEANING_UP
        self._emit("cleaning_up", record.name, None)
        assert record.ctx is not None
        errors = self._run_stage(
            record, record.task.cleanup, without_cancel(record.ctx), self._cleanup_timeout, Stage.CLEANUP
        )
        for exc in errors:
            self._record_error(record, exc, Stage.CLEANUP)
        if errors:
            self._emit("failed", record.name, errors[0])
        if not restarting:
            record.state = TaskState.DONE
        self._emit("cleaned_up", record.name, None)

    # -- on_cancel callbacks (SPEC §15) -------------------------------------------------

    def _callbacks_started(self) -> None:
        """Return once the on_cancel callbacks of the cancellations so far have started
        (a cancellation starts them from hub callbacks, which run in order)."""
        started = Event()
        self._hub.loop.run_callback(started.set)
        with contextlib.suppress(BaseException):
            started.wait()

    def _await_callbacks(self, group: Any, timeout: float | None, whose: str) -> None:
        """Wait for these on_cancel callbacks up to ``timeout`` (None: no limit) or a forced
        stop; kill those still running then, with an ERROR line."""
        if not len(group):
            return
        joiner = gevent.spawn(group.join)
        waits: list[Any] = [joiner, self._forced]
        cancel = None
        if timeout is not None:
            timer_ctx, cancel = with_deadline(background(self._clock), self._now() + timeout)
            waits.append(timer_ctx)
        interrupted = False
        try:
            gevent.wait(waits, count=1)
        except BaseException as exc:  # noqa: BLE001 - an interruption: stop waiting for them
            self._keep_fatal(exc)
            interrupted = True
        finally:
            if cancel is not None:
                cancel()
        left = len(group)
        if left:
            if self._forced.is_set():
                when = "when the shutdown was forced"
            elif interrupted:
                when = "when the wait for them was interrupted"
            else:
                when = f"after waiting stop_timeout ({timeout}s) for them"
            logger.error("%s: %d on_cancel callback(s) still running %s; killed", whose, left, when)
            group.kill(block=True, timeout=1.0)
        joiner.kill(block=True, timeout=1.0)

    # -- the manager's stop ---------------------------------------------------------

    def _stop_executes(self) -> None:
        """Phase 3: every execute has finished (or was abandoned) when this returns."""
        if self._stop_order is StopOrder.TOGETHER:
            self._reap(None, self._now())
            return
        # REVERSE: execute tasks first, all at once (cancelled by the hook) ...
        self._reap([r for r in self._running if r.kind == "execute"], self._now())
        # ... then each task from add_task still executing, in reverse add order.
        cause = None if self._ctx is None else self._ctx.cause
        for record in reversed(self._order):
            if record not in self._running or record.stop_requested:
                continue
            if self._forced.is_set():
                break
            self._mark_stopping(record, self._now())
            self._cancel_task(record, cause)
            self._reap([record], self._now())
        remaining = list(self._running)
        now = self._now()
        for record in remaining:  # forced: everything still executing at once
            if not record.stop_requested:
                self._mark_stopping(record, now)
                self._cancel_task(record, cause)
        self._reap(remaining, now)

    def _force(self) -> None:
        """Force the stop (gt.run's second signal): kill what runs now, at once.

        Executes still running are killed (each a `StopTimeout`), as are the initialize
        or cleanup running at this moment and the on_cancel callbacks being waited for;
        cleanup still runs for the others.
        """
        self._forced.set()
        self._cancel_run(StopReason("stop", None, None), None)
        self._force_stages()

    def _reap(self, records: list[_Record] | None, cancelled_at: float) -> None:
        """Wait for these executes (None: every one running); kill each at its
        stop_timeout; abandon the undying."""
        running = self._running
        if records is None:
            watch = _Watch(None, Event())  # "until nothing runs": no per-task set to build
            if not running:
                return
        else:
            watch = _Watch({r for r in records if r in running}, Event())
            if not watch.remaining:
                return
        self._watches.append(watch)
        try:
            self._reap_watch(watch, cancelled_at)
        finally:
            self._watches.remove(watch)

    def _alive(self, watch: _Watch) -> Collection[_Record]:
        return self._running if watch.remaining is None else watch.remaining

    def _reap_watch(self, watch: _Watch, cancelled_at: float) -> None:
        # Kill plan: the manager's stop_timeout for the tasks without their own (found
        # when it is due, no per-task list), and one bucket per task-level stop_timeout.
        default = self._stop_timeout
        buckets: dict[float, list[_Record] | None] = {} if default is None else {default: None}
        for record in self._alive(watch):
            own = record.stop_timeout
            if own is not None:
                bucket = buckets.get(own)
                if bucket is None:
                    buckets[own] = bucket = []
                bucket.append(record)
        kills = sorted(buckets.items(), key=lambda item: item[0])  # earliest deadline first
        graces: list[tuple[float, float, list[_Record], str]] = []  # (deadline, grace, records, when)
        forced_done = False
        while self._alive(watch):
            if self._forced.is_set() and not forced_done:
                forced_done = True
                victims = [r for r in self._alive(watch) if r.killed is None]
                message = "was still running when shutdown was forced"
                grace = self._kill(victims, message)
                graces.append((self._now() + grace, grace, victims, "when shutdown was forced"))
                kills = []
                continue
            deadlines = [cancelled_at + kills[0][0]] if kills else []
            deadlines += [g[0] for g in graces]
            deadline = min(deadlines) if deadlines else None
            self._wait_watch(watch, deadline, honour_force=not forced_done)
            alive = self._alive(watch)
            if not alive:
                return
            now = self._now()
            while kills and cancelled_at + kills[0][0] <= now:
                timeout, bucket = kills.pop(0)
                if bucket is None:  # the manager's default
                    victims = [r for r in alive if r.stop_timeout is None and r.killed is None]
                else:
                    victims = [r for r in bucket if r in alive and r.killed is None]
                if victims:
                    self._kill(victims, f"did not stop within {timeout}s of cancellation")
                    graces.append((self._now() + timeout, timeout, victims, f"within {timeout}s of cancellation"))
            for entry in [g for g in graces if g[0] <= now]:
                graces.remove(entry)
                _, grace, victims, when = entry
                for record in victims:
                    if record in self._alive(watch):
                        self._abandon(record, grace, when)

    def _kill(self, victims: list[_Record], message: str) -> float:
        """Queue a GreenletExit into each; return once they are delivered (the grace start)."""
        grace = 1.0
        for record in victims:
            record.killed = f"task {record.name!r} {message}; killed"
            timeout = self._timeout_for(record)
            if timeout:
                grace = timeout
            greenlet = record.greenlet
            assert greenlet is not None
            greenlet.kill(block=False)
            if greenlet.dead and record in self._running:
                # Killed before it started: the wrapper will never run; finish it here.
                self._finished(record, GreenletExit(), record.ctx)
        # kill(block=False) only queues each GreenletExit, and delivering 100,000 of them
        # takes far longer than a short stop_timeout: the grace period starts once they
        # are all delivered. Hub callbacks run in order, so this marker runs last.
        delivered = Event()
        self._hub.loop.run_callback(delivered.set)
        try:
            delivered.wait()
        except BaseException as exc:  # noqa: BLE001 - a further interruption: go on to the grace period
            self._keep_fatal(exc)
        return grace

    def _abandon(self, record: _Record, grace: float, when: str) -> None:
        del self._running[record]
        self._left(record)
        record.abandoned = True
        record.stopped_at = self._now()
        # One StopTimeout per task: this one replaces the "killed" one, never added to it.
        message = f"task {record.name!r} did not stop {when} nor die within {grace}s of GreenletExit; abandoned"
        self._fail(record, StopTimeout(message), Stage.EXECUTE)
        logger.error("%s: abandoned task %r: its greenlet refuses to die", *self._where(record.name))
        record.changed()

    def _left(self, record: _Record) -> None:
        """An execute greenlet finished (or was abandoned): tell the watches waiting for it."""
        for watch in self._watches:
            remaining = watch.remaining
            if remaining is None:
                if not self._running:
                    watch.event.set()
            elif record in remaining:
                remaining.discard(record)
                if not remaining:
                    watch.event.set()

    def _wait_watch(self, watch: _Watch, deadline: float | None, *, honour_force: bool) -> None:
        waits: list[Any] = [watch.event]
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
            self._force()
        finally:
            if timer_cancel is not None:
                timer_cancel()

    if TYPE_CHECKING:

        def _finished(self, record: _Record, exc: BaseException | None, ctx: Any) -> None: ...
        def _skip_initialize(self, record: _Record) -> None: ...
