"""The examples, each run as a real program: started, signalled, and checked by its output.

Each example runs as a subprocess (``sys.executable``, cwd the repository,
``PYTHONUNBUFFERED=1``, stderr merged into stdout). The tests wait for the lines that
prove a state ("ready", a drop, a restart) with a deadline, never by sleeping, then
send SIGINT or SIGTERM and check the exit code and the lines that prove the behaviour.
Whatever happens, each example and every process it started (also those in sessions
of their own) are killed after the test (`_proc.kill_all`, from tests/conftest.py).
"""

from __future__ import annotations

import json
import os
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


# -- pubsub -------------------------------------------------------------------------


def check_pubsub_accounting(proc: Proc) -> None:
    """Every message was either dropped for a subscriber or handled by it, exactly once."""
    sent = [int(m[1]) for m in proc.all(r"^\[publisher\] sent #(\d+)$")]
    assert sent == list(range(1, len(sent) + 1)), proc.output()
    for sub in ("sub-a", "sub-b"):
        dropped = {int(m[1]) for m in proc.all(rf"^\[broker\] dropped #(\d+) for {sub} \(queue full\)$")}
        received = [int(m[1]) for m in proc.all(rf"^\[{sub}\] received #(\d+)$")]
        drained = [int(m[1]) for m in proc.all(rf"^\[{sub}\] drained #(\d+)$")]
        (draining,) = proc.all(rf"^\[{sub}\] shutting down: draining (\d+) queued$")
        assert int(draining[1]) == len(drained), proc.output()
        handled = received + drained
        assert len(handled) == len(set(handled)), f"{sub} handled a message twice:\n{proc.output()}"
        assert set(handled) == set(sent) - dropped, f"{sub} lost messages:\n{proc.output()}"
        assert handled == sorted(handled), proc.output()  # in order
        proc.expect(rf"^\[{sub}\] done: received {len(received)}, drained {len(drained)}$")
    assert not proc.all(r"rejected"), proc.output()


def test_pubsub_sigint_drains_every_queued_message() -> None:
    proc = start("pubsub.py")
    proc.expect(r"^\[pubsub\] ready: 4 tasks running")
    proc.expect(r"^\[broker\] dropped #\d+ for sub-b \(queue full\)$")  # sub-b's queue is full now
    proc.popen.send_signal(signal.SIGINT)
    assert proc.finish() == 0, proc.output()
    proc.expect(r"received SIGINT, shutting down gracefully \(send again to force\)")
    (draining,) = proc.all(r"^\[sub-b\] shutting down: draining (\d+) queued$")
    assert int(draining[1]) > 0, proc.output()  # there was something to drain
    check_pubsub_accounting(proc)
    proc.expect(r"^\[broker\] summary: published \d+")
    proc.expect(r"pubsub: stopped cleanly")


def test_pubsub_duration_stops_by_itself() -> None:
    proc = start("pubsub.py", "--duration", "1.5", "--interval", "0.05")
    assert proc.finish() == 0, proc.output()  # no signal sent
    proc.expect(r"^\[pubsub\] ready: 5 tasks running")
    proc.expect(r"^\[pubsub\] 1\.5s are up: stopping$")
    assert proc.all(r"^\[broker\] dropped #"), proc.output()
    check_pubsub_accounting(proc)
    proc.expect(r"pubsub: stopped cleanly")


# -- force_shutdown -------------------------------------------------------------------


def test_force_shutdown_kills_the_stubborn_task_after_5s() -> None:
    proc = start("force_shutdown.py")
    proc.expect(r"^\[main\] ready:")
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.finish(timeout=40) == 1, proc.output()  # a forced stop is an error
    proc.expect(r"^\[polite\] cancelled: stopping at once$")
    assert proc.all(r"^\[legacy\] working \(and ignoring cancellation\)$"), proc.output()
    forced = proc.expect(r"^\[main\] forced the stop of 'legacy' after (\d+\.\d)s: ")
    # Measured on the context clock between the "cancelled" and "failed" events; the
    # lower bound is exact (the kill cannot come early), the upper one generous.
    assert 4.9 <= float(forced[1]) <= 30, proc.output()
    proc.expect(r"ERROR greentask: force_shutdown: execute: task 'legacy': StopTimeout\(")
    proc.expect(r"^\[main\] exiting with code 1$")


