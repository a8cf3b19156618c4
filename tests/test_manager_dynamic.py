"""Execute tasks added before run, during initialize, while running, racing cancellation, from threads."""

from __future__ import annotations

import random
import sys
import threading
from typing import Any

import gevent
import pytest
from gevent.event import Event

import greentask as gt
import greentask._base
import greentask.manager
from greentask import ExecuteTaskType, ManagerStateError, NamedError, Stage, StopReason, TaskState, TaskType
from greentask.testing import CallLog, FakeClock, FakeExecuteTask, FakeTask, settle

INIT, E, C = Stage.INITIALIZE, Stage.EXECUTE, Stage.CLEANUP


def start(manager: gt.TaskManager, ctx: gt.Context | None = None) -> gevent.Greenlet[..., Any]:
    runner = gevent.spawn(manager.run, ctx)
    settle()
    return runner


def finish(runner: gevent.Greenlet[..., Any]) -> Any:
    with gevent.Timeout(5):
        return runner.get()


def wait_thread(thread: threading.Thread) -> None:
    """Keep the hub running (the thread needs it) until ``thread`` is done; bounded."""
    with gevent.Timeout(5):
        while thread.is_alive():
            gevent.idle()
    thread.join()


# -- before run and during initialize -----------------------------------------------


def test_execute_tasks_added_before_run_start_after_every_initialize_in_add_order() -> None:
    log = CallLog()
    manager = gt.TaskManager()
    manager.add_execute_task("x", FakeExecuteTask.blocking("x", log=log))
    manager.add_task("a", FakeTask.blocking("a", log=log))
    manager.add_execute_task("y", FakeExecuteTask.blocking("y", log=log), ExecuteTaskType.ERROR)
    manager.add_task("b", FakeTask.blocking("b", log=log))
    runner = start(manager)
    assert log.calls == [("a", INIT), ("b", INIT), ("a", E), ("b", E), ("x", E), ("y", E)]
    manager.stop()
    assert finish(runner) == []
    assert log.calls[6:] == [("b", C), ("a", C)]


def test_execute_task_added_during_initialize_is_queued_until_every_initialize_succeeded() -> None:
    log = CallLog()
    manager = gt.TaskManager()
    queued = FakeExecuteTask.blocking("queued", log=log)

    def initialize(ctx: gt.Context) -> None:
        manager.add_execute_task("queued", queued)
        assert queued.execute_call_count == 0

    manager.add_task("a", FakeTask.blocking("a", log=log))
    manager.add_task("b", FakeTask("b", log=log, initialize=initialize, execute=lambda ctx: ctx.wait()))
    manager.add_task("c", FakeTask.blocking("c", log=log))
    runner = start(manager)
    assert log.calls == [("a", INIT), ("b", INIT), ("c", INIT), ("a", E), ("b", E), ("c", E), ("queued", E)]
    assert manager.status()[-1].name == "queued"
    assert manager.status()[-1].state is TaskState.RUNNING
    manager.stop()
    assert finish(runner) == []
    assert queued.execute_calls[0].cancelled


def test_execute_task_queued_during_initialize_is_discarded_when_an_initialize_fails() -> None:
    manager = gt.TaskManager()
    queued = FakeExecuteTask()
    manager.add_task("a", FakeTask(initialize=lambda ctx: manager.add_execute_task("queued", queued)))
    manager.add_task("b", FakeTask(initialize=ValueError("init")))
    with gevent.Timeout(5):
        [error] = manager.run()
    assert error.task_name == "b"
    assert queued.execute_call_count == 0
    assert {s.name: s.state for s in manager.status()}["queued"] is TaskState.STOPPED  # SPEC §9


def test_execute_task_added_during_initialize_after_a_stop_is_refused() -> None:
    manager = gt.TaskManager()
    refused: list[str] = []

    def initialize(ctx: gt.Context) -> None:
        manager.stop()
        with pytest.raises(ManagerStateError) as info:
            manager.add_execute_task("late", FakeExecuteTask())
        refused.append(str(info.value))

    manager.add_task("a", FakeTask(initialize=initialize))
    with gevent.Timeout(5):
        assert manager.run() == []
    assert refused == ["task manager is shutting down; will not manage task"]
    assert [s.name for s in manager.status()] == ["a"]


# -- while running ------------------------------------------------------------------


