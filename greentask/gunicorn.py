"""A gunicorn worker that runs a `TaskManager` in every worker process (SPEC §13).

Select it with ``gunicorn -k greentask.gunicorn.Worker myapp:app`` (or the entry point,
``-k egg:greentask#greentask``); install ``greentask[gunicorn]``. Name the tasks to run
beside the WSGI app with ``GREENTASK_MANAGER=module:attr`` (a `TaskManager` or a factory
returning one, resolved like ``python -m greentask``'s target, afresh in every worker
after the fork), e.g. ``gunicorn -k greentask.gunicorn.Worker -e
GREENTASK_MANAGER=myapp.tasks:build_manager myapp:app``.

In each worker the manager runs the user's tasks and then, added last, one
`greentask.tasks.Server` per gunicorn listener (gevent's pywsgi server on gunicorn's
socket, as gunicorn's ``gevent_pywsgi`` worker serves it) and a heartbeat execute task.
The shutdown on gunicorn's signals, the boot errors and the exit codes are described on
`Worker`.

The worker is built on gunicorn's own ``GeventWorker`` (``gunicorn/workers/ggevent.py``):
its ``init_process`` monkey-patches, re-wraps gunicorn's listeners as gevent sockets and
re-initializes the hub after the fork, its ``handle_usr1`` reopens the log files, its
pywsgi handler writes gunicorn's access log. Only the lifecycle is replaced.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import time
from typing import Any

import gevent
from gevent.event import Event
from gevent.pool import Pool
from gunicorn.arbiter import Arbiter  # type: ignore[import-untyped]
from gunicorn.http.wsgi import base_environ  # type: ignore[import-untyped]
from gunicorn.sock import ssl_context  # type: ignore[import-untyped]
from gunicorn.workers.base import Worker as _BaseWorker  # type: ignore[import-untyped]
from gunicorn.workers.ggevent import (  # type: ignore[import-untyped]
    VERSION,
    GeventWorker,
    PyWSGIHandler,
    PyWSGIServer,
)

from . import tasks
from .__main__ import ManagerLoadError, load_manager
from ._signals import SignalWatch, watch_signal
from ._types import ExecuteTaskType, StopOrder, TaskType
from .context import CancelFunc, Context, background, with_cancel
from .errors import ManagerEvent, NamedError, Stage, StopTimeout
from .manager import TaskManager
from .runner import SignalReceived
from .tasks._server import format_address

__all__ = ["ENVIRONMENT_VARIABLE", "Worker", "WorkerShutdown"]

#: The environment variable that names the manager: ``module:attr``.
ENVIRONMENT_VARIABLE = "GREENTASK_MANAGER"

#: gunicorn's boot error exit code (3): a worker exiting with it stops gunicorn.
WORKER_BOOT_ERROR: int = Arbiter.WORKER_BOOT_ERROR

#: Exit code of a worker whose manager recorded errors (gunicorn starts a fresh one).
EXIT_ERROR = 1

#: Longest pause between two heartbeats, as gunicorn's gevent worker (1 s).
MAX_HEARTBEAT = 1.0

#: The name of the manager a worker runs when ``GREENTASK_MANAGER`` is not set.
DEFAULT_NAME = "gunicorn worker"

#: The signals that stop a worker: gracefully (SIGTERM) or quickly (SIGINT, SIGQUIT).
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def _queued_since_fork(handlers: list[Any]) -> list[signal.Signals]:
    """The stop signals that gunicorn's arbiter handlers queued in this (forked) process.

    gunicorn's ``Arbiter.signal`` only puts the signal in ``SIG_QUEUE``; in a worker
    between the fork and its own handlers, nothing ever reads that copy. A signal the
    arbiter had queued before the fork is found too: the arbiter then sends its
    workers the same signal, which a stopping worker takes again harmlessly.
    """
    queues: list[Any] = []
    for handler in handlers:
        sig_queue = getattr(getattr(handler, "__self__", None), "SIG_QUEUE", None)
        if sig_queue is not None and not any(sig_queue is q for q in queues):
            queues.append(sig_queue)
    queued: list[Any] = []
    for sig_queue in queues:
        if isinstance(sig_queue, list):  # gunicorn before 24
            queued += sig_queue
            sig_queue.clear()
            continue
        while True:
            try:
                queued.append(sig_queue.get_nowait())
            except queue.Empty:
                break
    return [signal.Signals(sig) for sig in queued if sig in _STOP_SIGNALS]


class WorkerShutdown(Exception):
    """The cause given to `TaskManager.stop` when a worker stops on its own.

    Tasks see it as ``ctx.cause``: the worker served ``max_requests`` requests, its
    arbiter is gone, or gunicorn itself asked the worker to leave (``worker.alive``
    set to False, as its reloader does). A stop on a signal has `SignalReceived` as
    its cause instead.
    """


class _Handler(PyWSGIHandler):  # type: ignore[misc]
    """gunicorn's pywsgi handler, counting requests for ``max_requests``."""

    def handle_one_response(self) -> Any:
        self.server.request_started()
        return super().handle_one_response()


