"""One WSGI app served four ways, under load from ``hey``: what greentask costs per request.

Usage::

    python benchmarks/service.py                         # 10 s per run, 1 run each, 3 drains
    python benchmarks/service.py --duration 5 --drain-repeats 3
    python benchmarks/service.py --only b,d,drain --repeats 3

Throughput (``hey -z <duration>s -c 50 -disable-keepalive``: a new connection per
request, as behind most load balancers) and latency of ``GET /`` served by:

- (a) gevent's ``WSGIServer`` alone (``serve_forever``), the floor;
- (b) the same server as a `greentask.tasks.Server` task under `greentask.run`;
- (c) ``gunicorn -k gevent -w 2`` (gunicorn's own HTTP parser);
- (c') ``gunicorn -k gevent_pywsgi -w 2`` (gevent's pywsgi, as the greentask worker);
- (d) ``gunicorn -k greentask.gunicorn.Worker -w 2`` (an empty manager per worker).

The ratios (b)/(a), (d)/(c) and (d)/(c') are computed within one run of this script.

The drain workload runs ``GET /work`` (50 ms in the app, so about 50 requests are in
flight at any time) with 50 connections against (b) and (d), sends SIGTERM to the
server in the middle, and counts: requests the app started but did not complete (a
request accepted and then dropped; the app counts both in each process and reports at
cleanup), and the client's errors by kind (``refused``: connections tried after the
listener closed, expected; ``reset`` / ``EOF``: connections cut). Also the time from
SIGTERM to the server's exit. Dropped requests must be 0.

The servers run as subprocesses of this script, and import greentask from this tree.
Results go to stdout and to ``--output`` (default ``benchmarks/RESULTS_service.md``).
``hey`` is Debian's package (``apt-get install -y hey``) or
``go install github.com/rakyll/hey@latest``.

This file is also the app: gunicorn imports it as ``service:app`` (with
``--pythonpath benchmarks``), and ``--serve gevent|greentask`` runs (a) or (b).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: Seconds a server gets to answer its first request, and to exit after SIGTERM.
START_DEADLINE = 30.0
EXIT_DEADLINE = 60.0

#: Milliseconds ``/work`` spends in the app (a gevent sleep), so requests are in flight.
WORK_MS = 50

#: Each request the app started and completed, in this process.
COUNTS = {"started": 0, "completed": 0}


# -- the app (imported by gunicorn as ``service:app``; run by ``--serve``) ---------------------


def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    """``GET /``: a short answer; ``GET /work``: the same after ``WORK_MS`` ms."""
    COUNTS["started"] += 1
    if environ["PATH_INFO"] == "/work":
        import gevent

        gevent.sleep(WORK_MS / 1000)
    body = b"hello\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    yield body
    # Resumed once the server has written the body: the request is complete.
    COUNTS["completed"] += 1


class Counts:
    """A task whose cleanup reports this process's counts (after the server drained)."""

    def initialize(self, ctx: Any) -> None:
        pass

    def execute(self, ctx: Any) -> None:
        ctx.wait()

    def cleanup(self, ctx: Any) -> None:
        print(
            f"service-counts pid={os.getpid()} started={COUNTS['started']} completed={COUNTS['completed']}", flush=True
        )


def manager() -> Any:
    """The manager of (b) and, through ``GREENTASK_MANAGER``, of each worker of (d)."""
    import greentask as gt

    built = gt.TaskManager(name="service", stop_order=gt.StopOrder.REVERSE, stop_timeout=10)
    built.add_task("counts", Counts())
    return built


def serve(kind: str, port: int) -> int:
    """Run (a) ``gevent`` or (b) ``greentask`` on ``port`` until SIGTERM."""
    from gevent import monkey

    monkey.patch_all()
    import logging

    from gevent.pywsgi import WSGIServer

    logging.basicConfig(level=logging.WARNING)
    server = WSGIServer(("127.0.0.1", port), app, log=None)
    if kind == "gevent":
        import gevent

        gevent.signal_handler(signal.SIGTERM, server.stop)
        server.serve_forever()
        return 0
    import greentask as gt

    built = manager()
    built.add_task("http", gt.tasks.Server(server, stop_timeout=10))
    return gt.run(built)


