"""greentask.gunicorn.Worker driven in-process, where coverage can see it.

tests/test_gunicorn.py proves the worker under the real gunicorn (forks, signals,
the arbiter). These build a `Worker` as gunicorn's arbiter does, on a gevent listening
socket, and call what gunicorn's ``init_process`` would call after monkey-patching
(``load_wsgi``, then ``run``) in the test's own hub, without patching anything and
without OS signals: the signal handlers are called directly.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.socket
import pytest
from gevent.event import Event

import greentask as gt

pytest.importorskip("gunicorn")

from gunicorn.config import Config

from greentask.gunicorn import WORKER_BOOT_ERROR, Worker, WorkerShutdown, _one_line, _queued_since_fork, _where


class FakeLog:
    """gunicorn's logger interface, recording (level, message) pairs."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self.access_count = 0

    def _record(self, level: str, msg: str, *args: Any, **kwargs: Any) -> None:
        self.lines.append((level, msg % args if args else msg))

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._record("debug", msg, *args)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._record("info", msg, *args)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._record("warning", msg, *args)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._record("error", msg, *args)

    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._record("exception", msg, *args)

    def access(self, *args: Any) -> None:
        self.access_count += 1

    def has(self, level: str, text: str) -> bool:
        return any(lvl == level and text in line for lvl, line in self.lines)


class FakeApp:
    """gunicorn's application object: ``wsgi()`` returns the WSGI callable."""

    def __init__(self, wsgi: Callable[..., Any]) -> None:
        self._wsgi = wsgi

    def wsgi(self) -> Callable[..., Any]:
        return self._wsgi


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = f"hello {environ['SERVER_SOFTWARE']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def get(address: tuple[str, int], path: str = "/") -> bytes:
    """One HTTP/1.0 request on a gevent socket; the whole answer."""
    sock = gevent.socket.create_connection(address, timeout=10)
    try:
        sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        sock.close()


#: Factories GREENTASK_MANAGER can name: ``test_gunicorn_inprocess:<name>``.
BUILT: dict[str, Any] = {}


def with_failing_task() -> gt.TaskManager:
    """A task that raises once ``BUILT["fail"]`` is set."""
    fail = Event()
    BUILT["fail"] = fail

    def failing(ctx: gt.Context) -> None:
        gevent.wait([fail, ctx], count=1)
        if not ctx.cancelled:
            raise RuntimeError("boom")

    manager = gt.TaskManager(name="app")
    manager.add_execute_task("failing", failing)
    return manager


class BadInit:
    def initialize(self, ctx: gt.Context) -> None:
        raise ConnectionError("db unreachable")

    def execute(self, ctx: gt.Context) -> None:
        ctx.wait()

    def cleanup(self, ctx: gt.Context) -> None:
        BUILT["cleaned"] = True


def with_bad_init() -> gt.TaskManager:
    manager = gt.TaskManager(name="app")
    manager.add_task("db", BadInit())
    return manager


def with_stubborn_task() -> gt.TaskManager:
    manager = gt.TaskManager(name="app")
    manager.add_execute_task("stubborn", lambda ctx: Event().wait())
    return manager


def with_failing_cleanup() -> gt.TaskManager:
    class Leaky:
        def initialize(self, ctx: gt.Context) -> None:
            pass

        def execute(self, ctx: gt.Context) -> None:
            ctx.wait()

        def cleanup(self, ctx: gt.Context) -> None:
            raise OSError("cannot flush")

    manager = gt.TaskManager(name="app")
    manager.add_task("leaky", Leaky())
    return manager


def with_system_exit() -> gt.TaskManager:
    fail = Event()
    BUILT["fail"] = fail

    def exits(ctx: gt.Context) -> None:
        gevent.wait([fail, ctx], count=1)
        if not ctx.cancelled:
            raise SystemExit(7)

    manager = gt.TaskManager(name="app")
    manager.add_execute_task("exits", exits)
    return manager


Maker = Callable[..., tuple[Worker, FakeLog, tuple[str, int]]]


