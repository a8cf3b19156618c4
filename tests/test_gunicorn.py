"""greentask.gunicorn.Worker under the real ``gunicorn`` executable (SPEC §13).

Each test starts gunicorn with two workers on 127.0.0.1 (port 0: the kernel picks a
free one; gunicorn's "Listening at" line names it) in a session of its own (`_proc.Proc`:
the whole process group is killed when the test ends, passed or failed), talks to it
with real HTTP clients from threads of the test process, and waits on lines of its
merged output: gunicorn's log, the access log and the ``gtapp: <pid> ...`` lines of
tests/_gunicorn_app.py. Nothing waits by sleeping.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _proc import DEADLINE, Proc

pytest.importorskip("gunicorn")

TESTS = Path(__file__).resolve().parent
GUNICORN = str(Path(sys.executable).parent / "gunicorn")
WORKER = "greentask.gunicorn.Worker"

#: gunicorn calls post_worker_init once the worker counts as booted (before its run()).
CONFIG = r"""
import sys

def post_worker_init(worker):
    sys.stdout.write(f"gtapp: {worker.pid} booted\n")
    sys.stdout.flush()
"""


class Gunicorn:
    """One gunicorn arbiter with its workers, and helpers to talk to it."""

    def __init__(
        self,
        cwd: Path,
        *options: str,
        manager: str | None = "_gunicorn_app:manager",
        worker: str = WORKER,
        workers: int = 2,
        wait_booted: bool = True,
        config_text: str = CONFIG,
    ) -> None:
        config = cwd / "gunicorn_conf.py"
        config.write_text(config_text)
        args = [GUNICORN, "-k", worker, "-w", str(workers), "-b", "127.0.0.1:0", "--no-control-socket"]
        args += ["--pythonpath", str(TESTS), "-c", str(config), *options]
        if manager is not None:
            args += ["-e", f"GREENTASK_MANAGER={manager}"]
        args.append("_gunicorn_app:app")
        self.proc = Proc(args, cwd)
        self.port = 0
        if wait_booted:
            self.port = int(self.proc.expect(r"Listening at: http://127\.0\.0\.1:(\d+)")[1])
            self.pids: list[int] = []
            after = 0
            for _ in range(workers):
                self.pids.append(self.booted(after))
                after = self.index(rf"Booting worker with pid: {self.pids[-1]}$") + 1

    def booted(self, after: int = 0) -> int:
        """The pid of the next worker that boots (from line ``after`` on), once it is booted."""
        pid = int(self.proc.expect(r"Booting worker with pid: (\d+)", after=after)[1])
        self.expect(rf"^gtapp: {pid} booted$")
        return pid

    def expect(self, pattern: str, timeout: float = DEADLINE, *, after: int = 0) -> re.Match[str]:
        return self.proc.expect(pattern, timeout, after=after)

    def expect_count(self, pattern: str, count: int) -> None:
        """Wait until ``count`` output lines match ``pattern``."""
        after = 0
        for _ in range(count):
            line = self.expect(pattern, after=after).string
            after = self.proc.lines.index(line, after) + 1

    def index(self, pattern: str) -> int:
        """Index of the first output line (read so far) matching ``pattern``."""
        regex = re.compile(pattern)
        for index, line in enumerate(self.proc.lines):
            if regex.search(line):
                return index
        pytest.fail(f"no line matches {pattern!r}; output:\n{self.proc.output()}")

    def get(self, path: str = "/", timeout: float = DEADLINE) -> tuple[int, dict[str, str], str]:
        """One request on a fresh connection (closed after): status, headers, body."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read().decode()
        finally:
            conn.close()

    def served_by(self, pid: int) -> str:
        """Requests on fresh connections until worker ``pid`` answers one; its body."""
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            status, _, body = self.get()
            assert status == 200, body
            if body.startswith(f"pid={pid} "):
                return body
        self.proc.kill()
        pytest.fail(f"worker {pid} answered no request within {DEADLINE}s; output:\n{self.proc.output()}")


