"""The program entrypoint: run a `TaskManager` under OS signals and return an exit code.

`run` is what a ``main()`` calls: ``sys.exit(gt.run(manager))``. It

- installs gevent signal handlers (by default for SIGINT and SIGTERM): the first
  signal stops the manager gracefully, every further one forces the step that is
  running (the remaining execute greenlets, a hanging ``initialize`` or ``cleanup``
  are killed at once, each recorded as `StopTimeout`; cleanup still runs);
- optionally dumps every greenlet's stack and the status tree on another signal;
- runs the manager in the calling greenlet;
- logs one INFO line once every execute has started, every recorded error with its
  traceback, and one INFO line with the exit code when it returns (logger
  ``"greentask"``);
- restores the previous signal handlers at the OS level;
- talks to systemd (``Type=notify``) when ``NOTIFY_SOCKET`` is set: ``READY=1`` once
  every execute has started, ``STOPPING=1`` when shutdown begins, ``STATUS=`` lines as
  the manager moves, and ``WATCHDOG=1`` pings when ``WATCHDOG_USEC`` asks for them;
- returns 0 for a clean run (a graceful stop on a signal is clean) and 1 when an error
  was recorded, a forced stop included.
"""

from __future__ import annotations

import _socket
import contextlib
import logging
import os
import signal
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, cast

import gevent
import gevent.util

from ._signals import SignalWatch, watch_signal
from .context import Context, _check_seconds
from .errors import ManagerEvent, NamedError, TaskState, TaskStatus
from .manager import TaskManager

__all__ = ["SignalReceived", "run"]

logger = logging.getLogger("greentask")

_Handler = Callable[[int, Any], Any] | int | None

# types-gevent declares it as returning None; it returns the lines.
_format_run_info = cast("Callable[[], list[str]]", gevent.util.format_run_info)

#: How many task names a log line lists before it says "and N more".
_NAMES_SHOWN = 5


class SignalReceived(Exception):
    """The cause given to `TaskManager.stop` when `run` receives a stop signal.

    Tasks see it as ``ctx.cause``; it is also ``manager.stop_reason.error``.

    Attributes:
        signum: the signal number (a `signal.Signals` member).
    """

    def __init__(self, signum: int) -> None:
        self.signum = signal.Signals(signum)
        super().__init__(f"received {self.signum.name}")


def _check_signal(argument: str, sig: object) -> signal.Signals:
    if isinstance(sig, bool) or not isinstance(sig, int):
        msg = f"{argument} must hold signal numbers, got {sig!r}"
        raise TypeError(msg)
    try:
        member = signal.Signals(sig)
    except ValueError:
        msg = f"{argument} must hold valid signal numbers, got {sig!r}"
        raise ValueError(msg) from None
    if member in (signal.SIGKILL, signal.SIGSTOP):
        msg = f"{argument} cannot include {member.name}: it cannot be caught"
        raise ValueError(msg)
    return member


def _check_signals(signals: object) -> tuple[signal.Signals, ...]:
    if isinstance(signals, int) and not isinstance(signals, bool):
        return (_check_signal("signals", signals),)
    if isinstance(signals, str | bytes) or not isinstance(signals, Iterable):
        msg = f"signals must be a signal number or an iterable of them, got {signals!r}"
        raise TypeError(msg)
    checked: list[signal.Signals] = []
    for sig in signals:
        member = _check_signal("signals", sig)
        if member not in checked:
            checked.append(member)
    return tuple(checked)


def _check_dump_signal(dump_signal: object, signals: tuple[signal.Signals, ...]) -> signal.Signals | None:
    if dump_signal is None:
        return None
    if isinstance(dump_signal, bool) or not isinstance(dump_signal, int):
        msg = f"dump_signal must be a signal number or None, got {dump_signal!r}"
        raise TypeError(msg)
    member = _check_signal("dump_signal", dump_signal)
    if member in signals:
        msg = f"dump_signal {member.name} is also one of the stop signals; pick another one (SIGUSR1, say)"
        raise ValueError(msg)
    return member


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(name) for name in names[:_NAMES_SHOWN])
    if len(names) > _NAMES_SHOWN:
        shown += f" and {len(names) - _NAMES_SHOWN} more"
    return shown


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


# -- following the manager: the INFO line and systemd's messages -----------------------


