"""An HTTP service: a WSGI app, a background worker, periodic stats and health probes.

Run it with ``python examples/http_service.py`` (``--port 0 --health-port 0`` picks
free ports) and stop it with Ctrl-C or SIGTERM. Try::

    curl -X POST --data 'resize cat.png' http://127.0.0.1:8080/jobs
    curl http://127.0.0.1:8080/stats
    curl http://127.0.0.1:8081/readyz
    curl http://127.0.0.1:8081/status

Tasks, in add order (initialized in this order, cleaned up in reverse):

- ``health``: `greentask.tasks.HealthServer` on ``--health-port``: ``/livez``,
  ``/readyz``, ``/status``. Added first, so it answers while the others start and
  until they are cleaned up.
- ``http``: the WSGI app under `greentask.tasks.Server` on ``--port``. ``POST /jobs``
  queues a job for the worker (202, or 503 when the queue is full or the service is
  shutting down), ``GET /stats`` returns counters as JSON, ``GET /`` says hello. On
  shutdown it stops accepting connections and lets requests in flight finish.
- ``worker``: takes jobs from the queue one at a time; on shutdown it stops
  accepting new jobs and drains the queue, so every accepted job is done.
- ``stats``: a `greentask.tasks.RepeatTimer` that logs the counters every
  ``--stats-interval`` seconds.

It monkey-patches first, so the servers' sockets cooperate with gevent. Once all
tasks run it prints the bound addresses on its ``ready`` line. `greentask.run`
handles the signals (a second one forces the stop) and gives the exit code.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402 - after monkey-patching, on purpose
import itertools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from typing import Any  # noqa: E402

from gevent.pywsgi import LoggingLogAdapter, WSGIServer  # noqa: E402
from gevent.queue import Empty, Full, Queue  # noqa: E402

import greentask as gt  # noqa: E402
from greentask.tasks import HealthServer, RepeatTimer, Server  # noqa: E402

log = logging.getLogger("http_service")

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def say(who: str, text: str) -> None:
    print(f"[{who}] {text}", flush=True)


class Worker:
    """Does queued jobs one at a time; on shutdown, drains the queue before returning."""

    def __init__(self, queue_size: int, job_seconds: float) -> None:
        self.queue: Queue[tuple[int, str]] = Queue(queue_size)
        self.job_seconds = job_seconds
        self.accepting = False
        self.ids = itertools.count(1)
        self.stats = {"requests": 0, "accepted": 0, "rejected": 0, "done": 0}

    def submit(self, text: str) -> int | None:
        """Queue a job; return its id, or None when full or shutting down."""
        if not self.accepting:
            self.stats["rejected"] += 1
            return None
        job_id = next(self.ids)
        try:
            self.queue.put_nowait((job_id, text))
        except Full:
            self.stats["rejected"] += 1
            return None
        self.stats["accepted"] += 1
        say("worker", f"accepted job {job_id}: {text!r}")
        return job_id

    def initialize(self, ctx: gt.Context) -> None:
        self.accepting = True

    def do(self, work: gt.Context, job_id: int, text: str, verb: str) -> None:
        work.sleep(self.job_seconds)  # the real work would go here
        self.stats["done"] += 1
        say("worker", f"{verb} job {job_id}: {text!r}")

    def execute(self, ctx: gt.Context) -> None:
        work = gt.without_cancel(ctx)  # a job in hand is always finished
        while not ctx.cancelled:
            job = None
            with ctx.cancellable():
                job = self.queue.get()
            if job is None:
                break
            self.do(work, *job, verb="done")
        self.accepting = False
        say("worker", f"shutting down: draining {self.queue.qsize()} queued jobs")
        while True:
            try:
                job = self.queue.get_nowait()
            except Empty:
                break
            self.do(work, *job, verb="drained")
        say("worker", "stopped")

    def cleanup(self, ctx: gt.Context) -> None:
        self.accepting = False


def make_app(worker: Worker) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """The WSGI application."""

    def reply(start_response: StartResponse, status: str, body: object) -> list[bytes]:
        data = (json.dumps(body) + "\n").encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        worker.stats["requests"] += 1
        method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
        if path == "/jobs" and method == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            text = environ["wsgi.input"].read(length).decode(errors="replace") or "job"
            job_id = worker.submit(text)
            if job_id is None:
                return reply(start_response, "503 Service Unavailable", {"error": "busy or shutting down"})
            return reply(start_response, "202 Accepted", {"job": job_id})
        if path == "/stats" and method == "GET":
            return reply(start_response, "200 OK", worker.stats)
        if path == "/" and method == "GET":
            return reply(start_response, "200 OK", {"hello": "greentask"})
        return reply(start_response, "404 Not Found", {"error": f"no route for {method} {path}"})

    return app


def build(args: argparse.Namespace) -> gt.TaskManager:
    """Wire the tasks (see the module docstring)."""
    manager = gt.TaskManager(name="http_service", stop_timeout=10.0)
    worker = Worker(queue_size=100, job_seconds=args.job_seconds)
    health = HealthServer(manager, host=args.host, port=args.health_port)
    http = Server(
        WSGIServer(
            (args.host, args.port),
            make_app(worker),
            log=LoggingLogAdapter(logging.getLogger("http_service.access"), logging.DEBUG),
        ),
        stop_timeout=5.0,
    )
    manager.add_task("health", health)
    manager.add_task("http", http)
    manager.add_task("worker", worker)

    def log_stats(ctx: gt.Context) -> None:
        log.info("stats: %s", " ".join(f"{key}={value}" for key, value in worker.stats.items()))

    manager.add_execute_task("stats", RepeatTimer(args.stats_interval, log_stats))

    started = 0
    expected = 0

    def announce_ready(event: gt.ManagerEvent) -> None:
        nonlocal started, expected
        if event.kind == "executing":
            expected = len(manager.status())
            say("http_service", f"app listening on http://{http.address[0]}:{http.address[1]}")
            say("http_service", f"health listening on http://{health.address[0]}:{health.address[1]}")
        elif event.kind == "started":
            started += 1
            if started == expected:
                say(
                    "http_service",
                    f"ready: app=http://{http.address[0]}:{http.address[1]}"
                    f" health=http://{health.address[0]}:{health.address[1]}",
                )

    manager.subscribe(announce_ready)
    return manager


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, build the manager and run it; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="app port, 0 for a free one (default 8080)")
    parser.add_argument("--health-port", type=int, default=8081, help="probe port, 0 for a free one (default 8081)")
    parser.add_argument("--stats-interval", type=float, default=5.0, help="seconds between stats lines (default 5)")
    parser.add_argument("--job-seconds", type=float, default=0.2, help="how long one job takes (default 0.2)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return gt.run(build(args))


if __name__ == "__main__":
    sys.exit(main())
