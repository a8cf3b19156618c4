"""eventually() / consistently(): bounded polls that yield to the hub between checks.

They are the sanctioned way to wait for a condition that has no event to wait on:
each check is followed by ``gevent.sleep(interval)`` (``gevent.idle()`` for an interval
of 0, which lets timers and I/O run, unlike ``gevent.sleep(0)``), and the whole poll is
bounded in *real* time. A failure raises ``AssertionError`` that names the predicate
(its qualified name, where it is defined and, for a lambda, its source line) and what
it last returned or raised.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import TypeVar

import gevent

from ..context import _check_seconds

__all__ = ["consistently", "eventually"]

T = TypeVar("T")


def _check_predicate(predicate: object) -> None:
    if not callable(predicate):
        msg = f"predicate must be callable, got {predicate!r}"
        raise TypeError(msg)


def describe(predicate: Callable[..., object]) -> str:
    """A readable name for ``predicate``: qualname, location and, for a lambda, its source."""
    name = getattr(predicate, "__qualname__", None)
    code = getattr(predicate, "__code__", None)
    if not isinstance(name, str) or code is None:
        return repr(predicate)
    where = f"{code.co_filename}:{code.co_firstlineno}"
    if name.endswith("<lambda>"):
        try:
            lines, _ = inspect.getsourcelines(predicate)
        except (OSError, TypeError):
            return f"{name} at {where}"
        return f"{name} at {where}: {lines[0].strip()}"
    return f"{name} at {where}"


def _pause(interval: float) -> None:
    if interval > 0:
        gevent.sleep(interval)
    else:
        gevent.idle()


def eventually(predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.01) -> T:
    """Poll ``predicate()`` until it returns a true value; return that value.

    Checks at once, then every ``interval`` real seconds, yielding to the hub in
    between, so other greenlets make progress. An exception raised by the predicate
    (an ``assert`` inside it, say) counts as "not yet". It gives up only after a check
    that began at or after the deadline, so even ``timeout=0`` checks once.

    Args:
        predicate: a callable taking no arguments.
        timeout: the most real seconds to keep polling.
        interval: real seconds to sleep between checks (0: just ``gevent.idle()``).

    Returns:
        the first true value the predicate returned.

    Raises:
        AssertionError: the predicate did not return a true value within ``timeout``;
            the message names it and what it last returned or raised (also chained
            as ``__cause__``).
        TypeError / ValueError: bad arguments.

    Example::

        harness.start()
        eventually(lambda: server.connections == 1, timeout=5)
    """
    _check_predicate(predicate)
    timeout = _check_seconds("timeout", timeout, finite=True)
    interval = _check_seconds("interval", interval, finite=True)
    deadline = time.monotonic() + timeout
    checks = 0
    last_value: object = None
    last_error: Exception | None = None
    while True:
        checks += 1
        started = time.monotonic()
        try:
            value = predicate()
        except Exception as exc:  # noqa: BLE001 - "not yet"; reported on failure
            last_error = exc
        else:
            if value:
                return value
            last_value, last_error = value, None
        if started >= deadline:
            break
        _pause(min(interval, max(0.0, deadline - time.monotonic())))
    outcome = f"last raised {last_error!r}" if last_error is not None else f"last returned {last_value!r}"
    msg = f"eventually: {describe(predicate)} was not true within {timeout}s ({checks} checks); {outcome}"
    raise AssertionError(msg) from last_error


def consistently(predicate: Callable[[], object], duration: float = 0.1, interval: float = 0.01) -> None:
    """Check that ``predicate()`` stays true for ``duration`` real seconds.

    Checks at once, then every ``interval`` real seconds (yielding to the hub in
    between), and a last time once ``duration`` has passed (so at least twice when
    ``duration`` is positive). Fails at the first false value or exception.

    Args:
        predicate: a callable taking no arguments.
        duration: real seconds the predicate must stay true.
        interval: real seconds to sleep between checks (0: just ``gevent.idle()``).

    Raises:
        AssertionError: the predicate returned a false value or raised; the message
            names it, when it happened and what it returned or raised (chained as
            ``__cause__``).
        TypeError / ValueError: bad arguments.

    Example::

        harness.start()
        consistently(lambda: not harness.done, duration=0.05)
    """
    _check_predicate(predicate)
    duration = _check_seconds("duration", duration, finite=True)
    interval = _check_seconds("interval", interval, finite=True)
    start = time.monotonic()
    deadline = start + duration
    checks = 0
    while True:
        checks += 1
        started = time.monotonic()
        try:
            value = predicate()
        except Exception as exc:
            elapsed = time.monotonic() - start
            msg = f"consistently: {describe(predicate)} raised {exc!r} after {elapsed:.3f}s (check {checks})"
            raise AssertionError(msg) from exc
        if not value:
            elapsed = time.monotonic() - start
            msg = f"consistently: {describe(predicate)} returned {value!r} after {elapsed:.3f}s (check {checks})"
            raise AssertionError(msg)
        if started >= deadline:
            return
        _pause(min(interval, max(0.0, deadline - time.monotonic())))