class _WSGIServer(PyWSGIServer):  # type: ignore[misc]
    """gunicorn's pywsgi server: calls ``request_started`` before each request, and takes
    over the connections the kernel has queued before it closes its listener."""

    def __init__(self, *args: Any, request_started: Any, queued_limit: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request_started = request_started
        self.queued_limit = queued_limit

    def close(self) -> None:
        """Accept the connections already queued (at most ``queued_limit``), then close.

        Closing a listening socket resets the connections in its accept queue: clients
        that connected, and often sent their request, get "connection reset" although
        no worker ever saw them. gunicorn's workers share one listener, and when the
        last of them closes its copy, everything still queued is reset. So a server
        that was accepting first accepts what is queued; those requests are then served
        (with ``Connection: close``) and drained like the ones in flight.
        """
        if self.started and not self.closed:
            for _ in range(self.queued_limit):
                try:
                    accepted = self.do_read()
                except OSError:
                    break
                if not accepted:
                    break  # nothing queued any more
                self.do_handle(*accepted)
        super().close()


class Worker(GeventWorker):  # type: ignore[misc]
    """gunicorn worker: gunicorn's gevent worker with a greentask `TaskManager` inside.

    **Boot.** After gunicorn's own steps (monkey-patching, re-initializing the hub,
    loading the WSGI app), the worker resolves ``GREENTASK_MANAGER`` with
    `greentask.__main__.load_manager`; without it, it runs an empty manager
    (``TaskManager(stop_order="reverse", name="gunicorn worker")``), so the worker
    serves like gunicorn's gevent worker. It then adds, last, one
    `greentask.tasks.Server` per listener (task ``gunicorn:<address>``; a pool of
    ``worker_connections``; gunicorn's access log and ``SERVER_SOFTWARE``) and the
    execute task ``gunicorn:heartbeat``, and runs the manager in a greenlet. The
    worker counts as booted (gunicorn's ``booted``, ``post_worker_init``) only once
    every ``initialize`` has succeeded. A bad ``GREENTASK_MANAGER`` or a failed
    ``initialize`` (after the initialized tasks are cleaned up) is logged as one
    ERROR line naming it and the worker exits with gunicorn's boot error code (3),
    which stops gunicorn instead of respawning workers that fail the same way
    (the traceback is logged at DEBUG, or with the manager's errors).

    **Heartbeat.** The heartbeat task calls gunicorn's ``notify()`` every
    ``min(1, timeout / 4)`` seconds (gunicorn's ``--timeout``) from a greenlet, so a
    hub blocked by code that does not yield stops the heartbeat, and the arbiter
    aborts the worker after ``timeout``: a hub watchdog. The worker's main greenlet
    beats while the tasks initialize and while the manager shuts down (up to
    ``graceful_timeout``).

    **Signals** (gunicorn's meanings), handled in a greenlet:

    ====================  ===========================================================
    SIGTERM               graceful: ``manager.stop(SignalReceived(SIGTERM))``; the
                          servers stop accepting (serving the connections the
                          kernel had already queued, which closing the listener
                          would reset), requests in flight complete,
                          keep-alive connections are closed, the other tasks stop in
                          the manager's stop order, cleanup runs; exit 0.
    SIGINT, SIGQUIT       quick: ``manager.stop()`` then a forced stop: everything
                          still executing is killed at once, cleanup still runs
                          (bounded by the manager's ``cleanup_timeout``); gunicorn's
                          ``worker_int`` hook; exit 0 (the kills are expected: one
                          WARNING line names them).
    SIGABRT               gunicorn's abort (its ``handle_abort``: ``worker_abort``
                          hook, exit 1). It stays a plain Python handler so that it
                          also interrupts a hub blocked in a C call.
    SIGUSR1               gunicorn's: reopen the log files.
    ====================  ===========================================================

    A graceful stop that lasts longer than ``graceful_timeout`` is forced (logged like
    gunicorn's "Worker graceful timeout"), and from then on the worker no longer
    beats, so a cleanup that hangs gets the arbiter's abort after ``timeout``.

    **Exit codes.** 0 after a clean stop; 1 when the manager stopped because of a task
    (a STRICT failure, a restart limit given up: ``stop_reason.kind == "policy"``) or
    recorded any other error: gunicorn's arbiter then starts a fresh worker (the
    process supervisor is gunicorn, not greentask); 3 for a boot error. Every manager
    error is logged through gunicorn's error log with its traceback, and the
    ``greentask`` logger is routed to gunicorn's error log when neither it nor the
    root logger has a handler.

    **max_requests** (with ``max_requests_jitter``, as gunicorn computes it) is
    honoured: once that many requests have started, the worker stops gracefully as on
    SIGTERM (the request that reached the limit completes). gunicorn's own pywsgi
    worker ignores the setting.

    Where this worker departs from gunicorn's gevent worker, SPEC §13 decided:

    - the arbiter's death ("Parent changed") stops the manager gracefully instead of
      raising ``SystemExit`` in whichever greenlet beat, which would have been
      recorded as a task error;
    - a task failure exits non-zero (gunicorn's worker has no tasks);
    - ``sd_notify`` is never sent from a worker: the manager is run with
      `TaskManager.run`, not `greentask.run` (gunicorn's arbiter owns
      ``NOTIFY_SOCKET``).
    """

    server_class = _WSGIServer
    wsgi_handler = _Handler

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.manager: TaskManager | None = None
        self._greenlet: gevent.Greenlet[..., Any] | None = None
        self._errors: list[NamedError] = []
        self._fatal: BaseException | None = None
        self._executing = Event()
        self._stopping = Event()
        self._stopping_since: float | None = None
        self._quick = False
        self._early_cause: BaseException | None = None
        self._cancel_early: CancelFunc | None = None
        self._watches: list[SignalWatch] = []
        self._early_signals: list[signal.Signals] = []

    # -- gunicorn's hooks ----------------------------------------------------------

    def init_process(self) -> None:
        """gunicorn's (patch, hub re-init, then its base ``init_process``), stop signals kept meanwhile.

        From the fork until `init_signals`, a worker still has the arbiter's signal
        handlers, which would swallow a SIGTERM (the arbiter then waits for
        ``graceful_timeout`` and kills the worker). Such a signal is kept and acted
        on once the worker's own handlers are in place: from here on by a handler of
        the worker's, and before (between the fork and this call: gunicorn's
        ``post_fork`` hook runs there) it is found in this process's copy of the
        arbiter's signal queue, where the arbiter's handler put it.
        """
        previous = [signal.signal(sig, self._keep_early_signal) for sig in _STOP_SIGNALS]
        self._early_signals.extend(_queued_since_fork(previous))
        super().init_process()

    def _keep_early_signal(self, sig: int, frame: Any) -> None:
        self._early_signals.append(signal.Signals(sig))

    def init_signals(self) -> None:
        """gunicorn's handlers, then greenlet handlers for SIGTERM, SIGINT and SIGQUIT.

        gunicorn installs Python-level handlers; libev's watchers replace the three
        stop signals at the OS level, so they run in a fresh greenlet, never in the
        middle of whatever the interrupted greenlet was doing. SIGABRT, SIGUSR1 and
        SIGWINCH keep gunicorn's handlers.
        """
        super().init_signals()
        for sig in _STOP_SIGNALS:
            self._watches.append(watch_signal(sig, self._on_signal, sig))
        for sig in self._early_signals:
            self._on_signal(sig)
        self._early_signals.clear()

    def handle_exit(self, sig: int, frame: Any) -> None:
        """A SIGTERM that reached gunicorn's Python handler: stop gracefully (in a greenlet)."""
        gevent.spawn(self._on_signal, signal.Signals(sig))

    def handle_quit(self, sig: int, frame: Any) -> None:
        """A SIGINT/SIGQUIT that reached gunicorn's Python handler: stop quickly (in a greenlet)."""
        gevent.spawn(self._on_signal, signal.Signals(sig))

    def load_wsgi(self) -> None:
        """Load the WSGI app (gunicorn), then start the manager and wait for its initializes.

        gunicorn's ``Worker.init_process`` calls this before ``post_worker_init``,
        ``booted = True`` and ``run()``: returning from here is what makes the worker
        booted, so the user's tasks have initialized first (SPEC §13).
        """
        super().load_wsgi()
        self._route_greentask_log()
        manager = self._load_manager()
        self._add_gunicorn_tasks(manager)
        self.manager = manager
        manager.subscribe(self._on_event)
        # The parent of the run context: a stop requested before the manager runs (a
        # signal during boot) cancels it, and the manager then stops right after its
        # initialize phase (SPEC §3: initialize runs even if ctx is already cancelled).
        ctx, self._cancel_early = with_cancel(background())
        if self._early_cause is not None:
            self._cancel_early(self._early_cause)
        greenlet = gevent.Greenlet(self._run_manager, ctx)
        greenlet.name = f"greentask: {manager.name}"
        self._greenlet = greenlet
        greenlet.start()
        # Beat while the tasks initialize: a slow but cooperative initialize is not a
        # hung worker (initialize_timeout bounds it), a hub blocked in one is.
        waits: list[Any] = [self._executing, greenlet]
        while not self._executing.is_set() and not greenlet.dead:
            self._beat()
            gevent.wait(waits, timeout=self._heartbeat_interval(), count=1)
        if self._executing.is_set():
            return
        # The manager ended during its initialize phase.
        reason = manager.stop_reason
        if self._fatal is None and reason is not None and reason.kind == "policy":
            self._log_errors()
            self.log.error(
                "greentask: worker failed to boot: task %r failed to initialize: %s",
                reason.task_name,
                _one_line(reason.error),
            )
            raise SystemExit(WORKER_BOOT_ERROR)
        # Stopped by a signal (or the arbiter's death) before it was ready.
        raise SystemExit(self._exit_code())

    def run(self) -> None:
        """Wait for the manager to finish; beat and bound its shutdown; exit with its outcome."""
        greenlet = self._greenlet
        assert greenlet is not None
        waits: list[Any] = [greenlet, self._stopping]
        while not greenlet.dead and not self._stopping.is_set():
            gevent.wait(waits, count=1)
        forced = False
        while not greenlet.dead:
            since = self._stopping_since
            assert since is not None
            left = since + self.cfg.graceful_timeout - time.monotonic()
            if left <= 0:
                if not forced:
                    forced = True
                    self.log.warning("Worker graceful timeout (pid:%s)", self.pid)
                    self._force()
                # No more beats: a cleanup that hangs now gets the arbiter's abort.
                greenlet.join()
                break
            self._beat()
            greenlet.join(timeout=min(self._heartbeat_interval(), left))
        code = self._exit_code()
        if code:
            raise SystemExit(code)

    def notify(self) -> None:
        """gunicorn's heartbeat; if the arbiter is gone, stop gracefully.

        gunicorn's gevent worker raises ``SystemExit`` here when its parent changed;
        this one stops the manager instead (cause `WorkerShutdown`), so the tasks shut
        down in order and the greenlet that beat is not killed.
        """
        _BaseWorker.notify(self)
        if self.ppid != os.getppid() and self.alive:
            self.log.info("Parent changed, shutting down: %s", self)
            self._stop(WorkerShutdown("the arbiter is gone (parent changed)"))

    # -- the manager ---------------------------------------------------------------

    def _load_manager(self) -> TaskManager:
        """``GREENTASK_MANAGER`` resolved, or an empty manager; a bad value is a boot error."""
        target = os.environ.get(ENVIRONMENT_VARIABLE)
        if not target:
            return TaskManager(stop_order=StopOrder.REVERSE, name=DEFAULT_NAME)
        try:
            return load_manager(target)
        except ManagerLoadError as exc:
            if exc.__cause__ is not None:
                self.log.debug("greentask: loading %s=%r failed", ENVIRONMENT_VARIABLE, target, exc_info=exc.__cause__)
            self.log.error("greentask: worker failed to boot: bad %s=%r: %s", ENVIRONMENT_VARIABLE, target, exc)
            raise SystemExit(WORKER_BOOT_ERROR) from None

    def _add_gunicorn_tasks(self, manager: TaskManager) -> None:
        """One `tasks.Server` per listener, then the heartbeat, after the user's tasks."""
        ssl_args: dict[str, Any] = {}
        if self.cfg.is_ssl:
            ssl_args = {"ssl_context": ssl_context(self.cfg)}
        environ = base_environ(self.cfg)
        environ.update({"wsgi.multithread": True, "SERVER_SOFTWARE": VERSION})
        drain = self._drain_timeout()
        for sock in self.sockets:
            sock.setblocking(1)
            server = self.server_class(
                sock,
                application=self.wsgi,
                spawn=Pool(self.worker_connections),
                log=self.log,
                handler_class=self.wsgi_handler,
                environ=dict(environ),
                request_started=self._request_started,
                queued_limit=max(1, int(self.cfg.backlog)),
                **ssl_args,
            )
            manager.add_task(f"gunicorn:{_where(sock)}", tasks.Server(server, stop_timeout=drain), TaskType.STRICT)
        manager.add_execute_task("gunicorn:heartbeat", self._heartbeat, ExecuteTaskType.STRICT)

    def _drain_timeout(self) -> float:
        """Seconds the servers wait for requests in flight: ``graceful_timeout`` less a margin.

        The margin (a tenth, at most 1 s, SPEC §15's rule) leaves time for the other
        tasks to stop and clean up before the worker forces its shutdown.
        """
        graceful = float(self.cfg.graceful_timeout)
        return max(0.0, graceful - min(1.0, graceful / 10))

    def _run_manager(self, ctx: Context) -> None:
        """The manager's greenlet: run it, keep what a task re-raised instead of letting it reach the hub."""
        manager = self.manager
        assert manager is not None
        try:
            self._errors = manager.run(ctx)
        except (KeyboardInterrupt, SystemExit) as exc:
            # A task raised it (gunicorn's abort lands in whatever greenlet runs): the
            # manager shut down in order and re-raised it; it is an error like any other.
            self._fatal = exc
        except Exception:
            self.log.exception("greentask: %s: the manager failed", manager.name)
            self._fatal = RuntimeError("the manager failed")

    def _heartbeat(self, ctx: Context) -> None:
        """The heartbeat execute task: ``notify()`` from a greenlet until cancelled."""
        interval = self._heartbeat_interval()
        while True:
            self._beat()
            if not ctx.sleep(interval):
                return

    def _heartbeat_interval(self) -> float:
        # gunicorn hands workers half its --timeout as self.timeout; beat at least twice
        # per half, at most MAX_HEARTBEAT apart (gunicorn's gevent worker beats every 1 s).
        timeout = float(self.timeout or 0)
        return min(MAX_HEARTBEAT, timeout / 2) if timeout > 0 else MAX_HEARTBEAT

    def _beat(self) -> None:
        self.notify()
        if not self.alive and not self._stopping.is_set():
            # Something in gunicorn asked the worker to leave (its reloader, for one).
            self._stop(WorkerShutdown("gunicorn asked the worker to stop"))

    def _on_event(self, event: ManagerEvent) -> None:
        if event.kind == "executing":
            self._executing.set()
        elif event.kind == "cancelled" and not self._stopping.is_set():
            self.alive = False
            self._stopping_since = time.monotonic()
            self._stopping.set()

    def _request_started(self) -> None:
        self.nr += 1
        if self.nr >= self.max_requests and self.alive:
            self.log.info("Autorestarting worker after current request.")
            self._stop(WorkerShutdown(f"max_requests reached ({self.nr} requests)"))

    def _on_signal(self, sig: signal.Signals) -> None:
        try:
            if sig == signal.SIGTERM:
                if self._stopping.is_set():
                    self.log.info("greentask: received SIGTERM, already shutting down")
                    return
                self.log.info("greentask: received SIGTERM, shutting down gracefully (pid:%s)", self.pid)
                self._stop(SignalReceived(sig))
            else:
                if self._quick:
                    return
                self.log.info(
                    "greentask: received %s, quick shutdown: killing the running tasks (pid:%s)", sig.name, self.pid
                )
                self._quick = True
                self._stop(SignalReceived(sig))
                self._force()
                self.cfg.worker_int(self)  # gunicorn's hook for SIGINT/SIGQUIT, as its handle_quit
        except Exception:
            self.log.exception("greentask: handling %s failed", sig.name)

    def _stop(self, cause: BaseException) -> None:
        self.alive = False
        if self.manager is not None and self.manager.phase != "new":
            self.manager.stop(cause)
        elif self._early_cause is None:
            # Not running yet: the manager will start with an already cancelled context.
            self._early_cause = cause
            if self._cancel_early is not None:
                self._cancel_early(cause)

    def _force(self) -> None:
        # Before the manager runs there is nothing to kill: its context is cancelled already.
        if self.manager is not None and self.manager.phase != "new":
            self.manager._force()

    # -- outcome -------------------------------------------------------------------

    def _exit_code(self) -> int:
        """Log the manager's errors through gunicorn's error log; 0 or `EXIT_ERROR`."""
        manager = self.manager
        assert manager is not None
        counted = self._log_errors()
        if self._fatal is not None:
            self.log.error(
                "greentask: %s: interrupted by %s; exit code %d", manager.name, _one_line(self._fatal), EXIT_ERROR
            )
            return EXIT_ERROR
        reason = manager.stop_reason
        if reason is not None and reason.kind == "policy":
            self.log.error(
                "greentask: %s: stopped because task %r failed; exit code %d (gunicorn starts a fresh worker)",
                manager.name,
                reason.task_name,
                EXIT_ERROR,
            )
            return EXIT_ERROR
        if counted:
            self.log.error("greentask: %s: stopped with %d error(s); exit code %d", manager.name, counted, EXIT_ERROR)
            return EXIT_ERROR
        self.log.info("greentask: %s: stopped cleanly", manager.name)
        return 0

    def _log_errors(self) -> int:
        """Log each recorded error (once); return how many count towards the exit code.

        After a quick shutdown (SIGINT/SIGQUIT) the `StopTimeout` of each task it
        killed is expected: named in one WARNING line, not counted.
        """
        manager = self.manager
        assert manager is not None
        errors, self._errors = self._errors, []
        if self._fatal is not None:
            for status in manager.status():
                if status.error is not None:
                    self.log.error("greentask: %s: task %r: %s", manager.name, status.name, _one_line(status.error))
        counted = 0
        killed: list[str] = []
        for named in errors:
            if self._quick and isinstance(named.error, StopTimeout) and named.stage is not Stage.CLEANUP:
                killed.append(named.task_name)
                continue
            counted += 1
            self.log.error("greentask: %s: %s", manager.name, named, exc_info=named.error)
        if killed:
            names = ", ".join(repr(name) for name in killed)
            self.log.warning(
                "greentask: %s: the quick shutdown killed %d running task(s): %s", manager.name, len(killed), names
            )
        return counted

    def _route_greentask_log(self) -> None:
        """Send the ``greentask`` logger to gunicorn's error log, unless logging is configured."""
        gt_logger = logging.getLogger("greentask")
        error_log = getattr(self.log, "error_log", None)
        if gt_logger.handlers or logging.getLogger().handlers or not isinstance(error_log, logging.Logger):
            return
        for handler in error_log.handlers:
            gt_logger.addHandler(handler)
        gt_logger.setLevel(error_log.level)
        gt_logger.propagate = False


def _where(sock: Any) -> str:
    """A listener's address for its task name: ``127.0.0.1:8000``, ``unix:/run/app.sock``."""
    try:
        address = sock.getsockname()
    except OSError:
        return "listener"
    if isinstance(address, str | bytes):
        path = address.decode() if isinstance(address, bytes) else address
        return f"unix:{path}"
    return format_address(address)


def _one_line(exc: BaseException | None) -> str:
    try:
        text = repr(exc)
    except Exception:  # noqa: BLE001 - the user's exception: never let its repr break the log line
        text = f"<{type(exc).__name__} (repr failed)>"
    return " ".join(text.split())
