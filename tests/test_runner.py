"""greentask.run: signals, exit codes, handler restoration, systemd notification.

Real signals are sent to this process with ``os.kill(os.getpid(), SIGUSR1)`` and the
runner is given ``signals=(SIGUSR1,)``, so pytest's own SIGINT handling stays intact.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
from gevent.event import Event

import greentask as gt
from greentask.runner import SignalReceived
from greentask.testing import FakeExecuteTask, FakeTask

SIG = signal.SIGUSR1


def _kill_self(sig: int = SIG) -> None:
    os.kill(os.getpid(), sig)


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "greentask"]


@pytest.fixture
def python_handler() -> Iterator[list[int]]:
    """A Python-level SIGUSR1 handler recording the signals it receives."""
    received: list[int] = []
    previous = signal.signal(SIG, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        signal.signal(SIG, previous)


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
    assert "received SIGUSR1, shutting down gracefully (send again to force)" in _messages(caplog)
    assert "greentask: stopped cleanly" in _messages(caplog)
    assert python_handler == []  # gevent's handler, not the Python one, got the signal


def test_second_signal_forces_the_stop_and_returns_1(
    caplog: pytest.LogCaptureFixture, python_handler: list[int]
) -> None:
    caplog.set_level(logging.INFO, logger="greentask")
    other = FakeTask.blocking("other")
    never = Event()

    def stubborn(ctx: gt.Context) -> None:
        _kill_self()
        ctx.wait()  # the first signal cancelled us...
        _kill_self()  # ...ask again, and ignore cancellation
        never.wait()

    manager = gt.TaskManager()  # no stop_timeout: only the second signal can end this
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
    assert "received SIGUSR1 again, forcing shutdown: killing the remaining tasks" in messages
    assert "greentask: stopped with 1 error" in messages
    error_records = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert any(isinstance(r.exc_info[1], gt.StopTimeout) for r in error_records if r.exc_info)


def test_signals_after_the_second_are_only_logged(caplog: pytest.LogCaptureFixture, python_handler: list[int]) -> None:
    caplog.set_level(logging.INFO, logger="greentask")
    cleaned = Event()

    class SlowCleanup:
        def initialize(self, ctx: gt.Context) -> None:
            pass

        def execute(self, ctx: gt.Context) -> None:
            _kill_self()
            ctx.wait()
            _kill_self()
            # Let the second signal be handled (signals of one kind coalesce).
            with gevent.Timeout(5):
                while not any("forcing shutdown" in m for m in _messages(caplog)):
                    gevent.idle()

        def cleanup(self, ctx: gt.Context) -> None:
            # The third signal arrives during cleanup; cleanup still completes.
            _kill_self()
            with gevent.Timeout(5):
                while not any("already forcing shutdown" in m for m in _messages(caplog)):
                    gevent.idle()
            cleaned.set()

    manager = gt.TaskManager()
    manager.add_task("slow", SlowCleanup())
    with gevent.Timeout(10):
        code = gt.run(manager, signals=(SIG,))
    assert cleaned.is_set()  # cleanup ran to its end after the third signal
    assert code == 1  # the execute was still running at the second signal: killed
    assert "received SIGUSR1, already forcing shutdown; waiting for cleanup to finish" in _messages(caplog)


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
        ({"signals": SIG}, TypeError, "signals must be an iterable of signal numbers"),
        ({"signals": ("SIGTERM",)}, TypeError, "signals must hold signal numbers, got 'SIGTERM'"),
        ({"signals": (9999,)}, ValueError, "signals must hold valid signal numbers, got 9999"),
        ({"signals": (signal.SIGKILL,)}, ValueError, "cannot include SIGKILL"),
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


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A real AF_UNIX datagram socket named by NOTIFY_SOCKET (short path: sun_path limit)."""
    directory = tempfile.mkdtemp(prefix="gt-notify-", dir="/tmp")
    path = Path(directory) / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    try:
        yield sock
    finally:
        sock.close()
        path.unlink()
        os.rmdir(directory)


def _pending(sock: socket.socket) -> list[bytes]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(1024))
        except BlockingIOError:
            return messages


def _receive(sock: socket.socket) -> bytes:
    with gevent.Timeout(5):
        while True:
            try:
                return sock.recv(1024)
            except BlockingIOError:
                gevent.idle()


def test_notify_socket_gets_ready_once_all_started_then_stopping(notify_socket: socket.socket) -> None:
    may_initialize = Event()
    seen_before_ready: list[list[bytes]] = []
    order: list[str] = []

    class GatedInit:
        def initialize(self, ctx: gt.Context) -> None:
            may_initialize.wait()

        def execute(self, ctx: gt.Context) -> None:
            order.append("gated started")
            ctx.wait()

        def cleanup(self, ctx: gt.Context) -> None:
            pass

    def last(ctx: gt.Context) -> None:
        order.append("last started")
        order.append(_receive(notify_socket).decode())  # READY=1 arrives once all have started
        _kill_self()
        ctx.wait()

    manager = gt.TaskManager()
    manager.add_task("gated", GatedInit())
    manager.add_execute_task("last", last)

    def release() -> None:
        seen_before_ready.append(_pending(notify_socket))  # still initializing: nothing sent
        may_initialize.set()

    with gevent.Timeout(10):
        gevent.spawn(release)
        code = gt.run(manager, signals=(SIG,))

    assert code == 0
    assert seen_before_ready == [[]]
    assert order == ["gated started", "last started", "READY=1"]
    assert _pending(notify_socket) == [b"STOPPING=1"]


def test_notify_stopping_without_ready_when_initialize_fails(notify_socket: socket.socket) -> None:
    manager = gt.TaskManager()
    manager.add_task("broken", FakeTask(initialize=ValueError("bad config")))
    with gevent.Timeout(10):
        assert gt.run(manager, signals=()) == 1
    assert _pending(notify_socket) == [b"STOPPING=1"]


def test_notify_socket_in_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"greentask-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    try:
        manager = gt.TaskManager()
        manager.add_execute_task("stops", lambda ctx: manager.stop())
        with gevent.Timeout(10):
            assert gt.run(manager, signals=()) == 0
        assert _pending(sock) == [b"READY=1", b"STOPPING=1"]
    finally:
        sock.close()


def test_notify_failure_is_logged_not_fatal(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/greentask/notify")
    manager = gt.TaskManager()
    manager.add_execute_task("stops", lambda ctx: manager.stop())
    with gevent.Timeout(10):
        assert gt.run(manager, signals=()) == 0
    warnings = [m for m in _messages(caplog) if m.startswith("greentask: could not notify systemd")]
    assert len(warnings) == 2
    assert "READY=1" in warnings[0]
    assert "STOPPING=1" in warnings[1]


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
