"""trio: the same workloads with a nursery; cancellation through its cancel scope.

trio has no "kill": forced_stop cancels tasks parked on their own ``trio.Event``
after the grace period, like spawn_cancel does at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio.lowlevel
from _common import FORCED_STOP_TIMEOUT, Boom, Probe, batches, churn_result, perf_counter, result, rss


def _park_all(n: int, mark: Callable[[], float]) -> tuple[Probe, tuple[float, float, float]]:
    """N tasks in ``sleep_forever``; ``mark()`` read before the spawns, once all have
    started (then the nursery is cancelled), and once it has exited (spawn_cancel, memory)."""
    probe = Probe(n)
    marks: list[float] = []

    async def main() -> None:
        all_started = trio.Event()

        async def task() -> None:
            probe.started += 1
            if probe.started == n:
                all_started.set()
            try:
                await trio.sleep_forever()
            finally:
                probe.stopped += 1

        marks.append(mark())
        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(task)
            await all_started.wait()
            marks.append(mark())
            nursery.cancel_scope.cancel()
        marks.append(mark())

    trio.run(main)
    return probe, (marks[0], marks[1], marks[2])


def spawn_cancel(n: int) -> dict[str, Any]:
    """N tasks in ``sleep_forever``: start them all, then cancel the nursery."""
    probe, (t0, t1, t2) = _park_all(n, perf_counter)
    return result({"start_s": t1 - t0, "cancel_s": t2 - t1, "total_s": t2 - t0}, probe.fails())


def spawn_complete(n: int) -> dict[str, Any]:
    """N tasks that return at once; until the nursery exits."""
    probe = Probe(n)
    marks: dict[str, float] = {}

    async def task() -> None:
        probe.started += 1
        probe.stopped += 1

    async def main() -> None:
        marks["t0"] = perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(task)
        marks["t1"] = perf_counter()

    trio.run(main)
    return result({"elapsed_s": marks["t1"] - marks["t0"]}, probe.fails())


def dynamic_add(n: int) -> dict[str, Any]:
    """A producer task in the nursery starts N short tasks, yielding after each."""
    probe = Probe(n)
    marks: dict[str, float] = {}

    async def task() -> None:
        probe.started += 1
        probe.stopped += 1

    async def producer(nursery: trio.Nursery) -> None:
        marks["t0"] = perf_counter()
        for _ in range(n):
            nursery.start_soon(task)
            await trio.sleep(0)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer, nursery)
        marks["t1"] = perf_counter()

    trio.run(main)
    return result({"elapsed_s": marks["t1"] - marks["t0"]}, probe.fails())


def failure_propagation(n: int) -> dict[str, Any]:
    """N parked tasks and one that raises: until the nursery has re-raised it."""
    probe = Probe(n)
    marks: dict[str, float] = {}
    caught: list[BaseException] = []

    async def main() -> None:
        all_started = trio.Event()

        async def idle() -> None:
            probe.started += 1
            if probe.started == n:
                all_started.set()
            try:
                await trio.sleep_forever()
            finally:
                probe.stopped += 1

        async def failer() -> None:
            await all_started.wait()
            marks["t0"] = perf_counter()
            raise Boom("boom")

        try:
            async with trio.open_nursery() as nursery:
                for _ in range(n):
                    nursery.start_soon(idle)
                nursery.start_soon(failer)
        except* Boom as group:
            caught.extend(group.exceptions)
        marks["t1"] = perf_counter()

    trio.run(main)
    fails = probe.fails()
    if len(caught) != 1:
        fails.append(f"caught {caught!r}")
    return result({"elapsed_s": marks["t1"] - marks["t0"]}, fails)


def forced_stop(n: int) -> dict[str, Any]:
    """N tasks on their own Event; after the grace period the nursery is cancelled."""
    probe = Probe(n)
    marks: dict[str, float] = {}

    async def main() -> None:
        all_started = trio.Event()

        async def task() -> None:
            probe.started += 1
            if probe.started == n:
                all_started.set()
            try:
                await trio.Event().wait()
            finally:
                probe.stopped += 1

        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(task)
            await all_started.wait()
            marks["t_stop"] = perf_counter()
            await trio.sleep(FORCED_STOP_TIMEOUT)
            nursery.cancel_scope.cancel()
        marks["t_end"] = perf_counter()

    trio.run(main)
    return result({"elapsed_s": marks["t_end"] - marks["t_stop"] - FORCED_STOP_TIMEOUT}, probe.fails())


def memory(n: int) -> dict[str, Any]:
    """RSS growth per parked task."""
    probe, (before, after, _) = _park_all(n, rss)
    return result({"bytes_per_task": (after - before) / n}, probe.fails())


def context_churn(count: int) -> dict[str, Any]:
    """A ``CancelScope`` nested in one long-lived scope, cancelled inside; ``count`` times."""
    out: dict[str, Any] = {}

    async def main() -> None:
        with trio.CancelScope() as parent:
            before = rss()
            t0 = perf_counter()
            for size in batches(count):
                for _ in range(size):
                    with trio.CancelScope() as scope:
                        scope.cancel()
                await trio.lowlevel.checkpoint()
            elapsed = perf_counter() - t0
            status = getattr(parent, "_cancel_status", None)
            children = getattr(status, "_children", None)
            out.update(churn_result(elapsed, count, before, None if children is None else len(children)))

    trio.run(main)
    return out
