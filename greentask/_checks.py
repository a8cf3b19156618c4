"""Fail-early checks of the task objects users hand to greentask (SPEC §15).

A mistake fails where it is made, with a `TypeError` naming the task: a class given
instead of an instance, or an ``async def`` stage (greentask runs greenlets, not
coroutines). Shared by `TaskManager.add_task` / ``add_execute_task`` and the wrappers
in `greentask.tasks`.
"""

from __future__ import annotations

import inspect
from types import FunctionType, MethodType
from typing import Any

_CO_COROUTINE = inspect.CO_COROUTINE

__all__ = ["check_stage", "check_task_object"]


def _is_async(fn: Any) -> bool:
    """``inspect.iscoroutinefunction``, fast for plain functions (``add_execute_task`` is a hot path)."""
    kind = type(fn)
    if kind is FunctionType:
        return bool(fn.__code__.co_flags & _CO_COROUTINE)
    if kind is MethodType and type(fn.__func__) is FunctionType:
        return bool(fn.__func__.__code__.co_flags & _CO_COROUTINE)
    return inspect.iscoroutinefunction(fn)


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
    if _is_async(task):
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
    if _is_async(fn):
        msg = f"{label} has an async def {stage}(ctx): greentask runs greenlets, not coroutines"
        raise TypeError(msg)
