"""greentask.run: signals, the dump signal, log lines, exit codes, handler restoration, systemd.

Real signals are sent to this process with ``os.kill(os.getpid(), SIGUSR1)`` and the
runner is given ``signals=(SIGUSR1,)`` (SIGUSR2 as the dump signal), so pytest's own
SIGINT handling stays intact. systemd's side is a real ``AF_UNIX`` datagram socket named
by ``NOTIFY_SOCKET``; tests/test_systemd.py does the same with a real subprocess.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import gevent
import gevent.socket
import pytest
from gevent.event import Event
from gevent.monkey import get_original
from gevent.server import StreamServer

import greentask as gt
from greentask.runner import SignalReceived, _Progress, _SignalWatch
from greentask.tasks import ForceStop, HealthServer, Server
from greentask.testing import CallLog, FakeExecuteTask, FakeTask

SIG = signal.SIGUSR1
DUMP = signal.SIGUSR2


def _kill_self(sig: int = SIG) -> None:
    os.kill(os.getpid(), sig)


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "greentask"]


@pytest.fixture
def python_handler() -> Iterator[list[int]]:
    """Python-level SIGUSR1 and SIGUSR2 handlers recording the signals they receive."""
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum)) for sig in (SIG, DUMP)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_first_signal_stops_gracefully_and_returns_0(
    caplog: pytest.LogCaptureFixture, python_handler: list[int]
) -> None:
    caplog.set_level(logging.INFO, logger="greentask")
    worker = FakeTask.blocking("worker")
    manager = gt.TaskManager()
    manager.add_task("worker", worker)

    def signal_once_running(ctx: gt.Context) -> None:
        _kill_self()
        ctx.wait()

    manager.add_execute_task("signaller", signal_once_running)

    with gevent.Timeout(10):
        code = gt.run(manager, signals=(SIG,))

    assert code == 0
    reason = manager.stop_reason
    assert reason is not None
    assert reason.kind == "stop"
    assert isinstance(reason.error, SignalReceived)
    assert reason.error.signum is signal.SIGUSR1
    assert str(reason.error) == "received SIGUSR1"
    assert worker.execute_calls[0].cause is reason.error
    assert worker.cleanup_call_count == 1
    messages = _messages(caplog)
    mine = [m for m in messages if "shutting down:" not in m]  # the manager's own line aside
    assert mine == [
        "greentask: running 2 tasks",
        "received SIGUSR1, shutting down gracefully (send again to force)",
        "greentask: stopped cleanly; exit code 0",
    ]
    assert python_handler == []  # gevent's handler, not the Python one, got the signal


def test_a_single_signal_is_accepted_as_well_as_a_sequence(python_handler: list[int]) -> None:
    manager = gt.TaskManager()

    def signal_once_running(ctx: gt.Context) -> None:
        _kill_self()
        ctx.wait()

    manager.add_execute_task("signaller", signal_once_running)
    with gevent.Timeout(10):
        assert gt.run(manager, signals=SIG) == 0
    assert manager.stop_reason is not None
    assert isinstance(manager.stop_reason.error, SignalReceived)
    assert python_handler == []
    assert signal.getsignal(SIG) is not signal.SIG_DFL  # restored to the fixture's handler


def test_second_signal_forces_the_stop_and_returns_1(
    caplog: pytest.LogCaptureFixture, python_handler: list[int]
) -> None:
    caplog.set_level(logging.INFO, logger="greentask")
    other = FakeTask.blocking("other")
    other_stopped = Event()
    never = Event()

    def stubborn(ctx: gt.Context) -> None:
        _kill_self()
        ctx.wait()  # the first signal cancelled us...
        other_stopped.wait()
        _kill_self()  # ...ask again, and ignore cancellation
        never.wait()

    manager = gt.TaskManager()  # no stop_timeout: only the second signal can end this
    manager.subscribe(lambda e: other_stopped.set() if (e.kind, e.task_name) == ("stopped", "other") else None)
    manager.add_task("other", other)
    manager.add_execute_task("stubborn", stubborn)

    with gevent.Timeout(10):
        code = gt.run(manager, signals=(SIG,))

    assert code == 1
    stubborn_status = next(s for s in manager.status() if s.name == "stubborn")
    assert isinstance(stubborn_status.error, gt.StopTimeout)
    assert "forced" in str(stubborn_status.error)
    assert other.cleanup_call_count == 1  # cleanup still ran
    messages = _messages(caplog)
    assert "received SIGUSR1 again, forcing shutdown: killing 1 task still executing: 'stubborn'" in messages
    assert messages[-1] == "greentask: stopped with 1 error; exit code 1"
    error_records = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert any(isinstance(r.exc_info[1], gt.StopTimeout) for r in error_records if r.exc_info)


class LogWaiter(logging.Handler):
    """Lets a task wait until the ``greentask`` logger has emitted a line containing ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.event = Event()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.records.append(record)
            self.event.set()

    def wait(self) -> None:
        with gevent.Timeout(5):
            self.event.wait()


