"""HealthServer: real HTTP probes against a real TaskManager running FakeTasks."""

from __future__ import annotations

import json
from typing import Any

import gevent
import gevent.socket
import pytest
from _net import can_bind, can_connect
from gevent.event import Event

import greentask as gt
from greentask.tasks import HealthServer
from greentask.testing import FakeClock, FakeExecuteTask, FakeTask, eventually, settle

# -- helpers ------------------------------------------------------------------


def http_request(address: tuple[str, int], path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.0 request over a gevent socket (the test process is not patched)."""
    sock = gevent.socket.create_connection(address, timeout=5)
    with sock:
        sock.sendall(f"{method} {path} HTTP/1.0\r\nHost: test\r\n\r\n".encode())
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def get(address: tuple[str, int], path: str) -> tuple[int, str]:
    status, _, body = http_request(address, path)
    return status, body.decode()


def status_json(address: tuple[str, int]) -> dict[str, Any]:
    status, headers, body = http_request(address, "/status")
    assert status == 200
    assert headers["content-type"] == "application/json; charset=utf-8"
    result: dict[str, Any] = json.loads(body)
    return result


# -- through a manager's whole life ---------------------------------------------


def test_probes_follow_the_manager_through_its_lifecycle() -> None:
    manager = gt.TaskManager()
    health = HealthServer(manager, port=0)
    db_initializing, db_release = Event(), Event()
    worker_running, worker_return = Event(), Event()
    db_stopping, db_release_stop = Event(), Event()
    worker_stopped = Event()

    def db_initialize(ctx: gt.Context) -> None:
        db_initializing.set()
        db_release.wait()

    def db_execute(ctx: gt.Context) -> None:
        ctx.wait()
        db_stopping.set()
        db_release_stop.wait()  # keeps the manager in its stopping phase

    def worker_execute(ctx: gt.Context) -> None:
        worker_running.set()
        gevent.wait([ctx, worker_return], count=1)

    def on_event(event: gt.ManagerEvent) -> None:
        if event.kind == "stopped" and event.task_name == "worker":
            worker_stopped.set()

    manager.subscribe(on_event)
    manager.add_task("health", health)
    manager.add_task("db", FakeTask("db", initialize=db_initialize, execute=db_execute))
    manager.add_task("worker", FakeTask("worker", execute=worker_execute), gt.TaskType.ERROR)
    manager.add_execute_task("job", FakeExecuteTask("job"), gt.ExecuteTaskType.ERROR)  # returns at once

    with gevent.Timeout(10):
        run = gevent.spawn(manager.run)

        # A later task is initializing: alive, not ready.
        db_initializing.wait()
        address = health.address
        assert get(address, "/livez") == (200, "ok: initializing\n")
        status, body = get(address, "/readyz")
        assert status == 503
        assert body == "not ready: initializing\n"
        doc = status_json(address)
        assert doc["manager"] == {"phase": "initializing", "stop_reason": None}
        assert [(t["name"], t["state"]) for t in doc["tasks"]] == [
            ("health", "initializing"),
            ("db", "initializing"),
            ("worker", "pending"),
            ("job", "pending"),
        ]

        # Every task is running: ready (the finished execute task does not count).
        db_release.set()
        worker_running.wait()
        settle()
        assert get(address, "/readyz") == (200, "ready\n")
        assert get(address, "/livez") == (200, "ok: executing\n")
        doc = status_json(address)
        assert doc["manager"] == {"phase": "executing", "stop_reason": None}
        job = doc["tasks"][3]
        assert (job["name"], job["kind"], job["task_type"], job["state"]) == ("job", "execute", "error", "stopped")
        assert job["started_at"] is not None
        assert job["stopped_at"] is not None

        # One task stops (an ERROR task may return): not ready any more.
        worker_return.set()
        worker_stopped.wait()
        assert get(address, "/readyz") == (503, "not ready: task 'worker' is stopped\n")

        # Cancelled: still alive while shutting down, not ready.
        manager.stop()
        db_stopping.wait()
        assert get(address, "/livez") == (200, "ok: stopping\n")
        assert get(address, "/readyz") == (503, "not ready: shutting down: stop() called\n")
        doc = status_json(address)
        assert doc["manager"] == {"phase": "stopping", "stop_reason": "stop() called"}

        db_release_stop.set()
        assert run.get() == []

    # The health server was cleaned up last: the port is released.
    assert not can_connect(address)
    assert can_bind(address)


def test_status_reports_every_field_of_status() -> None:
    manager = gt.TaskManager()
    health = HealthServer(manager, port=0)
    boom = ValueError("boom")
    failed = Event()
    manager.subscribe(lambda event: failed.set() if event.kind == "failed" else None)
    release = Event()

    def hold_cleanup(ctx: gt.Context) -> None:
        release.wait()

    manager.add_task("health", health)
    manager.add_task("db", FakeTask("db", execute=boom, cleanup=hold_cleanup))
    with gevent.Timeout(10):
        run = gevent.spawn(manager.run)
        failed.wait()
        settle()  # db's cleanup now holds the manager in its cleaning_up phase
        doc = status_json(health.address)
        release.set()
        [error] = run.get()
    assert error.error is boom
    expected = [
        {
            "name": s.name,
            "kind": s.kind,
            "task_type": s.task_type.value,
            "state": s.state.value,
            "error": None if s.error is None else repr(s.error),
            "started_at": s.started_at,
            "stopped_at": s.stopped_at,
            "restarts": s.restarts,
        }
        for s in manager.status()
    ]
    expected[0]["state"] = "stopped"  # health was not cleaned up yet when asked
    expected[1]["state"] = "cleaning_up"
    assert doc["manager"] == {"phase": "cleaning_up", "stop_reason": "task 'db' failed: ValueError('boom')"}
    assert doc["tasks"] == expected
    assert doc["tasks"][1]["error"] == "ValueError('boom')"


# -- Part II: restarts, handles, nested managers ------------------------------------


def test_a_restarting_task_is_not_ready_and_its_restarts_are_shown(clock: FakeClock) -> None:
    manager = gt.TaskManager()
    health = HealthServer(manager, port=0)
    runs: list[int] = []
    restarting, running_again = Event(), Event()

    def flaky(ctx: gt.Context) -> None:
        runs.append(1)
        if len(runs) == 1:
            raise ConnectionError("refused")
        running_again.set()
        ctx.wait()

    manager.subscribe(lambda e: restarting.set() if (e.kind, e.task_name) == ("restarting", "db") else None)
    manager.add_task("health", health)
    backoff = gt.tasks.Backoff(initial=10, maximum=10, jitter=0)
    manager.add_task(
        "db", FakeTask("db", execute=flaky), restart=gt.Restart(max_restarts=3, within=60, backoff=backoff)
    )
    with gevent.Timeout(10):
        run = gevent.spawn(manager.run, gt.background(clock))
        restarting.wait()
        settle()  # db waits out its backoff on the FakeClock
        assert get(health.address, "/readyz") == (503, "not ready: task 'db' is restarting\n")
        db = status_json(health.address)["tasks"][1]
        assert (db["name"], db["state"], db["restarts"], db["error"]) == (
            "db",
            "restarting",
            1,
            "ConnectionError('refused')",
        )

        clock.advance(10)  # the backoff is over: db runs again
        running_again.wait()
        settle()
        assert get(health.address, "/readyz") == (200, "ready\n")
        doc = status_json(health.address)
        assert [(t["name"], t["state"], t["restarts"]) for t in doc["tasks"]] == [
            ("health", "running", 0),
            ("db", "running", 1),
        ]
        manager.stop()
        assert run.get() == []  # a restarted failure is not in run()'s result


def test_a_task_stopped_by_its_handle_is_stopping_then_not_ready() -> None:
    manager = gt.TaskManager()
    health = HealthServer(manager, port=0)
    cancelled, release = Event(), Event()

    def slow_to_stop(ctx: gt.Context) -> None:
        ctx.wait()
        cancelled.set()
        release.wait()

    manager.add_task("health", health)
    handle = manager.add_task("db", FakeTask("db", execute=slow_to_stop))
    manager.add_task("cache", FakeTask.blocking("cache"))
    with gevent.Timeout(10):
        run = gevent.spawn(manager.run)
        assert handle.wait_running()
        settle()
        assert get(health.address, "/readyz") == (200, "ready\n")
        handle.stop()
        cancelled.wait()
        assert get(health.address, "/readyz") == (503, "not ready: task 'db' is stopping\n")
        assert [t["state"] for t in status_json(health.address)["tasks"]] == ["running", "stopping", "running"]
        release.set()
        assert handle.wait()
        assert get(health.address, "/readyz") == (503, "not ready: task 'db' is done\n")
        manager.stop()
        assert run.get() == []


def test_nested_tasks_are_shown_with_path_names_and_count_for_readiness() -> None:
    parent = gt.TaskManager(name="app")
    child = gt.TaskManager(name="pipeline")
    health = HealthServer(parent, port=0)
    stop_db, db_stopped = Event(), Event()

    def db_execute(ctx: gt.Context) -> None:
        gevent.wait([ctx, stop_db], count=1)

    parent.subscribe(lambda e: db_stopped.set() if (e.kind, e.task_name) == ("stopped", "pipeline/db") else None)
    child.add_task("db", FakeTask("db", execute=db_execute), gt.TaskType.ERROR)
    child.add_task("queue", FakeTask.blocking("queue"))
    parent.add_task("health", health)
    parent.add_task("pipeline", child)
    with gevent.Timeout(10):
        run = gevent.spawn(parent.run)
        eventually(lambda: get(health.address, "/readyz") == (200, "ready\n"))
        doc = status_json(health.address)
        assert [(t["name"], t["kind"], t["state"]) for t in doc["tasks"]] == [
            ("health", "task", "running"),
            ("pipeline", "task", "running"),
            ("pipeline/db", "task", "running"),
            ("pipeline/queue", "task", "running"),
        ]
        stop_db.set()  # an ERROR task of the child returns: the child goes on, not ready
        db_stopped.wait()
        assert get(health.address, "/readyz") == (503, "not ready: task 'pipeline/db' is stopped\n")
        parent.stop()
        assert run.get() == []


# -- on its own ---------------------------------------------------------------


@pytest.fixture
def standalone() -> Any:
    health = HealthServer(gt.TaskManager(), port=0)
    health.initialize(gt.background())
    yield health
    health.cleanup(gt.background())


def test_answers_from_initialize_until_cleanup() -> None:
    manager = gt.TaskManager()
    health = HealthServer(manager, port=0)
    with pytest.raises(RuntimeError, match="after initialize"):
        _ = health.address
    health.initialize(gt.background())
    address = health.address
    assert address[0] == "127.0.0.1"
    with gevent.Timeout(5):
        assert get(address, "/livez") == (200, "ok: new\n")
        assert get(address, "/readyz") == (503, "not ready: new\n")
    health.cleanup(gt.background())
    assert not can_connect(address)
    assert can_bind(address)


def test_unknown_paths_are_404(standalone: HealthServer) -> None:
    with gevent.Timeout(5):
        status, body = get(standalone.address, "/nope")
    assert status == 404
    assert "/livez" in body


def test_methods_other_than_get_and_head_are_405(standalone: HealthServer) -> None:
    with gevent.Timeout(5):
        status, headers, _ = http_request(standalone.address, "/livez", method="POST")
    assert status == 405
    assert headers["allow"] == "GET, HEAD"


def test_head_answers_without_a_body(standalone: HealthServer) -> None:
    with gevent.Timeout(5):
        status, headers, body = http_request(standalone.address, "/livez", method="HEAD")
    assert status == 200
    assert body == b""
    assert headers["content-length"] == str(len("ok: new\n"))
    assert headers["cache-control"] == "no-store"


def test_livez_fails_once_the_manager_is_done() -> None:
    manager = gt.TaskManager()
    ctx, cancel = gt.with_cancel(gt.background())
    cancel()
    assert manager.run(ctx) == []
    health = HealthServer(manager, port=0)
    health.initialize(gt.background())
    try:
        with gevent.Timeout(5):
            assert get(health.address, "/livez") == (503, "not alive: the task manager has finished\n")
    finally:
        health.cleanup(gt.background())


def test_cleanup_ends_idle_keep_alive_connections(standalone: HealthServer) -> None:
    address = standalone.address
    with gevent.Timeout(5):
        conn = gevent.socket.create_connection(address, timeout=5)
        with conn, conn.makefile("rb") as reader:
            conn.sendall(b"GET /livez HTTP/1.1\r\nHost: test\r\n\r\n")
            assert reader.readline().startswith(b"HTTP/1.1 200")
            # The connection stays open, its handler waits for the next request.
            standalone.cleanup(gt.background())
            assert reader.read().endswith(b"\r\n\r\nok: new\n")  # the rest of the answer, then EOF
    assert can_bind(address)


def test_busy_port_fails_in_initialize_naming_the_address() -> None:
    taken = gevent.socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        health = HealthServer(gt.TaskManager(), port=port)
        with pytest.raises(OSError, match=f"cannot bind 127.0.0.1:{port}: "):
            health.initialize(gt.background())
    finally:
        taken.close()


def test_bad_arguments_are_rejected() -> None:
    manager = gt.TaskManager()
    with pytest.raises(TypeError, match="manager must be a greentask TaskManager"):
        HealthServer(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="host must be a string"):
        HealthServer(manager, host=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="host must be a non-empty string"):
        HealthServer(manager, host="")
    with pytest.raises(TypeError, match="port must be an int"):
        HealthServer(manager, port="8081")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="port must be between 0 and 65535"):
        HealthServer(manager, port=70000)
