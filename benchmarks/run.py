"""greentask against raw gevent, asyncio, trio and anyio, in one run.

Usage::

    python benchmarks/run.py                 # quick mode (`make bench`), about 2 minutes
    python benchmarks/run.py --full          # N = 1k, 10k, 100k (`make bench FULL=1`)
    python benchmarks/run.py --n 20000 --only spawn_cancel,greentask --repeats 1
    python benchmarks/run.py --n 100000 --only greentask --compare /tmp/patched --clock cpu
    python benchmarks/run.py --only stop_reverse,restart_storm,greentask --clock cpu

Every cell (one workload, one framework, one N, one repeat) runs in a fresh process
(``_cell.py``), so no cell inherits another's heap, hub or event loop; the figure of a
cell is the median of its repeats, and repeats are interleaved (repeat 1 of every cell,
then repeat 2, ...) so a burst of load on the machine hits every column alike. Each
figure is also given as a ratio to raw gevent (the hand-written floor) at the same N.
stop_reverse and restart_storm measure greentask policies with no counterpart in the
other frameworks: they run for raw gevent and greentask only (the rest show ``n/a``).
Every task counts itself started and stopped; a cell whose counts, errors or
bookkeeping are wrong shows ``FAIL: <what>`` instead of a figure.

The children import greentask from the tree this file sits in (its parent directory
goes first on ``PYTHONPATH``), so a copy of the repository benchmarks its own copy of
greentask. The table goes to stdout and to ``--output`` (default
``benchmarks/RESULTS.md``) with the machine, the versions, the load and the date.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CELL = HERE / "_cell.py"
#: The extra column of ``--compare``: greentask imported from another tree.
OTHER = "greentask-other"

#: Column order; raw gevent is the baseline of every ratio.
FRAMEWORKS = ("gevent", "greentask", "asyncio", "trio", "anyio")
FRAMEWORK_TITLES = {
    "gevent": "raw gevent",
    "greentask": "greentask",
    "asyncio": "asyncio TaskGroup",
    "trio": "trio nursery",
    "anyio": "anyio (asyncio)",
}
WORKLOADS = (
    "spawn_cancel",
    "spawn_complete",
    "dynamic_add",
    "failure_propagation",
    "forced_stop",
    "memory",
    "context_churn",
    "stop_reverse",
    "restart_storm",
)
#: Workloads that only some frameworks run (the others show "n/a"): both measure
#: greentask policies (a staged stop, restarts) against their hand-written gevent floor.
ONLY_FRAMEWORKS = {
    "stop_reverse": ("gevent", "greentask"),
    "restart_storm": ("gevent", "greentask"),
}

QUICK_SIZES = (1_000, 10_000)
FULL_SIZES = (1_000, 10_000, 100_000)
QUICK_REPEATS = 3
FULL_REPEATS = 3
QUICK_CHURN = 200_000
FULL_CHURN = 1_000_000
#: stop_reverse's N (``--n`` overrides both): one task at a time, so smaller than the rest.
QUICK_STOP_SIZES = (1_000,)
FULL_STOP_SIZES = (100, 1_000, 10_000)
#: restart_storm's tasks (each restarted 10 times), in both modes; with ``--n``, the smallest N.
STORM_N = 1_000
CELL_TIMEOUT = 300.0
CLOCKS = {"wall": "wall time (perf_counter)", "cpu": "CPU time of the cell's process (process_time)"}


@dataclass(frozen=True)
class Metric:
    """How one figure of a workload is shown."""

    key: str
    label: str
    kind: str  # "time", "rate", "bytes", "ns" or "delta" (bytes, no ratio)


METRICS: dict[str, tuple[Metric, ...]] = {
    "spawn_cancel": (
        Metric("start_s", "start all", "time"),
        Metric("cancel_s", "cancel -> returned", "time"),
        Metric("total_s", "total", "time"),
    ),
    "spawn_complete": (Metric("elapsed_s", "tasks/s", "rate"),),
    "dynamic_add": (Metric("elapsed_s", "tasks/s", "rate"),),
    "failure_propagation": (Metric("elapsed_s", "raise -> all stopped, returned", "time"),),
    "forced_stop": (Metric("elapsed_s", "timeout -> returned", "time"),),
    "memory": (Metric("bytes_per_task", "RSS per parked task", "bytes"),),
    "context_churn": (
        Metric("ns_per_child", "create + cancel one child", "ns"),
        Metric("rss_growth", "RSS growth over the run", "delta"),
    ),
    "stop_reverse": (
        Metric("stop_s", "stop() -> last task returned", "time"),
        Metric("elapsed_s", "stop() -> returned (with cleanups)", "time"),
    ),
    "restart_storm": (
        Metric("total_s", "first add -> returned", "time"),
        Metric("per_restart_s", "per restart", "time"),
    ),
}

#: greentask's targets at the largest N: (workload, metric, the highest ratio to raw gevent).
TARGETS = (
    ("spawn_cancel", "total_s", 1.3),
    ("spawn_complete", "elapsed_s", 1.5),
    ("dynamic_add", "elapsed_s", 1.5),
    ("failure_propagation", "elapsed_s", 1.3),
    ("memory", "bytes_per_task", 1.3),
)
#: forced_stop and stop_reverse are linear if the time at 10x the tasks is at most this
#: many times longer.
LINEAR_LIMIT = 15.0

NOTES = """\
## What each workload does

