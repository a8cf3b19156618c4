"""Helpers shared by the per-framework benchmark modules, inside one cell's process.

Every workload function takes ``n`` and returns ``{"metrics": {...}, "fails": [...]}``:
figures in seconds, bytes or nanoseconds, and the sanity checks that did not hold
(``"99/100 stopped"``), which the harness prints as FAIL marks instead of figures.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any

#: The clock of every figure: wall time by default; ``BENCH_CLOCK=cpu`` (``run.py
#: --clock cpu``) uses this process's CPU time instead, which other processes on a
#: busy machine barely disturb (it leaves out waiting, so only use it to compare
#: CPU-bound code, e.g. a patch against the original).
perf_counter = time.process_time if os.environ.get("BENCH_CLOCK") == "cpu" else time.perf_counter

#: context_churn yields to the event loop after every this many children, so work a
#: framework defers to the loop (anyio schedules a callback per cancel) is done and
#: counted instead of piling up.
CHURN_BATCH = 1000

#: The grace period of the forced_stop workload (seconds): cancellation is requested,
#: the tasks ignore it, and after this long every framework stops them by force.
FORCED_STOP_TIMEOUT = 0.05


#: restart_storm: each task fails this many times, its whole budget
#: (``Restart(max_restarts=STORM_RESTARTS, within=STORM_WITHIN)``), then returns cleanly.
STORM_RESTARTS = 10
#: restart_storm: the intensity window (seconds); far longer than any run of the cell.
STORM_WITHIN = 60.0


class Probe:
    """Counts tasks that started and stopped; every implementation uses one the same way."""

    __slots__ = ("n", "started", "stopped")

    def __init__(self, n: int) -> None:
        self.n = n
        self.started = 0
        self.stopped = 0

    def fails(self) -> list[str]:
        """The counts that are not ``n``."""
        out = []
        if self.started != self.n:
            out.append(f"{self.started}/{self.n} started")
        if self.stopped != self.n:
            out.append(f"{self.stopped}/{self.n} stopped")
        return out


class Boom(Exception):
    """What the failing task of failure_propagation raises."""


def reverse_order_fails(stopped: list[int], n: int) -> list[str]:
    """stop_reverse: the tasks' indices in the order they stopped must be ``n-1, ..., 0``."""
    expected = range(n - 1, -1, -1)
    if len(stopped) == n and all(a == b for a, b in zip(stopped, expected, strict=True)):
        return []
    at = next((k for k, (a, b) in enumerate(zip(stopped, expected, strict=False)) if a != b), min(len(stopped), n))
    return [f"stop order is not reverse add order (first wrong at position {at} of {len(stopped)})"]


def storm_fails(runs: int, restarts: int, n: int) -> list[str]:
    """restart_storm: every task ran ``STORM_RESTARTS + 1`` times and was restarted ``STORM_RESTARTS``."""
    out = []
    if runs != n * (STORM_RESTARTS + 1):
        out.append(f"{runs}/{n * (STORM_RESTARTS + 1)} runs")
    if restarts != n * STORM_RESTARTS:
        out.append(f"{restarts}/{n * STORM_RESTARTS} restarts")
    return out


def result(metrics: dict[str, float], fails: list[str]) -> dict[str, Any]:
    """The JSON-able outcome of one workload run."""
    return {"metrics": metrics, "fails": fails}


def rss() -> int:
    """This process's resident set size in bytes, after a full collection."""
    import psutil

    gc.collect()
    return int(psutil.Process().memory_info().rss)


def batches(count: int) -> list[int]:
    """``count`` split into runs of `CHURN_BATCH` (the last one shorter)."""
    full, rest = divmod(count, CHURN_BATCH)
    return [CHURN_BATCH] * full + ([rest] if rest else [])


def churn_result(elapsed: float, count: int, rss_before: int, retained: int | None) -> dict[str, Any]:
    """The outcome of context_churn: ns per child, RSS growth, children left in the parent."""
    rss_after = rss()
    fails = []
    if retained is None:
        fails.append("cannot inspect the parent's children")
    elif retained:
        fails.append(f"parent still holds {retained} children")
    metrics = {"ns_per_child": elapsed / count * 1e9, "rss_growth": float(rss_after - rss_before)}
    return result(metrics, fails)
