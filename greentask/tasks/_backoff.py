"""Backoff: exponential delays with jitter, for `Repeatable` (or any retry loop)."""

from __future__ import annotations

import math
import random

__all__ = ["Backoff"]


def _check_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"{name} must be a number, got {value!r}"
        raise TypeError(msg)
    if not math.isfinite(value):
        msg = f"{name} must be a finite number, got {value!r}"
        raise ValueError(msg)
    return float(value)


class Backoff:
    """Exponentially growing delays with random jitter; `reset` starts over.

    The first delay is ``initial``, each further one is the previous *base* delay times
    ``factor``, capped at ``maximum``. Each delay handed out is that base multiplied by a
    random factor drawn uniformly from ``[1 - jitter, 1 + jitter]``, so with jitter a
    capped delay may be up to ``maximum * (1 + jitter)``; with ``jitter=0`` the delays
    are exact. The jitter never compounds: it is applied to the base, not carried over.

    A `Backoff` holds state (how many delays it handed out), so give each retry loop
    its own instance. `Repeatable` calls `next_delay` after each failed run and `reset`
    after each clean one.

    Args:
        initial: the first delay, in seconds (> 0).
        maximum: the cap on the base delay, in seconds (>= ``initial``).
        factor: growth per step (>= 1; 1 gives a constant delay).
        jitter: relative spread, ``0 <= jitter < 1``.
        rng: the `random.Random` to draw jitter from (pass a seeded one for
            deterministic tests); defaults to a private instance.

    Raises:
        TypeError: an argument is not a number, or ``rng`` has no ``uniform``.
        ValueError: a number is out of range (see above) or not finite.

    Example::

        backoff = Backoff(initial=0.1, maximum=5.0, jitter=0)
        [backoff.next_delay() for _ in range(4)]   # [0.1, 0.2, 0.4, 0.8]
        backoff.reset()
        backoff.next_delay()                       # 0.1
        manager.add_execute_task("poller", Repeatable(poll, backoff=backoff))
    """

    __slots__ = ("_attempts", "_base", "_factor", "_initial", "_jitter", "_maximum", "_rng")

    def __init__(
        self,
        initial: float = 0.1,
        maximum: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.1,
        *,
        rng: random.Random | None = None,
    ) -> None:
        initial = _check_number("initial", initial)
        maximum = _check_number("maximum", maximum)
        factor = _check_number("factor", factor)
        jitter = _check_number("jitter", jitter)
        if initial <= 0:
            msg = f"initial must be a positive number of seconds, got {initial!r}"
            raise ValueError(msg)
        if maximum < initial:
            msg = f"maximum must be a number of seconds >= initial ({initial!r}), got {maximum!r}"
            raise ValueError(msg)
        if factor < 1:
            msg = f"factor must be >= 1, got {factor!r}"
            raise ValueError(msg)
        if not 0 <= jitter < 1:
            msg = f"jitter must be in the range 0 <= jitter < 1, got {jitter!r}"
            raise ValueError(msg)
        if rng is not None and not callable(getattr(rng, "uniform", None)):
            msg = f"rng must be a random.Random or None, got {rng!r}"
            raise TypeError(msg)
        self._initial = initial
        self._maximum = maximum
        self._factor = factor
        self._jitter = jitter
        self._rng = rng if rng is not None else random.Random()
        self._base = initial
        self._attempts = 0

    @property
    def initial(self) -> float:
        """The first delay, in seconds."""
        return self._initial

    @property
    def maximum(self) -> float:
        """The cap on the base delay, in seconds."""
        return self._maximum

    @property
    def factor(self) -> float:
        """The growth factor per step."""
        return self._factor

    @property
    def jitter(self) -> float:
        """The relative spread of each delay."""
        return self._jitter

    @property
    def attempts(self) -> int:
        """How many delays `next_delay` handed out since the last `reset`."""
        return self._attempts

    def next_delay(self) -> float:
        """Return the next delay in seconds and advance to the one after.

        Returns:
            ``min(initial * factor**n, maximum)`` for the n-th call since the last
            `reset` (counting from 0), times a random factor in
            ``[1 - jitter, 1 + jitter]``.
        """
        if self._attempts == 0:
            base = self._base = self._initial
        else:
            base = self._base = min(self._base * self._factor, self._maximum)
        self._attempts += 1
        if self._jitter == 0:
            return base
        return base * self._rng.uniform(1 - self._jitter, 1 + self._jitter)

    def reset(self) -> None:
        """Start over: the next delay is ``initial`` again."""
        self._attempts = 0
        self._base = self._initial

    def __repr__(self) -> str:
        return (
            f"Backoff(initial={self._initial!r}, maximum={self._maximum!r}, "
            f"factor={self._factor!r}, jitter={self._jitter!r})"
        )
