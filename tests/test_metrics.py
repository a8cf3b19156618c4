"""greentask.metrics.ManagerCollector and HealthServer's /metrics, after real transitions.

Every value is read through prometheus-client itself (``registry.get_sample_value`` or
its text parser on a real HTTP scrape), so the families are checked as Prometheus
would see them.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.socket
import pytest
from _net import can_connect
from gevent.event import Event
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

import greentask as gt
from greentask.metrics import PHASES, ManagerCollector
from greentask.tasks import HealthServer
from greentask.testing import FakeClock, FakeExecuteTask, FakeTask, settle

FAMILIES = {
    "greentask_task_state": "gauge",
    "greentask_task_restarts": "counter",
    "greentask_task_errors": "counter",
    "greentask_stop_timeouts": "counter",
    "greentask_manager_phase": "gauge",
}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def states(registry: CollectorRegistry, task: str) -> dict[str, float]:
    """``state -> value`` of greentask_task_state for one task."""
    return {
        sample.labels["state"]: sample.value
        for metric in registry.collect()
        if metric.name == "greentask_task_state"
        for sample in metric.samples
        if sample.labels["task"] == task
    }


def current_state(registry: CollectorRegistry, task: str) -> str:
    """The one state whose gauge is 1 (and every other is 0)."""
    per_state = states(registry, task)
    assert sorted(per_state) == sorted(s.value for s in gt.TaskState)
    ones = [state for state, v in per_state.items() if v == 1]
    assert len(ones) == 1, per_state
    assert sum(per_state.values()) == 1
    return ones[0]


def phase(registry: CollectorRegistry, manager: str) -> str:
    per_phase = {
        sample.labels["phase"]: sample.value
        for metric in registry.collect()
        if metric.name == "greentask_manager_phase"
        for sample in metric.samples
        if sample.labels["manager"] == manager
    }
    assert sorted(per_phase) == sorted(PHASES)
    ones = [p for p, v in per_phase.items() if v == 1]
    assert len(ones) == 1, per_phase
    return ones[0]


class Events:
    """Records the manager's events and lets a test wait for one."""

    def __init__(self, manager: gt.TaskManager) -> None:
        self.seen: list[tuple[str, str | None]] = []
        self._changed = Event()
        manager.subscribe(self._on_event)

    def _on_event(self, event: gt.ManagerEvent) -> None:
        self.seen.append((event.kind, event.task_name))
        self._changed.set()

    def wait_for(self, kind: str, task_name: str | None = None, count: int = 1) -> None:
        with gevent.Timeout(5):
            while self.seen.count((kind, task_name)) < count:
                self._changed.clear()
                self._changed.wait()


