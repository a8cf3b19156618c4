"""`TaskHandle`: what ``add_task`` / ``add_execute_task`` return (SPEC §9).

A handle is a thin view on the manager's record of one task: it reads the record's
state, waits on it, and asks the manager to stop that task alone. It keeps working
after the task is done and after `run` returned (for ``status``, ``error``...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import TaskState, TaskStatus

if TYPE_CHECKING:
    from ._record import _Record
    from .manager import TaskManager

__all__ = ["TaskHandle"]


class TaskHandle:
    """One task of a `TaskManager`: observe it, wait for it, stop it alone.

    Returned by `TaskManager.add_task` and `TaskManager.add_execute_task`; never made
    directly.

    Example::

        handle = manager.add_task("consumer", Consumer(queue))
        ...
        handle.stop()          # from any greenlet or OS thread; returns at once
        handle.wait(timeout=5) # True once it is cleaned up
    """

    __slots__ = ("_manager", "_record")

    def __init__(self, manager: TaskManager, record: _Record) -> None:
        self._manager = manager
        self._record = record

    @property
    def name(self) -> str:
        """The name given when the task was added."""
        return self._record.name

    @property
    def kind(self) -> str:
        """``"task"`` (from ``add_task``) or ``"execute"`` (from ``add_execute_task``)."""
        return self._record.kind

    def status(self) -> TaskStatus:
        """This task's snapshot, the same shape as a row of `TaskManager.status`."""
        return self._record.snapshot()

    @property
    def state(self) -> TaskState:
        """Shorthand for ``status().state``."""
        return self._record.state

    @property
    def error(self) -> BaseException | None:
        """The first error recorded for this task (a restarted failure is not recorded)."""
        return self._record.first_error

    @property
    def restarts(self) -> int:
        """How many times this task was restarted by its ``restart`` policy."""
        return self._record.restarts

    @property
    def done(self) -> bool:
        """Finished for good.

        A task from ``add_task`` is DONE (cleaned up, or dropped by `stop`) or will never
        be initialized (skipped after an earlier initialize failed); an execute task is
        STOPPED or FAILED. A task about to be restarted is not done.
        """
        return self._record.is_done()

    def wait(self, timeout: float | None = None) -> bool:
        """Block the calling greenlet until `done`.

        Args:
            timeout: seconds on the manager's context clock once `run` has started
                (the real clock before); None waits as long as it takes.

        Returns:
            True once done, False if ``timeout`` passed first.

        Raises:
            TypeError, ValueError: ``timeout`` is not a non-negative number or None.
        """
        return self._manager._wait_record(self._record, timeout, running=False)

    def wait_running(self, timeout: float | None = None) -> bool:
        """Block until this task's execute has started (state RUNNING).

        Returns:
            True once it started; False on timeout (the same clock as `wait`) or if it
            became `done` without ever executing.
        """
        return self._manager._wait_record(self._record, timeout, running=True)

    def stop(self, cause: BaseException | None = None) -> None:
        """Stop this task alone; returns at once. Idempotent; safe from any greenlet or thread.

        - Before its execute started: it never starts; one already initialized (or
          initializing) is cleaned up once its ``initialize`` returned.
        - While it executes: its context is cancelled (``ctx.cause`` is ``cause``); a
          return is a clean stop, a raise is recorded with no policy; after its
          ``stop_timeout`` it is killed (`StopTimeout`). A task from ``add_task`` is
          then cleaned up at once, in a greenlet of the manager, and never again,
          once the ``on_cancel`` callbacks of its context have run (they too get its
          ``stop_timeout``; one still running then is killed and logged).
        - Once it is done, or once the manager is shutting down: no effect.
        - Before `TaskManager.run`: the task is dropped from the run.

        Args:
            cause: becomes ``ctx.cause`` in the task.

        Raises:
            TypeError: ``cause`` is neither an exception nor None.
        """
        if cause is not None and not isinstance(cause, BaseException):
            msg = f"cause must be an exception or None, got {cause!r}"
            raise TypeError(msg)
        self._manager._stop_record(self._record, cause)

    def __repr__(self) -> str:
        return f"<TaskHandle {self._record.name!r} {self._record.kind} {self._record.state.value}>"
