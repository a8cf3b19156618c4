"""What the provided tasks share: greenlet names, stop budgets, fail-early checks (SPEC §15).

- Names: every greenlet a provided task spawns carries the task's name (``ctx.task_name``,
  else a fallback naming the kind of greenlet), so ``gevent.util.format_run_info()`` and
  tracebacks say whose it is. Log lines name manager and task with
  `greentask.context._task_label`.
- Stop budget: once a task's context is cancelled, ``ctx.stop_deadline`` says when the
  manager will kill it. A draining task ends its graceful steps a margin before that
  (a tenth of the budget, at most `MAX_MARGIN`), so a graceful stop never ends in the
  manager's kill: its own stop timeout applies when it ends earlier.
- Checks: a wrapper refuses a class instead of an instance and an ``async def`` task
  where it is constructed, naming the task.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, overload

import gevent

from .._checks import check_stage, check_task_object
from ..context import Context

__all__ = [
    "MAX_MARGIN",
    "check_inner_task",
    "graceful_timeout",
    "greenlet_name",
    "spawn_named",
    "stop_margin",
]

#: The most a draining task keeps in hand before the manager's kill, in seconds.
MAX_MARGIN = 1.0


def greenlet_name(ctx: Context, fallback: str) -> str:
    """The name for a greenlet spawned for the task of ``ctx``: the task's, else ``fallback``."""
    name = ctx.task_name
    return fallback if name is None else name


def spawn_named(ctx: Context, fallback: str, fn: Callable[..., Any], *args: Any) -> gevent.Greenlet[..., Any]:
    """Start ``fn(*args)`` in a greenlet named for the task of ``ctx`` (see `greenlet_name`)."""
    glet: gevent.Greenlet[..., Any] = gevent.Greenlet(fn, *args)
    glet.name = greenlet_name(ctx, fallback)
    glet.start()
    return glet


def stop_margin(budget: float) -> float:
    """What a task keeps in hand before the manager's kill: a tenth of ``budget``, at most 1 s."""
    return min(max(budget, 0.0) / 10.0, MAX_MARGIN)


@overload
def graceful_timeout(ctx: Context, own: float, now: float) -> float: ...
@overload
def graceful_timeout(ctx: Context, own: float | None, now: float) -> float | None: ...
def graceful_timeout(ctx: Context, own: float | None, now: float) -> float | None:
    """Seconds from ``now`` (clock time, just after cancellation) the graceful steps may take.

    Without a ``ctx.stop_deadline`` (no ``stop_timeout`` applies, or ``ctx`` is not a
    manager's task context) it is ``own``. With one, the budget is the time left until
    that deadline and the graceful steps end `stop_margin` before it: ``own`` applies
    when it ends earlier; when it is None, equal or larger, the deadline less the
    margin does.

    Args:
        ctx: the task's (cancelled) context.
        own: the task's own stop timeout in seconds, or None for "none of its own".
        now: the clock time the task noticed the cancellation.

    Returns:
        Seconds, or None for "unbounded" (no deadline and no timeout of its own).
    """
    deadline = ctx.stop_deadline
    if deadline is None:
        return own
    budget = max(deadline - now, 0.0)
    available = budget - stop_margin(budget)
    return available if own is None else min(own, available)


def _describe(task: object) -> str:
    if isinstance(task, type):
        return ""
    name = getattr(task, "__qualname__", None)
    if isinstance(name, str) and callable(task):
        return f" {name!r}"
    return f" {type(task).__qualname__}(...)"


def check_inner_task(wrapper: str, task: object) -> None:
    """Refuse, naming the task, a class instead of an instance and an ``async def`` task.

    Also refuses an ``async def`` ``execute``, ``initialize`` or ``cleanup`` method and
    a callable object whose ``__call__`` is ``async def``, and None. (Objects with no
    execute that are not callable are left to `Wrapper`'s own message.)

    Args:
        wrapper: the wrapper's class name, e.g. ``"Repeatable"``.
        task: what the user passed as the inner task.

    Raises:
        TypeError: one of the mistakes above.
    """
    label = f"{wrapper}'s task{_describe(task)}"
    check_task_object(label, task)
    for stage in ("execute", "initialize", "cleanup"):
        if callable(getattr(task, stage, None)):
            check_stage(label, task, stage)
    if not callable(getattr(task, "execute", None)) and inspect.iscoroutinefunction(getattr(task, "__call__", None)):  # noqa: B004
        msg = f"{label} has an async def __call__: greentask runs greenlets, not coroutines"
        raise TypeError(msg)
