"""A manager's task context, built by hand: a task name, a label and a stop deadline.

The provided tasks read ``ctx.task_name``, ``_task_label(ctx)`` and ``ctx.stop_deadline``
from the context a `TaskManager` gives each task. These helpers build one the same way
the manager does (`greentask.context._task_context`), so a test drives a task alone on a
`FakeClock` and decides when it is stopped and with what budget.
"""

from __future__ import annotations

from collections.abc import Callable

import greentask as gt
from greentask.context import _task_context
from greentask.testing import FakeClock


class TaskInfo:
    """What a manager stores in its task contexts: ``name``, ``label``, ``stop_deadline``."""

    def __init__(self, name: str, manager: str = "web") -> None:
        self.name = name
        self.label = f"{manager}: task {name!r}"
        self.stop_deadline: float | None = None


def task_context(clock: FakeClock, name: str = "task") -> tuple[gt.Context, Callable[[float | None], None]]:
    """A task context named ``name`` in manager "web", and ``stop(stop_timeout)``.

    ``stop(seconds)`` cancels the context as the manager does with that ``stop_timeout``
    (``ctx.stop_deadline`` is then ``clock.now() + seconds``); ``stop(None)`` as a
    manager without one.
    """
    info = TaskInfo(name)
    ctx, cancel = _task_context(gt.background(clock), info, linked=True)

    def stop(stop_timeout: float | None) -> None:
        info.stop_deadline = None if stop_timeout is None else clock.now() + stop_timeout
        cancel()

    return ctx, stop
