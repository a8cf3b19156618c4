"""The program entrypoint: run a `TaskManager` under OS signals and return an exit code.

`run` is what a ``main()`` calls: ``sys.exit(gt.run(manager))``. It

- installs gevent signal handlers (by default for SIGINT and SIGTERM): the first
  signal stops the manager gracefully, a second one forces the stop (the remaining
  execute greenlets are killed at once, each recorded as `StopTimeout`; cleanup still
  runs);
- runs the manager in the calling greenlet;
- logs every recorded error with its traceback to the ``"greentask"`` logger;
- restores the previous signal handlers at the OS level;
- talks to systemd (``Type=notify``) when ``NOTIFY_SOCKET`` is set: ``READY=1`` once
  every execute has started, ``STOPPING=1`` when shutdown begins;
- returns 0 for a clean run (a graceful stop on a signal is clean) and 1 when an error
  was recorded, a forced stop included.
"""

from __future__ import annotations

import _socket
import logging
import os
import signal
from collections.abc import Callable, Iterable
from typing import Any

from ._signals import SignalWatch, watch_signal
from .context import Context, _check_seconds
from .errors import ManagerEvent, NamedError
from .manager import TaskManager

__all__ = ["SignalReceived", "run"]

logger = logging.getLogger("greentask")

_Handler = Callable[[int, Any], Any] | int | None


class SignalReceived(Exception):
    """The cause given to `TaskManager.stop` when `run` receives a stop signal.

    Tasks see it as ``ctx.cause``; it is also ``manager.stop_reason.error``.

    Attributes:
        signum: the signal number (a `signal.Signals` member).
    """

    def __init__(self, signum: int) -> None:
        self.signum = signal.Signals(signum)
        super().__init__(f"received {self.signum.name}")


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _check_signals(signals: object) -> tuple[signal.Signals, ...]:
    if isinstance(signals, int | str | bytes) or not isinstance(signals, Iterable):
        msg = f"signals must be an iterable of signal numbers, got {signals!r}"
        raise TypeError(msg)
    checked: list[signal.Signals] = []
    for sig in signals:
        if isinstance(sig, bool) or not isinstance(sig, int):
            msg = f"signals must hold signal numbers, got {sig!r}"
            raise TypeError(msg)
        try:
            member = signal.Signals(sig)
        except ValueError:
            msg = f"signals must hold valid signal numbers, got {sig!r}"
            raise ValueError(msg) from None
        if member in (signal.SIGKILL, signal.SIGSTOP):
            msg = f"signals cannot include {member.name}: it cannot be caught"
            raise ValueError(msg)
        if member not in checked:
            checked.append(member)
    return tuple(checked)


class _SignalWatch:
    """The runner's signal handlers: first signal stops, second forces."""

    def __init__(self, manager: TaskManager, signals: tuple[signal.Signals, ...]) -> None:
        self._manager = manager
        self._signals = signals
        self._watchers: list[SignalWatch] = []
        self.received = 0

    def install(self) -> None:
        try:
            for sig in self._signals:
                self._watchers.append(watch_signal(sig, self._on_signal, sig))
        except BaseException:
            self.restore()
            raise

    def _on_signal(self, sig: signal.Signals) -> None:
        # Runs in a fresh greenlet spawned by gevent; never let an error reach the hub.
        try:
            self.received += 1
            if self.received == 1:
                logger.warning("received %s, shutting down gracefully (send again to force)", sig.name)
                self._manager.stop(SignalReceived(sig))
            elif self.received == 2:
                logger.warning("received %s again, forcing shutdown: killing the remaining tasks", sig.name)
                self._manager._force()
            else:
                logger.warning("received %s, already forcing shutdown; waiting for cleanup to finish", sig.name)
        except Exception:
            logger.exception("greentask: handling %s failed", sig.name)

    def restore(self) -> None:
        """Cancel the watchers; the previous handlers are put back at the OS level
        (SPEC §8) once no other greentask watcher needs the signal (`greentask._signals`)."""
        for watch in reversed(self._watchers):
            watch.cancel()
        self._watchers.clear()


class _SystemdNotifier:
    """Sends ``READY=1`` / ``STOPPING=1`` to ``$NOTIFY_SOCKET`` (sd_notify, no dependency)."""

    def __init__(self, manager: TaskManager, address: str) -> None:
        self._manager = manager
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._expected: int | None = None
        self._started = 0
        self._ready_sent = False
        self._stopping_sent = False

    def on_event(self, event: ManagerEvent) -> None:
        kind = event.kind
        if kind == "executing":
            # Every task known now (initialized tasks and queued execute tasks) is
            # about to be started; each start emits one "started" event.
            self._expected = len(self._manager.status())
            self._maybe_ready()
        elif kind == "started":
            self._started += 1
            self._maybe_ready()
        elif kind == "cancelled" and not self._stopping_sent:
            self._stopping_sent = True
            self.send("STOPPING=1")

    def _maybe_ready(self) -> None:
        if self._ready_sent or self._stopping_sent or self._expected is None:
            return
        if self._started >= self._expected:
            self._ready_sent = True
            self.send("READY=1")

    def send(self, message: str) -> None:
        """Send one datagram; failures are logged, never raised."""
        try:
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
            try:
                # The unpatched C socket, non-blocking: this may run in the hub.
                sock.setblocking(False)
                sock.sendto(message.encode(), self._address)
            finally:
                sock.close()
        except OSError as exc:
            logger.warning("greentask: could not notify systemd (%s) at %r: %s", message, self._address, exc)
        else:
            logger.debug("greentask: notified systemd: %s", message)