@pytest.fixture
def log_waiter() -> Iterator[Callable[[str], LogWaiter]]:
    """``log_waiter(text)`` attaches a `LogWaiter` to the ``greentask`` logger (INFO and up)."""
    greentask_logger = logging.getLogger("greentask")
    level = greentask_logger.level
    greentask_logger.setLevel(logging.INFO)
    waiters: list[LogWaiter] = []

    def make(text: str) -> LogWaiter:
        waiter = LogWaiter(text)
        greentask_logger.addHandler(waiter)
        waiters.append(waiter)
        return waiter

    yield make
    for waiter in waiters:
        greentask_logger.removeHandler(waiter)
    greentask_logger.setLevel(level)


def test_second_signal_during_initialize_kills_it_and_cleans_up(
    caplog: pytest.LogCaptureFixture, python_handler: list[int], log_waiter: Callable[[str], LogWaiter]
) -> None:
    graceful = log_waiter("shutting down gracefully")
    log = CallLog()
    never = Event()

    def stuck_initialize(ctx: gt.Context) -> None:
        _kill_self()
        graceful.wait()
        _kill_self()  # the second signal: initialize ignores cancellation, so kill it
        never.wait()

    first = FakeTask("first", log=log)
    stuck = FakeTask("stuck", initialize=stuck_initialize, log=log)
    later = FakeTask("later", log=log)
    manager = gt.TaskManager()  # no initialize_timeout: only the second signal can end it
    manager.add_task("first", first)
    manager.add_task("stuck", stuck)
    manager.add_task("later", later)
    with gevent.Timeout(10):
        code = gt.run(manager, signals=SIG)
    assert code == 1
    [error] = manager._errors
    assert (error.task_name, error.stage) == ("stuck", gt.Stage.INITIALIZE)
    assert isinstance(error.error, gt.StopTimeout)
    assert "forced" in str(error.error)
    # Cleanup for the initialized tasks, the interrupted one first; "later" never ran.
    assert log.calls == [
        ("first", gt.Stage.INITIALIZE),
        ("stuck", gt.Stage.INITIALIZE),
        ("stuck", gt.Stage.CLEANUP),
        ("first", gt.Stage.CLEANUP),
    ]
    assert later.initialize_call_count == 0
    assert "received SIGUSR1 again, forcing shutdown: killing the initialize of task 'stuck'" in _messages(caplog)


def test_every_further_signal_kills_the_cleanup_that_hangs(
    caplog: pytest.LogCaptureFixture, python_handler: list[int], log_waiter: Callable[[str], LogWaiter]
) -> None:
    never = Event()
    killed = log_waiter("forcing shutdown: killing the cleanup of task")

    def stop_now(ctx: gt.Context) -> None:
        _kill_self()  # the first signal: a graceful stop
        ctx.wait()

    def hang(ctx: gt.Context) -> None:
        _kill_self()  # the second (third) signal kills this cleanup
        never.wait()

    def hang_again(ctx: gt.Context) -> None:
        killed.wait()  # the previous signal has been handled (signals of one kind coalesce)
        hang(ctx)

    first = FakeTask.blocking("first")
    manager = gt.TaskManager()  # no cleanup_timeout: only the signals end these cleanups
    manager.add_task("first", first)
    manager.add_task("second", FakeTask("second", execute=lambda ctx: ctx.wait(), cleanup=hang_again))
    manager.add_task("third", FakeTask("third", execute=stop_now, cleanup=hang))
    with gevent.Timeout(10):
        code = gt.run(manager, signals=(SIG,))
    assert code == 1
    assert [(e.task_name, e.stage, type(e.error)) for e in manager._errors] == [
        ("third", gt.Stage.CLEANUP, gt.StopTimeout),
        ("second", gt.Stage.CLEANUP, gt.StopTimeout),
    ]
    assert first.cleanup_call_count == 1  # the next cleanup ran after each kill
    messages = _messages(caplog)
    assert "received SIGUSR1 again, forcing shutdown: killing the cleanup of task 'third'" in messages
    assert "received SIGUSR1 again, forcing shutdown: killing the cleanup of task 'second'" in messages


