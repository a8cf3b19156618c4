"""Server: a real gevent WSGIServer / StreamServer on 127.0.0.1, real client sockets."""

from __future__ import annotations

import errno
import gc
import logging
import re
from collections.abc import Callable, Iterator

import gevent
import gevent.socket
import pytest
from _net import can_bind, can_connect
from _taskctx import task_context
from gevent.event import Event
from gevent.pool import Pool
from gevent.pywsgi import WSGIHandler, WSGIServer
from gevent.server import StreamServer
from greenlet import GreenletExit

import greentask as gt
from greentask.tasks import Server
from greentask.testing import FakeClock, FakeTask, eventually, settle, start_manager

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


class KeepAliveClient:
    """An HTTP/1.1 (or 1.0 keep-alive) client on one gevent socket, one request at a time."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = gevent.socket.create_connection(address, timeout=5)
        self.reader = self.sock.makefile("rb")

    def send(self, path: str, version: str = "HTTP/1.1") -> None:
        keep_alive = "Connection: keep-alive\r\n" if version == "HTTP/1.0" else ""
        self.sock.sendall(f"GET {path} {version}\r\nHost: test\r\n{keep_alive}\r\n".encode())

    def response(self) -> tuple[int, dict[str, str], bytes]:
        status = self.reader.readline()
        assert status, "the server closed the connection instead of answering"
        headers = {}
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = self.reader.read(int(headers["content-length"]))
        return int(status.split()[1]), headers, body

    def request(self, path: str, version: str = "HTTP/1.1") -> tuple[int, dict[str, str], bytes]:
        self.send(path, version)
        return self.response()

    def closed_by_server(self) -> bool:
        """Block until the server sends more or closes; True if it closed (EOF)."""
        return self.reader.read(1) == b""

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class App:
    """A WSGI app: /hello answers at once; /slow waits for `release` (records kills)."""

    def __init__(self) -> None:
        self.entered = Event()
        self.release = Event()
        self.killed = Event()
        self.greenlet_names: list[str] = []

    def __call__(self, environ, start_response):
        self.greenlet_names.append(gevent.getcurrent().name)
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


# -- keep-alive does not hold a shutdown (SPEC §15) -------------------------------


def test_fifty_idle_keepalive_connections_do_not_hold_the_shutdown(
    wsgi: WSGIServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()  # never advanced: only closing the idle connections ends execute
    ctx, cancel = gt.with_cancel(gt.background(clock))
    task = Server(wsgi, stop_timeout=30)
    clients: list[KeepAliveClient] = []
    with gevent.Timeout(5), caplog.at_level(logging.DEBUG, logger="greentask"):
        runner = start(task, ctx)
        try:
            for _ in range(50):
                client = KeepAliveClient(task.address)
                clients.append(client)
                assert client.request("/hello")[::2] == (200, b"hello")  # the connection stays open
            fresh = KeepAliveClient(task.address)  # connected, no request sent yet
            clients.append(fresh)
            eventually(lambda: len(task.server.pool) == 51)  # every connection accepted
            cancel()
            # No connection was running a request: the keep-alive ones close at once, the
            # fresh one after FIRST_REQUEST_GRACE (real time) without a request.
            runner.get()
            assert all(client.closed_by_server() for client in clients)
        finally:
            for client in clients:
                client.close()
    assert len(task.server.pool) == 0
    assert re.search(r"greentask: task: closed 5[01] idle keep-alive connection\(s\)", caplog.text)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    task.cleanup(gt.background())


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
def test_a_request_in_flight_completes_and_then_its_keepalive_connection_closes(
    wsgi: WSGIServer, app: App, version: str
) -> None:
    ctx, cancel = gt.with_cancel(gt.background(FakeClock()))
    task = Server(wsgi, stop_timeout=30)
    with gevent.Timeout(5):
        runner = start(task, ctx)
        client = KeepAliveClient(task.address)
        try:
            status, headers, _ = client.request("/hello", version)
            assert (status, headers.get("connection", "keep-alive")) == (200, "keep-alive")  # before
            client.send("/slow", version)
            app.entered.wait()
            cancel()
            eventually(lambda: task.server.closed)  # it stopped accepting
            assert not runner.dead  # the request is still running
            app.release.set()
            status, headers, body = client.response()
            assert (status, body) == (200, b"slow done")
            assert headers["connection"] == "close"  # the client knows not to reuse it
            assert client.closed_by_server()
        finally:
            client.close()
        runner.get()
    assert not app.killed.is_set()
    task.cleanup(gt.background())


def test_idle_connections_close_at_once_while_a_running_request_is_waited_for(wsgi: WSGIServer, app: App) -> None:
    ctx, cancel = gt.with_cancel(gt.background(FakeClock()))
    task = Server(wsgi, stop_timeout=30)
    with gevent.Timeout(5):
        runner = start(task, ctx)
        idle = [KeepAliveClient(task.address) for _ in range(50)]
        busy = KeepAliveClient(task.address)
        try:
            for client in idle:
                assert client.request("/hello")[0] == 200
            busy.send("/slow")
            app.entered.wait()
            cancel()
            assert all(client.closed_by_server() for client in idle)  # while /slow still runs
            assert not runner.dead
            # a handler leaves the pool in a link callback, just after its client saw EOF
            eventually(lambda: len(task.server.pool) == 1)
            app.release.set()
            assert busy.response()[::2] == (200, b"slow done")
            assert busy.closed_by_server()
        finally:
            for client in [*idle, busy]:
                client.close()
        runner.get()


@pytest.mark.parametrize("accepted", ["before the stop", "as the stop begins"])
def test_the_first_request_of_a_connection_accepted_around_the_stop_is_served(wsgi: WSGIServer, accepted: str) -> None:
    """A client writes its request right after connecting; the server may have accepted the
    connection (before, or in the accept loop's last round) before the request arrived."""
    ctx, cancel = gt.with_cancel(gt.background(FakeClock()))
    task = Server(wsgi, stop_timeout=30)
    with gevent.Timeout(5):
        runner = start(task, ctx)
        client = KeepAliveClient(task.address)
        try:
            eventually(lambda: len(task.server.pool) == 1)  # accepted; no request yet
            if accepted == "before the stop":
                settle()  # its handler waits for the request line
            cancel()
            settle()
            assert task.server.closed  # not accepting any more
            assert not runner.dead  # ... but this connection gets its first request served
            status, headers, body = client.request("/hello")
            assert (status, body) == (200, b"hello")
            assert headers["connection"] == "close"
            assert client.closed_by_server()
        finally:
            client.close()
        runner.get()


def test_a_request_arriving_as_the_shutdown_begins_is_served_not_dropped(wsgi: WSGIServer) -> None:
    ctx, cancel = gt.with_cancel(gt.background(FakeClock()))
    task = Server(wsgi, stop_timeout=30)
    with gevent.Timeout(5):
        runner = start(task, ctx)
        client = KeepAliveClient(task.address)
        try:
            assert client.request("/hello")[0] == 200
            settle()  # its handler waits for the next request
            client.send("/hello")  # on its way: no greenlet has run since
            cancel()
            status, headers, body = client.response()
            assert (status, headers["connection"], body) == (200, "close", b"hello")
            assert client.closed_by_server()
        finally:
            client.close()
        runner.get()


class GatedHandler(WSGIHandler):
    """A user's handler class: each connection waits at `gate` before it is handled."""

    arrived = Event()
    gate = Event()

    def handle(self) -> None:
        type(self).arrived.set()
        type(self).gate.wait()
        super().handle()


@pytest.fixture
def gated(app: App) -> Iterator[WSGIServer]:
    GatedHandler.arrived = Event()
    GatedHandler.gate = Event()
    server = WSGIServer(("127.0.0.1", 0), app, handler_class=GatedHandler, log=None)
    yield server
    server.close()


@pytest.mark.parametrize("sends_request", [True, False])
def test_a_connection_accepted_before_the_shutdown_is_served_if_its_request_came(
    gated: WSGIServer, sends_request: bool
) -> None:
    ctx, cancel = gt.with_cancel(gt.background(FakeClock()))
    task = Server(gated, stop_timeout=30)
    with gevent.Timeout(5):
        runner = start(task, ctx)
        client = KeepAliveClient(task.address)
        try:
            if sends_request:
                client.send("/hello")
            GatedHandler.arrived.wait()  # accepted, not handled yet
            cancel()
            eventually(lambda: task.server.closed)  # it stopped accepting
            assert not runner.dead
            GatedHandler.gate.set()
            if sends_request:
                status, headers, body = client.response()
                assert (status, headers["connection"], body) == (200, "close", b"hello")
            assert client.closed_by_server()
        finally:
            client.close()
        runner.get()
    assert issubclass(gated.handler_class, GatedHandler)  # the user's class, made keep-alive aware


def test_keepalive_handling_survives_a_restart_and_cleanup_restores_the_handler_class(wsgi: WSGIServer) -> None:
    task = Server(wsgi, stop_timeout=30)
    for _ in range(2):  # as Interruptible does: initialize, execute, cleanup, again
        ctx, cancel = gt.with_cancel(gt.background(FakeClock()))
        with gevent.Timeout(5):
            runner = start(task, ctx)
            assert wsgi.handler_class is not WSGIHandler
            assert issubclass(wsgi.handler_class, WSGIHandler)
            client = KeepAliveClient(task.address)
            try:
                assert client.request("/hello")[0] == 200
                cancel()
                assert client.closed_by_server()  # idle: closed at once, every time
            finally:
                client.close()
            runner.get()
        task.cleanup(gt.background())
        assert wsgi.handler_class is WSGIHandler  # the server's own class again


# -- the stop budget (SPEC §15) -----------------------------------------------------


def assert_slow_request_killed_at(
    wsgi: WSGIServer, app: App, task: Server, manager_stop_timeout: float | None, killed_at: float
) -> None:
    """Stop ``task`` (named "http") while /slow runs, as a manager with that stop_timeout
    would; the request must be running just before ``killed_at`` and killed at it."""
    clock = FakeClock()
    ctx, stop = task_context(clock, "http")
    with gevent.Timeout(5):
        runner = start(task, ctx)
        client = gevent.spawn(http_request, task.address, "/slow")
        app.entered.wait()
        stop(manager_stop_timeout)
        clock.advance(round(killed_at - 0.01, 2))
        assert not app.killed.is_set()
        assert not runner.dead
        clock.advance(0.01)
        assert app.killed.is_set()
        runner.get()
        assert client.get()[0] == 500
    task.cleanup(gt.background())


@pytest.mark.parametrize(
    ("own", "manager", "killed_at"),
    [
        (None, 10.0, 9.0),  # the manager's budget less a tenth: not gevent's 1 s default
        (10.0, 10.0, 9.0),  # equal: the margin keeps the stop clean
        (20.0, 10.0, 9.0),  # larger: the manager's budget wins
        (2.0, 10.0, 2.0),  # smaller: its own applies
        (None, 30.0, 29.0),  # the margin is at most 1 s
        (None, 5.0, 4.5),
        (None, None, 1.0),  # no manager deadline: the server's own (gevent's default, 1 s)
        (3.0, None, 3.0),
    ],
)
def test_requests_in_flight_get_the_stop_budget(
    wsgi: WSGIServer, app: App, own: float | None, manager: float | None, killed_at: float
) -> None:
    assert_slow_request_killed_at(wsgi, app, Server(wsgi, stop_timeout=own), manager, killed_at)


def test_a_stop_timeout_set_on_the_server_object_counts_as_its_own(wsgi: WSGIServer, app: App) -> None:
    wsgi.stop_timeout = 2
    assert_slow_request_killed_at(wsgi, app, Server(wsgi), 10.0, 2.0)


def test_requests_killed_at_the_end_of_the_budget_are_counted_in_a_warning_naming_the_task(
    wsgi: WSGIServer, app: App, caplog: pytest.LogCaptureFixture
) -> None:
    task = Server(wsgi)
    with caplog.at_level(logging.WARNING, logger="greentask"):
        assert_slow_request_killed_at(wsgi, app, task, 10.0, 9.0)
    [record] = [r for r in caplog.records if r.name == "greentask"]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        f"greentask: web: task 'http': server on 127.0.0.1:{task.address[1]}:"
        " 1 request(s) still running 9.0s after shutdown began; killing them"
    )