@pytest.fixture
def make_worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[Maker]:
    """Build Workers the way gunicorn's arbiter does; close their sockets and tmp files after."""
    made: list[tuple[Worker, Any]] = []
    monkeypatch.delenv("GREENTASK_MANAGER", raising=False)
    BUILT.clear()

    def make(
        target: str | None = None,
        *,
        app: Callable[..., Any] = hello,
        graceful_timeout: int = 10,
        max_requests: int = 0,
    ) -> tuple[Worker, FakeLog, tuple[str, int]]:
        if target is not None:
            monkeypatch.setenv("GREENTASK_MANAGER", f"test_gunicorn_inprocess:{target}")
        cfg = Config()
        cfg.set("graceful_timeout", graceful_timeout)
        cfg.set("max_requests", max_requests)
        listener = gevent.socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        address = listener.getsockname()
        log = FakeLog()
        worker = Worker(1, os.getppid(), [listener], FakeApp(app), 15.0, cfg, log)
        made.append((worker, listener))
        return worker, log, address

    yield make
    for worker, listener in made:
        listener.close()
        worker.tmp.close()
    BUILT.clear()


def run_worker(worker: Worker) -> gevent.Greenlet[..., Any]:
    """``worker.run()`` in a greenlet; its value is the exit code (0 when it returned)."""

    def run() -> int:
        try:
            worker.run()
        except SystemExit as exc:
            return int(exc.code or 0)
        return 0

    return gevent.spawn(run)


def test_an_empty_manager_serves_and_stops_cleanly_on_sigterm(make_worker: Maker) -> None:
    worker, log, address = make_worker()
    worker.load_wsgi()
    assert worker.manager is not None
    assert [s.name for s in worker.manager.status()] == [f"gunicorn:{address[0]}:{address[1]}", "gunicorn:heartbeat"]
    running = run_worker(worker)
    answer = get(address)
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer
    assert b"\r\n\r\nhello gevent/" in answer, answer
    assert b" gunicorn/" in answer, answer
    worker._on_signal(signal.SIGTERM)
    assert running.get(timeout=10) == 0
    assert log.has("info", "received SIGTERM, shutting down gracefully")
    assert log.has("info", "gunicorn worker: stopped cleanly")
    assert log.access_count == 1
    assert not worker.alive


def test_a_task_failure_exits_1_after_logging_it(make_worker: Maker) -> None:
    worker, log, _ = make_worker("with_failing_task")
    worker.load_wsgi()
    running = run_worker(worker)
    BUILT["fail"].set()
    assert running.get(timeout=10) == 1
    assert log.has("error", "app: execute: task 'failing': RuntimeError('boom')")
    assert log.has("error", "stopped because task 'failing' failed; exit code 1")


def test_a_bad_target_is_a_boot_error(make_worker: Maker) -> None:
    worker, log, _ = make_worker("no_such_factory")
    with pytest.raises(SystemExit) as info:
        worker.load_wsgi()
    assert info.value.code == WORKER_BOOT_ERROR
    assert log.has(
        "error",
        "worker failed to boot: bad GREENTASK_MANAGER='test_gunicorn_inprocess:no_such_factory': "
        "module 'test_gunicorn_inprocess' has no attribute 'no_such_factory'",
    )


def test_an_initialize_failure_is_a_boot_error_after_cleanup(make_worker: Maker) -> None:
    worker, log, _ = make_worker("with_bad_init")
    with pytest.raises(SystemExit) as info:
        worker.load_wsgi()
    assert info.value.code == WORKER_BOOT_ERROR
    assert BUILT["cleaned"] is True
    assert log.has("error", "worker failed to boot: task 'db' failed to initialize: ConnectionError('db unreachable')")


def test_max_requests_stops_the_worker_gracefully(make_worker: Maker) -> None:
    worker, log, address = make_worker(max_requests=2)
    worker.load_wsgi()
    running = run_worker(worker)
    assert get(address).startswith(b"HTTP/1.1 200")
    assert get(address).startswith(b"HTTP/1.1 200")  # the request that reaches the limit completes
    assert running.get(timeout=10) == 0
    assert log.has("info", "Autorestarting worker after current request.")
    assert worker.manager is not None
    assert worker.manager.stop_reason is not None
    assert isinstance(worker.manager.stop_reason.error, WorkerShutdown)