def test_a_forcing_signal_names_the_managers_own_tasks_not_the_nested_ones(
    caplog: pytest.LogCaptureFixture, python_handler: list[int], log_waiter: Callable[[str], LogWaiter]
) -> None:
    graceful = log_waiter("shutting down gracefully")
    never = Event()

    def stubborn(ctx: gt.Context) -> None:
        _kill_self()
        ctx.wait()
        graceful.wait()
        _kill_self()  # ignores cancellation: the second signal kills it with its nested task
        never.wait()

    child = gt.TaskManager(name="pipeline")
    child.add_task("db", FakeTask("db", execute=stubborn))
    parent = gt.TaskManager(name="app")
    parent.add_task("pipeline", child)
    parent.add_task("web", FakeTask.blocking("web"))
    with gevent.Timeout(10):
        assert gt.run(parent, signals=SIG) == 1
    assert "received SIGUSR1 again, forcing shutdown: killing 1 task still executing: 'pipeline'" in _messages(caplog)
    assert "pipeline/db" in {e.task_name for e in parent._errors}


def test_a_forcing_signal_with_nothing_running_says_so() -> None:
    # The log never claims to kill what it does not kill (SPEC §15).
    manager = gt.TaskManager()
    watch = _SignalWatch(manager, (SIG,), None, _Progress(manager, None, None))
    assert watch._forcing() == "nothing is running that could be killed (manager new)"


# -- the dump signal -----------------------------------------------------------------


def test_dump_signal_logs_the_status_tree_and_every_greenlet_then_keeps_running(
    python_handler: list[int], log_waiter: Callable[[str], LogWaiter]
) -> None:
    tree = log_waiter(": SIGUSR2: status tree:")
    greenlets = log_waiter(": SIGUSR2: threads and greenlets:")

    def dump_then_stop(ctx: gt.Context) -> None:
        _kill_self(DUMP)
        greenlets.wait()
        assert not ctx.cancelled  # the dump does not stop anything
        _kill_self(DUMP)  # and can be asked for again
        with gevent.Timeout(5):
            while len(greenlets.records) < 2:
                greenlets.event.clear()
                greenlets.event.wait()
        _kill_self(SIG)
        ctx.wait()

    manager = gt.TaskManager(name="web")
    manager.add_task("db", FakeTask.blocking("db"))
    manager.add_execute_task("job", FakeExecuteTask("job"), gt.ExecuteTaskType.ERROR)  # returns at once
    manager.add_execute_task("dumper", dump_then_stop)
    with gevent.Timeout(10):
        code = gt.run(manager, signals=SIG, dump_signal=DUMP)
    assert code == 0
    reason = manager.stop_reason
    assert reason is not None
    assert isinstance(reason.error, SignalReceived)
    assert reason.error.signum is SIG  # the stop signal stopped it, not the dump signal

    record = tree.records[0]
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        "web: SIGUSR2: status tree:\n"
        "manager 'web': executing\n"
        "  db: task strict, running\n"
        "  job: execute error, stopped\n"
        "  dumper: execute strict, running"
    )
    stacks = greenlets.records[0]
    assert stacks.levelno == logging.INFO
    text = stacks.getMessage()
    assert "* Greenlets" in text
    assert "in dump_then_stop" in text  # the stack of the task that asked for the dump
    assert python_handler == []  # neither signal reached the Python handlers...
    assert signal.getsignal(DUMP) is not signal.SIG_DFL
    _kill_self(DUMP)  # ...which are back now
    with gevent.Timeout(5):
        while not python_handler:
            gevent.idle()
    assert python_handler == [DUMP]


def test_status_tree_of_a_new_manager() -> None:
    from greentask.runner import _status_tree

    manager = gt.TaskManager(name="web")
    manager.add_task("db", FakeTask("db"))
    assert _status_tree(manager) == ["manager 'web': new", "  db: task strict, pending"]


