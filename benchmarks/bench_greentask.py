"""greentask: the same workloads through `TaskManager` and `Context`.

Tasks are plain callables added with ``add_execute_task`` under one constant name (a
per-task f-string would add its own ~0.1 us, not greentask's); they block with
``ctx.wait()``. The controller that stops the manager is a plain greenlet outside it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
from _common import FORCED_STOP_TIMEOUT, Boom, Probe, batches, churn_result, perf_counter, result, rss
from gevent.event import Event

import greentask as gt

ERROR = gt.ExecuteTaskType.ERROR


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
