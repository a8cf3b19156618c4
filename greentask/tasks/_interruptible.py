"""Interruptible: restart a task (cleanup, initialize, execute) when an OS signal arrives."""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterable

from greenlet import GreenletExit

from .._signals import SignalWatch, watch_signal
from ..context import CancelFunc, Context, _task_label, with_cancel, without_cancel
from ..errors import UnexpectedStop
from ._common import check_inner_task
from ._wrap import InnerTask, Wrapper

__all__ = ["Interruptible"]

logger = logging.getLogger("greentask")

_UNCATCHABLE = frozenset(s for s in (getattr(signal, "SIGKILL", None), getattr(signal, "SIGSTOP", None)) if s)


def _check_signals(signals: object) -> tuple[signal.Signals | int, ...]:
    if isinstance(signals, int) and not isinstance(signals, bool):
        signals = (signals,)
    if isinstance(signals, str | bytes) or not isinstance(signals, Iterable):
        msg = f"signals must be a signal number or an iterable of them, got {signals!r}"
        raise TypeError(msg)
    valid = signal.valid_signals()
    checked: list[signal.Signals | int] = []
    for signum in signals:
        if isinstance(signum, bool) or not isinstance(signum, int):
            msg = f"signals must hold signal numbers (signal.Signals or int), got {signum!r}"
            raise TypeError(msg)
        if signum not in valid:
            msg = f"signals must hold valid signal numbers, got {signum!r}"
            raise ValueError(msg)
        if signum in _UNCATCHABLE:
            msg = f"signals cannot include {signal.Signals(signum).name}, which cannot be caught, got {signum!r}"
            raise ValueError(msg)
        with contextlib.suppress(ValueError):  # a valid number without a name stays an int
            signum = signal.Signals(signum)
        if signum not in checked:
            checked.append(signum)
    if not checked:
        msg = "signals must name at least one signal, got none"
        raise ValueError(msg)
    return tuple(checked)


def _signal_name(signum: int | None) -> str:
    if signum is None:
        return "an interrupt() call"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class _Run:
    """The state of one `Interruptible.execute` call, shared with its signal handlers."""

    __slots__ = ("cancel_inner", "pending", "signum")

    def __init__(self) -> None:
        self.pending = False
        self.signum: int | None = None
        self.cancel_inner: CancelFunc | None = None

    def interrupt(self, signum: int | None = None) -> None:
        # Runs in the signal handler's greenlet (or the caller of interrupt()): no blocking.
        self.pending = True
        self.signum = signum
        cancel = self.cancel_inner
        if cancel is not None:
            cancel()