Times are wall clock (`time.perf_counter`) inside the cell's process; imports, hub or
event-loop creation and a 200-task warm-up run are outside them. Every task counts
itself started and stopped, and the cell checks the counts (and the errors the
framework reported) before its figure is used.

- **spawn_cancel**: N tasks that block until cancelled (greentask: execute tasks in
  `ctx.wait()`; raw gevent: one shared `Event`; asyncio: a future each; trio/anyio:
  `sleep_forever()`). *start all*: from the first add/spawn until the last task has
  started; *cancel -> returned*: from `manager.stop()` / `cancel_scope.cancel()` /
  raising out of the TaskGroup body until `run()` / the group returns.
- **spawn_complete**: N tasks that return at once (greentask: `ExecuteTaskType.ERROR`,
  the last one calls `stop()`); N / (first add -> group returned).
- **dynamic_add**: a producer task inside the running manager/group adds N short tasks
  one by one (`add_execute_task`, `create_task`, `start_soon`) and yields after each
  (`gevent.sleep(0)`, `asyncio.sleep(0)`, `trio.sleep(0)`), like an accept loop;
  N / (producer start -> group returned).
- **failure_propagation**: N parked tasks; one more task raises once they all run;
  time from the raise until `run()` returned the error with every task stopped (raw
  gevent: a guard around each greenlet records the error and sets the shared Event).
- **forced_stop**: N tasks that ignore cooperative cancellation (each waits on its own
  Event); greentask `stop_timeout=0.05` kills them; raw gevent `Group.join(timeout)`
  then `Group.kill()`, each body under a guard that catches the `GreenletExit` (as
  greentask's wrapper does: an escaping one makes each dead greenlet cyclic garbage
  and the kill ~4x slower); asyncio, trio and anyio cannot kill, so they cancel the
  group after the same grace period. Time from the end of the grace period to the
  return; the scaling table divides it across N ten times apart (linear: <= 15).
- **memory**: RSS growth (psutil, after `gc.collect()`) per parked task, same tasks as
  spawn_cancel, measured at the largest N only.
- **context_churn**: create a child cancel scope of one long-lived parent and cancel
  it, many times (greentask: `with_cancel(parent)` then `cancel()`; trio/anyio: a
  nested `CancelScope` cancelled inside; raw gevent and asyncio have no cancel tree,
  so the floor is hand-written: an `Event` / a future added to the parent's set,
  set / cancelled, removed). The cell fails if the parent still references a child.