class _Notifier:
    """Sends sd_notify datagrams to ``$NOTIFY_SOCKET`` (no dependency); never raises."""

    def __init__(self, address: str) -> None:
        self._address = "\0" + address[1:] if address.startswith("@") else address

    @classmethod
    def from_environment(cls) -> _Notifier | None:
        address = os.environ.get("NOTIFY_SOCKET")
        if not address:
            return None
        if not address.startswith(("/", "@")):
            logger.warning("greentask: NOTIFY_SOCKET=%r is not a unix socket path; not notifying systemd", address)
            return None
        return cls(address)

    def send(self, message: str) -> None:
        """Send one datagram (newline-separated assignments); failures are logged."""
        try:
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
            try:
                # The unpatched C socket, non-blocking: this may run in the hub.
                sock.setblocking(False)
                sock.sendto(message.encode(), self._address)
            finally:
                sock.close()
        except OSError as exc:
            shown = message.replace("\n", "; ")
            logger.warning("greentask: could not notify systemd (%s) at %r: %s", shown, self._address, exc)
        else:
            logger.debug("greentask: notified systemd: %s", message.replace("\n", "; "))


def _watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or None for none."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        logger.debug("greentask: WATCHDOG_PID=%s is another process; not sending watchdog pings", pid)
        return None
    try:
        value = int(usec)
    except ValueError:
        value = 0
    if value <= 0:
        logger.warning("greentask: WATCHDOG_USEC=%r is not a positive integer; not sending watchdog pings", usec)
        return None
    return value / 2_000_000


class _Watchdog:
    """Sends ``WATCHDOG=1`` every ``interval`` seconds from a greenlet.

    A greenlet, not a hub timer: the pings come only while the hub actually runs
    greenlets, so a hub blocked by a task (a C call, an unpatched ``time.sleep``) stops
    them and systemd's watchdog fires. `stop` ends them once shutdown begins, so a hung
    shutdown is caught too.
    """

    def __init__(self, notifier: _Notifier, interval: float) -> None:
        self._notifier = notifier
        self._interval = interval
        self._greenlet: gevent.Greenlet[[], None] | None = None

    def start(self) -> None:
        greenlet: gevent.Greenlet[[], None] = gevent.Greenlet(self._ping)
        greenlet.name = "greentask: systemd watchdog"
        greenlet.start()
        self._greenlet = greenlet

    def _ping(self) -> None:
        while True:
            self._notifier.send("WATCHDOG=1")
            gevent.sleep(self._interval)

    def stop(self, *, block: bool = False) -> None:
        """Stop pinging (idempotent); safe from the hub (``block=False``)."""
        greenlet = self._greenlet
        if greenlet is not None:
            greenlet.kill(block=block)


def _listening(manager: TaskManager) -> list[str]:
    """``'http' on 127.0.0.1:8080`` for each server task (wrappers looked through)."""
    from .tasks._health import HealthServer
    from .tasks._server import Server, format_address

    found: list[str] = []
    for name, task in manager._task_objects():
        for _ in range(8):  # wrappers nest; a cycle must not hang the runner
            if isinstance(task, Server | HealthServer):
                with contextlib.suppress(RuntimeError):  # not bound (yet)
                    found.append(f"{name!r} on {format_address(task.address)}")
                break
            inner = getattr(task, "task", None)
            if inner is None or inner is task:
                break
            task = inner
    return found


