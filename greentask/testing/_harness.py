"""TaskHarness: step one task through initialize / execute / cancel / cleanup by hand.

The harness mirrors what a `greentask.TaskManager` does for one task, but lets the
test decide when each step happens: it owns a run context (a child of ``ctx``, on
``clock``), calls ``initialize`` and ``cleanup`` synchronously in the caller's
greenlet, and runs ``execute`` in a greenlet of its own whose outcome it captures (the
hub never prints a task's error). As in the manager, ``Cancelled``/``GreenletExit``
escaping ``execute`` after the run context was cancelled is a clean stop.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import gevent
from greenlet import GreenletExit

from .._clock import Clock
from ..context import CancelFunc, Context, background, with_cancel, without_cancel

__all__ = ["TaskHarness"]

logger = logging.getLogger("greentask")

#: Real seconds `TaskHarness.close` (and the ``with`` block's exit) gives a cancelled
#: task to return before killing it.
DEFAULT_CLOSE_TIMEOUT = 5.0


def check_timeout(name: str, timeout: object) -> float | None:
    """Validate an optional real-time timeout in seconds."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        msg = f"{name} must be None or a number of seconds, got {timeout!r}"
        raise TypeError(msg)
    if math.isnan(timeout) or timeout < 0:
        msg = f"{name} must be None or a non-negative number of seconds, got {timeout!r}"
        raise ValueError(msg)
    return float(timeout)


def _stage(task: object, name: str) -> Callable[[Context], object] | None:
    fn = getattr(task, name, None)
    return fn if callable(fn) else None


