"""Reliability of SPEC §9 under races (SPEC §7's promises, with handles and runtime tasks).

Runtime ``add_task``, ``handle.stop()`` and ``manager.stop()`` race each other, from
greenlets and from a real OS thread, a few hundred times with random timing: every task
that was initialized is cleaned up exactly once (a task stopped by its handle at once, in
a greenlet of the manager; the others at shutdown), nothing executes without having been
initialized, every handle ends ``done``, no greenlet that ran a stage is left alive, and
``run`` returns.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

import gevent
import pytest
from _manager_helpers import LIMIT, finish, start, wait_thread

import greentask as gt
from greentask import ManagerStateError, StopOrder, TaskHandle, TaskState, TaskType
from greentask.testing import FakeTask, settle

ITERATIONS = 300
SEEDS = 3


class Race:
    """One run of the race: the manager, its tasks, what was accepted and refused."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.order = rng.choice([StopOrder.TOGETHER, StopOrder.REVERSE])
        self.manager = gt.TaskManager(stop_order=self.order)
        self.ran_in: list[Any] = []  # every greenlet a stage ran in
        self.accepted: list[tuple[FakeTask, TaskHandle]] = []
        self.refused: list[FakeTask] = []
        self.lock = threading.Lock()  # the thread appends too

    def _idle(self, turns: int) -> Callable[[gt.Context], None]:
        def stage(ctx: gt.Context) -> None:
            self.ran_in.append(gevent.getcurrent())
            for _ in range(turns):
                gevent.idle()

        return stage

    def _wait(self, ctx: gt.Context) -> None:
        self.ran_in.append(gevent.getcurrent())
        ctx.wait()

    def _idle_then_wait(self, ctx: gt.Context) -> None:
        self.ran_in.append(gevent.getcurrent())
        gevent.idle()
        ctx.wait()

    def make_task(self) -> tuple[FakeTask, TaskType]:
        """A task with a random script; one whose execute returns is an ERROR task (no policy)."""
        rng = self.rng
        # An initialize that waits for its ctx only under TOGETHER, where the run context's
        # cancellation reaches it at once.
        init_modes = ["instant", "idle", "wait"] if self.order is StopOrder.TOGETHER else ["instant", "idle"]
        init_mode = rng.choice(init_modes)
        initialize = self._wait if init_mode == "wait" else self._idle(0 if init_mode == "instant" else 2)
        execute_mode = rng.choice(["wait", "idle-then-wait", "return"])
        execute: Callable[[gt.Context], None]
        if execute_mode == "wait":
            execute = self._wait
        elif execute_mode == "idle-then-wait":
            execute = self._idle_then_wait
        else:
            execute = self._idle(rng.randint(0, 2))
        cleanup = self._idle(rng.randint(0, 2))
        task_type = TaskType.ERROR if execute_mode == "return" else rng.choice([TaskType.STRICT, TaskType.ERROR])
        return FakeTask(initialize=initialize, execute=execute, cleanup=cleanup), task_type

    def add(self, name: str) -> TaskHandle | None:
        task, task_type = self.make_task()
        try:
            handle = self.manager.add_task(name, task, task_type)
        except ManagerStateError:
            with self.lock:
                self.refused.append(task)
            return None
        with self.lock:
            self.accepted.append((task, handle))
        return handle

    def handles(self) -> list[TaskHandle]:
        with self.lock:
            return [handle for _, handle in self.accepted]


def race_once(rng: random.Random) -> None:
    race = Race(rng)
    manager = race.manager
    for index in range(rng.randint(1, 3)):
        race.add(f"pre{index}")
    if rng.random() < 0.2:
        race.handles()[-1].stop()  # dropped before run
    runner = start(manager) if rng.random() < 0.5 else gevent.spawn(manager.run)

    def idle(turns: int) -> None:
        for _ in range(turns):
            gevent.idle()

    def adder(name: str, turns: int) -> None:
        idle(turns)
        race.add(name)

    def handle_stopper(turns: int, pick: float) -> None:
        idle(turns)
        handles = race.handles()
        handles[int(pick * len(handles))].stop(KeyError("stopped by handle"))

    def manager_stopper(turns: int) -> None:
        idle(turns)
        manager.stop()

    actors: list[gevent.Greenlet[..., None]] = [
        *(gevent.spawn(adder, f"g{index}", rng.randint(0, 4)) for index in range(rng.randint(1, 4))),
        *(gevent.spawn(handle_stopper, rng.randint(0, 4), rng.random()) for _ in range(rng.randint(0, 3))),
        gevent.spawn(manager_stopper, rng.randint(0, 6)),
    ]
    # The OS thread's choices are drawn here: the rng is not shared with it.
    thread_stops_own, thread_stops_pre, thread_stops_manager = (rng.random() < 0.5 for _ in range(3))
    pre_handle = race.handles()[0]

    def from_thread() -> None:
        handle = race.add("thread")
        if handle is not None and thread_stops_own:
            handle.stop()
        if thread_stops_pre:
            pre_handle.stop()
        if thread_stops_manager:
            manager.stop()

    thread = threading.Thread(target=from_thread, daemon=True)

    def start_thread(turns: int) -> None:
        idle(turns)  # run() has begun: the runner greenlet was spawned first
        thread.start()

    actors.append(gevent.spawn(start_thread, rng.randint(0, 4)))
    with gevent.Timeout(LIMIT):
        gevent.joinall(actors, raise_error=True)
    wait_thread(thread)
    errors = finish(runner)
    settle()
    assert errors == []
    for task, handle in race.accepted:
        initialized = task.initialize_call_count
        assert initialized in (0, 1), handle
        assert task.cleanup_call_count == initialized, (handle, race.order)
        assert task.execute_call_count <= initialized, handle
        assert handle.done, handle
        assert handle.state in (TaskState.DONE, TaskState.PENDING), handle
        if initialized:
            assert handle.state is TaskState.DONE, handle
    for task in race.refused:
        assert (task.initialize_call_count, task.execute_call_count, task.cleanup_call_count) == (0, 0, 0)
    assert all(glet.dead for glet in race.ran_in)
    assert manager.phase == "done"


@pytest.mark.parametrize("seed", range(SEEDS))
def test_runtime_adds_and_stops_racing_from_greenlets_and_a_thread(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(ITERATIONS // SEEDS):
        race_once(rng)