class _Progress:
    """Follows the manager's events for `run`: the "running N tasks" line and systemd.

    Counts what it needs as events arrive (O(1) per event, except one ``status()``
    when the first task initializes, when the execute phase begins and when a restarted
    task runs again), so a manager with many execute tasks pays nothing noticeable.
    """

    def __init__(self, manager: TaskManager, notifier: _Notifier | None, watchdog: _Watchdog | None) -> None:
        self._manager = manager
        self._notifier = notifier
        self._watchdog = watchdog
        self._to_initialize: int | None = None
        self._initializing = 0
        self._expected = 0  # how many executes were to start when the execute phase began
        self._to_start: Counter[str] | None = None  # name -> executes still to start
        self._left = 0
        self.ready = False
        self.stopping = False
        self._restarting: list[str] = []
        #: The tasks whose initialize / cleanup is running now, innermost last.
        self.initializing: list[str] = []
        self.cleaning_up: list[str] = []

    def on_event(self, event: ManagerEvent) -> None:
        kind, name = event.kind, event.task_name
        if name is None:
            if kind == "executing":
                self._executing()
            elif kind == "cancelled" and not self.stopping:
                self._stopping()
            return
        if kind == "initializing":
            self.initializing.append(name)
            if self._to_start is None and not self.stopping:
                self._initialize_status(name)
        elif kind == "cleaning_up":
            self.cleaning_up.append(name)
            if self.stopping:
                self._send(f"STATUS=cleaning up {name}")
        elif kind == "started":
            self._count_out(name)
            if name in self._restarting:
                self._restarting.remove(name)
                if self.ready and not self._restarting and not self.stopping:
                    running = sum(1 for row in self._manager.status() if row.state is TaskState.RUNNING)
                    self._send(f"STATUS=running {_plural(running, 'task')}")
        elif kind == "restarting" and not self.stopping:
            self._restarting.append(name)
            self._send(f"STATUS=restarting {', '.join(self._restarting)}")
        if kind in ("initialized", "failed") and name in self.initializing:
            self.initializing.remove(name)
        if kind == "cleaned_up" and name in self.cleaning_up:
            self.cleaning_up.remove(name)
        if kind in ("stopped", "failed", "cleaned_up"):
            # One that ends without having started (stopped by its handle) is not awaited,
            # and one whose restart cycle was ended so is no longer restarting.
            self._count_out(name)
            if name in self._restarting and kind != "failed":
                self._restarting.remove(name)

    def _initialize_status(self, name: str) -> None:
        if self._to_initialize is None:
            rows = self._manager.status()
            self._to_initialize = sum(1 for row in rows if row.kind == "task" and _startable(row))
        self._initializing += 1
        total = max(self._to_initialize, self._initializing)
        self._send(f"STATUS=initializing {self._initializing}/{total}: {name}")

    def _executing(self) -> None:
        # Every task whose execute is about to start (initialized tasks, queued execute
        # tasks, the tasks of nested managers); each start emits one "started" event.
        self._to_start = Counter(row.name for row in self._manager.status() if _startable(row))
        self._expected = self._left = self._to_start.total()
        self._maybe_ready()

    def _count_out(self, name: str) -> None:
        to_start = self._to_start
        if to_start is not None and to_start[name] > 0:
            to_start[name] -= 1
            self._left -= 1
            self._maybe_ready()

    def _maybe_ready(self) -> None:
        if self.ready or self.stopping or self._to_start is None or self._left > 0:
            return
        self.ready = True
        count = _plural(self._expected, "task")
        servers = _listening(self._manager)
        logger.info("%s: running %s%s", self._manager.name, count, f"; {', '.join(servers)}" if servers else "")
        self._send(f"READY=1\nSTATUS=running {count}")

    def _stopping(self) -> None:
        self.stopping = True
        if self._watchdog is not None:
            self._watchdog.stop()
        self._send(f"STOPPING=1\nSTATUS=stopping: {self._manager._stop_description()}")

    def _send(self, message: str) -> None:
        if self._notifier is not None:
            self._notifier.send(message)


def _startable(row: TaskStatus) -> bool:
    """Whether a row's execute is still to start when the execute phase begins."""
    return row.state in (TaskState.PENDING, TaskState.INITIALIZING, TaskState.RUNNING, TaskState.RESTARTING)


# -- signals ------------------------------------------------------------------------------


class _SignalWatch:
    """The runner's signal handlers: the first stop signal stops, every further one forces."""

    def __init__(
        self,
        manager: TaskManager,
        signals: tuple[signal.Signals, ...],
        dump_signal: signal.Signals | None,
        progress: _Progress,
    ) -> None:
        self._manager = manager
        self._signals = signals
        self._dump_signal = dump_signal
        self._progress = progress
        self._watchers: list[SignalWatch] = []
        self.received = 0

    def install(self) -> None:
        try:
            for sig in self._signals:
                self._watchers.append(watch_signal(sig, self._on_signal, sig))
            if self._dump_signal is not None:
                self._watchers.append(watch_signal(self._dump_signal, self._on_dump, self._dump_signal))
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
            else:
                logger.warning("received %s again, forcing shutdown: %s", sig.name, self._forcing())
                self._manager._force()
        except Exception:
            logger.exception("greentask: handling %s failed", sig.name)

    def _forcing(self) -> str:
        """What a forced stop kills now: this manager's own steps that are running.

        Read from the manager's status and events: its executes still running (under
        ``REVERSE`` also those waiting for their turn) and the ``initialize`` /
        ``cleanup`` running now, and the ``on_cancel`` callbacks that shutdown waits for.
        A nested manager's tasks are not listed: they end with
        the nested task that runs them. The log never claims to kill what is not there.
        """
        manager = self._manager
        nested = [path + "/" for path, _ in manager._tree()[1:]]

        def own(name: str) -> bool:
            return not name.startswith(tuple(nested))

        parts = []
        if manager.phase in ("executing", "stopping"):
            executing = [
                row.name
                for row in manager.status()
                if row.state in (TaskState.RUNNING, TaskState.STOPPING) and own(row.name)
            ]
            if executing:
                parts.append(f"{_plural(len(executing), 'task')} still executing: {_names(executing)}")
        for stage, names in (("initialize", self._progress.initializing), ("cleanup", self._progress.cleaning_up)):
            parts.extend(f"the {stage} of task {name!r}" for name in names if own(name))
        callbacks = len(manager._after_group)
        if callbacks:
            parts.append(f"{_plural(callbacks, 'on_cancel callback')} still running")
        if not parts:
            return f"nothing is running that could be killed (manager {manager.phase})"
        return "killing " + " and ".join(parts)

    def _on_dump(self, sig: signal.Signals) -> None:
        try:
            _dump(self._manager, sig)
        except Exception:
            logger.exception("greentask: handling %s failed", sig.name)

    def restore(self) -> None:
        """Cancel the watchers; the previous handlers are put back at the OS level
        (SPEC §8) once no other greentask watcher needs the signal (`greentask._signals`)."""
        for watch in reversed(self._watchers):
            watch.cancel()
        self._watchers.clear()


