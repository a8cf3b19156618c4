"""A seeded randomized test of supervision (SPEC §3, §9, §11): invariants over 300 rounds.

Each round builds a manager with one to four tasks (from ``add_task`` or
``add_execute_task``, of random types, with or without a random ``restart`` policy),
whose stages fail, return or block at random, on a `FakeClock`. The test then moves time,
stops single tasks by handle and stops the manager, at random, and checks:

- every ``initialize`` of a task is followed by exactly one ``cleanup`` before the next
  ``initialize`` (and none without one), and ``execute`` runs only after an
  ``initialize`` that succeeded;
- no restart after cancellation: once the manager's run context is cancelled, no task is
  restarted (no "restarting" event, no second ``initialize`` or ``execute``); once a task
  was stopped by its handle, it never initializes or executes again;
- restarts never exceed the budget: at most ``max_restarts`` "restarting" events of a
  task within any ``within`` seconds, none for a task without a policy, and the handle's
  count matches;
- ``run()`` always returns, every task ends ``done``, and a task gives up at most once.

A failing round names its seed; ``play(seed)`` replays it alone.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

import gevent
from _supervision_helpers import LIMIT

import greentask as gt
from greentask import ExecuteTaskType, RestartLimitExceeded, TaskType
from greentask.tasks import Backoff
from greentask.testing import FakeClock, settle

SEED = 20_251_202
ROUNDS = 300

#: One entry per stage call, event, stop: ("call", name, "I" / "I!" / "E" / "C"),
#: ("event", kind, task_name, at), ("stop", name), ("manager stop",).
Timeline = list[tuple[Any, ...]]

#: A task's stage calls, as a string: I (initialize returned), ! (initialize raised), E, C.
TASK_LIFE = re.compile(r"(IE?C|!C)*")


class Flaky(Exception):
    """What the random stages raise."""


@dataclass
class Actor:
    """One random task: its script draws from the round's rng at each call."""

    name: str
    kind: str  # "task" or "execute"
    task_type: Any
    restart: gt.Restart | None
    rng: random.Random
    timeline: Timeline
    handle: Any = None
    stages: list[str] = field(default_factory=list)

    def _note(self, stage: str) -> None:
        self.stages.append(stage)
        self.timeline.append(("call", self.name, stage))

    def initialize(self, ctx: gt.Context) -> None:
        roll = self.rng.random()
        if roll < 0.12:
            self._note("!")
            raise Flaky(f"{self.name} initialize")
        self._note("I")
        if roll < 0.2:
            ctx.sleep(self.rng.choice([0.5, 1.0, 3.0]))

    def execute(self, ctx: gt.Context) -> None:
        self._note("E")
        roll = self.rng.random()
        if roll < 0.35:
            ctx.wait()
        elif roll < 0.55:
            raise Flaky(f"{self.name} execute")
        elif roll < 0.65:
            return
        elif roll < 0.85:
            if ctx.sleep(self.rng.choice([1.0, 2.0, 4.0, 8.0])):
                raise Flaky(f"{self.name} execute later")
        else:
            ctx.sleep(self.rng.choice([1.0, 2.0, 4.0, 8.0]))

    def cleanup(self, ctx: gt.Context) -> None:
        self._note("C")
        if self.rng.random() < 0.12:
            raise Flaky(f"{self.name} cleanup")


def make_actor(rng: random.Random, index: int, timeline: Timeline) -> Actor:
    kind = rng.choice(["task", "execute"])
    task_type: Any
    if kind == "task":
        task_type = rng.choice([TaskType.STRICT, TaskType.ERROR, TaskType.STOP_GROUP])
    else:
        task_type = rng.choice([ExecuteTaskType.STRICT, ExecuteTaskType.ERROR])
    restart = None
    if rng.random() < 0.75:
        on = "failure" if task_type is TaskType.STOP_GROUP else rng.choice(["failure", "always"])
        backoff = rng.choice([None, Backoff(initial=rng.choice([0.5, 1.0, 2.0]), maximum=8.0, jitter=0)])
        restart = gt.Restart(
            on=on, max_restarts=rng.randint(0, 3), within=rng.choice([3.0, 10.0, 30.0]), backoff=backoff
        )
    return Actor(f"t{index}", kind, task_type, restart, rng, timeline)


