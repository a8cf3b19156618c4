"""settle(): let every runnable greenlet run until none is left runnable.

It repeatedly parks the calling greenlet in ``gevent.idle()`` (so loop callbacks,
timers, I/O and greenlets parked in ``gevent.idle()`` all get their turn) while a
``greenlet.settrace`` hook counts switches into greenlets other than the hub. A turn
in which the only such switch was the one back into the caller is a quiet turn; two
quiet turns in a row mean the process is quiet. One is not enough: libev runs the
idle watchers of greenlets that each park in ``gevent.idle()`` in an order that
leaves every other turn of the caller empty while another greenlet still has work
(measured; two empty turns in a row never happened with such greenlets runnable).
The hook is installed only while someone is watching (reference counted, so nested
watchers do not undo each other).

A greenlet in a ``gevent.sleep(0)`` loop keeps loop callbacks pending forever, so idle
watchers never run (SPEC §8). Each park is therefore also bounded by a short real
timer (timers still run, late); about a second of turns that only that timer ended means
the process never goes idle, and `settle` gives up, with a warning on the
``greentask`` logger.

Greenlets flagged with a true ``_greentask_internal`` attribute (the `FakeClock`
autojump helper) are not counted: a helper that idles in a loop must not keep the
process looking busy.

The hook and the count serve one thread's hub (greenlet trace hooks are per thread):
use `settle`, `FakeClock` and the leak check from one thread at a time.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import greenlet
from gevent import getcurrent
from gevent.hub import Waiter, get_hub

__all__ = ["settle"]

logger = logging.getLogger("greentask")

#: How many quiet turns in a row mean the process is quiet (see the module docstring).
QUIET_TURNS = 2
#: Real seconds after which a park ends even though the loop never went idle.
STARVED_AFTER = 0.01
#: How many starved turns in a row make `settle` give up (about a second: a burst of
#: real work, such as 10,000 greenlets starting, must not be mistaken for a busy loop).
STARVED_TURNS = 100


def is_internal(glet: object) -> bool:
    """Whether ``glet`` is a greentask helper greenlet (ignored by settle and the leak check)."""
    return bool(getattr(glet, "_greentask_internal", False))


class _Activity:
    """A process-wide count of switches into non-hub, non-internal greenlets, while watched.

    It also tells ``first_run_observers`` (the leak check) about every greenlet that
    starts running: the trace function is then the only Python frame on the new
    greenlet's stack.
    """

    def __init__(self) -> None:
        self.switches = 0
        self.first_run_observers: list[Callable[[Any], object]] = []
        self._watchers = 0
        self._installed = False
        self._previous: Any = None
        self._hub: Any = None

    def __enter__(self) -> _Activity:
        if self._watchers == 0:
            self._hub = get_hub()
            current = greenlet.gettrace()
            # A foreign hook on top of ours (installed while we watched) chains to ours:
            # leave it. Otherwise (no hook, or ours was removed) install ours.
            if current != self._trace and (current is None or not self._installed):
                self._previous = current
                greenlet.settrace(self._trace)
                self._installed = True
        self._watchers += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._watchers -= 1
        # Uninstall only if nobody installed a hook on top of ours meanwhile (a hook
        # that chains to ours would otherwise lose it); ours then just keeps chaining.
        if self._watchers == 0 and greenlet.gettrace() == self._trace:
            greenlet.settrace(self._previous)
            self._previous = None
            self._installed = False

    def _trace(self, event: str, args: Any) -> None:
        if event in ("switch", "throw"):
            target = args[1]
            if target is not self._hub and not is_internal(target):
                self.switches += 1
                if self.first_run_observers and sys._getframe().f_back is None:
                    for observer in self.first_run_observers:
                        observer(target)
        previous = self._previous
        if previous is not None:
            previous(event, args)


ACTIVITY = _Activity()


def park_and_count(wait: Callable[[], object]) -> int:
    """Run ``wait()`` (which parks the caller) and return how many *other* greenlets ran."""
    own = 0 if is_internal(getcurrent()) else 1  # the switch back into the caller
    with ACTIVITY:
        before = ACTIVITY.switches
        wait()
        return ACTIVITY.switches - before - own


def _park_idle() -> bool:
    """Park until the loop is idle, or `STARVED_AFTER` real seconds; True for the latter."""
    loop = get_hub().loop
    idle = loop.idle()
    timer = loop.timer(STARVED_AFTER)
    waiter: Any = Waiter()
    idle.start(waiter.switch, False)
    timer.start(waiter.switch, True, update=True)  # measured from now, not the loop's cached time
    try:
        return bool(waiter.get())
    finally:
        idle.close()
        timer.close()


def settle(max_rounds: int = 10_000) -> None:
    """Run every runnable greenlet until none is left runnable.

    Returns once two turns of the event loop in a row ran no other greenlet: every
    greenlet is then blocked (on an event, a lock, I/O, a real-time sleep or a
    `FakeClock` timer). Loop callbacks, ready I/O, expired real timers and greenlets parked in
    ``gevent.idle()`` all count as runnable, so they run before `settle` returns.
    Gives up after ``max_rounds`` turns (a greenlet looping in ``gevent.idle()``
    forever), or when the loop has not gone idle for about a second (a greenlet
    in a ``gevent.sleep(0)`` loop, which never blocks; logged as a warning).

    Use it to let spawned greenlets reach their first blocking call, or to let the
    consequences of an action (a cancel, an event set) play out, without sleeping.

    Args:
        max_rounds: the most event-loop turns to run (a positive int).

    Raises:
        RuntimeError: when called from the hub (a loop callback): it must park the
            calling greenlet.
        TypeError: ``max_rounds`` is not an int.
        ValueError: ``max_rounds`` is not positive.

    Example::

        done = []
        gevent.spawn(done.append, 1)
        settle()
        assert done == [1]
    """
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, int):
        msg = f"max_rounds must be an int, got {max_rounds!r}"
        raise TypeError(msg)
    if max_rounds < 1:
        msg = f"max_rounds must be a positive int, got {max_rounds!r}"
        raise ValueError(msg)
    if getcurrent() is get_hub():
        msg = "settle() cannot be called from the hub; call it from a greenlet"
        raise RuntimeError(msg)
    quiet_turns = starved_turns = 0
    starved = [False]

    def park() -> None:
        starved[0] = _park_idle()

    with ACTIVITY:
        for _ in range(max_rounds):
            if park_and_count(park) > 0:
                quiet_turns = 0
                starved_turns = starved_turns + 1 if starved[0] else 0
                if starved_turns == STARVED_TURNS:
                    logger.warning("greentask: settle() gave up: a greenlet never blocks (a gevent.sleep(0) loop?)")
                    return
            else:
                quiet_turns += 1
                if quiet_turns == QUIET_TURNS:
                    return