def test_status_tree_of_a_nested_manager_is_indented() -> None:
    from greentask.runner import _status_tree

    child = gt.TaskManager(name="pipeline")
    child.add_task("db", FakeTask("db"))
    parent = gt.TaskManager(name="app")
    parent.add_task("pipeline", child)
    lines = _status_tree(parent)
    assert lines[0] == "manager 'app': new"
    assert lines[1] == "  pipeline: task strict, pending"
    assert lines[2] == "    (manager 'pipeline': new)"
    assert lines[3] == "    pipeline/db: task strict, pending"


# -- log lines ---------------------------------------------------------------------------


def _echo(sock: object, address: object) -> None:
    return None


def test_running_line_counts_the_tasks_and_names_each_servers_address(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="greentask")
    manager = gt.TaskManager(name="web")
    health = HealthServer(manager, port=0)
    http = Server(StreamServer(("127.0.0.1", 0), _echo))
    forced = Server(StreamServer(("127.0.0.1", 0), _echo))
    manager.add_task("health", health)
    manager.add_task("http", http)
    manager.add_task("forced", ForceStop(5, forced))  # a wrapped server is found too
    manager.add_task("db", FakeTask.blocking("db"))
    manager.add_execute_task("stopper", lambda ctx: manager.stop())
    with gevent.Timeout(10):
        assert gt.run(manager, signals=()) == 0
    addresses = [f"127.0.0.1:{server.address[1]}" for server in (health, http, forced)]
    running = [m for m in _messages(caplog) if m.startswith("web: running")]
    assert running == [
        f"web: running 5 tasks; 'health' on {addresses[0]}, 'http' on {addresses[1]}, 'forced' on {addresses[2]}"
    ]
    assert _messages(caplog)[-1] == "web: stopped cleanly; exit code 0"


def test_no_running_line_when_startup_fails(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="greentask")
    manager = gt.TaskManager(name="web")
    manager.add_task("broken", FakeTask(initialize=ValueError("bad config")))
    with gevent.Timeout(10):
        assert gt.run(manager, signals=()) == 1
    messages = _messages(caplog)
    assert not [m for m in messages if "running" in m]
    assert messages[-1] == "web: stopped with 1 error; exit code 1"


# -- handler restoration -------------------------------------------------------------------


def test_previous_python_handler_is_restored_at_os_level(python_handler: list[int]) -> None:
    handler_before = signal.getsignal(SIG)
    manager = gt.TaskManager()

    def stop_via_signal(ctx: gt.Context) -> None:
        _kill_self()
        ctx.wait()

    manager.add_execute_task("signaller", stop_via_signal)
    with gevent.Timeout(10):
        assert gt.run(manager, signals=(SIG,)) == 0
    assert python_handler == []
    assert signal.getsignal(SIG) is handler_before

    _kill_self()  # without the restore this would kill the test process (SIG_DFL)
    with gevent.Timeout(5):
        while not python_handler:
            gevent.idle()
    assert python_handler == [SIG]


def test_handlers_are_restored_when_run_raises(python_handler: list[int]) -> None:
    manager = gt.TaskManager()
    ctx, cancel = gt.with_cancel(gt.background())
    cancel()
    with gevent.Timeout(10):
        assert gt.run(manager, ctx=ctx, signals=(SIG,)) == 0
        with pytest.raises(gt.ManagerStateError, match="will not run again"):
            gt.run(manager, signals=(SIG,), stop_timeout=3.0)
    assert manager._stop_timeout is None  # a manager that cannot run is left alone
    _kill_self()
    with gevent.Timeout(5):
        while not python_handler:
            gevent.idle()
    assert python_handler == [SIG]


def test_ctx_is_passed_to_the_manager() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    seen: list[gt.Context] = []

    def record(run_ctx: gt.Context) -> None:
        seen.append(run_ctx)
        cancel()
        run_ctx.wait()

    manager = gt.TaskManager()
    manager.add_execute_task("record", record)
    with gevent.Timeout(10):
        assert gt.run(manager, ctx=ctx, signals=()) == 0
    assert manager.stop_reason is not None
    assert manager.stop_reason.kind == "context"
    assert seen[0].cancelled


def test_stop_timeout_overrides_the_managers(caplog: pytest.LogCaptureFixture) -> None:
    never = Event()

    def ignores_cancellation(ctx: gt.Context) -> None:
        never.wait()

    manager = gt.TaskManager(stop_timeout=1000.0)
    manager.add_execute_task("stubborn", ignores_cancellation)
    manager.add_execute_task("stopper", lambda ctx: manager.stop())
    with gevent.Timeout(10):
        code = gt.run(manager, signals=(), stop_timeout=0.05)
    assert code == 1
    errors = [s.error for s in manager.status() if s.name == "stubborn"]
    assert isinstance(errors[0], gt.StopTimeout)
    assert "within 0.05s" in str(errors[0])