def _log_errors(manager: TaskManager, errors: list[NamedError]) -> None:
    for named in errors:
        logger.error("%s: %s", manager.name, named, exc_info=named.error)


def run(
    manager: TaskManager,
    *,
    ctx: Context | None = None,
    signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM),
    stop_timeout: float | None = None,
) -> int:
    """Run ``manager`` in the calling greenlet under OS signals; return an exit code.

    The first of ``signals`` to arrive stops the manager gracefully: it is logged
    ("received SIGTERM, shutting down gracefully (send again to force)") and
    ``manager.stop(SignalReceived(sig))`` cancels the run context. A second one forces
    the stop: every execute greenlet still running is killed at once and recorded as
    `StopTimeout`; cleanup still runs (a second signal that comes when no execute is
    left running changes nothing). Further signals are only logged.

    Every recorded error is logged with its traceback to the ``"greentask"`` logger.
    Afterwards the previous signal handlers are restored at the OS level, so a signal
    delivered later reaches the handler that was there before (only handlers
    installed from Python, as `signal.getsignal` reports them, can be restored).

    When the ``NOTIFY_SOCKET`` environment variable is set (systemd ``Type=notify``),
    ``READY=1`` is sent once every execute has started and ``STOPPING=1`` when shutdown
    begins, over that ``AF_UNIX`` datagram socket (a leading ``@`` means the abstract
    namespace). A failure to notify is logged, never fatal.

    Call it from the main thread (signals are only delivered there) or pass
    ``signals=()``.

    Args:
        manager: the `TaskManager` to run; it must not have run yet.
        ctx: the parent context given to `TaskManager.run` (default: `background`).
        signals: the signals that stop the manager; ``()`` installs no handler.
        stop_timeout: if given, replaces the manager's own ``stop_timeout`` (the
            seconds execute tasks get to return after cancellation before they are
            killed); None keeps the manager's setting.

    Returns:
        0 when no error was recorded (a graceful stop on a signal is clean); 1 when
        any error was recorded, including the `StopTimeout` of a forced stop. When a
        task raised ``KeyboardInterrupt`` or ``SystemExit`` (whatever its code: it is
        a recorded error), or one reached the calling greenlet, the shutdown is
        completed, it is logged, and 1 is returned.

    Raises:
        TypeError: ``manager`` is not a `TaskManager`, bad ``signals`` or
            ``stop_timeout``.
        ValueError: an invalid or uncatchable signal, a negative ``stop_timeout``.
        ManagerStateError: the manager has already run or is running.

    Example::

        manager = gt.TaskManager(stop_timeout=10)
        manager.add_task("http", gt.tasks.Server(WSGIServer(("", 8080), app)))
        sys.exit(gt.run(manager))
    """
    if not isinstance(manager, TaskManager):
        msg = f"manager must be a TaskManager, got {manager!r}"
        raise TypeError(msg)
    sigs = _check_signals(signals)
    if stop_timeout is not None:
        seconds = _check_seconds("stop_timeout", stop_timeout)
        if manager.phase == "new":  # else manager.run raises ManagerStateError below
            manager._stop_timeout = seconds

    unsubscribe: Callable[[], None] | None = None
    notify_socket = os.environ.get("NOTIFY_SOCKET")
    if notify_socket:
        if notify_socket.startswith(("/", "@")):
            unsubscribe = manager.subscribe(_SystemdNotifier(manager, notify_socket).on_event)
        else:
            logger.warning(
                "greentask: NOTIFY_SOCKET=%r is not a unix socket path; not notifying systemd", notify_socket
            )

    watch = _SignalWatch(manager, sigs)
    watch.install()
    try:
        try:
            errors = manager.run(ctx)
        except (KeyboardInterrupt, SystemExit) as exc:
            # manager.run completed the orderly shutdown, then re-raised it; it was
            # recorded (when a task raised it), so the exit code is 1 like any error.
            _log_errors(manager, list(manager._errors))
            logger.error("%s: interrupted by %r; exit code 1", manager.name, exc)
            return 1
    finally:
        watch.restore()
        if unsubscribe is not None:
            unsubscribe()
    _log_errors(manager, errors)
    if errors:
        count = len(errors)
        logger.error("%s: stopped with %d error%s", manager.name, count, "s" if count != 1 else "")
        return 1
    logger.info("%s: stopped cleanly", manager.name)
    return 0
