"""Small helpers shared by the tests of SPEC §9-§10 (handles, runtime tasks, stop order).

They only drive the public API: run a manager in a background greenlet, call a function
from a real OS thread while the hub keeps running, and a few scripted stages (a gate,
a task that drains after cancellation, one that refuses to die).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import Event
from greenlet import GreenletExit

import greentask as gt
from greentask.testing import settle

#: Real seconds any wait in these tests may take before the test fails instead of hanging.
LIMIT = 5.0


def start(manager: gt.TaskManager, ctx: gt.Context | None = None) -> gevent.Greenlet[..., Any]:
    """Run ``manager.run(ctx)`` in a greenlet and let it get as far as it can."""
    runner: gevent.Greenlet[..., Any] = gevent.spawn(manager.run, ctx)
    settle()
    return runner


def finish(runner: gevent.Greenlet[..., Any], timeout: float = LIMIT) -> list[gt.NamedError]:
    """The errors ``run`` returned; fails the test if it has not returned within ``timeout`` real seconds."""
    with gevent.Timeout(timeout):
        return runner.get()  # type: ignore[no-any-return]


def wait_thread(thread: threading.Thread, timeout: float = LIMIT) -> None:
    """Keep the hub running (the thread may need it) until ``thread`` is done; bounded."""
    with gevent.Timeout(timeout):
        while thread.is_alive():
            gevent.idle()
    thread.join()


def call_in_thread(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """Call ``fn(*args)`` in a real OS thread; ``("returned", value)`` or ``("raised", exc)``."""
    outcome: list[tuple[str, Any]] = []

    def target() -> None:
        try:
            outcome.append(("returned", fn(*args)))
        except BaseException as exc:
            outcome.append(("raised", exc))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    wait_thread(thread)
    return outcome[0]


def states(manager: gt.TaskManager) -> dict[str, gt.TaskState]:
    """``name -> state`` for every task in ``manager.status()`` (names are unique in these tests)."""
    return {status.name: status.state for status in manager.status()}


def ignore_cancellation(ctx: gt.Context) -> None:
    """A stage that never looks at its ctx: only a kill stops it."""
    Event().wait()


class Gate:
    """A stage that records its call (ctx, greenlet) and blocks until `release` (ignores its ctx)."""

    def __init__(self) -> None:
        self.entered = Event()
        self._open = Event()
        self.contexts: list[gt.Context] = []
        self.greenlets: list[Any] = []
        self.returned = 0

    def __call__(self, ctx: gt.Context) -> None:
        self.contexts.append(ctx)
        self.greenlets.append(gevent.getcurrent())
        self.entered.set()
        self._open.wait()
        self.returned += 1

    def release(self) -> None:
        self._open.set()


class Draining:
    """An execute that waits for its ctx to be cancelled, notes it, then drains until `release`.

    ``order`` (shared between tasks) gets the name appended at the moment the task saw
    its cancellation; ``cancelled_at`` is the context-clock time of that moment. With
    ``then`` set, the drain ends by calling it (to raise, say) instead of returning.
    """

    def __init__(self, name: str, order: list[str] | None = None, then: Callable[[], object] | None = None) -> None:
        self.name = name
        self.order = order
        self.then = then
        self.ctx: gt.Context | None = None
        self.cancelled_at: float | None = None
        self.returned = False
        self._open = Event()

    def __call__(self, ctx: gt.Context) -> None:
        self.ctx = ctx
        ctx.wait()
        self.cancelled_at = ctx.clock.now()
        if self.order is not None:
            self.order.append(self.name)
        self._open.wait()
        self.returned = True
        if self.then is not None:
            self.then()

    def release(self) -> None:
        self._open.set()


class Unkillable:
    """A stage that ignores its ctx and swallows GreenletExit until released: it refuses to die."""

    def __init__(self) -> None:
        self._release = Event()
        self.greenlet: Any = None
        self.kills = 0

    def __call__(self, ctx: gt.Context) -> None:
        self.greenlet = gevent.getcurrent()
        while not self._release.is_set():
            try:
                self._release.wait()
            except GreenletExit:
                self.kills += 1

    def finish(self) -> None:
        """Let it end (it may outlive ``run``: abandoned); wait until its greenlet is dead."""
        self._release.set()
        if self.greenlet is not None:
            with gevent.Timeout(LIMIT):
                self.greenlet.join()
