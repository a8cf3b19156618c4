"""Server: a real gevent WSGIServer / StreamServer on 127.0.0.1, real client sockets."""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterator

import gevent
import gevent.socket
import pytest
from _net import can_bind, can_connect
from gevent.event import Event
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer
from gevent.server import StreamServer
from greenlet import GreenletExit

import greentask as gt
from greentask.tasks import Server
from greentask.testing import FakeClock, FakeTask, settle

# -- helpers ------------------------------------------------------------------


def http_request(address: tuple[str, int], path: str, method: str = "GET") -> tuple[int, bytes]:
    """One HTTP/1.0 request over a gevent socket (the test process is not patched)."""
    sock = gevent.socket.create_connection(address, timeout=5)
    with sock:
        sock.sendall(f"{method} {path} HTTP/1.0\r\nHost: test\r\n\r\n".encode())
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split()[1]), body


class App:
    """A WSGI app: /hello answers at once; /slow waits for `release` (records kills)."""

    def __init__(self) -> None:
        self.entered = Event()
        self.release = Event()
        self.killed = Event()

    def __call__(self, environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            self.entered.set()
            try:
                self.release.wait()
            except GreenletExit:
                self.killed.set()
                raise
            body = b"slow done"
        else:
            body = b"hello"
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]


@pytest.fixture
def app() -> App:
    return App()


@pytest.fixture
def wsgi(app: App) -> Iterator[WSGIServer]:
    server = WSGIServer(("127.0.0.1", 0), app, log=None)
    yield server
    server.close()


def raised_by(fn: Callable[[gt.Context], object], ctx: gt.Context) -> Exception | None:
    """Run ``fn(ctx)``; return what it raised (so the hub does not print it)."""
    try:
        fn(ctx)
    except Exception as exc:
        return exc
    return None


def start(task: Server, ctx: gt.Context) -> gevent.Greenlet:
    task.initialize(ctx)
    runner = gevent.spawn(task.execute, ctx)
    settle()  # the server is accepting
    return runner


# -- initialize ---------------------------------------------------------------


def test_initialize_binds_the_socket_and_reports_the_address(wsgi: WSGIServer) -> None:
    task = Server(wsgi)
    with pytest.raises(RuntimeError, match="after initialize"):
        _ = task.address
    task.initialize(gt.background())
    try:
        host, port = task.address
        assert host == "127.0.0.1"
        assert port > 0
        assert not can_bind(task.address)  # bound and listening before execute
    finally:
        task.cleanup(gt.background())


def test_busy_port_fails_in_initialize_naming_the_address(app: App) -> None:
    taken = gevent.socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        task = Server(WSGIServer(("127.0.0.1", port), app, log=None))
        with pytest.raises(OSError, match=f"cannot bind 127.0.0.1:{port}: ") as info:
            task.initialize(gt.background())
        assert info.value.errno == errno.EADDRINUSE
    finally:
        taken.close()


def test_cleanup_after_initialize_alone_releases_the_port(wsgi: WSGIServer) -> None:
    task = Server(wsgi)
    task.initialize(gt.background())
    address = task.address
    task.cleanup(gt.background())
    assert can_bind(address)


# -- execute ------------------------------------------------------------------


def test_execute_serves_http_until_cancelled(wsgi: WSGIServer) -> None:
    task = Server(wsgi)
    ctx, cancel = gt.with_cancel(gt.background())
    with gevent.Timeout(5):
        runner = start(task, ctx)
        assert http_request(task.address, "/hello") == (200, b"hello")
        assert http_request(task.address, "/hello") == (200, b"hello")
        assert not runner.dead
        cancel()
        runner.get()
    task.cleanup(gt.background())
    assert runner.value is None
    assert can_bind(task.address)


def test_cancel_stops_accepting_but_waits_for_the_request_in_flight(wsgi: WSGIServer, app: App) -> None:
    clock = FakeClock()  # never advanced: stop_timeout cannot run out here
    ctx, cancel = gt.with_cancel(gt.background(clock))
    task = Server(wsgi, stop_timeout=5)
    with gevent.Timeout(5):
        runner = start(task, ctx)
        client = gevent.spawn(http_request, task.address, "/slow")
        app.entered.wait()
        cancel()
        settle()
        assert not runner.dead  # the request is still running
        assert not can_connect(task.address)  # but new connections are refused
        app.release.set()
        runner.get()
        assert client.get() == (200, b"slow done")
    assert not app.killed.is_set()
    task.cleanup(gt.background())


