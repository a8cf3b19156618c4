"""Fail-early checks of the task objects users hand to greentask (SPEC §15).

A mistake fails where it is made, with a `TypeError` naming the task: a class given
instead of an instance, or an ``async def`` stage (greentask runs greenlets, not
coroutines). Shared by `TaskManager.add_task` / ``add_execute_task`` and the wrappers
in `greentask.tasks`.
"""

from __future__ import annotations

import inspect

__all__ = ["check_stage", "check_task_object"]


def check_task_object(label: str, task: object) -> None:
    """Refuse None, a class instead of an instance, and a coroutine function.

    Args:
        label: how to name the task in the message, e.g. ``"task 'db'"``.
        task: what the user passed.

    Raises:
        TypeError: ``task`` is None, a class, or an ``async def`` function.
    """
    if task is None:
        msg = "task cannot be None"
        raise TypeError(msg)
    if isinstance(task, type):
        msg = f"{label} is the class {task.__qualname__}, not an instance: pass {task.__qualname__}(...)"
        raise TypeError(msg)
    if inspect.iscoroutinefunction(task):
        msg = f"{label} is an async def function: greentask runs greenlets, not coroutines"
        raise TypeError(msg)


def check_stage(label: str, task: object, stage: str) -> None:
    """Refuse a missing/uncallable stage method or an ``async def`` one.

    Raises:
        TypeError: ``task.<stage>`` is not callable, or is a coroutine function.
    """
    fn = getattr(task, stage, None)
    if not callable(fn):
        msg = f"{label} has no callable {stage}(ctx)"
        raise TypeError(msg)
    if inspect.iscoroutinefunction(fn):
        msg = f"{label} has an async def {stage}(ctx): greentask runs greenlets, not coroutines"
        raise TypeError(msg)
