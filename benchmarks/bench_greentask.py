"""greentask: the same workloads through `TaskManager` and `Context`.

Tasks are plain callables added with ``add_execute_task`` under one constant name (a
per-task f-string would add its own ~0.1 us, not greentask's); they block with
``ctx.wait()``. The controller that stops the manager is a plain greenlet outside it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gevent
from _common import (
    FORCED_STOP_TIMEOUT,
    STORM_RESTARTS,
    STORM_WITHIN,
    Boom,
    Probe,
    batches,
    churn_result,
    perf_counter,
    result,
    reverse_order_fails,
    rss,
    storm_fails,
)
from gevent.event import Event

import greentask as gt

ERROR = gt.ExecuteTaskType.ERROR
LOGGER = logging.getLogger("greentask")


def _error_fails(errors: list[gt.NamedError]) -> list[str]:
    return [] if not errors else [f"run() returned {len(errors)} errors, first {errors[0]}"]


def _park_all(n: int, mark: Callable[[], float]) -> tuple[Probe, tuple[float, float, float], list[str]]:
    """N execute tasks in ``ctx.wait()``; ``mark()`` read before the adds, once all have
    started (then `stop`), and once ``run()`` returned (spawn_cancel and memory)."""
    probe = Probe(n)
    all_started = Event()
    marks: list[float] = []
    manager = gt.TaskManager()

    def task(ctx: gt.Context) -> None:
        probe.started += 1
        if probe.started == n:
            all_started.set()
        try:
            ctx.wait()
        finally:
            probe.stopped += 1

    def controller() -> None:
        all_started.wait()
        marks.append(mark())
        manager.stop()

    gevent.spawn(controller)
    m0 = mark()
    for _ in range(n):
        manager.add_execute_task("task", task)
    errors = manager.run()
    return probe, (m0, marks[0], mark()), _error_fails(errors)


def spawn_cancel(n: int) -> dict[str, Any]:
    """N execute tasks in ``ctx.wait()``: start them all, then `stop` the manager."""
    probe, (t0, t1, t2), errors = _park_all(n, perf_counter)
    return result({"start_s": t1 - t0, "cancel_s": t2 - t1, "total_s": t2 - t0}, probe.fails() + errors)


def spawn_complete(n: int) -> dict[str, Any]:
    """N ERROR execute tasks that return at once; the last one stops the manager."""
    probe = Probe(n)
    manager = gt.TaskManager()

    def task(ctx: gt.Context) -> None:
        probe.started += 1
        probe.stopped += 1
        if probe.stopped == n:
            manager.stop()

    t0 = perf_counter()
    for _ in range(n):
        manager.add_execute_task("task", task, ERROR)
    errors = manager.run()
    t1 = perf_counter()
    return result({"elapsed_s": t1 - t0}, probe.fails() + _error_fails(errors))


def dynamic_add(n: int) -> dict[str, Any]:
    """A producer task adds N short ERROR execute tasks one by one, yielding after each."""
    probe = Probe(n)
    marks: dict[str, float] = {}
    manager = gt.TaskManager()

    def task(ctx: gt.Context) -> None:
        probe.started += 1
        probe.stopped += 1
        if probe.stopped == n:
            manager.stop()

    def producer(ctx: gt.Context) -> None:
        marks["t0"] = perf_counter()
        add = manager.add_execute_task
        for _ in range(n):
            add("task", task, ERROR)
            gevent.sleep(0)

    manager.add_execute_task("producer", producer, ERROR)
    errors = manager.run()
    t1 = perf_counter()
    return result({"elapsed_s": t1 - marks["t0"]}, probe.fails() + _error_fails(errors))


def failure_propagation(n: int) -> dict[str, Any]:
    """N execute tasks in ``ctx.wait()`` and one that raises: until `run` returns."""
    probe = Probe(n)
    all_started = Event()
    marks: dict[str, float] = {}
    manager = gt.TaskManager()

    def idle(ctx: gt.Context) -> None:
        probe.started += 1
        if probe.started == n:
            all_started.set()
        try:
            ctx.wait()
        finally:
            probe.stopped += 1

    def failer(ctx: gt.Context) -> None:
        all_started.wait()
        marks["t0"] = perf_counter()
        raise Boom("boom")

    for _ in range(n):
        manager.add_execute_task("idle", idle)
    manager.add_execute_task("failer", failer)
    errors = manager.run()
    t1 = perf_counter()
    fails = probe.fails()
    if len(errors) != 1 or not isinstance(errors[0].error, Boom):
        fails.append(f"run() returned {errors!r}")
    return result({"elapsed_s": t1 - marks["t0"]}, fails)


def forced_stop(n: int) -> dict[str, Any]:
    """N execute tasks that ignore cancellation (own Event); the manager kills them."""
    probe = Probe(n)
    all_started = Event()
    marks: dict[str, float] = {}
    manager = gt.TaskManager(stop_timeout=FORCED_STOP_TIMEOUT)

    def task(ctx: gt.Context) -> None:
        probe.started += 1
        if probe.started == n:
            all_started.set()
        try:
            Event().wait()
        finally:
            probe.stopped += 1

    def controller() -> None:
        all_started.wait()
        marks["t_stop"] = perf_counter()
        manager.stop()

    gevent.spawn(controller)
    for _ in range(n):
        manager.add_execute_task("task", task)
    errors = manager.run()
    t_end = perf_counter()
    fails = probe.fails()
    killed = sum(isinstance(e.error, gt.StopTimeout) for e in errors)
    if killed != n or len(errors) != n:
        fails.append(f"{killed}/{n} StopTimeout errors (of {len(errors)})")
    return result({"elapsed_s": t_end - marks["t_stop"] - FORCED_STOP_TIMEOUT}, fails)


def memory(n: int) -> dict[str, Any]:
    """RSS growth per execute task parked in ``ctx.wait()``."""
    probe, (before, after, _), errors = _park_all(n, rss)
    return result({"bytes_per_task": (after - before) / n}, probe.fails() + errors)


def context_churn(count: int) -> dict[str, Any]:
    """``with_cancel`` a child of one long-lived parent, then cancel it; ``count`` times."""
    parent, cancel_parent = gt.with_cancel(gt.background())
    with_cancel = gt.with_cancel
    before = rss()
    t0 = perf_counter()
    for size in batches(count):
        for _ in range(size):
            _, cancel = with_cancel(parent)
            cancel()
        gevent.sleep(0)
    elapsed = perf_counter() - t0
    state = parent._state
    retained = None if state is None else len(state.children or ()) + len(state.callbacks or ())
    out = churn_result(elapsed, count, before, retained)
    cancel_parent()
    return out


def stop_reverse(n: int) -> dict[str, Any]:
    """N ``add_task`` tasks under ``StopOrder.REVERSE``, each returning at once when cancelled.

    Each task is its own object (``add_task`` refuses the same one twice) with a no-op
    ``initialize``, an ``execute`` in ``ctx.wait()`` and a counting ``cleanup``. Time from
    ``manager.stop()`` (once every task runs) until the last task returned (the staged
    stop, one task at a time in reverse add order), and until ``run()`` returned (then
    every cleanup, in reverse add order).
    """
    probe = Probe(n)
    all_started = Event()
    order: list[int] = []
    cleaned = 0
    marks: dict[str, float] = {}
    manager = gt.TaskManager(stop_order=gt.StopOrder.REVERSE)

    class Parked:
        __slots__ = ("index",)

        def __init__(self, index: int) -> None:
            self.index = index

        def initialize(self, ctx: gt.Context) -> None:
            pass

        def execute(self, ctx: gt.Context) -> None:
            probe.started += 1
            if probe.started == n:
                all_started.set()
            try:
                ctx.wait()
            finally:
                probe.stopped += 1
                order.append(self.index)
                if len(order) == n:
                    marks["t_last"] = perf_counter()

        def cleanup(self, ctx: gt.Context) -> None:
            nonlocal cleaned
            cleaned += 1

    def controller() -> None:
        all_started.wait()
        marks["t_stop"] = perf_counter()
        manager.stop()

    gevent.spawn(controller)
    for i in range(n):
        manager.add_task("task", Parked(i))
    errors = manager.run()
    t_end = perf_counter()
    fails = probe.fails() + reverse_order_fails(order, n) + _error_fails(errors)
    if cleaned != n:
        fails.append(f"{cleaned}/{n} cleaned up")
    t_stop = marks["t_stop"]
    return result({"stop_s": marks.get("t_last", t_end) - t_stop, "elapsed_s": t_end - t_stop}, fails)


@contextmanager
def _greentask_log(level: int, handler: logging.Handler | None = None) -> Iterator[None]:
    """The ``greentask`` logger at ``level`` (with ``handler`` attached) for the block."""
    before = LOGGER.level
    LOGGER.setLevel(level)
    if handler is not None:
        LOGGER.addHandler(handler)
    try:
        yield
    finally:
        if handler is not None:
            LOGGER.removeHandler(handler)
        LOGGER.setLevel(before)


def _storm(n: int) -> tuple[float, list[str]]:
    """One restart storm (see `restart_storm`): its time and its failed checks."""
    probe = Probe(n)
    total_runs = 0
    manager = gt.TaskManager()
    policy = gt.Restart(max_restarts=STORM_RESTARTS, within=STORM_WITHIN)

    class Stormer:
        __slots__ = ("runs",)

        def __init__(self) -> None:
            self.runs = 0

        def execute(self, ctx: gt.Context) -> None:
            nonlocal total_runs
            total_runs += 1
            self.runs += 1
            if self.runs == 1:
                probe.started += 1
            if self.runs <= STORM_RESTARTS:
                raise Boom("storm")
            probe.stopped += 1
            if probe.stopped == n:
                manager.stop()

    tasks = [Stormer() for _ in range(n)]
    add = manager.add_execute_task
    t0 = perf_counter()
    handles = [add("task", task, ERROR, restart=policy) for task in tasks]
    errors = manager.run()
    t1 = perf_counter()
    restarts = sum(h.restarts for h in handles)
    fails = probe.fails() + storm_fails(total_runs, restarts, n) + _error_fails(errors)
    reason = manager.stop_reason
    if reason is None or reason.kind != "stop":
        fails.append(f"stop_reason {reason!r}, expected kind 'stop'")
    return t1 - t0, fails


def restart_storm(n: int) -> dict[str, Any]:
    """N ERROR execute tasks with ``Restart(max_restarts=10, within=60)``, no backoff.

    Each fails at once (a fresh ``Boom``) on its first 10 runs, so it is restarted 10
    times, exactly its budget, and returns cleanly on its 11th run (ERROR: nothing
    happens); the task that finishes last stops the manager. No task gives up, so the
    run ends the same way every time: a give-up would record a ``RestartLimitExceeded``
    and cancel the whole manager mid-storm, which the checks report as a FAIL (with the
    run's errors, counts and ``handle.restarts``). Time from the first add until
    ``run()`` returned; per restart: that over N x 10 (so it also carries each task's
    first start and its final clean run). The ``greentask`` logger is set to CRITICAL
    for the cell: each restarted failure logs an ERROR with its traceback (see
    `restart_storm_logged` for what that costs).
    """
    with _greentask_log(logging.CRITICAL):
        elapsed, fails = _storm(n)
    return result({"total_s": elapsed, "per_restart_s": elapsed / (n * STORM_RESTARTS)}, fails)


def restart_storm_logged(n: int) -> dict[str, Any]:
    """What the ERROR log lines of a restart storm cost, measured once by hand.

    Not a workload of ``run.py``: ``python benchmarks/_cell.py greentask
    restart_storm_logged 1000``. The same storm twice in one process: silenced (as in
    `restart_storm`), then with a ``StreamHandler`` to ``os.devnull`` (default level,
    so the ERROR lines pass and every traceback is formatted and written).
    """
    with _greentask_log(logging.CRITICAL):
        silent, fails = _storm(n)
    with open(os.devnull, "w", encoding="utf-8") as sink:
        handler = logging.StreamHandler(sink)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        with _greentask_log(logging.NOTSET, handler):
            logged, more = _storm(n)
    restarts = n * STORM_RESTARTS
    metrics = {
        "silent_s": silent,
        "logged_s": logged,
        "log_cost_per_restart_s": (logged - silent) / restarts,
        "logged_over_silent": logged / silent,
    }
    return result(metrics, fails + more)
