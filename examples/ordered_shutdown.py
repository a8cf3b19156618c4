"""Ordered shutdown: an HTTP server, a queue worker and a database, stopped in reverse.

Run it with ``python examples/ordered_shutdown.py`` (``--port 0`` picks a free port)
and stop it with Ctrl-C or SIGTERM. Try::

    curl -X POST --data 'resize cat.png' http://127.0.0.1:8080/jobs

Tasks, in add order (each one uses the ones added before it):

- ``db``: a fake connection pool. ``initialize`` opens it, ``execute`` serves queries
  until its turn to stop comes, ``cleanup`` closes the connections.
- ``worker``: takes the jobs the HTTP handler queued (a gevent ``Queue``) and writes
  them to the database in batches, every ``--flush-interval`` seconds. When it is
  stopped it drains the queue: every queued job is written, with the database.
- ``http``: a WSGI app under `greentask.tasks.Server` on ``--port``: ``POST /jobs``
  queues a job (202). When it is stopped it stops accepting connections and lets the
  requests in flight finish; their jobs are queued too.

The manager is ``TaskManager(stop_order=StopOrder.REVERSE, stop_timeout=...)``:
on SIGTERM it stops the tasks one at a time in reverse add order, each only once the
one after it has returned. So the server drains while the worker still runs, the
worker drains while the database still answers, and only then does the database
stop. Under the default ``StopOrder.TOGETHER`` all three would be cancelled at once,
and the worker's last writes would race the database's shutdown. Each task prints
what it does (``[http] draining``, ``[http] stopped``, ``[worker] draining 3 jobs``,
``[worker] stopped``, ``[db] closed``), so the order shows.

It monkey-patches first, so the server's sockets cooperate with gevent.
`greentask.run` handles the signals (a second one forces the stop) and gives the
exit code.
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

import gevent  # noqa: E402
from gevent.pywsgi import LoggingLogAdapter, WSGIServer  # noqa: E402
from gevent.queue import Empty, Full, Queue  # noqa: E402

import greentask as gt  # noqa: E402
from greentask.tasks import Server  # noqa: E402

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def say(who: str, text: str) -> None:
    print(f"[{who}] {text}", flush=True)


class Database:
    """A fake connection pool: queries borrow one of ``size`` connections for a moment."""

    def __init__(self, size: int, query_seconds: float) -> None:
        self.size = size
        self.query_seconds = query_seconds
        self.connections: Queue[int] = Queue()
        self.serving = False
        self.queries = 0

    def initialize(self, ctx: gt.Context) -> None:
        for conn in range(1, self.size + 1):
            self.connections.put(conn)
        self.serving = True
        say("db", f"opened {self.size} connections")

    def execute(self, ctx: gt.Context) -> None:
        ctx.wait()  # queries are served from other greenlets until this task's turn to stop
        self.serving = False
        say("db", f"stopped serving ({self.queries} queries answered)")

    def cleanup(self, ctx: gt.Context) -> None:
        self.serving = False
        closed = 0
        while True:
            try:
                self.connections.get_nowait()
            except Empty:
                break
            closed += 1
        say("db", f"closed ({closed} connections)")

    def query(self, sql: str) -> int:
        """Run ``sql`` on a pooled connection; return the connection's number."""
        if not self.serving:
            raise RuntimeError(f"database is not serving; lost query {sql!r}")
        conn = self.connections.get()
        try:
            gevent.sleep(self.query_seconds)  # the round trip
            self.queries += 1
            return conn
        finally:
            self.connections.put(conn)


class Worker:
    """Writes queued jobs to the database in batches; on shutdown, drains the queue."""

    def __init__(self, db: Database, flush_interval: float, queue_size: int) -> None:
        self.db = db
        self.flush_interval = flush_interval
        self.queue: Queue[tuple[int, str]] = Queue(queue_size)
        self.ids = itertools.count(1)
        self.accepting = False

    def submit(self, text: str) -> int | None:
        """Queue a job; return its id, or None when the queue is full or closed."""
        if not self.accepting:
            return None
        job_id = next(self.ids)
        try:
            self.queue.put_nowait((job_id, text))
        except Full:
            return None
        return job_id

    def initialize(self, ctx: gt.Context) -> None:
        self.accepting = True

    def take_all(self) -> list[tuple[int, str]]:
        jobs = []
        while True:
            try:
                jobs.append(self.queue.get_nowait())
            except Empty:
                return jobs

    def write(self, jobs: list[tuple[int, str]]) -> None:
        for job_id, text in jobs:
            conn = self.db.query(f"INSERT INTO jobs VALUES ({job_id}, {text!r})")
            say("worker", f"saved job {job_id} {text!r} (db connection {conn})")

    def execute(self, ctx: gt.Context) -> None:
        while ctx.sleep(self.flush_interval):  # False once this task is stopped
            jobs = self.take_all()
            if jobs:
                say("worker", f"flushing {len(jobs)} jobs")
                self.write(jobs)
        self.accepting = False
        jobs = self.take_all()
        say("worker", f"draining {len(jobs)} jobs")
        self.write(jobs)
        say("worker", "stopped")

    def cleanup(self, ctx: gt.Context) -> None:
        self.accepting = False