class Background:
    """Run ``fn`` in a thread; `result` re-raises what it raised."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._value = fn()
        except BaseException as exc:
            self._error = exc

    def result(self, timeout: float = DEADLINE) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"still running after {timeout}s"
        if self._error is not None:
            raise self._error
        return self._value


def read_until_eof(conn: socket.socket) -> bytes:
    """Everything ``conn`` receives until the peer closes it (its timeout bounds each read)."""
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def pid_of(body: str) -> int:
    match = re.match(r"pid=(\d+) ", body)
    assert match is not None, body
    return int(match[1])


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound NOTIFY_SOCKET that knows each sender's pid (short path: AF_UNIX paths are
    limited to ~100 bytes)."""
    with tempfile.TemporaryDirectory(prefix="gtn") as directory:
        path = str(Path(directory) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.bind(path)
        sock.setblocking(False)
        try:
            yield sock, path
        finally:
            sock.close()


def datagrams(sock: socket.socket) -> list[tuple[int, bytes]]:
    """Every datagram waiting on ``sock``: (sender pid, data)."""
    received = []
    creds = struct.calcsize("3i")
    while True:
        try:
            data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(creds))
        except BlockingIOError:
            return received
        pid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("3i", payload[:creds])[0]
        received.append((pid, data))


# -- lifecycle ----------------------------------------------------------------------------


def test_tasks_initialize_before_boot_serve_then_clean_up_on_sigterm(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    server = Gunicorn(tmp_path, "--access-logfile", "-", "-e", f"NOTIFY_SOCKET={path}")
    for pid in server.pids:
        # The user's tasks initialized before the worker counted as booted.
        assert server.index(rf"^gtapp: {pid} initialized db$") < server.index(rf"^gtapp: {pid} booted$")
    bodies = [server.get()[2] for _ in range(6)]
    for body in bodies:
        assert re.fullmatch(r"pid=\d+ db=ready hello software=gevent/\S+ gunicorn/\S+\n", body), body
        assert pid_of(body) in server.pids
    server.expect(r'"GET / HTTP/1\.1" 200 ')  # gunicorn's access log

    server.proc.signal(signal.SIGTERM)
    assert server.proc.finish() == 0, server.proc.output()
    for pid in server.pids:
        server.expect(rf"^gtapp: {pid} db stopping SignalReceived\('received SIGTERM'\)$")
        server.expect(rf"^gtapp: {pid} cleanup db$")
        server.expect(rf"\[{pid}\] \[INFO\] greentask: gtapp: stopped cleanly$")
    assert not server.proc.all(r"exited with code|Traceback"), server.proc.output()
    # The arbiter owns NOTIFY_SOCKET (it says READY=1); workers never send to it.
    senders = {pid for pid, _ in datagrams(sock)}
    assert senders <= {server.proc.popen.pid}, (senders, server.pids)


def test_a_request_in_flight_at_sigterm_completes_before_the_tasks_stop(tmp_path: Path) -> None:
    server = Gunicorn(tmp_path)
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as conn:
        # HTTP/1.1 without "Connection: close": the client would keep the connection.
        conn.sendall(b"GET /slow?1.5 HTTP/1.1\r\nHost: test\r\n\r\n")
        pid = int(server.expect(r"^gtapp: (\d+) slow request started$")[1])
        server.proc.signal(signal.SIGTERM)
        server.expect(rf"\[{pid}\] \[INFO\] greentask: received SIGTERM, shutting down gracefully")
        response = read_until_eof(conn)  # the worker closes the connection after the response
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), response
    assert b"\r\nConnection: close" in head, response
    assert body.decode().startswith(f"pid={pid} db=ready slow done"), response
    assert server.proc.finish() == 0, server.proc.output()
    # Stop order REVERSE: the server drained before the db task was stopped.
    assert server.index(rf"^gtapp: {pid} slow request done$") < server.index(rf"^gtapp: {pid} db stopping ")
    assert server.index(rf"^gtapp: {pid} db stopping ") < server.index(rf"^gtapp: {pid} cleanup db$")


def test_an_idle_keep_alive_connection_does_not_hold_the_shutdown(tmp_path: Path) -> None:
    graceful = 20.0
    server = Gunicorn(tmp_path, "--graceful-timeout", str(int(graceful)), manager=None)
    idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=DEADLINE)
    try:
        idle.request("GET", "/")  # HTTP/1.1: the connection stays open for the next request
        response = idle.getresponse()
        assert response.status == 200
        response.read()
        assert not response.will_close
        sent = time.monotonic()
        server.proc.signal(signal.SIGTERM)
        assert server.proc.finish() == 0, server.proc.output()
        elapsed = time.monotonic() - sent
        assert idle.sock is not None
        assert idle.sock.recv(1) == b""  # the worker closed it
    finally:
        idle.close()
    # Far below graceful_timeout, which an idle client would otherwise have held.
    assert elapsed < graceful / 2, (elapsed, server.proc.output())
    assert not server.proc.all(r"still running .* killing them|graceful timeout"), server.proc.output()


