"""A broker, a publisher and two slow subscribers, run by one TaskManager.

Run it with ``python examples/pubsub.py`` and stop it with Ctrl-C or SIGTERM, or let
it stop by itself with ``--duration 5`` (what ``make demo`` does).

- The **broker** is a Task: ``initialize`` opens it, ``execute`` accepts messages until
  cancellation and then closes, ``cleanup`` prints a summary.
- The **publisher** sends a numbered message every ``--interval`` seconds until
  cancelled. Publishing is a synchronous fan-out: each subscriber has a bounded queue
  (``--queue-size``), and a message for a full queue is dropped (and said so).
- Each **subscriber** is a Task that subscribes in ``initialize`` (so the broker,
  added first, is already open) and handles one message at a time, slowly. When
  shutdown begins, the message in hand is finished, then every message still queued
  is *drained* (handled) before ``execute`` returns: nothing accepted is lost.
- With ``--duration S`` a small timer task calls ``manager.stop()`` after S seconds:
  the same graceful path as a signal, no STOP_GROUP needed.

`greentask.run` installs the SIGINT/SIGTERM handlers (a second signal forces the
stop) and gives the exit code. There is no I/O but printing here, so this example
does not monkey-patch.

Every line it prints says what happened: ``sent #n``, ``received #n``, ``dropped
#n``, ``draining k queued``, ``drained #n``, ``done``.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys

from gevent.queue import Empty, Full, Queue

import greentask as gt


def say(who: str, text: str) -> None:
    print(f"[{who}] {text}", flush=True)


class Broker:
    """Fans each published message out to every subscriber's bounded queue."""

    def __init__(self) -> None:
        self.queues: dict[str, Queue[int]] = {}
        self.closed = False
        self.published = 0
        self.dropped: dict[str, int] = {}

    def subscribe(self, name: str, maxsize: int) -> Queue[int]:
        queue: Queue[int] = Queue(maxsize)
        self.queues[name] = queue
        self.dropped[name] = 0
        return queue

    def publish(self, message: int) -> None:
        if self.closed:
            say("broker", f"rejected #{message}: closed")
            return
        self.published += 1
        for name, queue in self.queues.items():
            try:
                queue.put_nowait(message)
            except Full:
                self.dropped[name] += 1
                say("broker", f"dropped #{message} for {name} (queue full)")

    def initialize(self, ctx: gt.Context) -> None:
        say("broker", "open")

    def execute(self, ctx: gt.Context) -> None:
        ctx.wait()
        self.closed = True
        say("broker", "closed: no more messages accepted")

    def cleanup(self, ctx: gt.Context) -> None:
        drops = ", ".join(f"{name}: {count}" for name, count in self.dropped.items())
        say("broker", f"summary: published {self.published}, dropped {drops}")


class Publisher:
    """Publishes a numbered message every ``interval`` seconds until cancelled."""

    def __init__(self, broker: Broker, interval: float) -> None:
        self.broker = broker
        self.interval = interval

    def initialize(self, ctx: gt.Context) -> None:
        pass

    def execute(self, ctx: gt.Context) -> None:
        for number in itertools.count(1):
            if not ctx.sleep(self.interval):  # False: cancelled while waiting
                break
            say("publisher", f"sent #{number}")
            self.broker.publish(number)
        say("publisher", "stopped")

    def cleanup(self, ctx: gt.Context) -> None:
        pass


class Subscriber:
    """Handles messages slowly; on shutdown, drains its queue before returning."""

    def __init__(self, name: str, broker: Broker, delay: float, queue_size: int) -> None:
        self.name = name
        self.broker = broker
        self.delay = delay
        self.queue_size = queue_size
        self.queue: Queue[int] | None = None
        self.received = 0
        self.drained = 0

    def initialize(self, ctx: gt.Context) -> None:
        self.queue = self.broker.subscribe(self.name, self.queue_size)
        say(self.name, f"subscribed (queue size {self.queue_size}, {self.delay}s per message)")

    def handle(self, work: gt.Context, message: int) -> None:
        work.sleep(self.delay)  # the slow part; `work` is never cancelled

    def execute(self, ctx: gt.Context) -> None:
        queue = self.queue
        assert queue is not None
        work = gt.without_cancel(ctx)  # a message in hand is always finished
        while not ctx.cancelled:
            message = None
            with ctx.cancellable():  # cancellation interrupts the wait, never a dequeued message
                message = queue.get()
            if message is None:
                break
            self.received += 1
            say(self.name, f"received #{message}")
            self.handle(work, message)
        say(self.name, f"shutting down: draining {queue.qsize()} queued")
        while True:
            try:
                message = queue.get_nowait()
            except Empty:
                break
            self.handle(work, message)
            self.drained += 1
            say(self.name, f"drained #{message}")
        say(self.name, f"done: received {self.received}, drained {self.drained}")

    def cleanup(self, ctx: gt.Context) -> None:
        pass


def build(args: argparse.Namespace) -> gt.TaskManager:
    """Wire the tasks: broker first, so it is open before anyone subscribes or sends."""
    manager = gt.TaskManager(name="pubsub", stop_timeout=30.0)
    broker = Broker()
    manager.add_task("broker", broker)
    manager.add_task("sub-a", Subscriber("sub-a", broker, 0.3, args.queue_size))
    manager.add_task("sub-b", Subscriber("sub-b", broker, 0.5, args.queue_size))
    manager.add_task("publisher", Publisher(broker, args.interval))

    if args.duration is not None:
        duration: float = args.duration

        def stop_after(ctx: gt.Context) -> None:
            if ctx.sleep(duration):
                say("pubsub", f"{duration}s are up: stopping")
                manager.stop()

        manager.add_execute_task("timer", stop_after)

    started = 0
    expected = 0

    def announce_ready(event: gt.ManagerEvent) -> None:
        nonlocal started, expected
        if event.kind == "executing":
            expected = len(manager.status())
        elif event.kind == "started":
            started += 1
            if started == expected:
                say("pubsub", f"ready: {expected} tasks running (Ctrl-C or SIGTERM to stop)")

    manager.subscribe(announce_ready)
    return manager


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, build the manager and run it; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=None, help="stop by itself after S seconds")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between messages (default 0.2)")
    parser.add_argument("--queue-size", type=int, default=3, help="each subscriber's queue size (default 3)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return gt.run(build(args))


if __name__ == "__main__":
    sys.exit(main())
