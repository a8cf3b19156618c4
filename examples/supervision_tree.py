"""A supervision tree: a root manager with servers, and a nested pipeline with a flaky task.

Run it with ``python examples/supervision_tree.py`` (``--port 0 --health-port 0``
picks free ports). By default the enricher fails so often that it soon uses up its
restart budget and the whole program stops with exit code 1; with
``--fail-rate 0.005`` failures are rare, it runs until Ctrl-C or SIGTERM and exits 0.
``--seed N`` makes the failures reproducible. Try::

    curl http://127.0.0.1:8080/stats
    curl http://127.0.0.1:8081/status

The tree (each manager initializes its tasks in add order, cleans up in reverse)::

    tree                   root manager, run by greentask.run
    ├── health             tasks.HealthServer(tree): /livez, /readyz, /status of the whole tree
    ├── http               tasks.Server: GET /stats, the pipeline's counters as JSON
    └── pipeline           a nested TaskManager, added with tree.add_task("pipeline", pipeline)
        ├── consumer       takes enriched items from a queue and prints them
        └── enricher       makes an item every --interval seconds and "looks it up";
                           the lookup fails at random (--fail-rate, --seed)

The enricher is added with ``restart=gt.Restart(max_restarts=5, within=30,
backoff=tasks.Backoff(initial=0.05, maximum=0.5, jitter=0))``. Each failure is
logged by the pipeline manager with its traceback and the restart count (``ERROR
greentask: tree: task 'pipeline/enricher' failed in execute: ConnectionError(...); restart
2 of at most 5 within 30.0s in 0.1s``) and reaches the root's subscribers as a
``restarting`` event for ``pipeline/enricher``. Then the enricher is cleaned up, waits
for the backoff (0.05 s, 0.1 s, 0.2 s, 0.4 s, 0.5 s) and is initialized and executed
again, while the consumer and the servers go on (``/readyz`` says 503 while it waits).
The sixth failure within 30 s exceeds the budget: greentask records one
`RestartLimitExceeded`, the pipeline stops, and so does the root, which logs the
path-named reason (``tree: shutting down: task 'pipeline/enricher' failed in execute:
RestartLimitExceeded(...)``). `greentask.run` logs that error (the last failure as its
cause) and returns exit code 1.

With ``--fail-rate 0.005`` a failure is rare (about one in 200 items, a few per 30 s
at the default interval), within the budget: the enricher is restarted now and then,
and the program runs until it
gets SIGINT or SIGTERM, then stops cleanly with exit code 0 (``--seed 1073
--interval 0.05`` fails once, at item 2, then not before item 625).

It monkey-patches first, so the servers' sockets cooperate with gevent.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402 - after monkey-patching, on purpose
import itertools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from typing import Any  # noqa: E402

from gevent.pywsgi import LoggingLogAdapter, WSGIServer  # noqa: E402
from gevent.queue import Queue  # noqa: E402

import greentask as gt  # noqa: E402
from greentask.tasks import Backoff, HealthServer, Server  # noqa: E402

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def say(who: str, text: str) -> None:
    print(f"[{who}] {text}", flush=True)


class Enricher:
    """Makes numbered items and enriches them with a lookup that fails at random."""

    def __init__(self, items: Queue[tuple[int, int]], interval: float, fail_rate: float, seed: int) -> None:
        self.items = items
        self.interval = interval
        self.fail_rate = fail_rate
        self.rng = random.Random(seed)  # one generator for every run: the same seed, the same failures
        self.ids = itertools.count(1)
        self.runs = 0
        self.enriched = 0

    def initialize(self, ctx: gt.Context) -> None:
        self.runs += 1
        say("enricher", f"run {self.runs}: connected to the lookup service")

    def execute(self, ctx: gt.Context) -> None:
        while ctx.sleep(self.interval):
            item = next(self.ids)
            if self.rng.random() < self.fail_rate:
                raise ConnectionError(f"lookup of item {item} failed: connection reset")
            self.items.put((item, item * item))
            self.enriched += 1

    def cleanup(self, ctx: gt.Context) -> None:
        say("enricher", f"run {self.runs}: disconnected")


class Consumer:
    """Takes enriched items off the queue and prints them."""

    def __init__(self, items: Queue[tuple[int, int]]) -> None:
        self.items = items
        self.consumed = 0

    def initialize(self, ctx: gt.Context) -> None:
        say("consumer", "subscribed")

    def execute(self, ctx: gt.Context) -> None:
        while True:
            got = None
            with ctx.cancellable():  # a cancellation interrupts the wait for the next item
                got = self.items.get()
            if got is None:
                break
            self.consumed += 1
            say("consumer", f"item {got[0]}: {got[1]}")
        say("consumer", f"stopped after {self.consumed} items")

    def cleanup(self, ctx: gt.Context) -> None:
        say("consumer", "unsubscribed")


def make_app(
    enricher: Enricher, consumer: Consumer, handle: gt.TaskHandle
) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """The WSGI application: ``GET /stats``."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/stats" and environ["REQUEST_METHOD"] == "GET":
            status, body = (
                "200 OK",
                {
                    "enriched": enricher.enriched,
                    "consumed": consumer.consumed,
                    "enricher_state": handle.state.value,
                    "enricher_restarts": handle.restarts,
                },
            )
        else:
            status, body = "404 Not Found", {"error": "try GET /stats"}
        data = (json.dumps(body) + "\n").encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    return app