# -- failures and replacements ------------------------------------------------------------


def test_a_task_failure_exits_non_zero_after_cleanup_and_the_worker_is_replaced(tmp_path: Path) -> None:
    server = Gunicorn(tmp_path)
    status, _, body = server.get("/fail")
    assert status == 200
    failed = pid_of(body)
    server.expect(
        rf"\[{failed}\] \[ERROR\] greentask: gtapp: execute: task 'trouble': RuntimeError\('trouble requested'\)"
    )
    server.expect(r"^Traceback \(most recent call last\):$")  # logged with its traceback
    server.expect(rf"^gtapp: {failed} cleanup db$")
    exited = server.expect(rf"Worker \(pid:{failed}\) exited with code 1\.")
    fresh = server.booted(after=server.index(re.escape(exited[0])))
    assert fresh not in server.pids
    server.served_by(fresh)
    server.proc.signal(signal.SIGTERM)
    assert server.proc.finish() == 0, server.proc.output()


def test_max_requests_stops_the_worker_gracefully_and_it_is_replaced(tmp_path: Path) -> None:
    server = Gunicorn(
        tmp_path, "--max-requests", "2", "--max-requests-jitter", "0", manager=None, worker="egg:greentask#greentask"
    )
    served: collections.Counter[int] = collections.Counter()
    deadline = time.monotonic() + DEADLINE
    while not set(served) - set(server.pids) and time.monotonic() < deadline:
        status, _, body = server.get()
        assert status == 200, body  # no request is lost while workers are replaced
        served[pid_of(body)] += 1
    assert set(served) - set(server.pids), server.proc.output()
    # Each worker that served 2 requests stopped (cleanly) and was replaced.
    retired = [pid for pid, count in served.items() if count >= 2]
    assert retired, served
    for pid in retired:
        server.expect(rf"\[{pid}\] \[INFO\] Autorestarting worker after current request\.")
        server.expect(rf"\[{pid}\] \[INFO\] greentask: gunicorn worker: stopped cleanly")
        server.expect(rf"Worker exiting \(pid: {pid}\)")
    server.expect_count(r"^gtapp: \d+ booted$", 2 + len(retired))  # every replacement booted
    server.proc.signal(signal.SIGTERM)
    assert server.proc.finish() == 0, server.proc.output()
    assert not server.proc.all(r"exited with code"), server.proc.output()


def test_a_blocked_hub_stops_the_heartbeat_and_the_arbiter_replaces_the_worker(tmp_path: Path) -> None:
    server = Gunicorn(tmp_path, "--timeout", "3")

    def blocked_request() -> None:
        with contextlib.suppress(OSError, http.client.HTTPException):  # the worker is aborted under it
            server.get("/block")

    request = Background(blocked_request)
    blocked = int(server.expect(r"^gtapp: (\d+) blocking the hub$")[1])
    timeout = server.expect(rf"WORKER TIMEOUT \(pid:{blocked}\)")
    fresh = server.booted(after=server.index(re.escape(timeout[0])))
    request.result()
    server.served_by(fresh)
    (other,) = set(server.pids) - {blocked}
    server.served_by(other)  # the idle worker kept beating: never timed out
    server.proc.signal(signal.SIGTERM)
    assert server.proc.finish() == 0, server.proc.output()
    assert len(server.proc.all(r"WORKER TIMEOUT")) == 1, server.proc.output()


# -- boot errors: gunicorn stops, no fork storm ---------------------------------------------