class Http:
    """`greentask.tasks.Server` running the app, saying when it drains and stops."""

    def __init__(self, server: WSGIServer, app: App) -> None:
        self.server = Server(server)
        self.app = app
        self.draining = False

    def initialize(self, ctx: gt.Context) -> None:
        self.server.initialize(ctx)  # binds the socket: a busy port fails here
        host, port = self.server.address
        say("http", f"listening on http://{host}:{port}")

    def announce_draining(self) -> None:
        if not self.draining:
            self.draining = True
            n = self.app.in_flight
            say("http", f"draining: stopped accepting, {n} request{'' if n == 1 else 's'} in flight")

    def execute(self, ctx: gt.Context) -> None:
        unregister = ctx.on_cancel(self.announce_draining)
        try:
            self.server.execute(ctx)  # serves until cancelled, then waits for the requests in flight
        finally:
            unregister()
        self.announce_draining()  # in case the server returned before the callback ran
        say("http", "stopped")

    def cleanup(self, ctx: gt.Context) -> None:
        self.server.cleanup(ctx)
        say("http", "closed the listening socket")


class App:
    """The WSGI application: ``POST /jobs`` queues the request body as a job."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.in_flight = 0

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        self.in_flight += 1
        try:
            return self.handle(environ, start_response)
        finally:
            self.in_flight -= 1

    def handle(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        def reply(status: str, body: object) -> list[bytes]:
            data = (json.dumps(body) + "\n").encode()
            start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
            return [data]

        method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
        if path == "/jobs" and method == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            text = environ["wsgi.input"].read(length).decode(errors="replace") or "job"
            job_id = self.worker.submit(text)
            if job_id is None:
                return reply("503 Service Unavailable", {"error": "queue full or closed"})
            say("http", f"queued job {job_id} {text!r}")
            return reply("202 Accepted", {"job": job_id})
        return reply("404 Not Found", {"error": f"no route for {method} {path}"})


def build(args: argparse.Namespace) -> gt.TaskManager:
    """Wire the tasks (see the module docstring)."""
    manager = gt.TaskManager(name="ordered_shutdown", stop_order=gt.StopOrder.REVERSE, stop_timeout=args.stop_timeout)
    db = Database(size=args.db_connections, query_seconds=0.01)
    worker = Worker(db, flush_interval=args.flush_interval, queue_size=1000)
    app = App(worker)
    access_log = LoggingLogAdapter(logging.getLogger("ordered_shutdown.access"), logging.DEBUG)
    http = Http(WSGIServer((args.host, args.port), app, log=access_log), app)
    manager.add_task("db", db)
    manager.add_task("worker", worker)
    manager.add_task("http", http)

    started = 0

    def report(event: gt.ManagerEvent) -> None:
        nonlocal started
        if event.kind == "started":
            started += 1
            if started == 3:
                host, port = http.server.address
                say("ordered_shutdown", f"ready: http://{host}:{port} (Ctrl-C or SIGTERM to stop)")
        elif event.kind == "cancelled":
            say("ordered_shutdown", "stopping in reverse order: http, then worker, then db")

    manager.subscribe(report)
    return manager


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, build the manager and run it; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port, 0 for a free one (default 8080)")
    parser.add_argument(
        "--flush-interval", type=float, default=2.0, help="seconds between the worker's batches (default 2)"
    )
    parser.add_argument("--db-connections", type=int, default=2, help="size of the connection pool (default 2)")
    parser.add_argument("--stop-timeout", type=float, default=10.0, help="seconds each task gets to stop (default 10)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    code = gt.run(build(args))
    say("ordered_shutdown", f"exiting with code {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