def test_task_errors_are_logged_with_traceback_and_give_1(caplog: pytest.LogCaptureFixture) -> None:
    def boom(ctx: gt.Context) -> None:
        raise ConnectionError("refused")

    manager = gt.TaskManager()
    manager.add_execute_task("db", boom)
    with gevent.Timeout(10):
        assert gt.run(manager, signals=()) == 1
    logged = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert len(logged) == 1
    assert logged[0].getMessage() == "greentask: execute: task 'db': ConnectionError('refused')"
    assert logged[0].exc_info is not None
    assert logged[0].exc_info[2] is not None  # the traceback is there


def test_keyboard_interrupt_from_a_task_is_logged_and_gives_1(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="greentask")
    other = FakeTask.blocking("other")
    manager = gt.TaskManager()
    manager.add_task("other", other)
    manager.add_execute_task("interrupt", FakeExecuteTask(execute=KeyboardInterrupt))
    with gevent.Timeout(10):
        assert gt.run(manager, signals=()) == 1
    assert other.cleanup_call_count == 1
    messages = _messages(caplog)
    assert "greentask: interrupted by KeyboardInterrupt(); exit code 1" in messages
    assert any(m.startswith("greentask: execute: task 'interrupt': KeyboardInterrupt") for m in messages)


@pytest.mark.parametrize(
    ("exit_code", "others_fail", "expected"),
    [(3, False, 1), (None, False, 1), (0, False, 1), (0, True, 1), ("bye", False, 1)],
)
def test_system_exit_from_a_task_is_a_recorded_error_so_the_exit_code_is_1(
    exit_code: object, others_fail: bool, expected: int
) -> None:
    def exits(ctx: gt.Context) -> None:
        raise SystemExit(exit_code)

    def fails_during_shutdown(ctx: gt.Context) -> None:
        ctx.wait()
        if others_fail:
            raise RuntimeError("cleanup trouble")

    manager = gt.TaskManager()
    manager.add_execute_task("other", fails_during_shutdown)
    manager.add_execute_task("exits", exits)
    with gevent.Timeout(10):
        assert gt.run(manager, signals=()) == expected


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"signals": "SIGTERM"}, TypeError, "signals must be a signal number or an iterable of them, got 'SIGTERM'"),
        ({"signals": True}, TypeError, "signals must be a signal number or an iterable of them, got True"),
        ({"signals": ("SIGTERM",)}, TypeError, "signals must hold signal numbers, got 'SIGTERM'"),
        ({"signals": 9999}, ValueError, "signals must hold valid signal numbers, got 9999"),
        ({"signals": (9999,)}, ValueError, "signals must hold valid signal numbers, got 9999"),
        ({"signals": (signal.SIGKILL,)}, ValueError, "cannot include SIGKILL"),
        ({"dump_signal": "SIGUSR2"}, TypeError, "dump_signal must be a signal number or None, got 'SIGUSR2'"),
        ({"dump_signal": signal.SIGSTOP}, ValueError, "dump_signal cannot include SIGSTOP"),
        ({"dump_signal": SIG, "signals": SIG}, ValueError, "dump_signal SIGUSR1 is also one of the stop signals"),
        ({"stop_timeout": -1}, ValueError, "stop_timeout must be a non-negative number of seconds, got -1"),
        ({"stop_timeout": "5"}, TypeError, "stop_timeout must be a number of seconds, got '5'"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    manager = gt.TaskManager()
    with pytest.raises(error, match=match):
        gt.run(manager, **kwargs)  # type: ignore[arg-type]
    assert manager.phase == "new"


def test_manager_must_be_a_task_manager() -> None:
    with pytest.raises(TypeError, match="manager must be a TaskManager, got 'nope'"):
        gt.run("nope")  # type: ignore[arg-type]


# -- systemd notification -------------------------------------------------------------


class Datagrams:
    """The receiving end of ``NOTIFY_SOCKET``: a real AF_UNIX datagram socket.

    `received` keeps every datagram in arrival order; `next` waits cooperatively (the
    test process is not monkey-patched, so the wait goes through ``wait_read``).
    """

    def __init__(self, sock: socket.socket, path: str) -> None:
        self.sock = sock
        self.path = path
        self.received: list[bytes] = []

    def pending(self) -> list[bytes]:
        """Read what has arrived, without waiting; returns just that."""
        new = []
        while True:
            try:
                new.append(self.sock.recv(4096))
            except BlockingIOError:
                self.received.extend(new)
                return new

    def next(self) -> bytes:
        """Wait (at most 5 s) for one more datagram and return it."""
        with gevent.Timeout(5):
            while True:
                try:
                    data = self.sock.recv(4096)
                except BlockingIOError:
                    gevent.socket.wait_read(self.sock.fileno())
                else:
                    self.received.append(data)
                    return data

    def wait_for(self, predicate: Callable[[list[bytes]], bool]) -> None:
        """Read until ``predicate(received)`` holds (at most 5 s per datagram)."""
        self.pending()
        while not predicate(self.received):
            self.next()

    def mark(self, marker: bytes) -> None:
        """Put ``marker`` into the stream, ordered with what the runner sends."""
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with sender:
            sender.sendto(marker, self.path)

    def without_watchdog(self) -> list[bytes]:
        return [d for d in self.received if d != b"WATCHDOG=1"]


@pytest.fixture
def notify(monkeypatch: pytest.MonkeyPatch) -> Iterator[Datagrams]:
    """A real AF_UNIX datagram socket named by NOTIFY_SOCKET (short path: sun_path limit)."""
    directory = tempfile.mkdtemp(prefix="gt-notify-", dir="/tmp")
    path = Path(directory) / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    try:
        yield Datagrams(sock, str(path))
    finally:
        sock.close()
        path.unlink()
        os.rmdir(directory)


def test_notify_status_while_initializing_then_ready_then_stopping(
    notify: Datagrams, python_handler: list[int]
) -> None:
    may_initialize = Event()
    seen_before_ready: list[list[bytes]] = []
    order: list[str] = []

    def gated_initialize(ctx: gt.Context) -> None:
        may_initialize.wait()

    def last(ctx: gt.Context) -> None:
        order.append("last started")
        notify.wait_for(lambda received: any(d.startswith(b"READY=1") for d in received))
        order.append("ready")
        _kill_self()
        ctx.wait()

    manager = gt.TaskManager(name="web")
    manager.add_task("db", FakeTask.blocking("db"))
    manager.add_task("cache", FakeTask("cache", initialize=gated_initialize, execute=lambda ctx: ctx.wait()))
    manager.add_execute_task("last", last)

    def release() -> None:
        notify.wait_for(lambda received: b"STATUS=initializing 2/2: cache" in received)
        seen_before_ready.append(list(notify.received))  # cache is initializing: not ready
        may_initialize.set()

    with gevent.Timeout(10):
        releaser = gevent.spawn(release)
        code = gt.run(manager, signals=SIG)
        releaser.get()

    assert code == 0
    assert seen_before_ready == [[b"STATUS=initializing 1/2: db", b"STATUS=initializing 2/2: cache"]]
    assert order == ["last started", "ready"]
    notify.pending()
    assert notify.received == [
        b"STATUS=initializing 1/2: db",
        b"STATUS=initializing 2/2: cache",
        b"READY=1\nSTATUS=running 3 tasks",
        f"STOPPING=1\nSTATUS=stopping: {manager._stop_description()}".encode(),
        b"STATUS=cleaning up cache",
        b"STATUS=cleaning up db",
    ]
    assert "SignalReceived('received SIGUSR1')" in manager._stop_description()


def test_notify_stopping_without_ready_when_initialize_fails(notify: Datagrams) -> None:
    manager = gt.TaskManager()
    manager.add_task("broken", FakeTask(initialize=ValueError("bad config")))
    manager.add_task("never", FakeTask())
    with gevent.Timeout(10):
        assert gt.run(manager, signals=()) == 1
    assert notify.pending() == [
        b"STATUS=initializing 1/2: broken",
        b"STOPPING=1\nSTATUS=stopping: task 'broken' failed in initialize: ValueError('bad config')",
        b"STATUS=cleaning up broken",
    ]


def test_ready_waits_for_each_task_once_and_not_for_a_dropped_one(notify: Datagrams) -> None:
    runs: list[int] = []
    before_last_started: list[list[bytes]] = []

    def flaky(ctx: gt.Context) -> None:
        runs.append(1)
        if len(runs) <= 2:
            raise ConnectionError("refused")  # restarted: its "started" comes again
        ctx.wait()

    def on_event(event: gt.ManagerEvent) -> None:
        if (event.kind, event.task_name) == ("started", "last"):
            # Subscribed before gt.run's own follower: called first for this event.
            before_last_started.append(list(notify.received) + notify.pending())
        if (event.kind, event.task_name) == ("started", "flaky") and len(runs) == 2:
            manager.stop()

    manager = gt.TaskManager(on_event=on_event)
    manager.add_task("flaky", FakeTask("flaky", execute=flaky), restart=gt.Restart(max_restarts=5, within=60))
    manager.add_task("dropped", FakeTask("dropped")).stop()  # dropped before run: never starts
    manager.add_task("last", FakeTask.blocking("last"))
    with gevent.Timeout(10):
        assert gt.run(manager, signals=()) == 0
    assert before_last_started == [[b"STATUS=initializing 1/2: flaky", b"STATUS=initializing 2/2: last"]]
    notify.pending()
    assert b"READY=1\nSTATUS=running 2 tasks" in notify.received


def test_notify_socket_in_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"greentask-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    try:
        manager = gt.TaskManager()
        manager.add_execute_task("stops", lambda ctx: manager.stop())
        with gevent.Timeout(10):
            assert gt.run(manager, signals=()) == 0
        assert Datagrams(sock, "").pending() == [
            b"READY=1\nSTATUS=running 1 task",
            b"STOPPING=1\nSTATUS=stopping: stop() called",
        ]
    finally:
        sock.close()


def test_notify_failure_is_logged_not_fatal(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/greentask/notify")
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    manager = gt.TaskManager()
    manager.add_execute_task("stops", lambda ctx: manager.stop())
    with gevent.Timeout(10):
        assert gt.run(manager, signals=()) == 0
    warnings = [m for m in _messages(caplog) if m.startswith("greentask: could not notify systemd")]
    assert len(warnings) == 2
    assert "(READY=1; STATUS=running 1 task)" in warnings[0]
    assert "(STOPPING=1; STATUS=stopping: stop() called)" in warnings[1]


def test_notify_socket_that_is_not_a_path_is_ignored(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    manager = gt.TaskManager()
    manager.add_execute_task("stops", lambda ctx: manager.stop())
    with gevent.Timeout(10):
        assert gt.run(manager, signals=()) == 0
    assert "greentask: NOTIFY_SOCKET='vsock:2:1234' is not a unix socket path; not notifying systemd" in _messages(
        caplog
    )


def test_notify_status_while_a_task_restarts(notify: Datagrams) -> None:
    runs: list[int] = []

    def flaky(ctx: gt.Context) -> None:
        runs.append(1)
        if len(runs) == 2:  # the first run made the manager ready; the second fails
            raise ConnectionError("refused")
        if len(runs) == 1:
            notify.wait_for(lambda received: any(d.startswith(b"READY=1") for d in received))
            raise ConnectionError("refused")
        manager.stop()

    manager = gt.TaskManager()
    manager.add_task("cache", FakeTask.blocking("cache"))
    manager.add_execute_task("db", flaky, restart=gt.Restart(max_restarts=5, within=60))
    with gevent.Timeout(10):
        assert gt.run(manager, signals=()) == 0
    notify.pending()
    assert notify.without_watchdog()[1:] == [
        b"READY=1\nSTATUS=running 2 tasks",
        b"STATUS=restarting db",
        b"STATUS=running 2 tasks",
        b"STATUS=restarting db",
        b"STATUS=running 2 tasks",
        b"STOPPING=1\nSTATUS=stopping: stop() called",
        b"STATUS=cleaning up cache",
    ]


# -- systemd watchdog ---------------------------------------------------------------------

#: WATCHDOG_USEC for the tests: a ping every 10 ms.
WATCHDOG_USEC = 20_000
INTERVAL = WATCHDOG_USEC / 2_000_000


def _after(received: list[bytes], marker: bytes) -> list[bytes]:
    return received[received.index(marker) + 1 :] if marker in received else []


def test_watchdog_pings_while_running_and_stops_once_shutdown_begins(
    notify: Datagrams, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))

    def runs_a_while(ctx: gt.Context) -> None:
        notify.wait_for(lambda received: received.count(b"WATCHDOG=1") >= 3)
        manager.stop()

    def slow_to_stop(ctx: gt.Context) -> None:
        ctx.wait()
        # Not a synchronization: the window in which a watchdog that kept pinging
        # during shutdown would send (five intervals, the hub running).
        gevent.sleep(5 * INTERVAL)
        notify.mark(b"X-EXECUTE-RETURNED")

    manager = gt.TaskManager()
    manager.add_task("slow", FakeTask("slow", execute=slow_to_stop))
    manager.add_execute_task("runs", runs_a_while)
    with gevent.Timeout(10):
        assert gt.run(manager, signals=()) == 0
    notify.pending()
    received = notify.received
    ready = next(i for i, d in enumerate(received) if d.startswith(b"READY=1"))
    assert b"WATCHDOG=1" in received[ready:]  # pings while running
    after_stopping = _after(received, b"STOPPING=1\nSTATUS=stopping: stop() called")
    assert b"X-EXECUTE-RETURNED" in after_stopping
    assert b"WATCHDOG=1" not in after_stopping


def test_watchdog_pings_stop_while_the_hub_is_blocked(notify: Datagrams, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    blocking_sleep = get_original("time", "sleep")

    def blocks_the_hub(ctx: gt.Context) -> None:
        notify.wait_for(lambda received: received.count(b"WATCHDOG=1") >= 2)
        notify.mark(b"X-BLOCK-BEGIN")
        blocking_sleep(5 * INTERVAL)  # a task that never yields: the hub cannot run
        notify.mark(b"X-BLOCK-END")
        notify.wait_for(lambda received: b"WATCHDOG=1" in _after(received, b"X-BLOCK-END"))
        manager.stop()

    manager = gt.TaskManager()
    manager.add_execute_task("blocker", blocks_the_hub)
    with gevent.Timeout(10):
        assert gt.run(manager, signals=()) == 0
    notify.pending()
    received = notify.received
    during = received[received.index(b"X-BLOCK-BEGIN") + 1 : received.index(b"X-BLOCK-END")]
    assert during == []  # not one ping while the hub was blocked...
    assert b"WATCHDOG=1" in _after(received, b"X-BLOCK-END")  # ...and pings again after


@pytest.mark.parametrize(("watchdog_pid", "pings"), [("self", True), ("1", False)])
def test_watchdog_honours_watchdog_pid(
    notify: Datagrams, monkeypatch: pytest.MonkeyPatch, watchdog_pid: str, pings: bool
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()) if watchdog_pid == "self" else watchdog_pid)
    manager = gt.TaskManager()
    manager.add_execute_task("stops", lambda ctx: manager.stop())
    with gevent.Timeout(10):
        assert gt.run(manager, signals=()) == 0
    # The first ping goes out as soon as run starts, so even this short run shows one.
    assert (b"WATCHDOG=1" in notify.pending()) is pings


@pytest.mark.parametrize("usec", ["soon", "0", "-5"])
def test_a_bad_watchdog_usec_is_ignored_with_a_warning(
    notify: Datagrams, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, usec: str
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    manager = gt.TaskManager()
    manager.add_execute_task("stops", lambda ctx: manager.stop())
    with gevent.Timeout(10):
        assert gt.run(manager, signals=()) == 0
    assert b"WATCHDOG=1" not in notify.pending()
    assert f"greentask: WATCHDOG_USEC={usec!r} is not a positive integer; not sending watchdog pings" in _messages(
        caplog
    )


def test_a_second_signal_kills_an_on_cancel_callback_that_holds_the_shutdown(
    caplog: pytest.LogCaptureFixture, python_handler: list[int]
) -> None:
    caplog.set_level(logging.INFO, logger="greentask")

    def flush_to_a_dead_remote() -> None:
        _kill_self()  # the second signal, once the shutdown waits for this callback
        Event().wait()

    def execute(ctx: gt.Context) -> None:
        ctx.on_cancel(flush_to_a_dead_remote)
        _kill_self()
        ctx.wait()

    task = FakeTask(execute=execute)
    manager = gt.TaskManager()  # no stop_timeout: only the second signal can end this
    manager.add_task("a", task)
    with gevent.Timeout(10):
        code = gt.run(manager, signals=SIG)
    assert code == 0  # nothing a task did was recorded: the callback is logged, not an error
    assert task.cleanup_call_count == 1
    messages = _messages(caplog)
    assert "received SIGUSR1 again, forcing shutdown: killing 1 on_cancel callback still running" in messages
    assert "greentask: 1 on_cancel callback(s) still running when the shutdown was forced; killed" in messages
