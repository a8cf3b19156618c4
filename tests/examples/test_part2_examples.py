"""The Part II examples (stop order, restarts, nested managers), each run as a real program.

As in test_examples.py: each example runs as a subprocess (`_proc.Proc`: merged
output read line by line, each wait bounded by a deadline, the process tree killed
after the test); the tests wait for the lines that prove a state, never by sleeping,
then signal the program and check its exit code and the order of its lines.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from _proc import Proc

REPO = Path(__file__).resolve().parent.parent.parent
EXAMPLES = REPO / "examples"


def start(name: str, *args: str) -> Proc:
    """Start an example; it and everything it starts are killed after the test (conftest)."""
    return Proc([sys.executable, str(EXAMPLES / name), *args], REPO)


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def line_index(proc: Proc, pattern: str) -> int:
    """The index of the only line of ``proc``'s output that matches ``pattern``."""
    found = [n for n, line in enumerate(proc.lines) if re.search(pattern, line)]
    assert len(found) == 1, f"{len(found)} lines match {pattern!r}:\n{proc.output()}"
    return found[0]


def assert_in_order(proc: Proc, patterns: list[str]) -> None:
    """Each pattern matches exactly one line, and those lines come in this order."""
    indexes = [line_index(proc, pattern) for pattern in patterns]
    assert indexes == sorted(indexes), f"out of order: {list(zip(indexes, patterns, strict=True))}\n{proc.output()}"


