"""The WSGI app and task managers that tests/test_gunicorn.py runs under the real gunicorn.

Everything it does that a test waits for is a line on stdout, ``gtapp: <pid> <what>``
(gunicorn's own log lines arrive on the same merged output), so the tests synchronize
on real events, never on sleeps.

Routes: ``/`` answers at once; ``/slow?S`` answers after S seconds (gevent sleep);
``/fail`` makes this worker's ``trouble`` task raise; ``/block`` blocks the hub with an
unpatched ``time.sleep`` (gunicorn's arbiter then aborts the worker). Each answer
names the worker's pid, the state of the ``db`` task and ``SERVER_SOFTWARE``.
"""

from __future__ import annotations

import os
import sys

import gevent
from gevent import monkey
from gevent.event import Event

import greentask as gt

#: The db task's state, as the app sees it: none -> ready -> closed.
STATE = {"db": "none"}

#: Set by ``/fail``: the ``trouble`` task then raises.
TROUBLE = Event()


def say(*words: object) -> None:
    # One write per line: two workers share the pipe, and a write this short is atomic.
    line = " ".join(["gtapp:", str(os.getpid()), *map(str, words)]) + "\n"
    sys.stdout.write(line)
    sys.stdout.flush()


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/slow":
        say("slow request started")
        gevent.sleep(float(environ.get("QUERY_STRING") or "1"))
        say("slow request done")
        what = "slow done"
    elif path == "/fail":
        TROUBLE.set()
        what = "trouble requested"
    elif path == "/block":
        say("blocking the hub")
        monkey.get_original("time", "sleep")(60)
        what = "unblocked"
    else:
        what = "hello"
    body = f"pid={os.getpid()} db={STATE['db']} {what} software={environ['SERVER_SOFTWARE']}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class Database:
    """A task whose lifecycle the tests observe."""

    def initialize(self, ctx: gt.Context) -> None:
        say("initialize db")
        ctx.sleep(0.2)  # a connection that takes a while: the worker must not serve meanwhile
        STATE["db"] = "ready"
        say("initialized db")

    def execute(self, ctx: gt.Context) -> None:
        ctx.wait()
        say("db stopping", repr(ctx.cause))

    def cleanup(self, ctx: gt.Context) -> None:
        STATE["db"] = "closed"
        say("cleanup db")


class UnreachableDatabase(Database):
    def initialize(self, ctx: gt.Context) -> None:
        say("initialize db")
        raise RuntimeError("db unreachable")


def trouble(ctx: gt.Context) -> None:
    gevent.wait([TROUBLE, ctx], count=1)
    if not ctx.cancelled:
        raise RuntimeError("trouble requested")


def stubborn(ctx: gt.Context) -> None:
    say("stubborn running")
    Event().wait()  # ignores cancellation: only a kill ends it


def _manager() -> gt.TaskManager:
    return gt.TaskManager(name="gtapp", stop_order=gt.StopOrder.REVERSE, stop_timeout=20, cleanup_timeout=5)


def manager() -> gt.TaskManager:
    """db, and a task that fails on request."""
    built = _manager()
    built.add_task("db", Database())
    built.add_execute_task("trouble", trouble)
    return built


def unreachable() -> gt.TaskManager:
    """A db that cannot initialize."""
    built = _manager()
    built.add_task("db", UnreachableDatabase())
    return built


def with_stubborn() -> gt.TaskManager:
    """db, and a task that ignores cancellation."""
    built = manager()
    built.add_execute_task("stubborn", stubborn)
    return built


def factory_raises() -> gt.TaskManager:
    raise ValueError("no configuration")