def _status_tree(manager: TaskManager) -> list[str]:
    """The manager tree and its tasks, one line each, nested rows indented."""
    tree = manager._tree()
    nested = dict(tree[1:])
    reason = manager._stop_description()
    lines = [f"manager {manager.name!r}: {manager.phase}" + (f" ({reason})" if reason else "")]
    for row in manager.status():
        depth = 1 + sum(1 for path in nested if row.name.startswith(path + "/"))
        line = f"{'  ' * depth}{row.name}: {row.kind} {row.task_type.value}, {row.state.value}"
        if row.restarts:
            line += f", {_plural(row.restarts, 'restart')}"
        if row.error is not None:
            line += f", error {_safe_repr(row.error)}"
        lines.append(line)
        child = nested.get(row.name)
        if child is not None:
            lines.append(f"{'  ' * (depth + 1)}(manager {child.name!r}: {child.phase})")
    return lines


def _safe_repr(value: object) -> str:
    try:
        return repr(value)
    except Exception:  # noqa: BLE001 - user exceptions can be broken
        return f"<{type(value).__name__} object (repr() failed)>"


def _dump(manager: TaskManager, sig: signal.Signals) -> None:
    """Log the status tree and every greenlet's stack (INFO), for the dump signal."""
    logger.info("%s: %s: status tree:\n%s", manager.name, sig.name, "\n".join(_status_tree(manager)))
    run_info = "\n".join(line.rstrip("\n") for line in _format_run_info())
    logger.info("%s: %s: threads and greenlets:\n%s", manager.name, sig.name, run_info)


def _log_errors(manager: TaskManager, errors: list[NamedError]) -> None:
    for named in errors:
        logger.error("%s: %s", manager.name, named, exc_info=named.error)