def build(args: argparse.Namespace) -> gt.TaskManager:
    """Wire the tree (see the module docstring)."""
    items: Queue[tuple[int, int]] = Queue()
    pipeline = gt.TaskManager(name="pipeline", stop_timeout=5.0)
    consumer = Consumer(items)
    enricher = Enricher(items, interval=args.interval, fail_rate=args.fail_rate, seed=args.seed)
    pipeline.add_task("consumer", consumer)
    handle = pipeline.add_task(
        "enricher",
        enricher,
        restart=gt.Restart(max_restarts=5, within=30, backoff=Backoff(initial=0.05, maximum=0.5, jitter=0)),
    )

    root = gt.TaskManager(name="tree", stop_timeout=5.0)
    health = HealthServer(root, host=args.host, port=args.health_port)
    access_log = LoggingLogAdapter(logging.getLogger("supervision_tree.access"), logging.DEBUG)
    http = Server(WSGIServer((args.host, args.port), make_app(enricher, consumer, handle), log=access_log))
    root.add_task("health", health)
    root.add_task("http", http)
    root.add_task("pipeline", pipeline)

    waiting = {"health", "http", "pipeline", "pipeline/consumer", "pipeline/enricher"}

    def report(event: gt.ManagerEvent) -> None:
        # The root's subscribers see the pipeline's events too, with path names.
        if event.kind == "started" and waiting:
            waiting.discard(event.task_name or "")
            if not waiting:
                say(
                    "tree",
                    f"ready: http=http://{http.address[0]}:{http.address[1]}"
                    f" health=http://{health.address[0]}:{health.address[1]}",
                )
        elif event.kind == "restarting" and event.task_name == "pipeline/enricher":
            say("tree", f"{event.task_name} is restarting (restart {handle.restarts}) after {event.error!r}")
        elif event.kind == "cancelled":
            reason = root.stop_reason
            assert reason is not None
            if reason.kind == "policy":  # task_name is the path of the task that failed
                say("tree", f"stopping because task {reason.task_name!r} failed: {reason.error!r}")
            elif reason.kind == "stop":  # gt.run calls stop() on the first signal
                say("tree", f"stopping: {reason.error!r}")
            else:
                say("tree", "stopping: the run context was cancelled")

    root.subscribe(report)
    return root


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, build the tree and run it; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="app port, 0 for a free one (default 8080)")
    parser.add_argument("--health-port", type=int, default=8081, help="probe port, 0 for a free one (default 8081)")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between items (default 0.1)")
    parser.add_argument(
        "--fail-rate", type=float, default=0.25, help="chance that a lookup fails, 0 to 1 (default 0.25)"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for the failures (default: random)")
    args = parser.parse_args(argv)
    if not 0 <= args.fail_rate <= 1:
        parser.error(f"--fail-rate must be between 0 and 1, got {args.fail_rate}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    code = gt.run(build(args))
    say("tree", f"exiting with code {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