def assert_port_closed(port: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


# -- ordered_shutdown -----------------------------------------------------------------


def read_response(sock: socket.socket) -> tuple[str, dict[str, str], bytes]:
    """Read one HTTP response up to the end of the connection: status line, headers, body."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    return status, headers, body


def test_ordered_shutdown_stops_http_then_worker_then_db() -> None:
    """SIGTERM: the server drains (a request in flight completes and queues its job),
    then the worker drains the queue into the still-serving database, then the
    database stops and closes; exit code 0."""
    # A flush interval of an hour: every job stays queued until the shutdown drains it.
    proc = start("ordered_shutdown.py", "--port", "0", "--flush-interval", "3600")
    port = int(proc.expect(r"^\[ordered_shutdown\] ready: http://127\.0\.0\.1:(\d+) ")[1])
    url = f"http://127.0.0.1:{port}/jobs"
    for n in (1, 2, 3):
        assert http("POST", url, f"job {n}".encode()) == (202, f'{{"job": {n}}}\n')
    assert http("GET", url)[0] == 404

    # A request in flight at SIGTERM: a slow upload. With "Expect: 100-continue" the
    # server says "100 Continue" once the app reads the body: then the app is running,
    # blocked until the rest of the body arrives, which is sent once the server drains.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        body = b"late job"
        sock.sendall(
            b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(body)
        )
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            chunk = sock.recv(1)
            assert chunk, f"connection closed before 100 Continue: {interim!r}"
            interim += chunk
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n"), interim

        proc.popen.send_signal(signal.SIGTERM)
        proc.expect(r"^\[http\] draining: stopped accepting, 1 request in flight$")
        sock.sendall(body)
        status, headers, answer = read_response(sock)
    assert status == "HTTP/1.1 202 Accepted", (status, headers, answer)
    assert json.loads(answer) == {"job": 4}
    assert headers.get("connection", "").lower() == "close"  # closed after its response

    assert proc.finish() == 0, proc.output()
    assert_in_order(
        proc,
        [
            r"^\[http\] queued job 3 'job 3'$",
            r"received SIGTERM, shutting down gracefully",
            r"^\[ordered_shutdown\] stopping in reverse order: http, then worker, then db$",
            r"^\[http\] draining: stopped accepting, 1 request in flight$",
            r"^\[http\] queued job 4 'late job'$",  # accepted while the server drained
            r"^\[http\] stopped$",
            r"^\[worker\] draining 4 jobs$",
            r"^\[worker\] saved job 1 'job 1' \(db connection \d\)$",
            r"^\[worker\] saved job 2 'job 2' \(db connection \d\)$",
            r"^\[worker\] saved job 3 'job 3' \(db connection \d\)$",
            r"^\[worker\] saved job 4 'late job' \(db connection \d\)$",
            r"^\[worker\] stopped$",
            r"^\[db\] stopped serving \(4 queries answered\)$",
            r"^\[http\] closed the listening socket$",
            r"^\[db\] closed \(2 connections\)$",
            r"greentask: ordered_shutdown: stopped cleanly; exit code 0",
            r"^\[ordered_shutdown\] exiting with code 0$",
        ],
    )
    assert not proc.all(r"ERROR|Traceback|lost query"), proc.output()
    assert_port_closed(port)


# -- supervision_tree -----------------------------------------------------------------

RESTART_LINE = (
    r"^ERROR greentask: tree: task 'pipeline/enricher' failed in execute: "
    r"ConnectionError\('lookup of item (\d+) failed: connection reset'\); "
    r"restart {k} of at most 5 within 30\.0s in {delay}s$"
)


def test_supervision_tree_gives_up_after_the_restart_budget() -> None:
    """Seed 1 fails at items 1, 9, 10, 14, 17, 20: five restarts with a growing backoff,
    then the sixth failure stops the pipeline and the root, with the path-named
    reason; exit code 1."""
    proc = start("supervision_tree.py", "--port", "0", "--health-port", "0", "--interval", "0.05", "--seed", "1")
    proc.expect(r"^\[tree\] ready: http=http://127\.0\.0\.1:\d+ health=http://127\.0\.0\.1:\d+$")
    assert proc.finish() == 1, proc.output()  # no signal: it stops by itself

    delays = ["0.05", "0.1", "0.2", "0.4", "0.5"]  # Backoff(initial=0.05, maximum=0.5, jitter=0)
    failed_items = [int(proc.expect(RESTART_LINE.format(k=k, delay=delay))[1]) for k, delay in enumerate(delays, 1)]
    assert failed_items == [1, 9, 10, 14, 17], proc.output()
    assert not proc.all(r"restart 6 of"), proc.output()
    reason = r"RestartLimitExceeded\(\"task 'enricher' failed 6 times within 30\.0s; not restarting\"\)"
    lines = [
        RESTART_LINE.format(k=1, delay="0.05"),
        r"^\[enricher\] run 1: disconnected$",  # cleanup, then the backoff, then initialize
        r"^\[tree\] pipeline/enricher is restarting \(restart 1\) after ConnectionError",
        r"^\[enricher\] run 2: connected to the lookup service$",
        RESTART_LINE.format(k=5, delay="0.5"),
        r"^\[tree\] pipeline/enricher is restarting \(restart 5\) after ConnectionError",
        r"^\[enricher\] run 6: connected to the lookup service$",
        rf"^INFO greentask: pipeline: shutting down: task 'enricher' failed in execute: {reason}$",
        r"^\[consumer\] stopped after \d+ items$",  # the pipeline's own shutdown, before the root's
        rf"^INFO greentask: tree: shutting down: task 'pipeline/enricher' failed in execute: {reason}$",
        rf"^\[tree\] stopping because task 'pipeline/enricher' failed: {reason}$",
        r"^\[enricher\] run 6: disconnected$",
        r"^\[consumer\] unsubscribed$",
        rf"^ERROR greentask: tree: execute: task 'pipeline/enricher': {reason}$",
        r"^ConnectionError: lookup of item 20 failed: connection reset$",  # its __cause__
        r"^greentask\.errors\.RestartLimitExceeded: task 'enricher' failed 6 times within 30\.0s",
        r"^INFO greentask: tree: stopped with 1 error; exit code 1$",
        r"^\[tree\] exiting with code 1$",
    ]
    assert_in_order(proc, lines)


def test_supervision_tree_with_rare_failures_runs_until_sigterm() -> None:
    """Seed 1073 at fail rate 0.005 fails once, at item 2 (then not before item 625):
    one restart, the tree keeps running and serving, SIGTERM stops it cleanly."""
    proc = start(
        "supervision_tree.py",
        *("--port", "0", "--health-port", "0", "--interval", "0.05", "--fail-rate", "0.005", "--seed", "1073"),
    )
    ready = proc.expect(r"^\[tree\] ready: http=http://127\.0\.0\.1:(\d+) health=http://127\.0\.0\.1:(\d+)$")
    app, health = f"http://127.0.0.1:{ready[1]}", f"http://127.0.0.1:{ready[2]}"
    assert proc.expect(RESTART_LINE.format(k=1, delay="0.05"))[1] == "2"
    proc.expect(r"^\[enricher\] run 2: connected to the lookup service$")
    proc.expect(r"^\[consumer\] item 3: 9$")  # the restarted enricher produces again

    status, body = http("GET", f"{app}/stats")
    assert status == 200
    stats = json.loads(body)
    assert (stats["enricher_state"], stats["enricher_restarts"]) == ("running", 1), stats
    assert http("GET", f"{health}/readyz")[0] == 200
    status, body = http("GET", f"{health}/status")
    assert status == 200
    tasks = {task["name"]: task for task in json.loads(body)["tasks"]}
    assert list(tasks) == ["health", "http", "pipeline", "pipeline/consumer", "pipeline/enricher"]
    assert tasks["pipeline/enricher"]["restarts"] == 1

    proc.popen.send_signal(signal.SIGTERM)
    assert proc.finish() == 0, proc.output()
    assert_in_order(
        proc,
        [
            r"^\[tree\] pipeline/enricher is restarting \(restart 1\) after ConnectionError",
            r"received SIGTERM, shutting down gracefully",
            r"^\[tree\] stopping: SignalReceived\('received SIGTERM'\)$",
            r"^\[consumer\] stopped after \d+ items$",
            r"^\[enricher\] run 2: disconnected$",
            r"^\[consumer\] unsubscribed$",
            r"greentask: tree: stopped cleanly; exit code 0",
            r"^\[tree\] exiting with code 0$",
        ],
    )
    assert not proc.all(r"restart 2 of|RestartLimitExceeded"), proc.output()
    for port in (int(ready[1]), int(ready[2])):
        assert_port_closed(port)
