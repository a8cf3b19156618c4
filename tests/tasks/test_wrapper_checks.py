"""Wrappers refuse, where they are built, the mistakes that would otherwise fail later.

A class given instead of an instance, or an ``async def`` task (greentask runs greenlets,
not coroutines), is a `TypeError` from the wrapper's constructor that names the task
(SPEC §15 "Mistakes fail where they are made").
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import pytest

import greentask as gt
from greentask.tasks import ForceStop, Interruptible, Repeatable, RepeatTimer

WRAPPERS: dict[str, Callable[[object], Any]] = {
    "Repeatable": lambda task: Repeatable(task),  # type: ignore[arg-type]
    "RepeatTimer": lambda task: RepeatTimer(1.0, task),  # type: ignore[arg-type]
    "Interruptible": lambda task: Interruptible(signal.SIGHUP, task),  # type: ignore[arg-type]
    "ForceStop": lambda task: ForceStop(1.0, task),  # type: ignore[arg-type]
}


class Poller:
    def execute(self, ctx: gt.Context) -> None:
        pass


class AsyncExecute:
    async def execute(self, ctx: gt.Context) -> None:
        pass


class AsyncCleanup:
    def execute(self, ctx: gt.Context) -> None:
        pass

    async def cleanup(self, ctx: gt.Context) -> None:
        pass


class AsyncCallable:
    async def __call__(self, ctx: gt.Context) -> None:
        pass


async def poll(ctx: gt.Context) -> None:
    pass


MISTAKES = [
    pytest.param(Poller, r"is the class Poller, not an instance: pass Poller\(\.\.\.\)$", id="class"),
    pytest.param(poll, r" 'poll' is an async def function: greentask runs greenlets, not coroutines$", id="async-def"),
    pytest.param(AsyncExecute(), r" AsyncExecute\(\.\.\.\) has an async def execute\(ctx\)", id="async-execute"),
    pytest.param(AsyncCleanup(), r" AsyncCleanup\(\.\.\.\) has an async def cleanup\(ctx\)", id="async-cleanup"),
    pytest.param(AsyncCallable(), r" AsyncCallable\(\.\.\.\) has an async def __call__", id="async-call"),
]


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
@pytest.mark.parametrize(("task", "match"), MISTAKES)
def test_a_wrapper_refuses_the_mistake_naming_itself_and_the_task(wrapper: str, task: object, match: str) -> None:
    with pytest.raises(TypeError, match=f"^{wrapper}'s task ") as info:
        WRAPPERS[wrapper](task)
    assert info.match(match)


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_instances_and_plain_functions_are_accepted(wrapper: str) -> None:
    for task in (Poller(), lambda ctx: None):
        assert WRAPPERS[wrapper](task).task is task
