"""Raw gevent, hand-written: the floor every other column is divided by.

The fastest fair version of each workload: a ``gevent.pool.Group`` and one shared
``Event`` that every parked greenlet waits on (setting it wakes them all in one loop
callback; SPEC §8: only *killing* waiters of a shared Event is quadratic, so the
forced_stop tasks each wait on their own Event). No names, no records, no policy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
from _common import (
    FORCED_STOP_TIMEOUT,
    STORM_RESTARTS,
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
from gevent.pool import Group
from greenlet import GreenletExit


def _park_all(n: int, mark: Callable[[], float]) -> tuple[Probe, tuple[float, float, float]]:
    """N greenlets parked on one shared Event; ``mark()`` read before the spawns,
    once all have started, and once all have stopped (spawn_cancel and memory)."""
    probe = Probe(n)
    stop = Event()
    all_started = Event()

    def task() -> None:
        probe.started += 1
        if probe.started == n:
            all_started.set()
        try:
            stop.wait()
        finally:
            probe.stopped += 1

    m0 = mark()
    group = Group()
    for _ in range(n):
        group.spawn(task)
    all_started.wait()
    m1 = mark()
    stop.set()
    group.join()
    return probe, (m0, m1, mark())


def spawn_cancel(n: int) -> dict[str, Any]:
    """N greenlets parked until cancelled: start them all, then cancel them all."""
    probe, (t0, t1, t2) = _park_all(n, perf_counter)
    return result({"start_s": t1 - t0, "cancel_s": t2 - t1, "total_s": t2 - t0}, probe.fails())


def spawn_complete(n: int) -> dict[str, Any]:
    """N greenlets that return at once; until the group is empty."""
    probe = Probe(n)

    def task() -> None:
        probe.started += 1
        probe.stopped += 1

    t0 = perf_counter()
    group = Group()
    for _ in range(n):
        group.spawn(task)
    group.join()
    t1 = perf_counter()
    return result({"elapsed_s": t1 - t0}, probe.fails())


def dynamic_add(n: int) -> dict[str, Any]:
    """A producer greenlet in the group spawns N short greenlets, yielding after each."""
    probe = Probe(n)
    marks: dict[str, float] = {}
    group = Group()

    def task() -> None:
        probe.started += 1
        probe.stopped += 1

    def producer() -> None:
        marks["t0"] = perf_counter()
        for _ in range(n):
            group.spawn(task)
            gevent.sleep(0)

    group.spawn(producer)
    group.join()
    t1 = perf_counter()
    return result({"elapsed_s": t1 - marks["t0"]}, probe.fails())


def failure_propagation(n: int) -> dict[str, Any]:
    """N parked greenlets and one that raises; a guard records it and stops the rest."""
    probe = Probe(n)
    stop = Event()
    all_started = Event()
    errors: list[BaseException] = []
    marks: dict[str, float] = {}

    def guard(fn: Any) -> None:
        try:
            fn()
        except Exception as exc:
            errors.append(exc)
            stop.set()

    def idle() -> None:
        probe.started += 1
        if probe.started == n:
            all_started.set()
        try:
            stop.wait()
        finally:
            probe.stopped += 1

    def failer() -> None:
        all_started.wait()
        marks["t0"] = perf_counter()
        raise Boom("boom")

    group = Group()
    for _ in range(n):
        group.spawn(guard, idle)
    group.spawn(guard, failer)
    group.join()
    t1 = perf_counter()
    fails = probe.fails()
    if len(errors) != 1 or not isinstance(errors[0], Boom):
        fails.append(f"errors {errors!r}")
    return result({"elapsed_s": t1 - marks["t0"]}, fails)


def forced_stop(n: int) -> dict[str, Any]:
    """N greenlets that ignore cancellation (each parked on its own Event) are killed.

    Each body runs under a guard that catches the ``GreenletExit`` (as greentask's task
    wrapper does): a greenlet that lets it escape keeps it as its ``value``, and its
    traceback's frames point back at the greenlet, so every killed greenlet becomes
    cyclic garbage and killing 100,000 takes ~4x longer (and grows faster than N).
    """
    probe = Probe(n)
    all_started = Event()

    def task() -> None:
        probe.started += 1
        if probe.started == n:
            all_started.set()
        try:
            Event().wait()
        finally:
            probe.stopped += 1

    def guard() -> None:
        try:
            task()
        except GreenletExit:
            return  # the kill we expect; contextlib.suppress would cost more per task

    group = Group()
    for _ in range(n):
        group.spawn(guard)
    all_started.wait()
    t_stop = perf_counter()
    group.join(timeout=FORCED_STOP_TIMEOUT)
    group.kill(block=True)
    t_end = perf_counter()
    return result({"elapsed_s": t_end - t_stop - FORCED_STOP_TIMEOUT}, probe.fails())


def memory(n: int) -> dict[str, Any]:
    """RSS growth per parked greenlet."""
    probe, (before, after, _) = _park_all(n, rss)
    return result({"bytes_per_task": (after - before) / n}, probe.fails())


def context_churn(count: int) -> dict[str, Any]:
    """The hand-written floor of a child cancel token: an Event in the parent's set, set, removed."""
    children: set[Event] = set()
    before = rss()
    t0 = perf_counter()
    for size in batches(count):
        for _ in range(size):
            child = Event()
            children.add(child)
            child.set()
            children.discard(child)
        gevent.sleep(0)
    elapsed = perf_counter() - t0
    return churn_result(elapsed, count, before, len(children))


