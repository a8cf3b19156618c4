"""asyncio: the same workloads with ``asyncio.TaskGroup`` (Python 3.11+).

Parked tasks await a future of their own (``asyncio.Event.wait`` removes a cancelled
waiter from a shared deque in O(N), which would make cancellation quadratic). The
TaskGroup has no cancel method, so the body cancels it the idiomatic way: by raising.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from _common import FORCED_STOP_TIMEOUT, Boom, Probe, batches, churn_result, perf_counter, result, rss


class _Stop(Exception):
    """Raised by a TaskGroup body to cancel the group."""


def _park_all(n: int, mark: Callable[[], float]) -> tuple[Probe, tuple[float, float, float]]:
    """N tasks parked on a future each; ``mark()`` read before the spawns, once all have
    started (then the group is cancelled), and once it has exited (spawn_cancel, memory)."""
    probe = Probe(n)
    marks: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        all_started = asyncio.Event()

        async def task() -> None:
            probe.started += 1
            if probe.started == n:
                all_started.set()
            try:
                await loop.create_future()
            finally:
                probe.stopped += 1

        marks.append(mark())
        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(n):
                    tg.create_task(task())
                await all_started.wait()
                marks.append(mark())
                raise _Stop
        except* _Stop:
            pass
        marks.append(mark())

    asyncio.run(main())
    return probe, (marks[0], marks[1], marks[2])


def spawn_cancel(n: int) -> dict[str, Any]:
    """N tasks parked until cancelled: start them all, then cancel the group."""
    probe, (t0, t1, t2) = _park_all(n, perf_counter)
    return result({"start_s": t1 - t0, "cancel_s": t2 - t1, "total_s": t2 - t0}, probe.fails())


def spawn_complete(n: int) -> dict[str, Any]:
    """N tasks that return at once; until the TaskGroup exits."""
    probe = Probe(n)
    marks: dict[str, float] = {}

    async def task() -> None:
        probe.started += 1
        probe.stopped += 1

    async def main() -> None:
        marks["t0"] = perf_counter()
        async with asyncio.TaskGroup() as tg:
            for _ in range(n):
                tg.create_task(task())
        marks["t1"] = perf_counter()

    asyncio.run(main())
    return result({"elapsed_s": marks["t1"] - marks["t0"]}, probe.fails())


def dynamic_add(n: int) -> dict[str, Any]:
    """A producer task in the group creates N short tasks, yielding after each."""
    probe = Probe(n)
    marks: dict[str, float] = {}

    async def task() -> None:
        probe.started += 1
        probe.stopped += 1

    async def producer(tg: asyncio.TaskGroup) -> None:
        marks["t0"] = perf_counter()
        for _ in range(n):
            tg.create_task(task())
            await asyncio.sleep(0)

    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(producer(tg))
        marks["t1"] = perf_counter()

    asyncio.run(main())
    return result({"elapsed_s": marks["t1"] - marks["t0"]}, probe.fails())


def failure_propagation(n: int) -> dict[str, Any]:
    """N parked tasks and one that raises: until the TaskGroup has re-raised it."""
    probe = Probe(n)
    marks: dict[str, float] = {}
    caught: list[BaseException] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        all_started = asyncio.Event()

        async def idle() -> None:
            probe.started += 1
            if probe.started == n:
                all_started.set()
            try:
                await loop.create_future()
            finally:
                probe.stopped += 1

        async def failer() -> None:
            await all_started.wait()
            marks["t0"] = perf_counter()
            raise Boom("boom")

        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(n):
                    tg.create_task(idle())
                tg.create_task(failer())
        except* Boom as group:
            caught.extend(group.exceptions)
        marks["t1"] = perf_counter()

    asyncio.run(main())
    fails = probe.fails()
    if len(caught) != 1:
        fails.append(f"caught {caught!r}")
    return result({"elapsed_s": marks["t1"] - marks["t0"]}, fails)


def forced_stop(n: int) -> dict[str, Any]:
    """N tasks on their own Event; after the grace period the group is cancelled.

    asyncio has no "kill" beyond cancellation, so this is the same operation as
    spawn_cancel's cancel, after a ``FORCED_STOP_TIMEOUT`` sleep.
    """
    probe = Probe(n)
    marks: dict[str, float] = {}

    async def main() -> None:
        all_started = asyncio.Event()

        async def task() -> None:
            probe.started += 1
            if probe.started == n:
                all_started.set()
            try:
                await asyncio.Event().wait()
            finally:
                probe.stopped += 1

        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(n):
                    tg.create_task(task())
                await all_started.wait()
                marks["t_stop"] = perf_counter()
                await asyncio.sleep(FORCED_STOP_TIMEOUT)
                raise _Stop
        except* _Stop:
            pass
        marks["t_end"] = perf_counter()

    asyncio.run(main())
    return result({"elapsed_s": marks["t_end"] - marks["t_stop"] - FORCED_STOP_TIMEOUT}, probe.fails())


def memory(n: int) -> dict[str, Any]:
    """RSS growth per parked task."""
    probe, (before, after, _) = _park_all(n, rss)
    return result({"bytes_per_task": (after - before) / n}, probe.fails())


def context_churn(count: int) -> dict[str, Any]:
    """Hand-written, as asyncio has no cancel tree: a child future in the parent's set, cancelled, removed."""
    out: dict[str, Any] = {}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        children: set[asyncio.Future[None]] = set()
        before = rss()
        t0 = perf_counter()
        for size in batches(count):
            for _ in range(size):
                child = loop.create_future()
                children.add(child)
                child.cancel()
                children.discard(child)
            await asyncio.sleep(0)
        elapsed = perf_counter() - t0
        out.update(churn_result(elapsed, count, before, len(children)))

    asyncio.run(main())
    return out