def test_execute_task_added_while_running_starts_at_once_and_is_cancelled_with_the_rest() -> None:
    clock = FakeClock(start=100.0)
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask.blocking())
    runner = start(manager, gt.background(clock))
    clock.advance(5)
    late = FakeExecuteTask.blocking()
    manager.add_execute_task("late", late)
    settle()
    assert late.execute_call_count == 1
    status = manager.status()[-1]
    assert (status.name, status.kind, status.state, status.started_at) == ("late", "execute", TaskState.RUNNING, 105.0)
    clock.advance(1)
    manager.stop()
    assert finish(runner) == []
    assert late.execute_calls[0].cancelled
    status = manager.status()[-1]
    assert (status.state, status.stopped_at) == (TaskState.STOPPED, 106.0)


def test_plain_callable_execute_task() -> None:
    calls: list[gt.Context] = []
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask.blocking())
    manager.add_execute_task("fn", calls.append, ExecuteTaskType.ERROR)
    runner = start(manager)
    manager.add_execute_task("fn2", calls.append, ExecuteTaskType.ERROR)
    settle()
    assert len(calls) == 2
    manager.stop()
    assert finish(runner) == []


@pytest.mark.parametrize("task_type", [ExecuteTaskType.STRICT, ExecuteTaskType.ERROR])
def test_execute_task_added_while_running_joins_the_monitoring(task_type: ExecuteTaskType) -> None:
    boom = RuntimeError("late failure")
    gate = Event()

    def fail(ctx: gt.Context) -> None:
        gate.wait()
        raise boom

    anchor = FakeTask.blocking()
    manager = gt.TaskManager()
    manager.add_task("anchor", anchor)
    runner = start(manager)
    manager.add_execute_task("late", fail, task_type)
    settle()
    assert not anchor.execute_calls[0].cancelled
    gate.set()
    assert finish(runner) == [NamedError("late", E, boom, execute_task_type=task_type)]
    assert anchor.execute_calls[0].cancelled
    assert manager.stop_reason == StopReason("policy", "late", boom)


def test_strict_execute_task_added_while_running_that_returns_stops_everything() -> None:
    anchor = FakeTask.blocking()
    manager = gt.TaskManager()
    manager.add_task("anchor", anchor)
    runner = start(manager)
    manager.add_execute_task("late", FakeExecuteTask())
    [error] = finish(runner)
    assert (error.task_name, type(error.error)) == ("late", gt.UnexpectedStop)
    assert anchor.execute_calls[0].cancelled


def test_execute_task_added_from_inside_a_task() -> None:
    manager = gt.TaskManager()
    child = FakeExecuteTask.blocking()

    def parent(ctx: gt.Context) -> None:
        manager.add_execute_task("child", child)
        ctx.wait()

    manager.add_task("parent", FakeTask(execute=parent))
    runner = start(manager)
    assert child.execute_call_count == 1
    manager.stop()
    assert finish(runner) == []
    assert child.execute_calls[0].cancelled


def test_add_execute_task_once_cancellation_has_begun_is_refused() -> None:
    release = Event()
    manager = gt.TaskManager()
    manager.add_task("slow", FakeTask(execute=lambda ctx: (ctx.wait(), release.wait())))
    runner = start(manager)
    manager.stop()
    settle()
    assert manager.phase == "stopping"
    with pytest.raises(ManagerStateError, match=r"^task manager is shutting down; will not manage task$"):
        manager.add_execute_task("late", FakeExecuteTask())
    release.set()
    assert finish(runner) == []
    assert [s.name for s in manager.status()] == ["slow"]


def test_add_execute_task_during_cleanup_is_refused() -> None:
    manager = gt.TaskManager()
    refused: list[str] = []

    def cleanup(ctx: gt.Context) -> None:
        with pytest.raises(ManagerStateError) as info:
            manager.add_execute_task("late", FakeExecuteTask())
        refused.append(str(info.value))

    manager.add_task("a", FakeTask(cleanup=cleanup), TaskType.STOP_GROUP)
    with gevent.Timeout(5):
        assert manager.run() == []
    assert refused == ["task manager is shutting down; will not manage task"]


