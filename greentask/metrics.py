"""Prometheus metrics for a `TaskManager` tree, read when scraped (SPEC §14).

Optional: needs ``prometheus-client`` (``pip install greentask[metrics]``). Importing
``greentask`` never imports this module nor ``prometheus_client``; import
``greentask.metrics`` yourself, or let `greentask.tasks.HealthServer` serve ``/metrics``.

`ManagerCollector` is a custom collector in the manner of prometheus-client's
``ProcessCollector``: it keeps no counters of its own and costs nothing per task
transition; each scrape reads ``manager.status()`` and the manager's error records and
turns them into metric families:

==================================  =========  ==========================================
family                              type       labels and meaning
==================================  =========  ==========================================
``greentask_task_state``            gauge      ``task``, ``state``: 1 for the task's
                                               current `TaskState`, 0 for the others
``greentask_task_restarts_total``   counter    ``task``: restarts (``restart=`` policy)
``greentask_task_errors_total``     counter    ``task``, ``stage``: recorded errors plus
                                               restarted failures
``greentask_stop_timeouts_total``   counter    ``task``: `StopTimeout` errors (kills)
``greentask_manager_phase``         gauge      ``manager``, ``phase``: 1 for the
                                               manager's current phase, 0 for the others
==================================  =========  ==========================================

``task`` is the path name (``"pipeline/db"`` for a nested manager's task) and
``manager`` the path of each manager in the tree, the root first. Every task has a
series for every state, and a zero for every stage it can fail in, so ``rate()`` and
``increase()`` see the first error. Tasks may share a name (four workers running one
function): their series are summed, so ``greentask_task_state{task="worker",
state="running"}`` is then the number of those workers running. Give execute tasks
that come and go (one per connection or job) a shared name, or the label values grow
with them (the manager remembers the last 1000 finished execute tasks).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import REGISTRY, CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .errors import TaskState, TaskStatus
from .manager import TaskManager

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

__all__ = ["ManagerCollector"]

#: Every phase a manager reports (`TaskManager.phase`), in lifecycle order.
PHASES = ("new", "initializing", "executing", "stopping", "cleaning_up", "done")

#: The stages in which a task from ``add_task`` / ``add_execute_task`` can fail.
_STAGES = {"task": ("initialize", "execute", "cleanup"), "execute": ("execute",)}

#: Snapshot attempts in `ManagerCollector.collect` (see its docstring).
_ATTEMPTS = 3


class _Snapshot:
    """What one scrape reads from the manager tree, taken in one go."""

    __slots__ = ("errors", "phases", "rows", "stop_timeouts")

    def __init__(self, manager: TaskManager) -> None:
        self.rows: list[TaskStatus] = manager.status()
        self.errors: dict[tuple[str, str], int] = dict(manager._error_counts())
        self.stop_timeouts: dict[str, int] = dict(manager._stop_timeout_counts())
        self.phases: list[tuple[str, str]] = [(path, child.phase) for path, child in manager._tree()]


class ManagerCollector:
    """A Prometheus collector for a `TaskManager` and its nested managers.

    The families and labels are listed in the `greentask.metrics` module docstring.
    Everything is read at scrape time (`collect`), so an idle manager pays nothing.

    The collector registers itself on ``registry`` (prometheus-client's default
    ``REGISTRY`` when None): ``generate_latest()``, ``start_http_server()`` and
    `greentask.tasks.HealthServer`'s ``/metrics`` then export it next to your own
    metrics. A registry holds each family name once: one `ManagerCollector` per
    registry (collect a whole program through its root manager; a second one raises
    ``ValueError`` from the registry). ``registry.unregister(collector)`` removes it.

    Note:
        `collect` reads the manager's state without a lock. Scrapes served by the
        manager's own hub (``HealthServer``, or prometheus-client's HTTP server after
        ``gevent.monkey.patch_all()``) always see a consistent snapshot; a scrape from
        another OS thread that races a change in the task list is retried, and the
        scrape fails with ``RuntimeError`` only if that happens three times in a row.

    Args:
        manager: the root of the tree to export.
        registry: where to register; None: prometheus-client's default ``REGISTRY``.

    Raises:
        TypeError: ``manager`` is not a `TaskManager`, or ``registry`` has no
            ``register`` method.
        ValueError: the registry already holds these families (a second collector).

    Example::

        from prometheus_client import start_http_server
        from greentask.metrics import ManagerCollector

        manager = gt.TaskManager(name="web")
        ManagerCollector(manager)          # on the default registry
        start_http_server(9100)            # or HealthServer's /metrics
        sys.exit(gt.run(manager))

    which a scrape shows as::

        greentask_task_state{state="running",task="db"} 1.0
        greentask_task_restarts_total{task="db"} 2.0
        greentask_task_errors_total{stage="execute",task="db"} 2.0
        greentask_manager_phase{manager="web",phase="executing"} 1.0
    """

    def __init__(self, manager: TaskManager, registry: CollectorRegistry | None = None) -> None:
        if not isinstance(manager, TaskManager):
            msg = f"manager must be a greentask TaskManager, got {manager!r}"
            raise TypeError(msg)
        target = REGISTRY if registry is None else registry
        if not callable(getattr(target, "register", None)):
            msg = f"registry must be a prometheus_client CollectorRegistry or None, got {registry!r}"
            raise TypeError(msg)
        self._manager = manager
        target.register(self)

    @property
    def manager(self) -> TaskManager:
        """The root manager this collector exports."""
        return self._manager

    def describe(self) -> list[Metric]:
        """The families this collector exports, without samples (for the registry)."""
        return _families()

    def collect(self) -> list[Metric]:
        """Read the manager tree now and return its metric families (see the module docstring).

        Raises:
            RuntimeError: three snapshots in a row raced a change made from another OS
                thread (see the class's note).
        """
        for attempt in range(_ATTEMPTS):
            try:
                snapshot = _Snapshot(self._manager)
            except RuntimeError:  # "dictionary changed size during iteration": another thread
                if attempt == _ATTEMPTS - 1:
                    raise
            else:
                return _families(snapshot)
        raise AssertionError("unreachable")  # pragma: no cover

    def __repr__(self) -> str:
        return f"<ManagerCollector {self._manager.name!r}>"


def _families(snapshot: _Snapshot | None = None) -> list[Metric]:
    state = GaugeMetricFamily(
        "greentask_task_state",
        "Tasks in each state (1 for a task's current state, 0 for the others).",
        labels=["task", "state"],
    )
    restarts = CounterMetricFamily(
        "greentask_task_restarts", "Restarts of a task by its restart policy.", labels=["task"]
    )
    errors = CounterMetricFamily(
        "greentask_task_errors",
        "Errors of a task per stage: recorded errors and restarted failures.",
        labels=["task", "stage"],
    )
    stop_timeouts = CounterMetricFamily(
        "greentask_stop_timeouts",
        "StopTimeout errors of a task (killed or abandoned after a timeout, or a forced stop).",
        labels=["task"],
    )
    phase = GaugeMetricFamily(
        "greentask_manager_phase",
        "The phase of each manager in the tree (1 for the current phase, 0 for the others).",
        labels=["manager", "phase"],
    )
    families: list[Metric] = [state, restarts, errors, stop_timeouts, phase]
    if snapshot is None:
        return families

    # Sum over rows of one name (names may be shared), keeping first-seen order.
    states: dict[str, dict[str, int]] = {}
    restart_counts: dict[str, int] = {}
    error_counts: dict[tuple[str, str], int] = {}
    for row in snapshot.rows:
        per_state = states.setdefault(row.name, dict.fromkeys(TaskState, 0))
        per_state[row.state] = per_state.get(row.state, 0) + 1
        restart_counts[row.name] = restart_counts.get(row.name, 0) + row.restarts
        for stage in _STAGES.get(row.kind, ("execute",)):
            error_counts.setdefault((row.name, stage), 0)
    error_counts.update(snapshot.errors)
    timeout_counts = dict.fromkeys(states, 0)
    timeout_counts.update(snapshot.stop_timeouts)

    for name, per_state in states.items():
        for task_state, value in per_state.items():
            state.add_metric([name, str(task_state)], value)
    for name, count in restart_counts.items():
        restarts.add_metric([name], count)
    for (name, stage), count in error_counts.items():
        errors.add_metric([name, stage], count)
    for name, count in timeout_counts.items():
        stop_timeouts.add_metric([name], count)
    for path, current in snapshot.phases:
        names = PHASES if current in PHASES else (*PHASES, current)
        for name in names:
            phase.add_metric([path, name], 1 if name == current else 0)
    return families


class _Exposition:
    """What `HealthServer` serves at ``/metrics``: a registry's content plus a manager's.

    ``source`` (the default ``REGISTRY`` when None) is collected first, then a private
    `ManagerCollector` for ``manager``, minus any family the source already has (so a
    `ManagerCollector` the user registered on the default registry is not exported twice).
    """

    def __init__(self, manager: TaskManager, source: Collector | None) -> None:
        self._source: Collector = REGISTRY if source is None else source
        self._own = ManagerCollector(manager, CollectorRegistry())

    def collect(self) -> Iterator[Metric]:
        seen: set[str] = set()
        for metric in self._source.collect():
            seen.add(metric.name)
            yield metric
        for metric in self._own.collect():
            if metric.name not in seen:
                yield metric

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text format and its content type."""
        return generate_latest(self), CONTENT_TYPE_LATEST


def _exposition(manager: TaskManager, source: Any) -> _Exposition:
    """Build `HealthServer`'s ``/metrics`` source (imported lazily by ``_health``)."""
    if source is not None and not callable(getattr(source, "collect", None)):
        msg = f"registry must be a prometheus_client CollectorRegistry or None, got {source!r}"
        raise TypeError(msg)
    return _Exposition(manager, source)
