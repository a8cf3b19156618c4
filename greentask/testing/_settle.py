"""settle(): let every runnable greenlet run until none is left runnable.

It repeatedly parks the calling greenlet in ``gevent.idle()`` (so loop callbacks,
timers, I/O and greenlets parked in ``gevent.idle()`` all get their turn) while a
``greenlet.settrace`` hook counts switches into greenlets other than the hub. A turn
in which the only such switch was the one back into the caller means the process is
quiet. The hook is installed only while someone is watching (reference counted, so
nested watchers do not undo each other).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
import greenlet
from gevent import getcurrent
from gevent.hub import get_hub

__all__ = ["settle"]


class _Activity:
    """A process-wide count of switches into non-hub greenlets, while watched."""

    def __init__(self) -> None:
        self.switches = 0
        self._watchers = 0
        self._previous: Any = None
        self._hub: Any = None

    def __enter__(self) -> _Activity:
        if self._watchers == 0:
            self._hub = get_hub()
            self._previous = greenlet.gettrace()
            greenlet.settrace(self._trace)
        self._watchers += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._watchers -= 1
        if self._watchers == 0:
            greenlet.settrace(self._previous)
            self._previous = None

    def _trace(self, event: str, args: Any) -> None:
        if event in ("switch", "throw") and args[1] is not self._hub:
            self.switches += 1
        previous = self._previous
        if previous is not None:
            previous(event, args)


ACTIVITY = _Activity()


def park_and_count(wait: Callable[[], object]) -> int:
    """Run ``wait()`` (which parks the caller) and return how many *other* greenlets ran."""
    with ACTIVITY:
        before = ACTIVITY.switches
        wait()
        # The switch back into the caller is counted once.
        return ACTIVITY.switches - before - 1


def settle(max_rounds: int = 10_000) -> None:
    """Run every runnable greenlet until none is left runnable.

    Returns once a full turn of the event loop ran no other greenlet. Greenlets
    parked in ``gevent.idle()`` count as runnable. Gives up quietly after
    ``max_rounds`` turns (a greenlet that never blocks, e.g. a ``gevent.sleep(0)``
    loop, keeps the process busy forever).

    Raises:
        RuntimeError: when called from the hub (a loop callback).
    """
    if getcurrent() is get_hub():
        msg = "settle() cannot be called from the hub; call it from a greenlet"
        raise RuntimeError(msg)
    with ACTIVITY:
        for _ in range(max_rounds):
            if park_and_count(gevent.idle) <= 0:
                return