def test_many_tasks_added_before_during_and_concurrently_with_cancellation_all_finish() -> None:
    finished: set[str] = set()
    outcomes: dict[str, str] = {}
    manager = gt.TaskManager()

    def make(name: str) -> Any:
        def execute(ctx: gt.Context) -> None:
            ctx.wait()
            finished.add(name)

        return execute

    def adder(name: str, idle_turns: int) -> None:
        for _ in range(idle_turns):
            gevent.idle()
        try:
            manager.add_execute_task(name, make(name), ExecuteTaskType.ERROR)
        except ManagerStateError:
            outcomes[name] = "refused"
        else:
            outcomes[name] = "added"

    for index in range(50):
        manager.add_task(f"task{index}", FakeTask(execute=make(f"task{index}")))
        adder(f"before{index}", 0)

    def run_and_snapshot() -> tuple[list[NamedError], set[str]]:
        errors = manager.run()
        return errors, set(finished)

    runner = gevent.spawn(run_and_snapshot)
    settle()
    adders = [gevent.spawn(adder, f"during{index}", 0) for index in range(50)]
    settle()
    assert manager.phase == "executing"
    racing = [gevent.spawn(adder, f"racing{index}", index % 7) for index in range(100)]

    def stop_soon() -> None:
        for _ in range(3):
            gevent.idle()
        manager.stop()

    stopper = gevent.spawn(stop_soon)
    with gevent.Timeout(5):
        everyone: list[gevent.Greenlet[..., None]] = [*adders, *racing, stopper]
        gevent.joinall(everyone, raise_error=True)
    errors, done_at_return = finish(runner)
    assert errors == []
    added = {name for name, outcome in outcomes.items() if outcome == "added"}
    refused = set(outcomes) - added
    assert len(outcomes) == 200
    assert {f"before{i}" for i in range(50)} | {f"during{i}" for i in range(50)} <= added
    assert refused, "the stop should have refused some racing adds"
    assert any(name.startswith("racing") for name in added), "some racing adds should have won"
    assert added | {f"task{i}" for i in range(50)} == done_at_return
    assert not refused & finished


@pytest.mark.parametrize("seed", range(3))
def test_add_racing_with_stop_never_orphans_a_task(seed: int) -> None:
    """Loop the race a few hundred times: every add that returned had its execute run and finish."""
    rng = random.Random(seed)
    for _ in range(150):
        race_once(rng)


def race_once(rng: random.Random) -> None:
    finished: list[str] = []
    added: list[str] = []
    refused: list[str] = []
    manager = gt.TaskManager()
    manager.add_task("anchor", FakeTask.blocking())
    parent, cancel = gt.with_cancel(gt.background())

    def execute(ctx: gt.Context, name: str) -> None:
        if rng.random() < 0.5:
            ctx.wait()
        else:
            gevent.idle()
        finished.append(name)

    def add(name: str, turns: int) -> None:
        for _ in range(turns):
            gevent.idle()
        try:
            manager.add_execute_task(name, lambda ctx: execute(ctx, name), ExecuteTaskType.ERROR)
        except ManagerStateError:
            refused.append(name)
        else:
            added.append(name)

    def stop(turns: int) -> None:
        for _ in range(turns):
            gevent.idle()
        if rng.random() < 0.5:
            manager.stop()
        else:
            cancel()

    def run_and_snapshot() -> tuple[list[NamedError], list[str]]:
        errors = manager.run(parent)
        return errors, list(finished)

    runner = gevent.spawn(run_and_snapshot)
    settle()
    greenlets: list[gevent.Greenlet[..., None]] = [
        gevent.spawn(add, f"t{i}", rng.randint(0, 3)) for i in range(rng.randint(1, 6))
    ]
    stopper: gevent.Greenlet[..., None] = gevent.spawn(stop, rng.randint(0, 3))
    greenlets.insert(rng.randint(0, len(greenlets)), stopper)
    with gevent.Timeout(5):
        gevent.joinall(greenlets, raise_error=True)
    errors, done_at_return = finish(runner)
    assert errors == []
    assert sorted(done_at_return) == sorted(added)
    assert len(added) + len(refused) == len(greenlets) - 1


# -- from another OS thread ---------------------------------------------------------


def test_add_execute_task_from_another_thread_while_running() -> None:
    started = Event()
    outcome: list[object] = []
    thread_ctx: list[gt.Context] = []

    def execute(ctx: gt.Context) -> None:
        thread_ctx.append(ctx)
        started.set()
        ctx.wait()

    manager = gt.TaskManager()
    manager.add_task("anchor", FakeTask.blocking())
    runner = start(manager)

    def add() -> None:
        try:
            manager.add_execute_task("from-thread", execute)
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append("added")

    thread = threading.Thread(target=add)
    thread.start()
    with gevent.Timeout(5):
        started.wait()
    wait_thread(thread)
    assert outcome == ["added"]
    assert manager.status()[-1].name == "from-thread"
    manager.stop()
    assert finish(runner) == []
    assert thread_ctx[0].cancelled


