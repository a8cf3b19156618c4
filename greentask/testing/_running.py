"""start_manager(): run a `TaskManager` in a background greenlet and observe it.

`RunningManager` follows the manager through its own events (``manager.subscribe``),
never by polling: ``wait_running`` wakes on the "started" event of the last execute
that was due to start when the execute phase began.
"""

from __future__ import annotations

import logging
from typing import Any

import gevent
from gevent.event import Event

from ..context import Context
from ..errors import ManagerEvent, ManagerStateError, NamedError, TaskState
from ..manager import TaskManager
from ._harness import DEFAULT_CLOSE_TIMEOUT, check_timeout

__all__ = ["RunningManager", "start_manager"]

logger = logging.getLogger("greentask")

_FINISHED = (TaskState.DONE, TaskState.STOPPED, TaskState.FAILED)


class RunningManager:
    """A `TaskManager` running in a background greenlet; made by `start_manager`.

    As a context manager it stops the manager and waits for `run` to return on exit,
    raising `TimeoutError` if that takes more than ``close_timeout`` real seconds
    (default 5.0).

    Attributes:
        manager: the manager being run.
        greenlet: the greenlet calling ``manager.run(ctx)``.
        events: every `ManagerEvent` the manager emitted so far, in order.
        close_timeout: real seconds the ``with`` block's exit waits (default 5.0).
    """

    def __init__(self, manager: TaskManager, ctx: Context | None) -> None:
        self.manager = manager
        self.events: list[ManagerEvent] = []
        self._expected: int | None = None  # executes due to start when execution began
        self._started = 0
        self._running = Event()
        self._pending_stop: list[BaseException | None] = []
        self._errors: list[NamedError] | None = None
        self._raised: BaseException | None = None
        self.close_timeout: float = DEFAULT_CLOSE_TIMEOUT
        self._unsubscribe = manager.subscribe(self._on_event)
        self.greenlet: gevent.Greenlet[..., Any] = gevent.Greenlet(self._run, ctx)
        self.greenlet.name = f"start_manager({manager.name!r})"
        self.greenlet.start()

    def _run(self, ctx: Context | None) -> None:
        try:
            self._errors = self.manager.run(ctx)
        except BaseException as exc:  # noqa: BLE001 - handed to wait()
            self._raised = exc
        finally:
            self._unsubscribe()

    def _on_event(self, event: ManagerEvent) -> None:
        self.events.append(event)
        if self._pending_stop:
            # stop() was called before run() began; now the manager can take it.
            cause = self._pending_stop.pop()
            self.manager.stop(cause)
        kind = event.kind
        if kind == "executing":
            # Every task and queued execute task is about to be started, except those
            # dropped by their handle's stop() (already finished).
            self._expected = sum(1 for row in self.manager.status() if row.state not in _FINISHED)
        elif kind == "started":
            self._started += 1
        if self._expected is not None and self._started >= self._expected:
            self._running.set()

    @property
    def done(self) -> bool:
        """True once ``run`` has returned (or raised)."""
        return self.greenlet.dead

    def stop(self, cause: BaseException | None = None) -> None:
        """Ask the manager to shut down (`TaskManager.stop`); does not wait.

        Works even before the background greenlet has begun ``run``: the stop is
        then applied as soon as it does (during the initialize phase).

        Raises:
            TypeError: ``cause`` is not an exception or None.
        """
        if cause is not None and not isinstance(cause, BaseException):
            msg = f"cause must be an exception or None, got {cause!r}"
            raise TypeError(msg)
        if self.manager.phase == "new" and not self.greenlet.dead:
            self._pending_stop[:] = [cause]
        else:
            self.manager.stop(cause)

    def wait(self, timeout: float | None = None) -> list[NamedError]:
        """Wait for ``run`` to return; return its errors (``[]`` when all went well).

        Args:
            timeout: the most *real* seconds to wait; None waits forever.

        Raises:
            TimeoutError: ``run`` has not returned within ``timeout`` seconds.
            BaseException: what ``run`` raised (a task's ``KeyboardInterrupt`` or
                ``SystemExit``).
        """
        timeout = check_timeout("timeout", timeout)
        self.greenlet.join(timeout)
        if not self.greenlet.dead:
            msg = f"task manager {self.manager.name!r} did not finish within {timeout}s (phase {self.manager.phase!r})"
            raise TimeoutError(msg)
        if self._raised is not None:
            raise self._raised
        return list(self._errors or [])

    def wait_running(self, timeout: float | None = None) -> None:
        """Wait until every execute has been started (the manager is fully running).

        "Started" means its greenlet has begun running the task's ``execute``: every
        task from ``add_task`` and every execute task queued before the execute phase,
        except those a handle's ``stop()`` dropped before they started.

        Args:
            timeout: the most *real* seconds to wait; None waits forever.

        Raises:
            TimeoutError: not every execute has started within ``timeout`` seconds
                (an ``initialize`` may be blocked, say on a `FakeClock`).
            RuntimeError: ``run`` finished before that (an ``initialize`` failed, or
                the manager was stopped while initializing).
        """
        timeout = check_timeout("timeout", timeout)
        if not self._running.is_set():
            waitables: list[Any] = [self._running, self.greenlet]
            gevent.wait(waitables, timeout=timeout, count=1)
        if self._running.is_set():
            return
        if self.greenlet.dead:
            msg = (
                f"task manager {self.manager.name!r} finished before every execute started; "
                f"errors: {[str(error) for error in self._errors or []]!r}"
            )
            raise RuntimeError(msg)
        msg = f"task manager {self.manager.name!r} did not start every execute within {timeout}s"
        raise TimeoutError(msg)

    def __enter__(self) -> RunningManager:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.stop()
        try:
            self.wait(self.close_timeout)
        except TimeoutError:
            if exc is None:
                raise
            logger.warning("greentask: %r did not finish when its RunningManager closed", self.manager)
        except BaseException:
            if exc is None:
                raise

    def __repr__(self) -> str:
        return f"<RunningManager {self.manager!r}>"


def start_manager(manager: TaskManager, ctx: Context | None = None) -> RunningManager:
    """Run ``manager.run(ctx)`` in a background greenlet and return a handle to it.

    The greenlet starts on the caller's next yield to the hub. Use
    `RunningManager.wait_running` to wait until every execute has started,
    `RunningManager.stop` to shut the manager down, and `RunningManager.wait` to get
    the errors ``run`` returned. Pass a context on a `FakeClock` to drive the
    manager's timeouts with fake time.

    Args:
        manager: a `TaskManager` that has not run yet.
        ctx: the parent context for ``run`` (default ``gt.background()``).

    Raises:
        TypeError: ``manager`` is not a `TaskManager` or ``ctx`` is not a Context.
        ManagerStateError: the manager is running or has already run.

    Example::

        clock = FakeClock()
        running = start_manager(manager, gt.background(clock))
        running.wait_running(timeout=5)
        running.stop()
        assert running.wait(timeout=5) == []
    """
    if not isinstance(manager, TaskManager):
        msg = f"manager must be a TaskManager, got {manager!r}"
        raise TypeError(msg)
    if ctx is not None and not isinstance(ctx, Context):
        msg = f"ctx must be a greentask Context or None, got {ctx!r}"
        raise TypeError(msg)
    phase = manager.phase
    if phase != "new":
        state = "has already shut down" if phase == "done" else "is already running"
        msg = f"task manager {state}; will not run again"
        raise ManagerStateError(msg)
    return RunningManager(manager, ctx)
