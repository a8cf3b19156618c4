"""anyio on its asyncio backend: the same workloads with a TaskGroup and cancel scopes.

anyio has no "kill": forced_stop cancels tasks parked on their own ``anyio.Event``
after the grace period, like spawn_cancel does at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
from _common import FORCED_STOP_TIMEOUT, Boom, Probe, batches, churn_result, perf_counter, result, rss

BACKEND = "asyncio"


def _park_all(n: int, mark: Callable[[], float]) -> tuple[Probe, tuple[float, float, float]]:
    """N tasks in ``sleep_forever``; ``mark()`` read before the spawns, once all have
    started (then the group is cancelled), and once it has exited (spawn_cancel, memory)."""
    probe = Probe(n)
    marks: list[float] = []

    async def main() -> None:
        all_started = anyio.Event()

        async def task() -> None:
            probe.started += 1
            if probe.started == n:
                all_started.set()
            try:
                await anyio.sleep_forever()
            finally:
                probe.stopped += 1

        marks.append(mark())
        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(task)
            await all_started.wait()
            marks.append(mark())
            tg.cancel_scope.cancel()
        marks.append(mark())

    anyio.run(main, backend=BACKEND)
    return probe, (marks[0], marks[1], marks[2])


def spawn_cancel(n: int) -> dict[str, Any]:
    """N tasks in ``sleep_forever``: start them all, then cancel the task group."""
    probe, (t0, t1, t2) = _park_all(n, perf_counter)
    return result({"start_s": t1 - t0, "cancel_s": t2 - t1, "total_s": t2 - t0}, probe.fails())


def spawn_complete(n: int) -> dict[str, Any]:
    """N tasks that return at once; until the task group exits."""
    probe = Probe(n)
    marks: dict[str, float] = {}

    async def task() -> None:
        probe.started += 1
        probe.stopped += 1

    async def main() -> None:
        marks["t0"] = perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(task)
        marks["t1"] = perf_counter()

    anyio.run(main, backend=BACKEND)
    return result({"elapsed_s": marks["t1"] - marks["t0"]}, probe.fails())


def dynamic_add(n: int) -> dict[str, Any]:
    """A producer task in the group starts N short tasks, yielding after each."""
    probe = Probe(n)
    marks: dict[str, float] = {}

    async def task() -> None:
        probe.started += 1
        probe.stopped += 1

    async def producer(tg: anyio.abc.TaskGroup) -> None:
        marks["t0"] = perf_counter()
        for _ in range(n):
            tg.start_soon(task)
            await anyio.sleep(0)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer, tg)
        marks["t1"] = perf_counter()

    anyio.run(main, backend=BACKEND)
    return result({"elapsed_s": marks["t1"] - marks["t0"]}, probe.fails())


def failure_propagation(n: int) -> dict[str, Any]:
    """N parked tasks and one that raises: until the task group has re-raised it."""
    probe = Probe(n)
    marks: dict[str, float] = {}
    caught: list[BaseException] = []

    async def main() -> None:
        all_started = anyio.Event()

        async def idle() -> None:
            probe.started += 1
            if probe.started == n:
                all_started.set()
            try:
                await anyio.sleep_forever()
            finally:
                probe.stopped += 1

        async def failer() -> None:
            await all_started.wait()
            marks["t0"] = perf_counter()
            raise Boom("boom")

        try:
            async with anyio.create_task_group() as tg:
                for _ in range(n):
                    tg.start_soon(idle)
                tg.start_soon(failer)
        except* Boom as group:
            caught.extend(group.exceptions)
        marks["t1"] = perf_counter()

    anyio.run(main, backend=BACKEND)
    fails = probe.fails()
    if len(caught) != 1:
        fails.append(f"caught {caught!r}")
    return result({"elapsed_s": marks["t1"] - marks["t0"]}, fails)


def forced_stop(n: int) -> dict[str, Any]:
    """N tasks on their own Event; after the grace period the task group is cancelled."""
    probe = Probe(n)
    marks: dict[str, float] = {}

    async def main() -> None:
        all_started = anyio.Event()

        async def task() -> None:
            probe.started += 1
            if probe.started == n:
                all_started.set()
            try:
                await anyio.Event().wait()
            finally:
                probe.stopped += 1

        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(task)
            await all_started.wait()
            marks["t_stop"] = perf_counter()
            await anyio.sleep(FORCED_STOP_TIMEOUT)
            tg.cancel_scope.cancel()
        marks["t_end"] = perf_counter()

    anyio.run(main, backend=BACKEND)
    return result({"elapsed_s": marks["t_end"] - marks["t_stop"] - FORCED_STOP_TIMEOUT}, probe.fails())


def memory(n: int) -> dict[str, Any]:
    """RSS growth per parked task."""
    probe, (before, after, _) = _park_all(n, rss)
    return result({"bytes_per_task": (after - before) / n}, probe.fails())


def context_churn(count: int) -> dict[str, Any]:
    """A ``CancelScope`` nested in one long-lived scope, cancelled inside; ``count`` times."""
    out: dict[str, Any] = {}

    async def main() -> None:
        with anyio.CancelScope() as parent:
            before = rss()
            t0 = perf_counter()
            for size in batches(count):
                for _ in range(size):
                    with anyio.CancelScope() as scope:
                        scope.cancel()
                await anyio.lowlevel.checkpoint()
            elapsed = perf_counter() - t0
            children = getattr(parent, "_child_scopes", None)
            out.update(churn_result(elapsed, count, before, None if children is None else len(children)))

    anyio.run(main, backend=BACKEND)
    return out