def test_add_execute_task_from_another_thread_after_cancellation_gets_the_error() -> None:
    release = Event()
    manager = gt.TaskManager()
    manager.add_task("slow", FakeTask(execute=lambda ctx: (ctx.wait(), release.wait())))
    runner = start(manager)
    manager.stop()
    settle()
    outcome: list[BaseException] = []

    def add() -> None:
        try:
            manager.add_execute_task("from-thread", FakeExecuteTask())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=add)
    thread.start()
    wait_thread(thread)
    assert [type(e) for e in outcome] == [ManagerStateError]
    assert str(outcome[0]) == "task manager is shutting down; will not manage task"
    release.set()
    assert finish(runner) == []
    assert [s.name for s in manager.status()] == ["slow"]


def test_add_execute_task_from_another_thread_after_shutdown_does_not_hang() -> None:
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask(), TaskType.STOP_GROUP)
    with gevent.Timeout(5):
        assert manager.run() == []
    outcome: list[BaseException] = []

    def add() -> None:
        try:
            manager.add_execute_task("late", FakeExecuteTask())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=add)
    thread.start()
    # Block this thread (and so the hub) until the other thread gives up on its own.
    thread.join(5)
    assert not thread.is_alive()
    assert [str(e) for e in outcome] == ["task manager has already shut down; will not manage task"]
    settle()  # the queued hand-over runs now and is refused quietly
    assert [s.name for s in manager.status()] == ["a"]


def test_stop_from_another_thread() -> None:
    manager = gt.TaskManager()
    task = FakeTask.blocking()
    manager.add_task("a", task)
    runner = start(manager)
    cause = KeyError("from thread")
    thread = threading.Thread(target=manager.stop, args=(cause,))
    thread.start()
    wait_thread(thread)
    assert finish(runner) == []
    assert manager.stop_reason == StopReason("stop", None, cause)
    assert task.execute_calls[0].cause is cause


# -- bounded history ----------------------------------------------------------------


def test_status_remembers_only_the_last_finished_execute_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(greentask._base, "FINISHED_EXECUTE_HISTORY", 3)
    manager = gt.TaskManager()
    manager.add_task("anchor", FakeTask.blocking())
    runner = start(manager)
    for index in range(6):
        manager.add_execute_task(f"job{index}", FakeExecuteTask(), ExecuteTaskType.ERROR)
    running = FakeExecuteTask.blocking()
    manager.add_execute_task("running", running, ExecuteTaskType.ERROR)
    settle()
    assert [s.name for s in manager.status()] == ["anchor", "job3", "job4", "job5", "running"]
    manager.stop()
    assert finish(runner) == []
    assert [s.name for s in manager.status()] == ["anchor", "job4", "job5", "running"]
    assert manager.status()[0].state is TaskState.DONE


def test_adds_from_another_thread_racing_the_start_of_run_are_never_orphaned() -> None:
    # A thread adds execute tasks as fast as it can while run() initializes, enters the
    # execute phase and shuts down: every add that returned normally must have run
    # before run() returned; the others were refused with ManagerStateError.
    ran: list[int] = []
    accepted: list[int] = []
    refused: list[BaseException] = []
    go = threading.Event()

    def make(i: int) -> Any:
        def execute(ctx: gt.Context) -> None:
            ran.append(i)

        return execute

    def slow_initialize(ctx: gt.Context) -> None:
        for _ in range(200):
            gevent.sleep(0)

    def returns_after_a_while(ctx: gt.Context) -> None:
        for _ in range(200):
            gevent.sleep(0)

    manager = gt.TaskManager()
    manager.add_task(
        "anchor", FakeTask("anchor", initialize=slow_initialize, execute=returns_after_a_while), TaskType.STOP_GROUP
    )

    def adder() -> None:
        go.wait(5)
        for i in range(100_000):
            try:
                manager.add_execute_task(f"t{i}", make(i), ExecuteTaskType.ERROR)
            except gt.ManagerStateError as exc:
                refused.append(exc)
                return
            accepted.append(i)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: hit the race windows
    try:
        thread = threading.Thread(target=adder)
        thread.start()
        go.set()  # the thread is adding while run() starts up, initializes and executes
        with gevent.Timeout(30):
            errors = manager.run()
        wait_thread(thread)
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    assert refused, "the thread kept adding until the manager refused"
    assert sorted(ran) == accepted