# -- running the servers -------------------------------------------------------------------


@dataclass
class Setup:
    key: str
    title: str
    args: list[str]
    counts: bool  # whether it reports service-counts lines


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def setups(port: int, workers: int) -> dict[str, Setup]:
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    base = [gunicorn, "-w", str(workers), "-b", f"127.0.0.1:{port}", "--no-control-socket"]
    base += ["--pythonpath", str(HERE), "--log-level", "warning"]
    me = [sys.executable, str(Path(__file__).resolve()), "--serve"]
    worker = "greentask.gunicorn.Worker"
    return {
        "a": Setup("a", "(a) gevent WSGIServer", [*me, "gevent", "--port", str(port)], False),
        "b": Setup("b", "(b) greentask Server under gt.run", [*me, "greentask", "--port", str(port)], True),
        "c": Setup("c", f"(c) gunicorn -k gevent -w {workers}", [*base, "-k", "gevent", "service:app"], False),
        "c'": Setup(
            "c'", f"(c') gunicorn -k gevent_pywsgi -w {workers}", [*base, "-k", "gevent_pywsgi", "service:app"], False
        ),
        "d": Setup(
            "d",
            f"(d) gunicorn -k {worker} -w {workers}",
            [*base, "-k", worker, "-e", "GREENTASK_MANAGER=service:manager", "service:app"],
            True,
        ),
    }


class Running:
    """One server subprocess (own session), its output in a file."""

    def __init__(self, setup: Setup, port: int) -> None:
        self.setup = setup
        self.port = port
        self.log = tempfile.NamedTemporaryFile(prefix="service-bench-", suffix=".log", delete=False)  # noqa: SIM115
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        env.pop("NOTIFY_SOCKET", None)
        self.proc = subprocess.Popen(
            setup.args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.setup.title} exited with {self.proc.returncode}:\n{self.output()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.05)  # the benchmark polls for readiness; a test would wait on a line
        raise RuntimeError(f"{self.setup.title} did not answer within {START_DEADLINE}s:\n{self.output()}")

    def stop(self) -> tuple[int, float]:
        """SIGTERM; return the exit code and the seconds until the process exited."""
        sent = time.monotonic()
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(EXIT_DEADLINE)
        finally:
            self.kill()
        return code, time.monotonic() - sent

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def counts(self) -> tuple[int, int]:
        started = completed = 0
        for match in re.finditer(r"service-counts pid=\d+ started=(\d+) completed=(\d+)", self.output()):
            started += int(match[1])
            completed += int(match[2])
        return started, completed

    def close(self) -> None:
        self.kill()
        self.log.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


# -- hey -------------------------------------------------------------------------------------


@dataclass
class Load:
    rps: float = 0.0
    p50: float = 0.0
    p99: float = 0.0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)


def hey(url: str, seconds: float, concurrency: int) -> subprocess.Popen[str]:
    args = ["hey", "-z", f"{seconds:g}s", "-c", str(concurrency), "-disable-keepalive", url]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def parse_hey(text: str) -> Load:
    load = Load()
    if match := re.search(r"Requests/sec:\s+([\d.]+)", text):
        load.rps = float(match[1])
    for pct, attr in (("50", "p50"), ("99", "p99")):
        if match := re.search(rf"\b{pct}% in ([\d.]+) secs", text):
            setattr(load, attr, float(match[1]))
    if match := re.search(r"\[200\]\s+(\d+) responses", text):
        load.ok = int(match[1])
    errors = text.partition("Error distribution:")[2]
    for match in re.finditer(r"\[(\d+)\]\s+(.*)", errors):
        line = match[2]
        kind = (
            "refused"
            if "refused" in line
            else "reset"
            if "reset" in line
            else "EOF"
            if "EOF" in line
            else "timeout"
            if "timeout" in line.lower() or "deadline" in line.lower()
            else "other"
        )
        load.errors[kind] = load.errors.get(kind, 0) + int(match[1])
    return load