def assert_halted_on_boot_error(server: Gunicorn) -> None:
    """gunicorn stopped because a worker failed to boot, and started no other worker."""
    code = server.proc.finish()
    if code == 1:
        # Both workers failed in the same reap: gunicorn 27's halt() reaps the second
        # one and raises HaltServer again from inside halt(). It still stops at once,
        # with that traceback and exit code 1 (the arbiter's race, not the worker's).
        server.expect(r"^gunicorn\.errors\.HaltServer: <HaltServer 'Worker failed to boot\.' 3>$")
    else:
        assert code == 3, server.proc.output()
        server.expect(r"Reason: Worker failed to boot\.")
    assert len(server.proc.all(r"Booting worker with pid")) <= 2, server.proc.output()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (
            "_gunicorn_app_no_such_module:manager",
            r"bad GREENTASK_MANAGER='_gunicorn_app_no_such_module:manager': "
            r"no module named '_gunicorn_app_no_such_module' \(target '_gunicorn_app_no_such_module:manager'\)",
        ),
        (
            "_gunicorn_app:factory_raises",
            r"bad GREENTASK_MANAGER='_gunicorn_app:factory_raises': "
            r"calling '_gunicorn_app:factory_raises' failed: ValueError\('no configuration'\)",
        ),
    ],
)
def test_a_bad_greentask_manager_stops_gunicorn_with_one_line(tmp_path: Path, target: str, message: str) -> None:
    server = Gunicorn(tmp_path, manager=target, wait_booted=False)
    assert_halted_on_boot_error(server)
    errors = server.proc.all(r"\[ERROR\] greentask: worker failed to boot: (.*)$")
    assert errors, server.proc.output()
    for match in errors:
        assert re.fullmatch(message, match[1]), match[1]
    assert not server.proc.all(r'^\s*File ".*(greentask|_gunicorn_app)'), server.proc.output()  # no traceback


def test_an_initialize_failure_stops_gunicorn_after_cleanup(tmp_path: Path) -> None:
    server = Gunicorn(tmp_path, manager="_gunicorn_app:unreachable", wait_booted=False)
    assert_halted_on_boot_error(server)
    server.expect(
        r"\[ERROR\] greentask: worker failed to boot: task 'db' failed to initialize: RuntimeError\('db unreachable'\)$"
    )
    pid = int(server.expect(r"^gtapp: (\d+) initialize db$")[1])
    server.expect(rf"^gtapp: {pid} cleanup db$")  # goasync's rule: the failed task is cleaned up
    assert not server.proc.all(r"^gtapp: \d+ booted$"), server.proc.output()


# -- quick shutdown -------------------------------------------------------------------------


def test_sigint_kills_the_running_tasks_at_once_and_still_cleans_up(tmp_path: Path) -> None:
    server = Gunicorn(tmp_path, "--graceful-timeout", "30", manager="_gunicorn_app:with_stubborn")
    for pid in server.pids:
        server.expect(rf"^gtapp: {pid} stubborn running$")

    def slow_request() -> str:
        try:
            return server.get("/slow?60")[2]
        except (OSError, http.client.HTTPException) as exc:
            return repr(exc)

    slow = Background(slow_request)
    server.expect(r"^gtapp: \d+ slow request started$")
    sent = time.monotonic()
    server.proc.signal(signal.SIGINT)
    assert server.proc.finish() == 0, server.proc.output()
    assert time.monotonic() - sent < 15, server.proc.output()  # neither the stubborn task nor /slow held it
    assert "slow done" not in slow.result()
    for pid in server.pids:
        server.expect(rf"\[{pid}\] \[INFO\] greentask: received SIG(INT|QUIT), quick shutdown")
        server.expect(rf"^gtapp: {pid} cleanup db$")
        server.expect(
            rf"\[{pid}\] \[WARNING\] greentask: gtapp: the quick shutdown killed \d running task\(s\): .*'stubborn'"
        )
        server.expect(rf"\[{pid}\] \[INFO\] greentask: gtapp: stopped cleanly$")
    assert not server.proc.all(r"exited with code"), server.proc.output()


def test_a_graceful_stop_that_overruns_graceful_timeout_is_forced(tmp_path: Path) -> None:
    server = Gunicorn(tmp_path, "--graceful-timeout", "2", manager="_gunicorn_app:with_stubborn")
    stubborn = server.pids[0]
    server.expect(rf"^gtapp: {stubborn} stubborn running$")
    os.kill(stubborn, signal.SIGTERM)  # this worker alone: the arbiter replaces it
    server.expect(rf"\[{stubborn}\] \[WARNING\] Worker graceful timeout \(pid:{stubborn}\)")
    server.expect(r"greentask: gtapp: execute: task 'stubborn': StopTimeout\(.*shutdown was forced; killed")
    server.expect(rf"^gtapp: {stubborn} cleanup db$")
    exited = server.expect(rf"Worker \(pid:{stubborn}\) exited with code 1\.")
    fresh = server.booted(after=server.index(re.escape(exited[0])))
    server.served_by(fresh)
    server.proc.signal(signal.SIGQUIT)  # the arbiter's quick shutdown
    assert server.proc.finish() == 0, server.proc.output()