def test_in_a_manager_equal_stop_timeouts_give_a_clean_stop(
    wsgi: WSGIServer, app: App, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    manager = gt.TaskManager(stop_timeout=10)
    http = Server(wsgi, stop_timeout=10)
    manager.add_task("http", http)
    with gevent.Timeout(10), caplog.at_level(logging.WARNING, logger="greentask"):
        running = start_manager(manager, gt.background(clock))
        running.wait_running(timeout=10)
        client = gevent.spawn(http_request, http.address, "/slow")
        app.entered.wait()
        running.stop()
        settle()
        clock.advance(8.9)
        assert not app.killed.is_set()  # not gevent's 1 s, nor the full 10 s
        clock.advance(0.1)
        assert running.wait(timeout=10) == []  # no StopTimeout: it stopped before the manager's kill
        assert client.get()[0] == 500
    assert app.killed.is_set()
    assert "1 request(s) still running 9.0s after shutdown began; killing them" in caplog.text


# -- names, ownership, killing (SPEC §15) ---------------------------------------------


def test_handler_greenlets_carry_the_task_name(wsgi: WSGIServer, app: App) -> None:
    ctx, stop = task_context(FakeClock(), "http")
    task = Server(wsgi)
    with gevent.Timeout(5):
        runner = start(task, ctx)
        assert http_request(task.address, "/hello")[0] == 200
        stop(None)
        runner.get()
    task.cleanup(gt.background())
    assert app.greenlet_names == ["http"]


def test_outside_a_manager_handler_greenlets_get_a_descriptive_name(wsgi: WSGIServer, app: App) -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    task = Server(wsgi)
    with gevent.Timeout(5):
        runner = start(task, ctx)
        assert http_request(task.address, "/hello")[0] == 200
        cancel()
        runner.get()
    task.cleanup(gt.background())
    assert app.greenlet_names == ["greentask server handler"]


def test_one_gevent_server_cannot_be_given_to_two_server_tasks(wsgi: WSGIServer) -> None:
    first = Server(wsgi)
    with pytest.raises(ValueError, match="already belongs to another Server task"):
        Server(wsgi)
    assert first.server is wsgi
    del first
    gc.collect()
    assert Server(wsgi).server is wsgi  # once the first task is gone, the server is free


def test_a_killed_server_task_ends_only_after_its_handlers(wsgi: WSGIServer, app: App) -> None:
    ctx, _stop = task_context(FakeClock(), "http")
    task = Server(wsgi)
    with gevent.Timeout(5):
        runner = start(task, ctx)
        client = gevent.spawn(http_request, task.address, "/slow")
        app.entered.wait()
        [handler] = list(task.server.pool)
        runner.kill()  # as the manager does once its stop_timeout ran out
        assert handler.dead  # nothing outlives the task
        assert app.killed.is_set()
        assert len(task.server.pool) == 0
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