# -- workloads -------------------------------------------------------------------------------


def throughput(setup: Setup, seconds: float, concurrency: int) -> Load:
    port = free_port()
    setup = setups(port, WORKERS)[setup.key]
    server = Running(setup, port)
    try:
        out, _ = hey(f"http://127.0.0.1:{port}/", seconds, concurrency).communicate()
    finally:
        server.close()
    load = parse_hey(out)
    if not load.rps:
        raise RuntimeError(f"hey gave no figures for {setup.title}:\n{out}")
    return load


@dataclass
class Drain:
    started: int
    completed: int
    errors: dict[str, int]
    ok: int
    code: int
    exit_seconds: float

    @property
    def dropped(self) -> int:
        return self.started - self.completed


def drain(key: str, seconds: float, concurrency: int) -> Drain:
    port = free_port()
    setup = setups(port, WORKERS)[key]
    server = Running(setup, port)
    try:
        load_proc = hey(f"http://127.0.0.1:{port}/work", seconds, concurrency)
        time.sleep(seconds / 2)  # the middle of the run
        code, exit_seconds = server.stop()
        out, _ = load_proc.communicate()
        started, completed = server.counts()
        if not started:
            raise RuntimeError(f"{setup.title} reported no counts:\n{server.output()}")
    finally:
        server.close()
    load = parse_hey(out)
    return Drain(started, completed, load.errors, load.ok, code, exit_seconds)


# -- report ----------------------------------------------------------------------------------

WORKERS = 2


def versions() -> str:
    import importlib.metadata as md

    names = ("gevent", "greenlet", "gunicorn")
    parts = [f"{name} {md.version(name)}" for name in names]
    hey_version = "hey (Debian)" if shutil.which("hey") else "hey missing"
    return ", ".join(parts) + f", {hey_version}"


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return "?"
    return out.stdout.strip() or "?"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", choices=("gevent", "greentask"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per throughput run (10)")
    parser.add_argument("--repeats", type=int, default=1, help="throughput runs per server, median shown (1)")
    parser.add_argument("--drain-duration", type=float, default=6.0, help="seconds of load per drain run (6)")
    parser.add_argument("--drain-repeats", type=int, default=3, help="drain runs per server (3)")
    parser.add_argument("--concurrency", type=int, default=50, help="hey -c (50)")
    parser.add_argument(
        "--only", default="a,b,c,c',d,drain", help="comma-separated subset of a,b,c,c',d,drain (all by default)"
    )
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS_service.md", help="markdown file to write")
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.serve, args.port)
    if shutil.which("hey") is None:
        print(
            "service.py needs the load generator 'hey': apt-get install -y hey "
            "(or: go install github.com/rakyll/hey@latest)",
            file=sys.stderr,
        )
        return 2
    only = [part.strip() for part in args.only.split(",") if part.strip()]
    began = time.monotonic()
    load_before = os.getloadavg()

    # Throughput: repeats interleaved (a, b, c, c', d, a, b, ...) so load bursts hit all alike.
    keys = [key for key in ("a", "b", "c", "c'", "d") if key in only]
    table = setups(0, WORKERS)
    loads: dict[str, list[Load]] = {key: [] for key in keys}
    for repeat in range(args.repeats):
        for key in keys:
            load = throughput(table[key], args.duration, args.concurrency)
            loads[key].append(load)
            print(
                f"[{repeat + 1}/{args.repeats}] {table[key].title}: {load.rps:,.0f} req/s, "
                f"p50 {ms(load.p50)}, p99 {ms(load.p99)}, errors {load.errors or 0}",
                flush=True,
            )

    drains: dict[str, list[Drain]] = {}
    if "drain" in only:
        for repeat in range(args.drain_repeats):
            for key in ("b", "d"):
                result = drain(key, args.drain_duration, args.concurrency)
                drains.setdefault(key, []).append(result)
                print(
                    f"[drain {repeat + 1}/{args.drain_repeats}] {table[key].title}: started {result.started}, "
                    f"completed {result.completed}, dropped {result.dropped}, client errors {result.errors or 0}, "
                    f"exit {result.code} in {result.exit_seconds:.2f}s",
                    flush=True,
                )

    report = render(args, table, loads, drains, load_before, time.monotonic() - began)
    print()
    print(report)
    args.output.write_text(report)
    print(f"written to {args.output}")
    failed = any(d.dropped or d.errors.get("EOF") for runs in drains.values() for d in runs)
    return 1 if failed else 0