class TaskHarness:
    """Drive one task through its lifecycle in a test, step by step.

    Works with a `greentask.Task` (``initialize``/``execute``/``cleanup``) and with an
    execute-only task (an object with ``execute(ctx)``, or a plain callable
    ``fn(ctx)``): for those, `initialize` and `cleanup` are no-ops that return None.
    In general a stage the task does not have (no callable attribute of that name) is
    a no-op.

    The harness owns a *run context*, `ctx`: a child of ``ctx`` (default
    ``gt.background(clock)``) that `cancel` cancels. ``initialize`` and ``execute``
    get it; ``cleanup`` gets ``gt.without_cancel(ctx)``, as under a `TaskManager`.
    `initialize` and `cleanup` run synchronously in the calling greenlet and return
    what the task's method returns or raise what it raises. `start` runs ``execute``
    in a new greenlet; `wait` joins it.

    As a context manager (``with TaskHarness(task) as h:``) it always cancels the task
    and joins its greenlet on exit (see `close`; the wait is bounded by the
    ``close_timeout`` attribute, 5 real seconds by default). It does not call
    ``cleanup``.

    Args:
        task: the task under test.
        clock: the clock of the run context (a `FakeClock` for deterministic tests);
            default: the real clock, or ``ctx``'s clock.
        ctx: the parent of the run context (for values, or a deadline); default
            ``gt.background(clock)``.

    Raises:
        TypeError: ``task`` is None or has neither ``execute(ctx)`` nor is callable;
            ``ctx`` is not a Context; ``clock`` is not a clock.
        ValueError: both ``clock`` and ``ctx`` are given and ``ctx`` is on another
            clock.

    Example::

        clock = FakeClock()
        with TaskHarness(MyTask(), clock=clock) as harness:
            harness.initialize()
            harness.start()
            clock.advance(10)
            harness.cancel()
            assert harness.wait(timeout=5) is None
            harness.cleanup()
    """

    def __init__(self, task: object, *, clock: Clock | None = None, ctx: Context | None = None) -> None:
        if task is None:
            msg = "task cannot be None"
            raise TypeError(msg)
        execute = _stage(task, "execute")
        if execute is None:
            if not callable(task):
                msg = f"task must have a callable execute(ctx) or be callable, got {task!r}"
                raise TypeError(msg)
            execute = task
        if ctx is not None:
            if not isinstance(ctx, Context):
                msg = f"ctx must be a greentask Context or None, got {ctx!r}"
                raise TypeError(msg)
            if clock is not None and clock is not ctx.clock:
                msg = f"clock must be None or ctx's own clock, got {clock!r} while ctx runs on {ctx.clock!r}"
                raise ValueError(msg)
            parent = ctx
        else:
            parent = background(clock)
        self._task = task
        self._execute = execute
        self._initialize = _stage(task, "initialize")
        self._cleanup = _stage(task, "cleanup")
        run_ctx, cancel = with_cancel(parent)
        self._ctx: Context = run_ctx
        self._cancel: CancelFunc = cancel
        self._greenlet: gevent.Greenlet[..., Any] | None = None
        self._result: object = None
        self._error: BaseException | None = None
        self._killed = False
        #: Real seconds the ``with`` block's exit gives a cancelled task (see `close`).
        self.close_timeout: float = DEFAULT_CLOSE_TIMEOUT

    # -- what the test looks at ---------------------------------------------------

    @property
    def task(self) -> object:
        """The task under test."""
        return self._task

    @property
    def ctx(self) -> Context:
        """The run context given to ``initialize`` and ``execute``."""
        return self._ctx

    @property
    def clock(self) -> Clock:
        """The clock of the run context."""
        return self._ctx.clock

    @property
    def greenlet(self) -> gevent.Greenlet[..., Any] | None:
        """The greenlet running ``execute`` once `start` was called, else None."""
        return self._greenlet

    @property
    def running(self) -> bool:
        """True once started and until ``execute`` has finished."""
        return self._greenlet is not None and not self._greenlet.dead

    @property
    def done(self) -> bool:
        """True once ``execute`` has finished (returned, raised or was killed)."""
        return self._greenlet is not None and self._greenlet.dead

    @property
    def error(self) -> BaseException | None:
        """What ``execute`` raised, once done; None while running or after a clean stop."""
        return self._error if self.done else None

    @property
    def result(self) -> object:
        """What ``execute`` returned, once done; else None."""
        return self._result if self.done else None

    # -- the lifecycle ------------------------------------------------------------

    def initialize(self) -> object:
        """Call the task's ``initialize(ctx)`` in this greenlet; return its result.

        A no-op returning None for a task without ``initialize`` (execute-only tasks).
        Errors propagate to the caller.
        """
        if self._initialize is None:
            return None
        return self._initialize(self._ctx)

    def start(self) -> TaskHarness:
        """Run the task's ``execute(ctx)`` in a new greenlet; return the harness.

        The greenlet runs from the next time the caller yields to the hub (call
        `settle` to let it run until it blocks; `FakeClock.advance` settles first).
        Whatever ``execute`` raises is captured, never printed by the hub: read it
        from `error` or get it raised by `wait`.

        Raises:
            RuntimeError: `start` was already called (execute runs once per harness).
        """
        if self._greenlet is not None:
            msg = "start() was already called; a TaskHarness runs execute only once"
            raise RuntimeError(msg)
        glet = gevent.Greenlet(self._run)
        glet.name = f"TaskHarness({self._task!r})"
        self._greenlet = glet
        glet.start()
        return self

    def _run(self) -> None:
        try:
            self._result = self._execute(self._ctx)
        except BaseException as exc:  # noqa: BLE001 - captured for wait()/error
            if isinstance(exc, GreenletExit) and self._ctx.cancelled and not self._killed:
                return  # a clean stop, as under a TaskManager
            self._error = exc

    def cancel(self, cause: BaseException | None = None) -> None:
        """Cancel the run context (idempotent); ``cause`` becomes ``ctx.cause``.

        Cancellation is cooperative: the task sees ``ctx.cancelled``, ``ctx.wait()``
        returns and so on, when it next runs.

        Raises:
            TypeError: ``cause`` is not an exception or None.
        """
        self._cancel(cause)

    def wait(self, timeout: float | None = None) -> object:
        """Wait until ``execute`` finishes; return its result or raise its error.

        Args:
            timeout: the most *real* seconds to wait; None waits forever. (Fake time
                does not pass while waiting, unless the clock autojumps.)

        Returns:
            what ``execute`` returned (None after a clean stop by cancellation).

        Raises:
            TimeoutError: ``execute`` has not finished within ``timeout`` seconds.
            RuntimeError: `start` has not been called.
            BaseException: whatever ``execute`` raised.
        """
        timeout = check_timeout("timeout", timeout)
        glet = self._greenlet
        if glet is None:
            msg = "start() has not been called; there is nothing to wait for"
            raise RuntimeError(msg)
        glet.join(timeout)
        if not glet.dead:
            msg = f"task {self._task!r} did not finish within {timeout}s"
            raise TimeoutError(msg)
        if self._error is not None:
            raise self._error
        return self._result

    def cleanup(self) -> object:
        """Call the task's ``cleanup`` with ``without_cancel(ctx)``; return its result.

        A no-op returning None for a task without ``cleanup`` (execute-only tasks).
        Errors propagate to the caller.
        """
        if self._cleanup is None:
            return None
        return self._cleanup(without_cancel(self._ctx))

    def close(self, timeout: float | None = None) -> None:
        """Cancel the task and join its greenlet; kill it if it does not stop in time.

        Does not raise the task's error (read `error`), and does not call ``cleanup``.

        Args:
            timeout: the most real seconds to wait after cancelling (default: the
                ``close_timeout`` attribute, 5.0).

        Raises:
            TimeoutError: ``execute`` ignored cancellation for ``timeout`` seconds; it
                has been killed (or, if it refused even that, abandoned).
        """
        timeout_s = check_timeout("timeout", self.close_timeout if timeout is None else timeout)
        self.cancel()
        glet = self._greenlet
        if glet is None or glet.dead:
            return
        glet.join(timeout_s)
        if glet.dead:
            return
        self._killed = True
        glet.kill(block=True, timeout=1.0)
        outcome = "killed" if glet.dead else "it refused to die"
        msg = f"task {self._task!r} did not stop within {timeout_s}s of cancellation; {outcome}"
        raise TimeoutError(msg)

    def __enter__(self) -> TaskHarness:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            self.close()
        except TimeoutError:
            if exc is None:
                raise
            # Do not hide the error that is already leaving the block.
            logger.warning("greentask: %r did not stop when its harness closed", self._task, exc_info=True)

    def __repr__(self) -> str:
        if self._greenlet is None:
            state = "not started"
        elif not self._greenlet.dead:
            state = "running"
        elif self._error is not None:
            state = f"failed: {self._error!r}"
        else:
            state = "done"
        return f"<TaskHarness {self._task!r} {state}>"
