"""`Restart`: the restart policy of one task (SPEC §11), Erlang/OTP's intensity with a backoff.

A task added with ``restart=gt.Restart(...)`` is restarted by its manager when it fails
(``on="failure"``, OTP's *transient*) or whenever it ends before cancellation
(``on="always"``, OTP's *permanent*), unless that restart would make more than
``max_restarts`` restarts within the last ``within`` seconds (context clock): then it
gives up, one `RestartLimitExceeded` is recorded and the task's own policy applies.

`_Intensity` is the sliding window itself: a deque of restart times, pruned as it is
consulted, so it never holds more than ``max_restarts + 1`` entries.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

from .context import _check_seconds

if TYPE_CHECKING:
    from .tasks._backoff import Backoff

__all__ = ["Restart"]

_ON = ("failure", "always")


class Restart:
    """When and how often a task is restarted by its manager.

    Args:
        on: ``"failure"`` restarts after the task raised in ``initialize`` or
            ``execute``, or (a STRICT task) returned before being cancelled;
            ``"always"`` also after any clean return before cancellation.
        max_restarts: the most restarts allowed within ``within`` seconds; an int >= 0
            (0: never restart, give up at the first failure).
        within: the window, in seconds of the context clock; > 0. A run that lasts
            this long also resets ``backoff``.
        backoff: a `greentask.tasks.Backoff` for the wait before each restart; None
            restarts at once (still yielding to the hub).

    Raises:
        ValueError: ``on`` is not "failure"/"always", ``max_restarts`` < 0, ``within``
            <= 0 or not finite.
        TypeError: ``max_restarts`` is not an int, ``within`` not a number, ``backoff``
            not a ``Backoff`` (or None).

    Example::

        manager.add_task("db", Database(), restart=gt.Restart(max_restarts=5, within=30,
                                                              backoff=gt.tasks.Backoff(0.5, 10)))
    """

    __slots__ = ("backoff", "max_restarts", "on", "within")

    def __init__(
        self,
        on: str = "failure",
        max_restarts: int = 3,
        within: float = 60.0,
        backoff: Backoff | None = None,
    ) -> None:
        from .tasks._backoff import Backoff  # here: greentask.tasks imports the manager

        if on not in _ON:
            msg = f'on must be "failure" or "always", got {on!r}'
            raise ValueError(msg)
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int):
            msg = f"max_restarts must be an int >= 0, got {max_restarts!r}"
            raise TypeError(msg)
        if max_restarts < 0:
            msg = f"max_restarts must be an int >= 0, got {max_restarts!r}"
            raise ValueError(msg)
        within = _check_seconds("within", within, positive=True, finite=True)
        if backoff is not None and not isinstance(backoff, Backoff):
            msg = f"backoff must be a greentask.tasks.Backoff or None, got {backoff!r}"
            raise TypeError(msg)
        self.on = on
        self.max_restarts = max_restarts
        self.within = within
        self.backoff = backoff

    def __repr__(self) -> str:
        return (
            f"Restart(on={self.on!r}, max_restarts={self.max_restarts}, within={self.within}, backoff={self.backoff!r})"
        )


class _Intensity:
    """OTP's restart intensity: at most ``max_restarts`` restarts in any ``within`` window."""

    __slots__ = ("_times", "max_restarts", "within")

    def __init__(self, policy: Restart) -> None:
        self.max_restarts = policy.max_restarts
        self.within = policy.within
        self._times: deque[float] = deque()

    def allow(self, now: float) -> bool:
        """Whether one more restart at ``now`` stays within the budget; records it if so."""
        times = self._times
        horizon = now - self.within
        while times and times[0] <= horizon:
            times.popleft()
        if len(times) >= self.max_restarts:
            return False
        times.append(now)
        return True

    def in_window(self, now: float) -> int:
        """How many restarts happened within the window ending at ``now``."""
        horizon = now - self.within
        return sum(1 for t in self._times if t > horizon)


def _format_seconds(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:g}"