def http_request(address: tuple[str, int], path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.0 request over a gevent socket: status, headers (lower-case names), body."""
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
        name, _, text = line.partition(":")
        headers[name.strip().lower()] = text.strip()
    return int(status_line.split()[1]), headers, body


# -- import and registration --------------------------------------------------------


def test_importing_greentask_never_imports_prometheus_client() -> None:
    code = (
        "import sys, greentask, greentask.tasks, greentask.testing, greentask.runner\n"
        "greentask.tasks.HealthServer(greentask.TaskManager(), port=0)\n"
        "assert 'prometheus_client' not in sys.modules, 'prometheus_client was imported'\n"
        "assert 'greentask.metrics' not in sys.modules, 'greentask.metrics was imported'\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok\n", "")


def test_collector_registers_on_the_default_registry_when_none() -> None:
    manager = gt.TaskManager(name="default-registry")
    collector = ManagerCollector(manager)
    try:
        assert (
            REGISTRY.get_sample_value("greentask_manager_phase", {"manager": "default-registry", "phase": "new"}) == 1
        )
        assert collector.manager is manager
        assert repr(collector) == "<ManagerCollector 'default-registry'>"
    finally:
        REGISTRY.unregister(collector)
    assert REGISTRY.get_sample_value("greentask_manager_phase", {"manager": "default-registry", "phase": "new"}) is None


def test_a_second_collector_on_one_registry_is_refused(registry: CollectorRegistry) -> None:
    ManagerCollector(gt.TaskManager(), registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        ManagerCollector(gt.TaskManager(name="other"), registry)


def test_bad_arguments_are_rejected(registry: CollectorRegistry) -> None:
    with pytest.raises(TypeError, match="manager must be a greentask TaskManager, got None"):
        ManagerCollector(None, registry)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="registry must be a prometheus_client CollectorRegistry or None"):
        ManagerCollector(gt.TaskManager(), registry="nope")  # type: ignore[arg-type]


def test_families_types_and_labels(registry: CollectorRegistry) -> None:
    manager = gt.TaskManager(name="web")
    manager.add_task("db", FakeTask("db"))
    manager.add_execute_task("job", FakeExecuteTask("job"))
    collector = ManagerCollector(manager, registry)
    assert {m.name: m.type for m in collector.describe()} == FAMILIES
    assert all(not m.samples for m in collector.describe())
    labels = {m.name: {tuple(sorted(s.labels)) for s in m.samples} for m in registry.collect()}
    assert labels == {
        "greentask_task_state": {("state", "task")},
        "greentask_task_restarts": {("task",)},
        "greentask_task_errors": {("stage", "task")},
        "greentask_stop_timeouts": {("task",)},
        "greentask_manager_phase": {("manager", "phase")},
    }
    # Zeros for every task and every stage it can fail in, so increase() sees a first error.
    [family] = [m for m in registry.collect() if m.name == "greentask_task_errors"]
    errors = {(s.labels["task"], s.labels["stage"]): s.value for s in family.samples}
    assert errors == {("db", "initialize"): 0, ("db", "execute"): 0, ("db", "cleanup"): 0, ("job", "execute"): 0}
    assert value(registry, "greentask_task_restarts_total", task="db") == 0
    assert value(registry, "greentask_stop_timeouts_total", task="job") == 0
    assert current_state(registry, "db") == "pending"
    assert phase(registry, "web") == "new"


# -- after real transitions -----------------------------------------------------------


def test_states_and_phase_follow_a_run_from_running_to_stopped(registry: CollectorRegistry) -> None:
    manager = gt.TaskManager(name="web")
    ManagerCollector(manager, registry)
    events = Events(manager)
    release_job = Event()
    manager.add_task("db", FakeTask.blocking("db"))
    manager.add_execute_task("job", lambda ctx: release_job.wait(), gt.ExecuteTaskType.ERROR)
    with gevent.Timeout(10):
        runner = gevent.spawn(manager.run)
        events.wait_for("started", "job")
        events.wait_for("started", "db")
        assert phase(registry, "web") == "executing"
        assert current_state(registry, "db") == "running"
        assert current_state(registry, "job") == "running"

        release_job.set()  # an ERROR execute task may return: RUNNING -> STOPPED
        events.wait_for("stopped", "job")
        assert current_state(registry, "job") == "stopped"
        assert current_state(registry, "db") == "running"

        manager.stop()
        assert runner.get() == []
    assert phase(registry, "web") == "done"
    assert current_state(registry, "db") == "done"
    assert current_state(registry, "job") == "stopped"
    assert value(registry, "greentask_task_errors_total", task="db", stage="execute") == 0


def test_a_kill_after_stop_timeout_is_a_stop_timeout_and_an_error(
    registry: CollectorRegistry, clock: FakeClock
) -> None:
    manager = gt.TaskManager(name="web", stop_timeout=5)
    ManagerCollector(manager, registry)
    events = Events(manager)
    never = Event()
    manager.add_task("polite", FakeTask.blocking("polite"))
    manager.add_execute_task("stubborn", lambda ctx: never.wait())
    with gevent.Timeout(10):
        runner = gevent.spawn(manager.run, gt.background(clock))
        events.wait_for("started", "stubborn")
        manager.stop()
        events.wait_for("stopped", "polite")
        settle()
        assert phase(registry, "web") == "stopping"
        assert value(registry, "greentask_stop_timeouts_total", task="stubborn") == 0
        clock.advance(5)  # stop_timeout: stubborn is killed
        [error] = runner.get()
    assert isinstance(error.error, gt.StopTimeout)
    assert value(registry, "greentask_stop_timeouts_total", task="stubborn") == 1
    assert value(registry, "greentask_task_errors_total", task="stubborn", stage="execute") == 1
    assert value(registry, "greentask_stop_timeouts_total", task="polite") == 0
    assert current_state(registry, "stubborn") == "failed"
    assert phase(registry, "web") == "done"


def test_failures_are_counted_per_task_and_stage(registry: CollectorRegistry) -> None:
    manager = gt.TaskManager(name="web")
    ManagerCollector(manager, registry)
    manager.add_task("db", FakeTask("db", execute=ConnectionError("refused"), cleanup=OSError("stuck")))
    manager.add_task("cache", FakeTask.blocking("cache"))
    with gevent.Timeout(10):
        errors = manager.run()
    assert [(e.task_name, e.stage) for e in errors] == [("db", gt.Stage.EXECUTE), ("db", gt.Stage.CLEANUP)]
    assert value(registry, "greentask_task_errors_total", task="db", stage="execute") == 1
    assert value(registry, "greentask_task_errors_total", task="db", stage="cleanup") == 1
    assert value(registry, "greentask_task_errors_total", task="db", stage="initialize") == 0
    assert value(registry, "greentask_task_errors_total", task="cache", stage="execute") == 0
    assert value(registry, "greentask_stop_timeouts_total", task="db") == 0
    assert current_state(registry, "db") == "done"  # the error is kept, the state moves on


def test_an_initialize_failure_is_counted_in_its_stage(registry: CollectorRegistry) -> None:
    manager = gt.TaskManager(name="web")
    ManagerCollector(manager, registry)
    manager.add_task("db", FakeTask("db", initialize=ValueError("bad config")))
    manager.add_task("never", FakeTask("never"))
    with gevent.Timeout(10):
        [error] = manager.run()
    assert error.stage is gt.Stage.INITIALIZE
    assert value(registry, "greentask_task_errors_total", task="db", stage="initialize") == 1
    assert current_state(registry, "never") == "pending"  # skipped, never initialized


def test_tasks_sharing_a_name_are_summed(registry: CollectorRegistry) -> None:
    manager = gt.TaskManager(name="web")
    ManagerCollector(manager, registry)
    events = Events(manager)
    release = Event()

    def worker(ctx: gt.Context) -> None:
        release.wait()
        raise RuntimeError("one of four failed")

    manager.add_execute_task("worker", FakeExecuteTask.blocking(), gt.ExecuteTaskType.ERROR)
    for _ in range(3):
        manager.add_execute_task("worker", FakeExecuteTask.blocking(), gt.ExecuteTaskType.ERROR)
    manager.add_execute_task("failing", worker)
    with gevent.Timeout(10):
        runner = gevent.spawn(manager.run)
        events.wait_for("started", "worker", count=4)
        assert states(registry, "worker")["running"] == 4
        release.set()
        runner.get()
    assert states(registry, "worker")["stopped"] == 4
    assert sum(states(registry, "worker").values()) == 4
    assert value(registry, "greentask_task_errors_total", task="failing", stage="execute") == 1


# -- restarts and nested managers ----------------------------------------------------------


def test_restarts_and_restarted_failures_are_counted(registry: CollectorRegistry) -> None:
    manager = gt.TaskManager(name="web")
    ManagerCollector(manager, registry)
    events = Events(manager)
    runs: list[int] = []

    def flaky(ctx: gt.Context) -> None:
        runs.append(1)
        if len(runs) <= 2:
            raise ConnectionError("refused")
        ctx.wait()

    manager.add_task("db", FakeTask("db", execute=flaky), restart=gt.Restart(max_restarts=3, within=60))
    with gevent.Timeout(10):
        runner = gevent.spawn(manager.run)
        events.wait_for("started", "db", count=3)
        assert value(registry, "greentask_task_restarts_total", task="db") == 2
        # Restarted failures are not in run()'s result, but they are counted.
        assert value(registry, "greentask_task_errors_total", task="db", stage="execute") == 2
        assert current_state(registry, "db") == "running"
        manager.stop()
        assert runner.get() == []
    assert value(registry, "greentask_task_restarts_total", task="db") == 2


def test_a_task_waiting_to_restart_is_restarting(registry: CollectorRegistry, clock: FakeClock) -> None:
    manager = gt.TaskManager(name="web")
    ManagerCollector(manager, registry)
    events = Events(manager)
    backoff = gt.tasks.Backoff(initial=10, maximum=10, jitter=0)
    manager.add_execute_task(
        "job",
        FakeExecuteTask(execute=ConnectionError("refused")),
        restart=gt.Restart(max_restarts=3, within=60, backoff=backoff),
    )
    manager.add_task("db", FakeTask.blocking("db"))
    with gevent.Timeout(10):
        runner = gevent.spawn(manager.run, gt.background(clock))
        events.wait_for("restarting", "job")
        settle()
        assert current_state(registry, "job") == "restarting"
        assert value(registry, "greentask_task_restarts_total", task="job") == 1
        manager.stop()
        runner.get()


def test_nested_managers_export_path_names_and_phases(registry: CollectorRegistry) -> None:
    parent = gt.TaskManager(name="app")
    child = gt.TaskManager(name="pipeline")
    child.add_task("db", FakeTask("db", execute=lambda ctx: ctx.wait(), cleanup=OSError("stuck")))
    child.add_execute_task("job", FakeExecuteTask("job"), gt.ExecuteTaskType.ERROR)  # returns at once
    parent.add_task("pipeline", child)
    parent.add_task("web", FakeTask.blocking("web"))
    ManagerCollector(parent, registry)
    events = Events(parent)
    with gevent.Timeout(10):
        runner = gevent.spawn(parent.run)
        events.wait_for("started", "web")
        events.wait_for("started", "pipeline/db")
        events.wait_for("stopped", "pipeline/job")
        assert current_state(registry, "pipeline") == "running"
        assert current_state(registry, "pipeline/db") == "running"
        assert current_state(registry, "pipeline/job") == "stopped"
        assert value(registry, "greentask_task_errors_total", task="pipeline/db", stage="cleanup") == 0
        paths = [path for path, _ in parent._tree()]
        assert len(paths) == 2
        assert [phase(registry, path) for path in paths] == ["executing", "executing"]
        parent.stop()
        [error] = runner.get()
    assert (error.task_name, error.stage) == ("pipeline/db", gt.Stage.CLEANUP)
    assert value(registry, "greentask_task_errors_total", task="pipeline/db", stage="cleanup") == 1
    assert [phase(registry, path) for path in paths] == ["done", "done"]
    assert current_state(registry, "pipeline/db") == "done"


# -- /metrics over real HTTP ------------------------------------------------------------


def scrape(address: tuple[str, int], method: str = "GET") -> tuple[int, dict[str, str], str]:
    with gevent.Timeout(5):
        status, headers, body = http_request(address, "/metrics", method=method)
    return status, headers, body.decode()


def parse(text: str) -> dict[str, Any]:
    """Family name -> family, checking that no family appears twice."""
    families: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in families, f"{family.name} exported twice"
        families[family.name] = family
    return families


def samples(family: Any) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples}


@pytest.fixture
def health_with_registry(registry: CollectorRegistry) -> Iterator[HealthServer]:
    manager = gt.TaskManager(name="web")
    health = HealthServer(manager, port=0, registry=registry)
    manager.add_task("health", health)
    manager.add_task("db", FakeTask.blocking("db"))
    events = Events(manager)
    runner = gevent.spawn(manager.run)
    with gevent.Timeout(5):
        events.wait_for("started", "db")
        events.wait_for("started", "health")
    yield health
    manager.stop()
    with gevent.Timeout(5):
        assert runner.get() == []


def test_metrics_serves_the_registry_and_the_manager_families(
    registry: CollectorRegistry, health_with_registry: HealthServer
) -> None:
    health = health_with_registry
    requests = Counter("myapp_requests", "Requests served.", registry=registry)
    requests.inc(3)
    status, headers, text = scrape(health.address)
    assert status == 200
    assert headers["content-type"] == CONTENT_TYPE_LATEST
    assert headers["cache-control"] == "no-store"
    families = parse(text)
    assert samples(families["myapp_requests"])[()] == 3  # the registry's own content
    for name, kind in FAMILIES.items():
        assert families[name].type == kind
    state = samples(families["greentask_task_state"])
    assert state[(("state", "running"), ("task", "db"))] == 1
    assert state[(("state", "running"), ("task", "health"))] == 1
    assert state[(("state", "stopped"), ("task", "db"))] == 0
    assert samples(families["greentask_manager_phase"])[(("manager", "web"), ("phase", "executing"))] == 1
    # HealthServer's collector is its own: nothing was registered on the given registry.
    assert {m.name for m in registry.collect()} == {"myapp_requests"}


def test_metrics_answers_head_without_a_body(health_with_registry: HealthServer) -> None:
    status, headers, text = scrape(health_with_registry.address, method="HEAD")
    assert status == 200
    assert text == ""
    assert int(headers["content-length"]) > 0


def test_metrics_default_registry_includes_user_metrics_and_no_family_twice() -> None:
    manager = gt.TaskManager(name="web")
    health = HealthServer(manager, port=0)  # registry=None: the default REGISTRY
    user_collector = ManagerCollector(manager)  # the user also exports the manager there
    jobs = Counter("myapp_default_jobs", "Jobs done.")
    try:
        jobs.inc()
        health.initialize(gt.background())
        try:
            status, _, text = scrape(health.address)
        finally:
            health.cleanup(gt.background())
    finally:
        REGISTRY.unregister(jobs)
        REGISTRY.unregister(user_collector)
    assert status == 200
    families = parse(text)  # no duplicates although two collectors see the manager
    assert samples(families["myapp_default_jobs"])[()] == 1
    assert "python_info" in families  # prometheus-client's default collectors are there
    assert samples(families["greentask_manager_phase"])[(("manager", "web"), ("phase", "new"))] == 1


def test_metrics_is_404_without_prometheus_client(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if prometheus-client were not installed: its import fails, greentask.metrics too.
    for name in list(sys.modules):
        if name == "prometheus_client" or name.startswith("prometheus_client."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "greentask.metrics")
    health = HealthServer(gt.TaskManager(), port=0)
    health.initialize(gt.background())
    try:
        with gevent.Timeout(5):
            status, _, body = http_request(health.address, "/metrics")
            livez, _, _ = http_request(health.address, "/livez")
    finally:
        health.cleanup(gt.background())
    assert status == 404
    assert body == b"not found: /metrics needs prometheus-client (pip install 'greentask[metrics]')\n"
    assert livez == 200
    assert not can_connect(health.address)


def test_a_failing_collection_is_500_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def collect(self) -> list[Any]:
            raise RuntimeError("broken collector")

    health = HealthServer(gt.TaskManager(name="web"), port=0, registry=Broken())
    health.initialize(gt.background())
    try:
        status, _, text = scrape(health.address)
    finally:
        health.cleanup(gt.background())
    assert (status, text) == (500, "collecting metrics failed; see the log\n")
    [record] = [r for r in caplog.records if r.name == "greentask" and r.levelname == "ERROR"]
    assert record.getMessage() == "web: health server: collecting /metrics failed"
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "broken collector"


def test_health_server_refuses_a_registry_without_collect() -> None:
    with pytest.raises(TypeError, match="registry must be a prometheus_client CollectorRegistry or None"):
        HealthServer(gt.TaskManager(), port=0, registry="nope")  # type: ignore[arg-type]