- **stop_reverse** (raw gevent and greentask only): N tasks added with `add_task` to a
  `TaskManager(stop_order=StopOrder.REVERSE)`, each its own object (no-op
  `initialize`, `execute` in `ctx.wait()`, a counting `cleanup`), so returning at once
  when cancelled; raw gevent: N greenlets each parked on its own Event, and a loop
  that sets the last one's Event, joins it, then the one before, ..., then calls a
  no-op cleanup per task in reverse order. From `manager.stop()` / the first `set`
  (every task running) until the last task returned, and until `run()` / the loops
  returned (greentask's cleanup phase included). The cell checks that the tasks
  stopped in exactly reverse add order and were each cleaned up once. N = 1,000 in
  quick mode, 100 / 1,000 / 10,000 in full; the scaling table divides the total
  across N ten times apart (linear: <= 15).
- **restart_storm** (raw gevent and greentask only): 1,000 tasks (the smallest `--n`
  when given) that raise at once on each of their first 10 runs and return cleanly on
  the 11th. greentask: ERROR execute tasks with `restart=Restart(max_restarts=10,
  within=60)`, no backoff, so each is restarted exactly its budget and none gives up
  (a give-up would record a `RestartLimitExceeded` and cancel the whole manager
  mid-storm: the cell's checks would fail); the task that finishes last calls
  `stop()`. Raw gevent: a guard around each run catches the failure and spawns a fresh
  greenlet for the next run, up to 10 times. From the first add / spawn until `run()`
  / the group returned; *per restart* is that over N x 10 (so it also carries each
  task's first start and its clean last run). The cell checks the runs, the restarts
  (`handle.restarts`), `run()`'s errors and `stop_reason`. The `greentask` logger is
  set to CRITICAL inside the cell: each restarted failure logs an ERROR line with its
  traceback. What that logging costs with a handler attached (a `StreamHandler` to
  `/dev/null`, default format and level) was measured once, not per run: about
  0.18-0.19 ms of CPU per restarted failure, which made the 1,000-task storm 2.9-3.9x
  as long as with the logger silenced (3 runs, `--clock cpu`, Python 3.11, on a loaded
  2-core machine; the cost is the stdlib formatting the traceback: `linecache` stats
  and 3.11's caret-anchor `compile` per frame). Measure it again with
  `python benchmarks/_cell.py greentask restart_storm_logged 1000` (`BENCH_CLOCK=cpu`
  for CPU time).

Ratios are cost relative to raw gevent at the same N (time or bytes; for tasks/s the
inverse of the rate ratio): below 1 is cheaper than the floor, above 1 dearer. `±` is
half the spread (max - min) of the repeats, relative to the median.
"""


@dataclass
class Cell:
    """All repeats of one workload x framework x N."""

    workload: str
    framework: str
    n: int
    outcomes: list[dict[str, Any]] = field(default_factory=list)

    def fails(self) -> list[str]:
        """The distinct sanity-check failures over the repeats."""
        seen: list[str] = []
        for outcome in self.outcomes:
            for fail in outcome["fails"]:
                if fail not in seen:
                    seen.append(fail)
        return seen

    def values(self, key: str) -> list[float]:
        """The figures of ``key`` from the repeats that passed their checks."""
        return [o["metrics"][key] for o in self.outcomes if not o["fails"] and key in o["metrics"]]

    def median(self, key: str) -> float | None:
        """The median figure of ``key``, or None if no repeat passed."""
        values = self.values(key)
        return statistics.median(values) if values else None

    def spread(self, key: str) -> float | None:
        """Half of (max - min) over the median, or None with fewer than two repeats."""
        values = self.values(key)
        if len(values) < 2:
            return None
        mid = statistics.median(values)
        return (max(values) - min(values)) / 2 / abs(mid) if mid else None


# -- running -----------------------------------------------------------------------


def run_cell(
    framework: str, workload: str, n: int, timeout: float, clock: str, other: Path | None = None
) -> dict[str, Any]:
    """Run one repeat of one cell in a fresh process; return its outcome.

    ``OTHER`` runs the greentask module with greentask imported from ``other``.
    """
    root = ROOT
    if framework == OTHER:
        assert other is not None
        framework, root = "greentask", other
    env = dict(os.environ)
    env["BENCH_CLOCK"] = clock
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), str(HERE), env.get("PYTHONPATH", "")) if p)
    env.pop("PYTHONHASHSEED", None)
    cmd = [sys.executable, str(CELL), framework, workload, str(n)]
    try:
        proc = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"metrics": {}, "fails": [f"no result within {timeout:.0f}s"]}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"metrics": {}, "fails": [f"exit {proc.returncode}: {last}"]}
    try:
        outcome: dict[str, Any] = json.loads(lines[-1])
    except ValueError:
        return {"metrics": {}, "fails": [f"bad output: {lines[-1][:80]}"]}
    return outcome


def plan(
    workloads: Sequence[str],
    sizes: Sequence[int],
    churn: int,
    stop_sizes: Sequence[int] = QUICK_STOP_SIZES,
    storm_n: int = STORM_N,
) -> list[tuple[str, int]]:
    """The (workload, N) rows to run: memory at the largest N only, churn once,
    stop_reverse at its own sizes, restart_storm once."""
    rows: list[tuple[str, int]] = []
    for workload in workloads:
        if workload == "memory":
            rows.append((workload, max(sizes)))
        elif workload == "context_churn":
            rows.append((workload, churn))
        elif workload == "stop_reverse":
            rows.extend((workload, n) for n in stop_sizes)
        elif workload == "restart_storm":
            rows.append((workload, storm_n))
        else:
            rows.extend((workload, n) for n in sizes)
    return rows


def supports(workload: str, framework: str) -> bool:
    """Whether ``framework`` runs ``workload`` (``--compare``'s column is greentask's)."""
    only = ONLY_FRAMEWORKS.get(workload)
    return only is None or ("greentask" if framework == OTHER else framework) in only


def run_all(
    rows: list[tuple[str, int]],
    frameworks: Sequence[str],
    repeats: int,
    jobs: int,
    timeout: float,
    clock: str,
    log: Callable[[str], None],
    other: Path | None = None,
) -> dict[tuple[str, str, int], Cell]:
    """Run every cell ``repeats`` times, interleaved; return the cells."""
    cells = {(w, f, n): Cell(w, f, n) for w, n in rows for f in frameworks if supports(w, f)}
    order: list[tuple[str, str, int]] = []
    for rep in range(repeats):
        for workload, n in rows:
            shift = rep % len(frameworks)  # rotate so no framework always runs first
            rotated = [*frameworks[shift:], *frameworks[:shift]]
            order.extend((workload, f, n) for f in rotated if supports(workload, f))
    total = len(order)
    started = time.monotonic()

    def one(index_key: tuple[int, tuple[str, str, int]]) -> None:
        index, (workload, framework, n) = index_key
        t0 = time.monotonic()
        outcome = run_cell(framework, workload, n, timeout, clock, other)
        cells[workload, framework, n].outcomes.append(outcome)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in outcome["metrics"].items())
        if outcome["fails"]:
            shown = "FAIL: " + "; ".join(outcome["fails"])
        log(
            f"[{index + 1}/{total} {time.monotonic() - started:5.0f}s] {workload} n={n} {framework}: {shown}"
            f" ({time.monotonic() - t0:.1f}s)"
        )

    if jobs <= 1:
        for item in enumerate(order):
            one(item)
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(one, enumerate(order)))
    return cells


# -- formatting ----------------------------------------------------------------------


def fmt_value(kind: str, value: float, n: int) -> str:
    """A figure with its unit."""
    if kind == "rate":
        rate = n / value if value > 0 else float("inf")
        return f"{rate / 1000:,.0f}k/s" if rate >= 10_000 else f"{rate:,.0f}/s"
    if kind == "ns":
        return f"{value:,.0f} ns"
    if kind in ("bytes", "delta"):
        sign = "+" if kind == "delta" and value >= 0 else ""
        if abs(value) >= 1024 * 1024:
            return f"{sign}{value / 1024 / 1024:.1f} MB"
        return f"{sign}{value / 1024:.1f} KB"
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.1f} ms"
    return f"{value * 1e6:.0f} µs"


def ratio(cells: dict[tuple[str, str, int], Cell], workload: str, framework: str, n: int, key: str) -> float | None:
    """Cost of ``framework`` over raw gevent's for one figure (None if either is missing)."""
    base = cells.get((workload, "gevent", n))
    cell = cells.get((workload, framework, n))
    if base is None or cell is None:
        return None
    b, v = base.median(key), cell.median(key)
    if b is None or v is None or b <= 0:
        return None
    return v / b


def fmt_cell(cells: dict[tuple[str, str, int], Cell], metric: Metric, workload: str, framework: str, n: int) -> str:
    """One table cell: ``value (ratio) ±spread`` or ``FAIL: ...``."""
    cell = cells.get((workload, framework, n))
    if cell is None:
        return "-" if supports(workload, framework) else "n/a"
    fails = cell.fails()
    if fails:
        bad = sum(1 for o in cell.outcomes if o["fails"])
        runs = f" ({bad}/{len(cell.outcomes)} runs)" if len(cell.outcomes) > 1 else ""
        more = f" (+{len(fails) - 1} other)" if len(fails) > 1 else ""
        return f"FAIL{runs}: {fails[0]}{more}".replace("|", "/")
    value = cell.median(metric.key)
    if value is None:
        return "-"
    text = fmt_value(metric.kind, value, n)
    r = ratio(cells, workload, framework, n, metric.key)
    if metric.kind != "delta" and r is not None:
        text += f" ({r:.2f})"
    spread = cell.spread(metric.key)
    if spread is not None and metric.kind != "delta":
        text += f" ±{spread * 100:.0f}%"
    return text


def results_table(
    cells: dict[tuple[str, str, int], Cell], rows: list[tuple[str, int]], frameworks: Sequence[str]
) -> str:
    """The main markdown table."""
    head = ["workload", "N", "metric", *(FRAMEWORK_TITLES[f] for f in frameworks)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for workload, n in rows:
        for metric in METRICS[workload]:
            row = [workload, f"{n:,}", metric.label, *(fmt_cell(cells, metric, workload, f, n) for f in frameworks)]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def targets_table(cells: dict[tuple[str, str, int], Cell], sizes: Sequence[int], frameworks: Sequence[str]) -> str:
    """greentask's ratios at the largest N against the targets, and against anyio."""
    if "greentask" not in frameworks or "gevent" not in frameworks:
        return "(needs the greentask and raw gevent columns)"
    big = max(sizes)
    lines = [
        f"| workload (N={big:,}) | greentask / raw gevent | target | anyio / raw gevent | greentask ahead of anyio |",
        "|---|---|---|---|---|",
    ]
    for workload, key, limit in TARGETS:
        n = big
        if (workload, "greentask", n) not in cells:
            continue
        ours = ratio(cells, workload, "greentask", n, key)
        theirs = ratio(cells, workload, "anyio", n, key)
        status = "n/a" if ours is None else ("met" if ours <= limit else "over")
        ahead = "n/a" if ours is None or theirs is None else ("yes" if ours < theirs else "no")
        lines.append(f"| {workload} | {_r(ours)} | <= {limit} ({status}) | {_r(theirs)} | {ahead} |")
    key = "ns_per_child"
    churn = [c for c in cells.values() if c.workload == "context_churn" and c.framework == "greentask"]
    if churn:
        n = churn[0].n
        ours = ratio(cells, "context_churn", "greentask", n, key)
        theirs = ratio(cells, "context_churn", "anyio", n, key)
        ahead = "n/a" if ours is None or theirs is None else ("yes" if ours < theirs else "no")
        lines.append(f"| context_churn (N={n:,}) | {_r(ours)} | - | {_r(theirs)} | {ahead} |")
    if len(lines) == 2:
        return "(none of the target workloads was run)"
    return "\n".join(lines)


def scaling_table(
    cells: dict[tuple[str, str, int], Cell],
    sizes: Sequence[int],
    frameworks: Sequence[str],
    workload: str = "forced_stop",
) -> str:
    """``workload`` (forced_stop, stop_reverse): time at 10x the tasks over the time at x."""
    pairs = [(a, b) for a in sizes for b in sizes if b == 10 * a]
    if not pairs or not any(c.workload == workload for c in cells.values()):
        return f"(needs {workload} at two sizes ten times apart)"
    head = [workload, *(FRAMEWORK_TITLES[f] for f in frameworks)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a, b in pairs:
        row = [f"t({b:,}) / t({a:,})"]
        for f in frameworks:
            if not supports(workload, f):
                row.append("n/a")
                continue
            ca, cb = cells.get((workload, f, a)), cells.get((workload, f, b))
            va = None if ca is None else ca.median("elapsed_s")
            vb = None if cb is None else cb.median("elapsed_s")
            if va is None or vb is None or va <= 0:
                row.append("-")
            else:
                growth = vb / va
                row.append(f"{growth:.1f} ({'linear' if growth <= LINEAR_LIMIT else 'superlinear'})")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _r(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


# -- the machine ---------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU model from /proc/cpuinfo (or the platform's guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(dist: str) -> str:
    """The installed version of a distribution, or "not installed"."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def greentask_source() -> str:
    """Where the children import greentask from, with the git commit if there is one."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "greentask"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return str(ROOT / "greentask")
    return f"{ROOT / 'greentask'} (commit {commit}{', modified' if dirty else ''})"


def loadavg() -> str:
    """The 1/5/15-minute load averages."""
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def header(args: argparse.Namespace, load_before: str, seconds: float) -> str:
    """The machine, versions and run parameters, as markdown."""
    versions = ", ".join(f"{d} {version(d)}" for d in ("gevent", "greenlet", "trio", "anyio", "psutil"))
    return "\n".join(
        [
            "# greentask benchmarks",
            "",
            f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
            f"- machine: {cpu_model()}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}",
            f"- load average (1/5/15 min) before: {load_before}; after: {loadavg()}",
            f"- Python {platform.python_version()} ({platform.python_implementation()}); {versions}",
            f"- greentask {version('greentask')} from {greentask_source()}",
            f"- mode: {args.mode}; N = {', '.join(f'{n:,}' for n in args.sizes)}; "
            f"context_churn children = {args.churn:,}; "
            f"stop_reverse N = {', '.join(f'{n:,}' for n in args.stop_sizes)}; "
            f"restart_storm tasks = {args.storm_n:,}; {args.repeats} repeat(s) per cell, median shown; "
            f"clock: {CLOCKS[args.clock]}; {seconds:.0f} s in all",
            f"- command: `{' '.join(['python', 'benchmarks/run.py', *sys.argv[1:]])}`",
        ]
    )


# -- main ----------------------------------------------------------------------------


def _csv_ints(text: str) -> list[int]:
    try:
        values = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        msg = f"expected comma-separated integers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not values or any(v <= 0 for v in values):
        msg = f"expected positive integers, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--full",
        action="store_true",
        help="N = 1,000 / 10,000 / 100,000, 1M context children, stop_reverse N = 100 / 1,000 / 10,000",
    )
    parser.add_argument(
        "--n",
        type=_csv_ints,
        help="comma-separated task counts (overrides the mode's, stop_reverse's too; restart_storm runs the smallest)",
    )
    parser.add_argument(
        "--only",
        help="comma-separated workloads and/or frameworks to run (raw gevent always runs: it is the baseline); "
        f"workloads: {', '.join(WORKLOADS)}; frameworks: {', '.join(FRAMEWORKS)}",
    )
    parser.add_argument("--repeats", type=int, help="runs per cell (median shown)")
    parser.add_argument("--churn-n", type=_csv_ints, help="context_churn children (default 200k quick, 1M full)")
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md", help="markdown file to write")
    parser.add_argument("--jobs", type=int, default=1, help="cells run at once (>1 distorts the timings)")
    parser.add_argument("--timeout", type=float, default=CELL_TIMEOUT, help="seconds one cell may take")
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="TREE",
        help="add a column: greentask imported from TREE (a copy of the repository, e.g. with a patch applied)",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time (the real figure; needs a quiet machine); cpu: the cell process's CPU time, "
        "barely disturbed by other load, for comparing CPU-bound changes (leaves out waiting)",
    )
    args = parser.parse_args(argv)
    workloads, frameworks = list(WORKLOADS), list(FRAMEWORKS)
    if args.only:
        names = [x.strip() for x in args.only.split(",") if x.strip()]
        unknown = [x for x in names if x not in WORKLOADS and x not in FRAMEWORKS]
        if unknown:
            parser.error(f"--only: unknown names {unknown!r}")
        if any(x in WORKLOADS for x in names):
            workloads = [w for w in WORKLOADS if w in names]
        if any(x in FRAMEWORKS for x in names):
            frameworks = [f for f in FRAMEWORKS if f in names or f == "gevent"]
    if args.compare is not None:
        args.compare = args.compare.resolve()
        if not (args.compare / "greentask" / "__init__.py").is_file():
            parser.error(f"--compare: no greentask package in {str(args.compare)!r}")
        frameworks.insert(frameworks.index("greentask") + 1 if "greentask" in frameworks else 1, OTHER)
        FRAMEWORK_TITLES[OTHER] = f"greentask from {args.compare}"
    args.workloads, args.frameworks = workloads, frameworks
    args.mode = "full" if args.full else "quick"
    args.sizes = args.n or list(FULL_SIZES if args.full else QUICK_SIZES)
    args.repeats = args.repeats or (FULL_REPEATS if args.full else QUICK_REPEATS)
    args.churn = (args.churn_n or [FULL_CHURN if args.full else QUICK_CHURN])[0]
    args.stop_sizes = args.n or list(FULL_STOP_SIZES if args.full else QUICK_STOP_SIZES)
    args.storm_n = min(args.n) if args.n else STORM_N
    if args.n:
        args.mode += " (custom N)"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks, print the tables and write them to ``--output``."""
    args = parse_args(argv)
    load_before = loadavg()
    started = time.monotonic()
    rows = plan(args.workloads, args.sizes, args.churn, args.stop_sizes, args.storm_n)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    cells = run_all(rows, args.frameworks, args.repeats, args.jobs, args.timeout, args.clock, log, args.compare)
    elapsed = time.monotonic() - started
    report = "\n\n".join(
        [
            header(args, load_before, elapsed),
            "## Results (median; ratio to raw gevent in parentheses)",
            results_table(cells, rows, args.frameworks),
            "## greentask against its targets",
            targets_table(cells, args.sizes, args.frameworks),
            "## forced_stop scaling",
            scaling_table(cells, args.sizes, args.frameworks),
            "## stop_reverse scaling",
            scaling_table(cells, args.stop_sizes, args.frameworks, "stop_reverse"),
            NOTES,
        ]
    )
    print(report)
    args.output.write_text(report + "\n", encoding="utf-8")
    log(f"written to {args.output}")
    failed = sum(1 for c in cells.values() if c.fails())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