def play(seed: int) -> None:
    """One round: build, run and disturb a random manager, then check the invariants."""
    rng = random.Random(seed)
    clock = FakeClock()
    timeline: Timeline = []
    runner: gevent.Greenlet[..., Any] | None = None
    try:
        manager = gt.TaskManager(stop_order=rng.choice([gt.StopOrder.TOGETHER, gt.StopOrder.REVERSE]))
        actors = [make_actor(rng, i, timeline) for i in range(rng.randint(1, 4))]
        for actor in actors:
            if actor.kind == "task":
                actor.handle = manager.add_task(actor.name, actor, actor.task_type, restart=actor.restart)
            else:
                actor.handle = manager.add_execute_task(
                    actor.name, actor.execute, actor.task_type, restart=actor.restart
                )
        manager.subscribe(lambda e: timeline.append(("event", e.kind, e.task_name, e.at)))
        runner = gevent.spawn(manager.run, gt.background(clock))
        settle()
        for _ in range(rng.randint(0, 8)):
            roll = rng.random()
            if roll < 0.6:
                clock.advance(rng.choice([0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0]))
            elif roll < 0.9:
                actor = rng.choice(actors)
                timeline.append(("stop", actor.name))
                actor.handle.stop()
                settle()
            else:
                timeline.append(("manager stop",))
                manager.stop()
                settle()
        timeline.append(("manager stop",))
        manager.stop()
        for _ in range(50):
            settle()
            if runner.dead:
                break
            clock.advance(10.0)
        with gevent.Timeout(LIMIT):
            errors = runner.get()
        check(seed, manager, actors, timeline, errors)
    finally:
        if runner is not None and not runner.dead:  # only after a failure: report it, not a leak
            runner.kill(block=True, timeout=1.0)
        clock.close()


def check(seed: int, manager: gt.TaskManager, actors: list[Actor], timeline: Timeline, errors: Any) -> None:
    where = f"seed {seed}: {[(a.name, a.kind, a.task_type, a.restart) for a in actors]}\ntimeline {timeline}"
    cancelled_at = next(
        (i for i, entry in enumerate(timeline) if entry[:3] == ("event", "cancelled", None)), len(timeline)
    )
    assert [entry[1] for entry in timeline if entry[0] == "event" and entry[2] is None].count("done") == 1, where

    for actor in actors:
        name = actor.name
        # Every initialize matched by exactly one cleanup; execute only after a good initialize.
        if actor.kind == "task":
            assert TASK_LIFE.fullmatch("".join(actor.stages)), f"{name} stages {actor.stages}; {where}"
        else:
            assert set(actor.stages) <= {"E"}, where

        # No restart after cancellation; nothing at all after a handle stop.
        seen_init = seen_execute = False
        stopped_at = next((i for i, entry in enumerate(timeline) if entry == ("stop", name)), len(timeline))
        for i, entry in enumerate(timeline):
            if entry[0] == "call" and entry[1] == name:
                stage = entry[2]
                if stage in ("I", "!"):
                    assert i < stopped_at, f"{name} initialized after its handle stop; {where}"
                    assert not (seen_init and i > cancelled_at), f"{name} re-initialized after cancellation; {where}"
                    seen_init = True
                elif stage == "E":
                    assert i < stopped_at, f"{name} executed after its handle stop; {where}"
                    assert not (seen_execute and i > cancelled_at), f"{name} re-executed after cancellation; {where}"
                    seen_execute = True
            elif entry[0] == "event" and entry[1] == "restarting" and entry[2] == name:
                assert i < cancelled_at, f"{name} restarting after cancellation; {where}"
                assert i < stopped_at, f"{name} restarting after its handle stop; {where}"

        # The budget: at most max_restarts restarts in any window of `within` seconds.
        times = [entry[3] for entry in timeline if entry[:3] == ("event", "restarting", name)]
        assert actor.handle.restarts == len(times), f"{name}: {actor.handle.restarts} != {len(times)}; {where}"
        if actor.restart is None:
            assert times == [], where
        else:
            within, most = actor.restart.within, actor.restart.max_restarts
            for t in times:
                in_window = [u for u in times if t - within < u <= t]
                assert len(in_window) <= most, f"{name}: restarts {times} exceed {most} per {within}s; {where}"

        gave_up = [e for e in errors if e.task_name == name and isinstance(e.error, RestartLimitExceeded)]
        assert len(gave_up) <= 1, where
        if gave_up:
            assert actor.restart is not None, where
        assert actor.handle.done, f"{name} not done: {actor.handle.state}; {where}"


def test_random_supervision_keeps_its_invariants() -> None:
    for round_ in range(ROUNDS):
        play(SEED + round_)