def stop_reverse(n: int) -> dict[str, Any]:
    """N greenlets, each parked on its own Event, stopped one at a time in reverse order.

    The hand-written floor of ``StopOrder.REVERSE``: set the last one's Event, join it,
    then the one before, ...; then a no-op cleanup per task in reverse order (what
    greentask's cleanup phase calls), counted. Figures: from the first ``set`` until the
    last greenlet returned, and until the loops are done.
    """
    probe = Probe(n)
    all_started = Event()
    order: list[int] = []
    cleaned = 0
    marks: dict[str, float] = {}

    def task(index: int, stop: Event) -> None:
        probe.started += 1
        if probe.started == n:
            all_started.set()
        try:
            stop.wait()
        finally:
            probe.stopped += 1
            order.append(index)
            if len(order) == n:
                marks["t_last"] = perf_counter()

    def cleanup(index: int) -> None:
        nonlocal cleaned
        cleaned += 1

    stops = [Event() for _ in range(n)]
    greenlets = [gevent.spawn(task, i, stops[i]) for i in range(n)]
    all_started.wait()
    t0 = perf_counter()
    for i in range(n - 1, -1, -1):
        stops[i].set()
        greenlets[i].join()
    for i in range(n - 1, -1, -1):
        cleanup(i)
    t1 = perf_counter()
    fails = probe.fails() + reverse_order_fails(order, n)
    if cleaned != n:
        fails.append(f"{cleaned}/{n} cleaned up")
    return result({"stop_s": marks.get("t_last", t1) - t0, "elapsed_s": t1 - t0}, fails)


def restart_storm(n: int) -> dict[str, Any]:
    """N greenlets that fail at once, each respawned by hand up to STORM_RESTARTS times.

    A guard around each run catches the failure (no "Greenlet failed" traceback from the
    hub) and spawns a fresh greenlet for the task's next run while it has restarts left;
    the 11th run returns cleanly. Until the group is empty.
    """
    probe = Probe(n)
    runs = [0] * n
    total_runs = 0
    restarts = 0
    group = Group()

    def body(index: int) -> None:
        nonlocal total_runs
        total_runs += 1
        runs[index] += 1
        if runs[index] == 1:
            probe.started += 1
        if runs[index] <= STORM_RESTARTS:
            raise Boom("storm")
        probe.stopped += 1

    def guard(index: int, left: int) -> None:
        nonlocal restarts
        try:
            body(index)
        except Exception:
            if left:
                restarts += 1
                group.spawn(guard, index, left - 1)

    t0 = perf_counter()
    for i in range(n):
        group.spawn(guard, i, STORM_RESTARTS)
    group.join()
    t1 = perf_counter()
    fails = probe.fails() + storm_fails(total_runs, restarts, n)
    elapsed = t1 - t0
    return result({"total_s": elapsed, "per_restart_s": elapsed / (n * STORM_RESTARTS)}, fails)