def run(
    manager: TaskManager,
    *,
    ctx: Context | None = None,
    signals: int | Iterable[int] = (signal.SIGINT, signal.SIGTERM),
    stop_timeout: float | None = None,
    dump_signal: int | None = None,
) -> int:
    """Run ``manager`` in the calling greenlet under OS signals; return an exit code.

    The first of ``signals`` to arrive stops the manager gracefully: it is logged
    ("received SIGTERM, shutting down gracefully (send again to force)") and
    ``manager.stop(SignalReceived(sig))`` cancels the run context. Every further one
    forces the step that is running, and the log line says what it kills: during
    startup the running ``initialize`` (recorded as `StopTimeout`, stage INITIALIZE;
    the rest are skipped and cleanup runs), during shutdown every execute greenlet
    still running (each recorded as `StopTimeout`; cleanup still runs), during
    cleanup the hanging ``cleanup`` (recorded as `StopTimeout`, stage CLEANUP; the next
    one runs). A forced stop gives exit code 1.

    On ``dump_signal`` (when given) the manager's status tree and every greenlet's
    stack (`gevent.util.format_run_info`) are logged at INFO and the program keeps
    running; use it on a process that seems stuck (``kill -USR1 <pid>``).

    Logging (logger ``"greentask"``): one INFO line once every execute has started
    (``web: running 5 tasks; 'http' on 0.0.0.0:8080``, naming the bound address of
    each `tasks.Server` and `tasks.HealthServer`), every recorded error with its
    traceback at ERROR, and one INFO line when ``run`` returns (``web: stopped
    cleanly; exit code 0``). Afterwards the previous signal handlers are restored at
    the OS level, so a signal delivered later reaches the handler that was there
    before (only handlers installed from Python, as `signal.getsignal` reports them,
    can be restored).

    systemd (``Type=notify``): when the ``NOTIFY_SOCKET`` environment variable is set,
    datagrams go to that ``AF_UNIX`` socket (a leading ``@`` means the abstract
    namespace): ``STATUS=initializing 2/5: db`` as each task initializes,
    ``READY=1`` with ``STATUS=running 5 tasks`` once every execute has started,
    ``STATUS=restarting db`` while a task restarts, and ``STOPPING=1`` with
    ``STATUS=stopping: <reason>`` when shutdown begins (the reason as the manager logs
    it), then ``STATUS=cleaning up db`` per cleanup. With ``WATCHDOG_USEC`` set (and
    ``WATCHDOG_PID`` unset or this process), ``WATCHDOG=1`` is sent every
    ``WATCHDOG_USEC / 2`` from a greenlet, from the start of ``run`` until shutdown
    begins: a blocked hub or a hung shutdown lets systemd's ``WatchdogSec=`` fire. A
    failure to notify is logged, never fatal.

    Call it from the main thread (signals are only delivered there) or pass
    ``signals=()``.

    Args:
        manager: the `TaskManager` to run; it must not have run yet.
        ctx: the parent context given to `TaskManager.run` (default: `background`).
        signals: the signals that stop the manager: one signal number or an
            iterable of them; ``()`` installs no handler.
        stop_timeout: if given, replaces the manager's own ``stop_timeout`` (the
            seconds execute tasks get to return after cancellation before they are
            killed); None keeps the manager's setting.
        dump_signal: a signal (not one of ``signals``) that logs the status tree and
            every greenlet's stack; None: no dump handler.

    Returns:
        0 when no error was recorded (a graceful stop on a signal is clean); 1 when
        any error was recorded, including the `StopTimeout` of a forced stop. When a
        task raised ``KeyboardInterrupt`` or ``SystemExit`` (whatever its code: it is
        a recorded error), or one reached the calling greenlet, the shutdown is
        completed, it is logged, and 1 is returned.

    Raises:
        TypeError: ``manager`` is not a `TaskManager`, bad ``signals``,
            ``dump_signal`` or ``stop_timeout``.
        ValueError: an invalid or uncatchable signal, ``dump_signal`` among
            ``signals``, a negative ``stop_timeout``.
        ManagerStateError: the manager has already run or is running.

    Example::

        manager = gt.TaskManager(name="web", stop_timeout=10)
        manager.add_task("http", gt.tasks.Server(WSGIServer(("", 8080), app)))
        sys.exit(gt.run(manager, signals=signal.SIGTERM, dump_signal=signal.SIGUSR1))
    """
    if not isinstance(manager, TaskManager):
        msg = f"manager must be a TaskManager, got {manager!r}"
        raise TypeError(msg)
    sigs = _check_signals(signals)
    dump = _check_dump_signal(dump_signal, sigs)
    if stop_timeout is not None:
        seconds = _check_seconds("stop_timeout", stop_timeout)
        if manager.phase == "new":  # else manager.run raises ManagerStateError below
            manager._stop_timeout = seconds

    notifier = _Notifier.from_environment() if manager.phase == "new" else None
    interval = _watchdog_interval() if notifier is not None else None
    watchdog = _Watchdog(notifier, interval) if notifier is not None and interval is not None else None
    progress = _Progress(manager, notifier, watchdog)
    unsubscribe = manager.subscribe(progress.on_event)
    watch = _SignalWatch(manager, sigs, dump, progress)
    try:
        watch.install()
        if watchdog is not None:
            watchdog.start()
        try:
            errors = manager.run(ctx)
        except (KeyboardInterrupt, SystemExit) as exc:
            # manager.run completed the orderly shutdown, then re-raised it; it was
            # recorded (when a task raised it), so the exit code is 1 like any error.
            _log_errors(manager, list(manager._errors))
            logger.info("%s: interrupted by %s; exit code 1", manager.name, _safe_repr(exc))
            return 1
    finally:
        if watchdog is not None:
            watchdog.stop(block=True)
        watch.restore()
        unsubscribe()
    _log_errors(manager, errors)
    if errors:
        logger.info("%s: stopped with %s; exit code 1", manager.name, _plural(len(errors), "error"))
        return 1
    logger.info("%s: stopped cleanly; exit code 0", manager.name)
    return 0
