"""greentask under gunicorn: a WSGI app with a cache refresher and a job queue in every worker.

Run it from the repository's root (``pip install 'greentask[gunicorn]'`` first)::

    gunicorn -k greentask.gunicorn.Worker -w 2 -b 127.0.0.1:8000 \\
        --pythonpath examples -e GREENTASK_MANAGER=gunicorn_app:manager gunicorn_app:app

then try::

    curl http://127.0.0.1:8000/
    curl -X POST --data 'resize cat.png' http://127.0.0.1:8000/jobs
    curl http://127.0.0.1:8000/stats

and stop it with Ctrl-C (quick) or SIGTERM (graceful) to gunicorn's arbiter.

gunicorn forks the workers; in each one, `greentask.gunicorn.Worker` calls `manager()`
(named by ``GREENTASK_MANAGER``) after monkey-patching, so every worker gets its own
tasks, in add order:

- ``jobs``: a queue worker. ``initialize`` opens the queue, ``execute`` takes jobs
  one at a time; on shutdown it stops accepting jobs and drains the queue, so every
  accepted job is done; ``cleanup`` reports.
- ``rates``: a `greentask.tasks.RepeatTimer` that refreshes a cache every
  ``GUNICORN_APP_REFRESH`` seconds (default 30; a stand-in for a call to another
  service). The first refresh runs at start.
- then, added by the worker: the gunicorn listener (``gunicorn:127.0.0.1:8000``) and
  the heartbeat.

The manager stops in reverse order (``StopOrder.REVERSE``): the cache refresher
first, then the HTTP server drains its requests in flight, then the queue is
drained, so a job accepted by the last request is still done. Size gunicorn's
``--graceful-timeout`` above ``stop_timeout`` (for each stage) plus
``cleanup_timeout``. Work that must happen once for the whole service (a cron-like
job, a migration) does not belong here: it would run in every worker.

The app only reads the worker's state (`Service`); it answers 503 until the tasks
have initialized, which the worker never lets happen (it serves only once they have).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from gevent.queue import Queue

import greentask as gt
from greentask.tasks import RepeatTimer

# A child of gunicorn's error log: these lines appear in gunicorn's log, in its format.
log = logging.getLogger("gunicorn.error.gunicorn_app")

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class Service:
    """This worker's state: the cache and the job queue (one per worker process)."""

    def __init__(self, refresh: float) -> None:
        self.refresh = refresh
        self.rates: dict[str, float] = {}
        self.refreshed = 0
        self.queue: Queue[str] = Queue(maxsize=100)
        self.accepting = False
        self.done = 0

    # -- the "rates" task: a cache refreshed on a timer ------------------------------------

    def refresh_rates(self, ctx: gt.Context) -> None:
        # A real service would fetch these; any exception is logged and the timer goes on.
        self.rates = {"EUR": 1.0, "USD": 1.08 + (time.time() % 10) / 1000}
        self.refreshed += 1
        log.info("rates refreshed (%d)", self.refreshed)

    # -- the "jobs" task: a queue worker that drains on shutdown -----------------------------

    def initialize(self, ctx: gt.Context) -> None:
        self.accepting = True
        log.info("job queue open")

    def execute(self, ctx: gt.Context) -> None:
        while not ctx.cancelled:
            job = None
            with ctx.cancellable():  # cancellation interrupts the wait for a job
                job = self.queue.get()
            if job is not None:
                self._do(job)
        self.accepting = False
        left = self.queue.qsize()
        log.info("job queue closed; draining %d job(s)", left)
        while not self.queue.empty():
            self._do(self.queue.get_nowait())

    def cleanup(self, ctx: gt.Context) -> None:
        log.info("jobs done in this worker: %d", self.done)

    def _do(self, job: str) -> None:
        self.done += 1
        log.info("job done: %s", job)

    def submit(self, job: str) -> bool:
        if not self.accepting or self.queue.full():
            return False
        self.queue.put_nowait(job)
        return True


#: Set in each worker by `manager()`.
service: Service | None = None


def manager() -> gt.TaskManager:
    """The factory ``GREENTASK_MANAGER`` names: a fresh manager (and `Service`) per worker."""
    global service
    service = Service(refresh=float(os.environ.get("GUNICORN_APP_REFRESH", "30")))
    built = gt.TaskManager(
        name="gunicorn_app",
        stop_order=gt.StopOrder.REVERSE,
        initialize_timeout=10,
        stop_timeout=10,
        cleanup_timeout=5,
    )
    built.add_task("jobs", service)
    built.add_execute_task("rates", RepeatTimer(service.refresh, service.refresh_rates))
    return built


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """``GET /``, ``GET /stats``, ``POST /jobs``."""
    method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
    if service is None:
        return _answer(start_response, "503 Service Unavailable", {"error": "not ready"})
    if path == "/jobs" and method == "POST":
        size = int(environ.get("CONTENT_LENGTH") or 0)
        job = environ["wsgi.input"].read(size).decode(errors="replace") or "job"
        if service.submit(job):
            return _answer(start_response, "202 Accepted", {"queued": job})
        return _answer(start_response, "503 Service Unavailable", {"error": "not accepting jobs"})
    if path == "/stats":
        stats = {
            "pid": os.getpid(),
            "rates": service.rates,
            "refreshed": service.refreshed,
            "queued": service.queue.qsize(),
            "done": service.done,
        }
        return _answer(start_response, "200 OK", stats)
    if path == "/":
        return _answer(start_response, "200 OK", {"hello": "from worker", "pid": os.getpid()})
    return _answer(start_response, "404 Not Found", {"error": f"no route {method} {path}"})


def _answer(start_response: StartResponse, status: str, payload: object) -> list[bytes]:
    body = json.dumps(payload).encode() + b"\n"
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