def render(
    args: argparse.Namespace,
    table: dict[str, Setup],
    loads: dict[str, list[Load]],
    drains: dict[str, list[Drain]],
    load_before: tuple[float, float, float],
    elapsed: float,
) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    after = os.getloadavg()
    lines = [
        "## Serving HTTP: greentask's Server task and gunicorn worker",
        "",
        f"- date: {now}; machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
        f"{platform.system()} {platform.release()}",
        f"- load average before: {', '.join(f'{v:.2f}' for v in load_before)}; "
        f"after: {', '.join(f'{v:.2f}' for v in after)}",
        f"- Python {platform.python_version()}; {versions()}; greentask from {ROOT} (commit {commit()})",
        f"- load: `hey -z {args.duration:g}s -c {args.concurrency} -disable-keepalive` (a new connection per "
        f"request), {args.repeats} run(s) per server, median shown; hey runs on the same machine; "
        f"{elapsed:.0f} s in all",
        f"- command: `python benchmarks/service.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
    ]
    medians: dict[str, float] = {}
    if loads:
        lines += ["| server | requests/s | p50 latency | p99 latency | errors |", "|---|---|---|---|---|"]
        for key, runs in loads.items():
            rps = statistics.median(r.rps for r in runs)
            medians[key] = rps
            p50 = statistics.median(r.p50 for r in runs)
            p99 = statistics.median(r.p99 for r in runs)
            errors = sum(sum(r.errors.values()) for r in runs)
            lines.append(f"| {table[key].title} | {rps:,.0f} | {ms(p50)} | {ms(p99)} | {errors} |")
        lines.append("")
        ratios = [("b", "a"), ("d", "c"), ("d", "c'")]
        shown = [
            f"{num}/{den} = {medians[num] / medians[den]:.2f}"
            for num, den in ratios
            if num in medians and den in medians
        ]
        if shown:
            lines += [f"Throughput ratios: {'; '.join(shown)} (1.00 = no cost).", ""]
    if drains:
        lines += [
            f"Drain: `GET /work` ({WORK_MS} ms in the app) with `hey -z {args.drain_duration:g}s -c {args.concurrency} "
            f"-disable-keepalive`, SIGTERM to the server after {args.drain_duration / 2:g} s; "
            f"{args.drain_repeats} run(s) each.",
            "",
            "| server | run | requests started | completed | dropped | client errors | exit code | SIGTERM -> exit |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for key, runs in drains.items():
            for index, run in enumerate(runs, 1):
                errors = ", ".join(f"{kind} {count}" for kind, count in sorted(run.errors.items())) or "none"
                lines.append(
                    f"| {table[key].title} | {index} | {run.started:,} | {run.completed:,} | {run.dropped} | "
                    f"{errors} | {run.code} | {run.exit_seconds:.2f} s |"
                )
        lines += [
            "",
            "`dropped` = requests the app started and never completed (must be 0). Client errors: `refused` =",
            "connections tried after the listener closed (expected once the server stops); `reset` = connections",
            "the kernel had queued in the listen backlog but no server had accepted yet when the last copy of",
            "the listening socket was closed (the kernel resets them; they never reached the app; the gunicorn",
            "worker accepts what is queued before it closes its listener); `EOF` would be a connection the server",
            "accepted and closed without an answer.",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