def test_request_still_running_after_stop_timeout_is_killed(
    wsgi: WSGIServer, app: App, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    ctx, cancel = gt.with_cancel(gt.background(clock))
    task = Server(wsgi, stop_timeout=5)
    with gevent.Timeout(5):
        runner = start(task, ctx)
        client = gevent.spawn(http_request, task.address, "/slow")
        app.entered.wait()
        cancel()
        clock.advance(4.9)
        assert not runner.dead
        assert not app.killed.is_set()
        with caplog.at_level(logging.WARNING, logger="greentask"):
            clock.advance(0.1)
            runner.get()
        assert app.killed.is_set()
        status, _ = client.get()
    assert status == 500  # pywsgi answers a killed request with 500
    assert runner.value is None  # killing stragglers is the policy, not a failure
    assert "1 request(s) still running 5.0s after shutdown began" in caplog.text
    task.cleanup(gt.background())
    assert can_bind(task.address)


def test_stop_timeout_defaults_to_the_servers_own(wsgi: WSGIServer) -> None:
    wsgi.stop_timeout = 3
    assert Server(wsgi).stop_timeout == 3.0
    assert Server(wsgi, stop_timeout=0.5).stop_timeout == 0.5


def test_a_server_with_its_own_pool_keeps_it(app: App) -> None:
    pool = Pool(10)
    task = Server(WSGIServer(("127.0.0.1", 0), app, spawn=pool, log=None))
    ctx, cancel = gt.with_cancel(gt.background(FakeClock()))
    with gevent.Timeout(5):
        runner = start(task, ctx)
        assert task.server.pool is pool
        client = gevent.spawn(http_request, task.address, "/slow")
        app.entered.wait()
        assert len(pool) == 1
        cancel()
        settle()
        assert not runner.dead
        app.release.set()
        runner.get()
        assert client.get() == (200, b"slow done")
    task.cleanup(gt.background())


def test_server_closed_by_someone_else_is_a_failure(wsgi: WSGIServer) -> None:
    task = Server(wsgi)
    ctx, _cancel = gt.with_cancel(gt.background())
    with gevent.Timeout(5):
        task.initialize(ctx)
        runner = gevent.spawn(raised_by, task.execute, ctx)
        settle()
        wsgi.close()
        error = runner.get()
    assert isinstance(error, RuntimeError)
    assert "was closed before its context was cancelled" in str(error)
    task.cleanup(gt.background())


def test_execute_with_a_cancelled_context_returns_at_once(wsgi: WSGIServer) -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    cancel()
    task = Server(wsgi)
    task.initialize(ctx)
    with gevent.Timeout(5):
        task.execute(ctx)
    task.cleanup(gt.background())
    assert can_bind(task.address)


def test_killed_execute_closes_the_listener_and_kills_handlers(wsgi: WSGIServer, app: App) -> None:
    ctx, _cancel = gt.with_cancel(gt.background())
    task = Server(wsgi)
    with gevent.Timeout(5):
        runner = start(task, ctx)
        client = gevent.spawn(http_request, task.address, "/slow")
        app.entered.wait()
        runner.kill()
        assert not can_connect(task.address)
        app.killed.wait()
        client.join()
    task.cleanup(gt.background())


# -- StreamServer ---------------------------------------------------------------


def echo_server() -> StreamServer:
    def echo(sock, _address):
        reader = sock.makefile("rb")
        try:
            for line in reader:
                sock.sendall(line)
        finally:
            reader.close()

    return StreamServer(("127.0.0.1", 0), echo)


def test_stream_server_serves_tcp_and_waits_for_the_open_connection() -> None:
    task = Server(echo_server())
    clock = FakeClock()
    ctx, cancel = gt.with_cancel(gt.background(clock))
    with gevent.Timeout(5):
        runner = start(task, ctx)
        conn = gevent.socket.create_connection(task.address, timeout=5)
        reader = conn.makefile("rb")
        try:
            conn.sendall(b"ping\n")
            assert reader.readline() == b"ping\n"
            cancel()
            settle()
            assert not runner.dead  # the connection is in flight
            assert not can_connect(task.address)
            conn.sendall(b"still here\n")
            assert reader.readline() == b"still here\n"
        finally:
            reader.close()
            conn.close()
        runner.get()
    task.cleanup(gt.background())
    assert can_bind(task.address)


def test_stream_server_can_be_initialized_again_after_cleanup() -> None:
    task = Server(echo_server())
    for _ in range(2):
        ctx, cancel = gt.with_cancel(gt.background())
        with gevent.Timeout(5):
            runner = start(task, ctx)
            conn = gevent.socket.create_connection(task.address, timeout=5)
            with conn, conn.makefile("rb") as reader:
                conn.sendall(b"again\n")
                assert reader.readline() == b"again\n"
            cancel()
            runner.get()
        task.cleanup(gt.background())
        assert can_bind(task.address)


# -- inside a TaskManager -------------------------------------------------------


def test_server_in_a_task_manager_serves_until_stopped(wsgi: WSGIServer, app: App) -> None:
    manager = gt.TaskManager()
    http = Server(wsgi)
    running = Event()

    def other(ctx):
        running.set()
        ctx.wait()

    manager.add_task("http", http)
    manager.add_task("other", FakeTask("other", execute=other))
    with gevent.Timeout(5):
        run = gevent.spawn(manager.run)
        running.wait()
        settle()
        assert http_request(http.address, "/hello") == (200, b"hello")
        client = gevent.spawn(http_request, http.address, "/slow")
        app.entered.wait()
        manager.stop()
        settle()
        assert manager.phase == "stopping"  # waiting for the request in flight
        app.release.set()
        assert run.get() == []
        assert client.get() == (200, b"slow done")
    assert [s.state for s in manager.status()] == [gt.TaskState.DONE, gt.TaskState.DONE]
    assert can_bind(http.address)


def test_busy_port_fails_the_managers_initialize(app: App) -> None:
    taken = gevent.socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        manager = gt.TaskManager()
        later = FakeTask("later")
        manager.add_task("http", Server(WSGIServer(("127.0.0.1", port), app, log=None)))
        manager.add_task("later", later)
        with gevent.Timeout(5):
            [error] = manager.run()
    finally:
        taken.close()
    assert (error.task_name, error.stage) == ("http", gt.Stage.INITIALIZE)
    assert f"cannot bind 127.0.0.1:{port}" in str(error.error)
    assert later.initialize_call_count == 0


# -- arguments ------------------------------------------------------------------


def test_bad_arguments_are_rejected(wsgi: WSGIServer) -> None:
    with pytest.raises(TypeError, match="server must be a gevent server"):
        Server(("127.0.0.1", 0))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="stop_timeout must be a number"):
        Server(wsgi, stop_timeout="5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stop_timeout must be a non-negative"):
        Server(wsgi, stop_timeout=-1)