class Interruptible(Wrapper):
    """Restart the inner task whenever one of ``signals`` arrives (a reload on SIGHUP).

    While ``execute`` runs it handles ``signals`` with ``gevent.signal_handler``. On a
    signal it cancels the context it gave the inner ``execute`` and, once that returns,
    calls the inner ``cleanup`` (with a never-cancelled context), ``initialize`` and
    ``execute`` again, in this greenlet. So the inner task must honour cancellation to
    be restarted, as in goasync. A signal that arrives during a restart leads to
    another restart right after it (the new execute starts already cancelled).

    - An error from any step (execute, cleanup, initialize) ends ``execute`` with that
      error. A ``Cancelled`` / ``GreenletExit`` from the inner execute after its
      context was cancelled is a clean end of that run.
    - Cancellation of ``ctx`` returns cleanly (after the inner execute returns; if it
      comes during a restart's cleanup, the initialize is skipped).
    - An inner execute that returns with neither a signal nor cancellation raises
      `UnexpectedStop`; it is not restarted.
    - On the way out the signal watchers are cancelled and the handlers that were
      installed before are put back at the OS level with ``signal.signal``, so a
      signal delivered afterwards reaches them.

    The manager calls this wrapper's ``initialize`` and ``cleanup`` once each; they
    call the inner task's. Each inner ``initialize`` gets exactly one inner ``cleanup``:
    when a restart already cleaned up and its initialize never ran (cancellation or a
    failing cleanup ended it), the final ``cleanup`` does not clean up twice.

    Tests can call `interrupt` instead of sending a real signal (oklog/run's test
    signal channel). Signals are an OS-process matter: use it in the main thread,
    and one execute per instance at a time.

    Args:
        signals: a signal number or an iterable of them (e.g. ``[signal.SIGHUP]``).
        task: a `greentask.Task`, an object with ``execute(ctx)``, or ``fn(ctx)``.

    Raises:
        TypeError: ``signals`` holds something other than signal numbers; ``task`` is
            None, a class (not an instance), an ``async def`` function or has no execute.
        ValueError: ``signals`` is empty, or holds an invalid or uncatchable signal.

    Example::

        manager.add_task("config", Interruptible([signal.SIGHUP], ConfigWatcher(path)))
        # kill -HUP <pid>: ConfigWatcher is cleaned up, initialized and executed again
    """

    def __init__(self, signals: int | Iterable[int], task: InnerTask) -> None:
        self._signals = _check_signals(signals)
        check_inner_task("Interruptible", task)
        super().__init__(task)
        self._run: _Run | None = None
        self._inner_cleaned = False  # a restart ran the inner cleanup, not yet re-initialized

    @property
    def signals(self) -> tuple[int, ...]:
        """The signals that restart the inner task."""
        return self._signals

    def interrupt(self) -> bool:
        """Act as if one of the signals had arrived (a test seam; call from the hub's thread).

        Returns:
            True if an ``execute`` was running to receive it, False otherwise (then
            it has no effect).
        """
        run = self._run
        if run is None:
            return False
        run.interrupt()
        return True

    def initialize(self, ctx: Context) -> object:
        """Call the inner task's ``initialize(ctx)`` if it has one."""
        self._inner_cleaned = False
        return super().initialize(ctx)

    def cleanup(self, ctx: Context) -> object:
        """Call the inner task's ``cleanup(ctx)``, unless a restart already did."""
        if self._inner_cleaned:
            return None
        return super().cleanup(ctx)

    def execute(self, ctx: Context) -> None:
        """Run the inner execute, restarting the inner task on each signal.

        Raises:
            UnexpectedStop: the inner execute returned without a signal or cancellation.
            RuntimeError: this instance is already executing.
            BaseException: what a step of the inner task raised.
        """
        if self._run is not None:
            msg = "this Interruptible is already executing; one instance cannot execute twice at once"
            raise RuntimeError(msg)
        run = self._run = _Run()
        installed = self._install(run)
        try:
            while True:
                self._execute_once(ctx, run)
                if ctx.cancelled:
                    return
                if not run.pending:
                    msg = "unexpected shutdown for task process: execute returned without a signal or cancellation"
                    raise UnexpectedStop(msg)
                run.pending = False
                logger.info("greentask: %s: got %s; restarting the task", _task_label(ctx), _signal_name(run.signum))
                # Restart: cleanup, then initialize (each error ends execute with it).
                self._inner_cleaned = True
                Wrapper.cleanup(self, without_cancel(ctx))
                if ctx.cancelled:
                    return
                self._inner_cleaned = False
                Wrapper.initialize(self, ctx)
                if ctx.cancelled:
                    return
        finally:
            self._run = None
            _restore(installed)

    def _execute_once(self, ctx: Context, run: _Run) -> None:
        inner_ctx, cancel = with_cancel(ctx)
        run.cancel_inner = cancel
        if run.pending:  # a signal arrived during the restart: run, but already cancelled
            cancel()
        try:
            self._execute(inner_ctx)
        except GreenletExit:
            if not inner_ctx.cancelled:
                raise
        finally:
            run.cancel_inner = None
            cancel()

    def _install(self, run: _Run) -> list[SignalWatch]:
        installed: list[SignalWatch] = []
        try:
            for signum in self._signals:
                installed.append(watch_signal(signum, run.interrupt, signum))
        except BaseException:
            _restore(installed)
            raise
        return installed


def _restore(installed: list[SignalWatch]) -> None:
    """Cancel the watchers; the last greentask watcher of a signal puts its previous
    handler back at the OS level (see `greentask._signals`)."""
    for watch in reversed(installed):
        watch.cancel()
