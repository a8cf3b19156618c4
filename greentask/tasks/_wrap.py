"""The shared base of the wrapper tasks: validate the inner task, pass its stages through.

Every provided wrapper (`Repeatable`, `RepeatTimer`, `Interruptible`, `ForceStop`) takes
an inner task: a full `greentask.Task`, an object with only ``execute(ctx)``, or a plain
callable ``fn(ctx)``. The wrapper's ``initialize`` / ``cleanup`` call the inner task's
when it has them and do nothing otherwise, so a wrapper can be added with
``add_task`` whatever it wraps, and wrappers nest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

from ..context import Context
from ..manager import ExecuteTask, Task

__all__ = ["InnerTask", "Wrapper"]

#: What a wrapper accepts: a `Task`, an `ExecuteTask`, or a plain ``fn(ctx)``.
InnerTask: TypeAlias = Task | ExecuteTask | Callable[[Context], object]

_Stage = Callable[[Context], object]


def _optional_stage(task: object, stage: str) -> _Stage | None:
    fn = getattr(task, stage, None)
    if fn is None:
        return None
    if not callable(fn):
        msg = f"task.{stage} must be callable as {stage}(ctx), got {fn!r}"
        raise TypeError(msg)
    return fn  # type: ignore[no-any-return]


class Wrapper:
    """Holds an inner task and passes ``initialize`` / ``cleanup`` through to it.

    Subclasses implement ``execute`` and call the inner execute as ``self._execute``.

    Args:
        task: a `greentask.Task`, an object with ``execute(ctx)``, or a callable
            ``fn(ctx)``.

    Raises:
        TypeError: ``task`` is None or a class, has no callable ``execute`` and is not callable,
            or has a non-callable ``initialize`` / ``cleanup``.
    """

    def __init__(self, task: InnerTask) -> None:
        if task is None:
            msg = "task cannot be None"
            raise TypeError(msg)
        if isinstance(task, type):
            msg = f"task must be a task instance or a function, got the class {task!r} (instantiate it first)"
            raise TypeError(msg)
        execute: Any = getattr(task, "execute", None)
        if not callable(execute):
            if not callable(task):
                msg = f"task must be callable as fn(ctx) or have a callable execute(ctx), got {task!r}"
                raise TypeError(msg)
            execute = task
        self._task = task
        self._execute: _Stage = execute
        self._initialize = _optional_stage(task, "initialize")
        self._cleanup = _optional_stage(task, "cleanup")

    @property
    def task(self) -> InnerTask:
        """The wrapped task."""
        return self._task

    def initialize(self, ctx: Context) -> object:
        """Call the inner task's ``initialize(ctx)`` if it has one; else do nothing."""
        if self._initialize is None:
            return None
        return self._initialize(ctx)

    def cleanup(self, ctx: Context) -> object:
        """Call the inner task's ``cleanup(ctx)`` if it has one; else do nothing."""
        if self._cleanup is None:
            return None
        return self._cleanup(ctx)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._task!r}>"