def test_a_quick_stop_kills_the_running_tasks_and_exits_0(make_worker: Maker) -> None:
    worker, log, _ = make_worker("with_stubborn_task")
    worker.load_wsgi()
    running = run_worker(worker)
    worker.handle_quit(signal.SIGQUIT, None)  # gunicorn's Python-level handler, deferred to a greenlet
    assert running.get(timeout=10) == 0
    assert log.has("info", "received SIGQUIT, quick shutdown")
    assert log.has("warning", "the quick shutdown killed 3 running task(s): ")
    worker._on_signal(signal.SIGINT)  # a second one changes nothing


def test_a_graceful_stop_that_overruns_graceful_timeout_is_forced(make_worker: Maker) -> None:
    worker, log, _ = make_worker("with_stubborn_task", graceful_timeout=1)
    worker.load_wsgi()
    running = run_worker(worker)
    worker.handle_exit(signal.SIGTERM, None)
    assert running.get(timeout=10) == 1  # the forced stop's StopTimeout is an error
    assert log.has("warning", "Worker graceful timeout")
    assert log.has("error", "task 'stubborn' was still running when shutdown was forced; killed")
    worker._on_signal(signal.SIGTERM)  # already stopping: logged only
    assert log.has("info", "received SIGTERM, already shutting down")


def test_a_stop_before_the_manager_runs_ends_it_right_after_it_starts(make_worker: Maker) -> None:
    worker, _, _ = make_worker()
    worker._keep_early_signal(signal.SIGTERM, None)  # what init_process's handler does
    assert worker._early_signals == [signal.SIGTERM]
    worker._on_signal(signal.SIGTERM)  # what init_signals then does with it
    worker._on_signal(signal.SIGQUIT)  # nothing to kill yet
    worker.load_wsgi()
    assert run_worker(worker).get(timeout=10) == 0
    assert worker.manager is not None
    assert worker.manager.stop_reason is not None
    assert worker.manager.stop_reason.kind == "context"


def test_the_arbiters_death_stops_the_worker_gracefully(make_worker: Maker) -> None:
    worker, log, _ = make_worker()
    worker.load_wsgi()
    running = run_worker(worker)
    worker.ppid = -1  # not our parent any more
    worker.notify()
    assert running.get(timeout=10) == 0
    assert log.has("info", "Parent changed, shutting down")


def test_gunicorn_asking_the_worker_to_leave_stops_it(make_worker: Maker) -> None:
    worker, _, _ = make_worker()
    worker.load_wsgi()
    running = run_worker(worker)
    worker.alive = False  # as gunicorn's reloader does
    assert running.get(timeout=10) == 0
    assert worker.manager is not None
    assert worker.manager.stop_reason is not None
    assert str(worker.manager.stop_reason.error) == "gunicorn asked the worker to stop"


def test_a_failing_cleanup_makes_the_exit_code_1(make_worker: Maker) -> None:
    worker, log, _ = make_worker("with_failing_cleanup")
    worker.load_wsgi()
    running = run_worker(worker)
    worker._on_signal(signal.SIGTERM)
    assert running.get(timeout=10) == 1
    assert log.has("error", "app: cleanup: task 'leaky': OSError('cannot flush')")
    assert log.has("error", "app: stopped with 1 error(s); exit code 1")


def test_a_task_raising_system_exit_exits_1(make_worker: Maker) -> None:
    worker, log, _ = make_worker("with_system_exit")
    worker.load_wsgi()
    running = run_worker(worker)
    BUILT["fail"].set()
    assert running.get(timeout=10) == 1
    assert log.has("error", "app: interrupted by SystemExit(7); exit code 1")
    assert log.has("error", "app: task 'exits': SystemExit(7)")


def test_where_names_tcp_and_unix_listeners(tmp_path: Any) -> None:
    class Unix:
        def getsockname(self) -> str:
            return "/run/app.sock"

    class Gone:
        def getsockname(self) -> str:
            raise OSError("closed")

    assert _where(Unix()) == "unix:/run/app.sock"
    assert _where(Gone()) == "listener"


def test_one_line_survives_a_broken_repr() -> None:
    class Broken(Exception):
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    assert _one_line(Broken()) == "<Broken (repr failed)>"


