"""OS signal watchers shared by `greentask.run` and `greentask.tasks.Interruptible`.

gevent's ``signal_handler`` installs libev's handler at the OS level without telling
Python's ``signal`` module, and cancelling the last watcher of a signal leaves
``SIG_DFL`` there while ``signal.getsignal()`` still reports the old handler (SPEC §8).
So the handler that was installed before has to be put back with ``signal.signal`` —
but only once the *last* greentask watcher of that signal is gone: putting it back
while another watcher (a second `Interruptible` on SIGHUP, or `run`'s SIGTERM while an
``Interruptible([SIGTERM])`` ends) is still active would take the signal away from it,
and the next signal would kill the process. Hence one reference count per signal.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import Any

import gevent

__all__ = ["SignalWatch", "watch_signal"]

logger = logging.getLogger("greentask")

# signal number -> [active greentask watchers, the handler to put back after the last]
_active: dict[int, list[Any]] = {}


class SignalWatch:
    """One active watcher; `cancel` stops it (idempotent)."""

    __slots__ = ("_signum", "_watcher")

    def __init__(self, signum: int, watcher: Any) -> None:
        self._signum = signum
        self._watcher = watcher

    def cancel(self) -> None:
        """Stop watching; the last watcher of a signal restores its previous handler."""
        watcher, self._watcher = self._watcher, None
        if watcher is None:
            return
        watcher.cancel()
        entry = _active.get(self._signum)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] > 0:
            return
        del _active[self._signum]
        previous = entry[1]
        if previous is None:  # installed outside Python: nothing we can put back
            logger.debug("greentask: the previous handler of signal %s was not installed from Python", self._signum)
            return
        try:
            signal.signal(self._signum, previous)
        except (OSError, ValueError, TypeError):
            logger.exception("greentask: could not restore the previous handler of signal %s", self._signum)


def watch_signal(signum: int, callback: Callable[..., Any], *args: Any) -> SignalWatch:
    """Call ``callback(*args)`` in a new greenlet whenever ``signum`` arrives."""
    entry = _active.get(signum)
    previous = signal.getsignal(signum) if entry is None else None
    watcher = gevent.signal_handler(signum, callback, *args)
    if entry is None:
        _active[signum] = [1, previous]
    else:
        entry[0] += 1
    return SignalWatch(signum, watcher)