#: A SIGTERM that reaches the first worker between the fork and its init_process: while
#: it still has the arbiter's signal handlers (gunicorn runs post_fork there).
SIGTERM_IN_POST_FORK = (
    CONFIG
    + r"""
import os, signal

def post_fork(server, worker):
    if worker.age == 1:
        os.kill(os.getpid(), signal.SIGTERM)
"""
)


def test_a_sigterm_between_the_fork_and_the_workers_handlers_is_not_lost(tmp_path: Path) -> None:
    proc = Gunicorn(tmp_path, workers=1, wait_booted=False, config_text=SIGTERM_IN_POST_FORK).proc
    first = int(proc.expect(r"Booting worker with pid: (\d+)")[1])
    # Taken as a stop during boot (before the fix it was swallowed and the worker served on).
    proc.expect(rf"\[{first}\] \[INFO\] greentask: received SIGTERM, shutting down gracefully")
    exiting = proc.expect(rf"Worker exiting \(pid: {first}\)")
    second = int(proc.expect(r"Booting worker with pid: (\d+)", after=proc.lines.index(exiting.string) + 1)[1])
    proc.expect(rf"^gtapp: {second} booted$")
    proc.signal(signal.SIGTERM)
    assert proc.finish() == 0, proc.output()


# -- the example ----------------------------------------------------------------------------


def test_the_gunicorn_example_serves_queues_jobs_and_drains_them_on_sigterm(tmp_path: Path) -> None:
    examples = TESTS.parent / "examples"
    config = tmp_path / "gunicorn_conf.py"
    config.write_text(CONFIG)
    args = [GUNICORN, "-k", WORKER, "-w", "2", "-b", "127.0.0.1:0", "--no-control-socket", "-c", str(config)]
    args += ["--pythonpath", str(examples), "-e", "GREENTASK_MANAGER=gunicorn_app:manager", "gunicorn_app:app"]
    proc = Proc(args, tmp_path)
    port = int(proc.expect(r"Listening at: http://127\.0\.0\.1:(\d+)")[1])
    proc.expect(r"^gtapp: \d+ booted$")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE)
    try:
        conn.request("POST", "/jobs", body=b"resize cat.png", headers={"Connection": "close"})
        response = conn.getresponse()
        assert response.status == 202
        assert json.loads(response.read()) == {"queued": "resize cat.png"}
    finally:
        conn.close()
    proc.expect(r"\[INFO\] job done: resize cat\.png$")
    proc.expect(r"\[INFO\] rates refreshed \(1\)$")
    proc.signal(signal.SIGTERM)
    assert proc.finish() == 0, proc.output()
    assert len(proc.all(r"\[INFO\] jobs done in this worker: \d+$")) == 2, proc.output()
    assert sum(int(m[1]) for m in proc.all(r"jobs done in this worker: (\d+)$")) == 1, proc.output()


# -- the service benchmark ------------------------------------------------------------------


def test_the_service_benchmark_drain_drops_no_request(tmp_path: Path) -> None:
    if shutil.which("hey") is None:
        pytest.skip("benchmarks/service.py needs hey (apt-get install -y hey)")
    output = tmp_path / "RESULTS_service.md"
    bench = TESTS.parent / "benchmarks" / "service.py"
    args = [sys.executable, str(bench), "--only", "drain", "--drain-duration", "2", "--drain-repeats", "1"]
    proc = Proc([*args, "--output", str(output)], tmp_path)
    assert proc.finish(timeout=120) == 0, proc.output()
    rows = [line.split("|")[1:-1] for line in output.read_text().splitlines() if line.startswith("| (")]
    assert [row[0].strip()[:3] for row in rows] == ["(b)", "(d)"], output.read_text()
    for row in rows:
        started, completed, dropped, code = (cell.strip() for cell in (row[2], row[3], row[4], row[6]))
        assert int(started.replace(",", "")) > 0, row
        assert started == completed, row
        assert (dropped, code) == ("0", "0"), row