class SlowInit:
    """An initialize that waits until the worker is stopped (a connection that hangs)."""

    def initialize(self, ctx: gt.Context) -> None:
        BUILT["initializing"].set()
        ctx.wait()
        ctx.check()  # gives up: raises Cancelled (a clean stop, SPEC §15)

    def execute(self, ctx: gt.Context) -> None:
        ctx.wait()

    def cleanup(self, ctx: gt.Context) -> None:
        BUILT["cleaned"] = True


def with_slow_init() -> gt.TaskManager:
    BUILT["initializing"] = Event()
    manager = gt.TaskManager(name="app")
    manager.add_task("db", SlowInit())
    return manager


def test_sigterm_while_the_tasks_initialize_exits_0_without_booting(make_worker: Maker) -> None:
    worker, log, _ = make_worker("with_slow_init")

    def stop_once_initializing() -> None:
        BUILT["initializing"].wait()
        worker._on_signal(signal.SIGTERM)

    stopper = gevent.spawn_later(0, stop_once_initializing)
    with pytest.raises(SystemExit) as info:
        worker.load_wsgi()  # beats while it waits; never returns: the worker never boots
    stopper.get(timeout=10)
    assert info.value.code == 0
    assert BUILT["cleaned"] is True
    assert log.has("info", "app: stopped cleanly")


def queued_answers(server_class: Any, **extra: Any) -> list[bytes]:
    """Three clients connect and send a request while the started server has not run yet
    (they wait in the kernel's accept queue); the server is closed; what each client gets."""
    from gevent.pool import Pool
    from gunicorn.workers.ggevent import PyWSGIHandler

    listener = gevent.socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    environ = {"SERVER_SOFTWARE": "test"}
    server = server_class(
        listener,
        application=hello,
        spawn=Pool(10),
        log=FakeLog(),
        handler_class=PyWSGIHandler,
        environ=environ,
        **extra,
    )
    server.start()
    clients = []
    for _ in range(3):
        # A blocking connect of the unpatched socket module: the hub does not run, so
        # the server cannot accept before close().
        raw = socket.create_connection(listener.getsockname(), timeout=5)
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
        clients.append(gevent.socket.socket(fileno=raw.detach()))
    server.close()
    answers = []
    for client in clients:
        client.settimeout(10)
        chunks = []
        try:
            while chunk := client.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            chunks.append(b"<reset>")
        finally:
            client.close()
        answers.append(b"".join(chunks))
    if server.pool is not None:
        server.pool.join(timeout=10)
    return answers


def test_closing_the_listener_serves_the_connections_already_queued() -> None:
    from gunicorn.workers.ggevent import PyWSGIServer

    from greentask.gunicorn import _WSGIServer

    answers = queued_answers(_WSGIServer, request_started=lambda: None, queued_limit=16)
    assert all(answer.startswith(b"HTTP/1.1 200 OK") for answer in answers), answers
    # gunicorn's own server would have reset them (what the override is for).
    assert not any(answer.startswith(b"HTTP/1.1 200") for answer in queued_answers(PyWSGIServer)), "no control"


class _Arbiter:
    """What a forked worker inherits: the arbiter's handler and its signal queue."""

    def __init__(self, sig_queue: Any) -> None:
        self.SIG_QUEUE = sig_queue

    def signal(self, sig: int, frame: Any) -> None:  # gunicorn's Arbiter.signal
        raise AssertionError("not called here")


@pytest.mark.parametrize("kind", ["SimpleQueue", "list"])
def test_stop_signals_queued_by_the_arbiters_handler_after_the_fork_are_recovered(kind: str) -> None:
    queued = [signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT]
    if kind == "list":  # gunicorn before 24
        sig_queue: Any = list(queued)
    else:
        sig_queue = queue.SimpleQueue()
        for sig in queued:
            sig_queue.put_nowait(sig)
    arbiter = _Arbiter(sig_queue)
    handlers = [arbiter.signal, arbiter.signal, signal.SIG_DFL]  # one queue, read once
    assert _queued_since_fork(handlers) == [signal.SIGTERM, signal.SIGQUIT]
    assert _queued_since_fork(handlers) == []  # drained
    assert _queued_since_fork([signal.SIG_DFL, None, print]) == []