# -- http_service ---------------------------------------------------------------------


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_http_service_serves_works_and_shuts_down() -> None:
    proc = start("http_service.py", "--port", "0", "--health-port", "0", "--stats-interval", "0.2")
    ready = proc.expect(r"^\[http_service\] ready: app=http://127\.0\.0\.1:(\d+) health=http://127\.0\.0\.1:(\d+)$")
    app_port, health_port = int(ready[1]), int(ready[2])
    app, health = f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{health_port}"

    assert http("GET", f"{health}/livez")[0] == 200
    assert http("GET", f"{health}/readyz")[0] == 200
    status, body = http("GET", f"{health}/status")
    assert status == 200
    assert [task["name"] for task in json.loads(body)["tasks"]] == ["health", "http", "worker", "stats"]
    assert http("GET", f"{app}/") == (200, '{"hello": "greentask"}\n')
    jobs = [json.loads(http("POST", f"{app}/jobs", f"job {n}".encode())[1])["job"] for n in range(5)]
    assert jobs == [1, 2, 3, 4, 5]
    status, body = http("GET", f"{app}/stats")
    assert status == 200
    assert json.loads(body)["accepted"] == 5
    assert http("GET", f"{app}/nope")[0] == 404
    proc.expect(r"INFO http_service: stats: requests=\d+ accepted=5 ")  # the RepeatTimer logs

    proc.popen.send_signal(signal.SIGINT)
    assert proc.finish() == 0, proc.output()
    proc.expect(r"received SIGINT, shutting down gracefully")
    accepted = {int(m[1]) for m in proc.all(r"^\[worker\] accepted job (\d+): ")}
    finished = [int(m[1]) for m in proc.all(r"^\[worker\] (?:done|drained) job (\d+): ")]
    assert accepted == {1, 2, 3, 4, 5}
    assert sorted(finished) == [1, 2, 3, 4, 5], proc.output()  # every accepted job, once
    proc.expect(r"^\[worker\] stopped$")
    proc.expect(r"http_service: stopped cleanly")
    for port in (app_port, health_port):  # both listening sockets are closed
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


# -- supervisor -----------------------------------------------------------------------


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_supervisor_restarts_the_crashing_child_and_stops_all() -> None:
    proc = start("supervisor.py", "--crash-after", "0.5")
    proc.expect(r"^\[supervisor\] ready:")
    steady_pid = int(proc.expect(r"^\[steady\] pid (\d+) started$")[1])
    assert steady_pid in proc.descendants()
    first = int(proc.expect(r"^\[crashy\] pid (\d+) started$")[1])
    proc.expect(rf"^\[crashy\] pid {first} crashing with exit code 3$")
    proc.expect(r"^\[supervisor\] restarting 'crashy' \(restart #1\)$")
    started_lines = len(proc.lines)
    second = int(proc.expect(r"^\[crashy\] pid (\d+) started$", after=started_lines)[1])
    assert second != first
    assert pid_exists(steady_pid)

    proc.popen.send_signal(signal.SIGTERM)
    assert proc.finish() == 0, proc.output()
    proc.expect(r"CalledProcessError: Command .*'--child', 'crashy'.* returned non-zero exit status 3")
    proc.expect(rf"^\[steady\] pid {steady_pid} got SIGTERM, exiting cleanly$")
    crashy_pids = [int(m[1]) for m in proc.all(r"^\[crashy\] pid (\d+) started$")]
    last = crashy_pids[-1]
    if not proc.all(rf"^\[crashy\] pid {last} crashing"):  # it was running at shutdown
        proc.expect(rf"^\[crashy\] pid {last} got SIGTERM, exiting cleanly$")
    proc.expect(r"^\[supervisor\] all children stopped; exiting with code 0$")
    for pid in [steady_pid, *crashy_pids]:
        assert not pid_exists(pid), f"child {pid} outlived the supervisor"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finding descendants needs /proc")
def test_proc_kill_reaches_the_orphaned_children_of_a_killed_supervisor() -> None:
    """The harness: `Proc.kill` finds and kills the children in their own sessions.

    SIGKILL reaches the supervisor alone: its children, each leading a session of its
    own, live on as orphans; they carry the Proc's marker, so its kill ends them too.
    """
    proc = start("supervisor.py", "--crash-after", "0")  # 0: crashy never crashes
    children = {int(proc.expect(rf"^\[{name}\] pid (\d+) started$")[1]) for name in ("steady", "crashy")}
    assert children <= proc.descendants()
    for pid in children:
        assert os.getsid(pid) == pid  # out of the supervisor's process group
    proc.popen.kill()
    proc.popen.wait()
    assert children <= proc.descendants()  # orphaned, still running
    proc.kill()
    assert not proc.descendants()
    for pid in children:
        assert not pid_exists(pid)  # killed, and reaped: not even a zombie
