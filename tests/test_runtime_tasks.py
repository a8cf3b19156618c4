"""Runtime add_task, per-task contexts and the edge cases of SPEC §9."""

from __future__ import annotations

from typing import Any

import gevent
import pytest
from _manager_helpers import (
    Draining,
    Gate,
    call_in_thread,
    finish,
    ignore_cancellation,
    start,
    states,
)

import greentask as gt
from greentask import (
    ManagerStateError,
    NamedError,
    Stage,
    StopReason,
    StopTimeout,
    TaskHandle,
    TaskState,
    TaskType,
    UnexpectedStop,
)
from greentask.testing import CallLog, FakeClock, FakeExecuteTask, FakeTask, eventually, settle

INIT, E, C = Stage.INITIALIZE, Stage.EXECUTE, Stage.CLEANUP


# -- runtime add_task: accepted during the execute phase ---------------------------------


def test_add_task_during_execute_returns_a_handle_at_once_and_runs_the_task() -> None:
    log = CallLog()
    gate = Gate()
    manager = gt.TaskManager()
    manager.add_task("anchor", FakeTask.blocking("anchor", log=log))
    runner = start(manager)
    late = FakeTask("late", initialize=gate, execute=lambda ctx: ctx.wait(), log=log)
    with gevent.Timeout(1):
        handle = manager.add_task("late", late)  # does not wait for initialize
    assert isinstance(handle, TaskHandle)
    assert (handle.name, handle.kind) == ("late", "task")
    assert handle.state in (TaskState.PENDING, TaskState.INITIALIZING)
    settle()
    assert gate.entered.is_set()
    assert handle.state is TaskState.INITIALIZING
    assert late.execute_call_count == 0
    gate.release()
    settle()
    assert handle.state is TaskState.RUNNING
    assert late.execute_call_count == 1
    assert handle.wait_running(0) is True
    assert [(s.name, s.kind) for s in manager.status()] == [("anchor", "task"), ("late", "task")]
    manager.stop()
    assert finish(runner) == []
    assert late.execute_calls[0].cancelled
    assert log.calls[-2:] == [("late", C), ("anchor", C)]
    assert (handle.state, handle.done) == (TaskState.DONE, True)


def test_a_runtime_initialize_runs_in_a_greenlet_of_the_manager() -> None:
    init_greenlets: list[Any] = []
    adders: list[Any] = []
    manager = gt.TaskManager()

    def record(ctx: gt.Context) -> None:
        init_greenlets.append(gevent.getcurrent())

    def adder(ctx: gt.Context) -> None:
        adders.append(gevent.getcurrent())
        manager.add_task("from-task", FakeTask(initialize=record, execute=lambda ctx: ctx.wait()))
        ctx.wait()

    manager.add_task("adder", FakeTask(execute=adder))
    runner = start(manager)
    manager.add_task("from-test", FakeTask(initialize=record, execute=lambda ctx: ctx.wait()))
    settle()
    assert len(init_greenlets) == 2
    assert init_greenlets[0] is not adders[0]
    assert init_greenlets[1] is not gevent.getcurrent()
    assert states(manager) == {
        "adder": TaskState.RUNNING,
        "from-task": TaskState.RUNNING,
        "from-test": TaskState.RUNNING,
    }
    manager.stop()
    assert finish(runner) == []


def test_add_task_from_another_os_thread_during_execute() -> None:
    gate = Gate()
    manager = gt.TaskManager()
    manager.add_task("anchor", FakeTask.blocking())
    runner = start(manager)
    late = FakeTask(initialize=gate, execute=lambda ctx: ctx.wait())
    outcome, handle = call_in_thread(manager.add_task, "late", late)  # returns before initialize ends
    assert outcome == "returned"
    assert isinstance(handle, TaskHandle)
    eventually(gate.entered.is_set, timeout=5)
    assert late.execute_call_count == 0
    gate.release()
    eventually(lambda: late.execute_call_count == 1, timeout=5)
    assert handle.state is TaskState.RUNNING
    manager.stop()
    assert finish(runner) == []
    assert late.execute_calls[0].cancelled
    assert late.cleanup_call_count == 1


def test_runtime_initializations_never_overlap_and_run_in_add_order() -> None:
    log = CallLog()
    gates = {name: Gate() for name in ("x", "y", "z")}
    active = [0, 0]  # now, most at once

    def initialize(name: str) -> Any:
        def run(ctx: gt.Context) -> None:
            active[0] += 1
            active[1] = max(active)
            try:
                gates[name](ctx)
            finally:
                active[0] -= 1

        return run

    manager = gt.TaskManager()
    manager.add_task("anchor", FakeTask.blocking())
    runner = start(manager)
    tasks = {
        name: FakeTask(name, initialize=initialize(name), execute=lambda ctx: ctx.wait(), log=log)
        for name in ("x", "y", "z")
    }
    # Added from three greenlets, in this order.
    adders = [gevent.spawn(manager.add_task, name, task) for name, task in tasks.items()]
    settle()
    assert all(adder.dead for adder in adders)
    assert [gates[name].entered.is_set() for name in "xyz"] == [True, False, False]
    assert tasks["y"].initialize_call_count == 0
    gates["x"].release()
    settle()
    assert [gates[name].entered.is_set() for name in "xyz"] == [True, True, False]
    assert tasks["x"].execute_call_count == 1
    gates["y"].release()
    settle()
    gates["z"].release()
    settle()
    assert active[1] == 1
    assert [name for name, stage in log.calls if stage is INIT] == ["x", "y", "z"]
    assert states(manager) == dict.fromkeys(("anchor", "x", "y", "z"), TaskState.RUNNING)
    manager.stop()
    assert finish(runner) == []


def test_a_runtime_initialize_is_bounded_by_initialize_timeout(fake_clock: FakeClock) -> None:
    anchor = FakeTask.blocking()
    manager = gt.TaskManager(initialize_timeout=2)
    manager.add_task("anchor", anchor)
    runner = start(manager, gt.background(fake_clock))
    late = FakeTask(initialize=ignore_cancellation)
    handle = manager.add_task("late", late, TaskType.ERROR)
    fake_clock.advance(1.9)
    assert handle.state is TaskState.INITIALIZING
    assert not anchor.execute_calls[0].cancelled
    fake_clock.advance(0.1)
    errors = finish(runner)
    assert [(e.task_name, e.stage, type(e.error)) for e in errors] == [("late", INIT, StopTimeout)]
    assert manager.stop_reason == StopReason("policy", "late", errors[0].error)
    assert (late.execute_call_count, late.cleanup_call_count) == (0, 1)
    assert anchor.cleanup_call_count == 1


def test_a_runtime_task_goes_through_the_usual_events_and_states() -> None:
    events: list[gt.ManagerEvent] = []
    gate = Gate()
    manager = gt.TaskManager(on_event=events.append)
    manager.add_task("anchor", FakeTask.blocking())
    runner = start(manager)
    handle = manager.add_task("late", FakeTask(initialize=gate, execute=lambda ctx: ctx.wait()))
    seen = [handle.state]
    settle()
    seen.append(handle.state)
    gate.release()
    settle()
    seen.append(handle.state)
    manager.stop()
    assert finish(runner) == []
    seen.append(handle.state)
    assert seen[0] in (TaskState.PENDING, TaskState.INITIALIZING)
    assert seen[1:] == [TaskState.INITIALIZING, TaskState.RUNNING, TaskState.DONE]
    assert [e.kind for e in events if e.task_name == "late"] == [
        "initializing",
        "initialized",
        "started",
        "stopped",
        "cleaning_up",
        "cleaned_up",
    ]


# -- runtime add_task: refused -------------------------------------------------------------


def test_add_task_during_the_initialize_phase_is_refused() -> None:
    refused: list[BaseException] = []
    manager = gt.TaskManager()

    def initialize(ctx: gt.Context) -> None:
        try:
            manager.add_task("late", FakeTask())
        except BaseException as exc:
            refused.append(exc)

    manager.add_task("a", FakeTask(initialize=initialize), TaskType.STOP_GROUP)
    with gevent.Timeout(5):
        assert manager.run() == []
    assert [type(e) for e in refused] == [ManagerStateError]
    assert "will not manage task" in str(refused[0])
    assert [s.name for s in manager.status()] == ["a"]


def test_add_task_once_cancellation_has_begun_is_refused() -> None:
    draining = Draining("slow")
    manager = gt.TaskManager()
    manager.add_task("slow", FakeTask(execute=draining))
    runner = start(manager)
    manager.stop()
    settle()
    with pytest.raises(ManagerStateError, match="will not manage task"):
        manager.add_task("late", FakeTask())
    outcome, error = call_in_thread(manager.add_task, "from-thread", FakeTask())
    assert outcome == "raised"
    assert isinstance(error, ManagerStateError)
    draining.release()
    assert finish(runner) == []
    with pytest.raises(ManagerStateError, match="already shut down; will not manage task"):
        manager.add_task("later", FakeTask())
    assert [s.name for s in manager.status()] == ["slow"]


@pytest.mark.parametrize("task_type", [TaskType.STOP_GROUP, "stop_group"])
def test_a_stop_group_task_is_refused_once_run_has_started(task_type: Any) -> None:
    manager = gt.TaskManager()
    manager.add_task("anchor", FakeTask.blocking())
    runner = start(manager)
    with pytest.raises(ValueError, match="STOP_GROUP"):
        manager.add_task("late", FakeTask(), task_type)
    assert [s.name for s in manager.status()] == ["anchor"]
    assert manager.phase == "executing"
    manager.stop()
    assert finish(runner) == []


# -- runtime add_task: failures and the policy table ----------------------------------------


@pytest.mark.parametrize("task_type", [TaskType.STRICT, TaskType.ERROR])
def test_a_runtime_initialize_failure_cleans_up_that_task_and_cancels_the_run(task_type: TaskType) -> None:
    boom = ConnectionError("refused")
    anchor = FakeTask.blocking()
    manager = gt.TaskManager()
    manager.add_task("anchor", anchor)
    runner = start(manager)
    late = FakeTask(initialize=boom)
    handle = manager.add_task("late", late, task_type)
    errors = finish(runner)
    assert errors == [NamedError("late", INIT, boom, task_type=task_type)]
    assert manager.stop_reason == StopReason("policy", "late", boom)
    assert anchor.execute_calls[0].cancelled
    assert (late.initialize_call_count, late.execute_call_count, late.cleanup_call_count) == (1, 0, 1)
    assert anchor.cleanup_call_count == 1
    assert handle.error is boom
    assert (handle.state, handle.done) == (TaskState.DONE, True)


@pytest.mark.parametrize(
    ("task_type", "outcome", "stops_everything"),
    [
        (TaskType.STRICT, "return", True),
        (TaskType.ERROR, "return", False),
        (TaskType.STRICT, "raise", True),
        (TaskType.ERROR, "raise", True),
    ],
)
def test_the_policy_table_applies_to_a_runtime_task(task_type: TaskType, outcome: str, stops_everything: bool) -> None:
    boom = RuntimeError("late failure")
    anchor = FakeTask.blocking()
    manager = gt.TaskManager()
    manager.add_task("anchor", anchor)
    runner = start(manager)
    manager.add_task("late", FakeTask(execute=boom if outcome == "raise" else None), task_type)
    settle()
    assert anchor.execute_calls[0].cancelled is stops_everything
    if not stops_everything:
        assert manager.phase == "executing"
        manager.stop()
    errors = finish(runner)
    if outcome == "raise":
        assert errors == [NamedError("late", E, boom, task_type=task_type)]
        assert manager.stop_reason == StopReason("policy", "late", boom)
    elif stops_everything:
        assert [(e.task_name, e.stage, type(e.error)) for e in errors] == [("late", E, UnexpectedStop)]
    else:
        assert errors == []


# -- runtime tasks and cancellation ----------------------------------------------------------


def test_runtime_tasks_queued_when_cancellation_begins_are_never_initialized() -> None:
    log = CallLog()
    gate = Gate()
    manager = gt.TaskManager()
    manager.add_task("anchor", FakeTask.blocking("anchor", log=log))
    runner = start(manager)
    first = FakeTask("first", initialize=gate, execute=lambda ctx: ctx.wait(), log=log)
    queued = FakeTask.blocking("queued", log=log)
    first_handle = manager.add_task("first", first)
    queued_handle = manager.add_task("queued", queued)
    settle()
    assert gate.entered.is_set()
    assert queued_handle.state is TaskState.PENDING
    manager.stop()
    settle()
    assert not runner.dead  # "first" is still initializing
    gate.release()  # its initialize finishes after cancellation: never executes, cleaned up
    assert finish(runner) == []
    assert log.stages("queued") == []
    assert log.stages("first") == [INIT, C]
    assert (first_handle.state, first_handle.done) == (TaskState.DONE, True)
    assert (queued_handle.state, queued_handle.done) == (TaskState.PENDING, True)
    assert queued_handle.wait_running(0) is False


def test_a_queued_runtime_task_is_done_as_soon_as_cancellation_begins() -> None:
    gate = Gate()
    manager = gt.TaskManager()
    manager.add_task("anchor", FakeTask.blocking())
    runner = start(manager)
    manager.add_task("first", FakeTask(initialize=gate))
    queued = manager.add_task("queued", FakeTask.blocking())
    settle()
    waiter = gevent.spawn(queued.wait)
    settle()
    manager.stop()
    settle()
    # It will never be initialized, while "first" is still initializing.
    assert gate.returned == 0
    assert (queued.state, queued.done) == (TaskState.PENDING, True)
    assert waiter.dead
    assert waiter.value is True
    gate.release()
    assert finish(runner) == []


def test_a_runtime_initialize_sees_the_cancellation_of_the_run_context() -> None:
    cause = KeyError("shutting down")
    manager = gt.TaskManager()
    manager.add_task("anchor", FakeTask.blocking())
    runner = start(manager)
    late = FakeTask(initialize=lambda ctx: ctx.wait(), execute=lambda ctx: ctx.wait())
    handle = manager.add_task("late", late)
    settle()
    assert handle.state is TaskState.INITIALIZING
    manager.stop(cause)
    assert finish(runner) == []
    ctx = late.initialize_calls[0]
    assert ctx.cancelled
    assert ctx.cause is cause
    assert (late.execute_call_count, late.cleanup_call_count) == (0, 1)


def test_cleanup_at_shutdown_includes_runtime_tasks_in_reverse_add_order() -> None:
    log = CallLog()
    manager = gt.TaskManager()
    for name in ("a", "b"):
        manager.add_task(name, FakeTask.blocking(name, log=log))
    runner = start(manager)
    for name in ("x", "y"):
        manager.add_task(name, FakeTask.blocking(name, log=log))
        settle()
    manager.add_execute_task("e", FakeExecuteTask.blocking("e", log=log))
    manager.add_task("z", FakeTask.blocking("z", log=log))
    settle()
    manager.stop()
    assert finish(runner) == []
    assert [name for name, stage in log.calls if stage is C] == ["z", "y", "x", "b", "a"]
    assert [name for name, stage in log.calls if stage is INIT] == ["a", "b", "x", "y", "z"]


# -- per-task contexts ---------------------------------------------------------------------


def test_every_task_gets_its_own_context_that_knows_the_tasks_name() -> None:
    manager = gt.TaskManager()
    tasks = {name: FakeTask.blocking() for name in ("a", "b")}
    for name, task in tasks.items():
        manager.add_task(name, task)
    execute = FakeExecuteTask.blocking()
    manager.add_execute_task("x", execute)
    runner = start(manager)
    late = FakeTask.blocking()
    manager.add_task("late", late)
    settle()
    tasks["late"] = late
    contexts = [task.execute_calls[0] for task in tasks.values()] + [execute.execute_calls[0]]
    assert len({id(ctx) for ctx in contexts}) == 4
    assert [ctx.task_name for ctx in contexts] == ["a", "b", "late", "x"]
    for name, task in tasks.items():
        assert task.initialize_calls[0].task_name == name
    manager.stop()
    assert finish(runner) == []
    for name, task in tasks.items():
        assert task.cleanup_calls[0].task_name == name
    assert gt.background().task_name is None


def test_task_contexts_derive_from_the_run_context(fake_clock: FakeClock) -> None:
    parent, cancel_parent = gt.with_deadline(gt.with_value(gt.background(fake_clock), "region", "eu"), 100.0)
    manager = gt.TaskManager()
    task = FakeTask.blocking()
    manager.add_task("a", task)
    execute = FakeExecuteTask.blocking()
    manager.add_execute_task("x", execute)
    runner = start(manager, parent)
    late = FakeTask.blocking()
    manager.add_task("late", late)
    settle()
    contexts = [
        task.initialize_calls[0],
        task.execute_calls[0],
        execute.execute_calls[0],
        late.initialize_calls[0],
        late.execute_calls[0],
    ]
    for ctx in contexts:
        assert ctx.value("region") == "eu"
        assert ctx.clock is parent.clock
        assert ctx.deadline == 100.0
        assert not ctx.cancelled
    manager.stop()
    assert finish(runner) == []
    cancel_parent()


@pytest.mark.parametrize("how", ["stop", "parent"])
def test_the_run_contexts_cause_reaches_every_task_context(how: str) -> None:
    cause = KeyError("maintenance")
    parent, cancel_parent = gt.with_cancel(gt.background())
    manager = gt.TaskManager()
    task = FakeTask.blocking()
    manager.add_task("a", task)
    execute = FakeExecuteTask.blocking()
    manager.add_execute_task("x", execute)
    runner = start(manager, parent)
    late = FakeTask.blocking()
    manager.add_task("late", late)
    settle()
    if how == "stop":
        manager.stop(cause)
    else:
        cancel_parent(cause)
    assert finish(runner) == []
    for ctx in (task.execute_calls[0], execute.execute_calls[0], late.execute_calls[0]):
        assert ctx.cancelled
        assert ctx.cause is cause
        assert isinstance(ctx.err, gt.Cancelled)
    assert manager.stop_reason is not None
    assert manager.stop_reason.kind == ("stop" if how == "stop" else "context")
    cancel_parent()


@pytest.mark.parametrize("how", ["manager", "handle"])
def test_cleanup_gets_a_never_cancelled_child_of_the_task_context(how: str) -> None:
    parent = gt.with_value(gt.background(), "region", "eu")
    manager = gt.TaskManager()
    manager.add_task("anchor", FakeTask.blocking())
    task = FakeTask.blocking()
    handle = manager.add_task("a", task)
    runner = start(manager, parent)
    if how == "handle":
        handle.stop(KeyError("handle"))
        settle()
        assert task.cleanup_call_count == 1
    manager.stop(KeyError("manager"))
    assert finish(runner) == []
    task_ctx, cleanup_ctx = task.execute_calls[0], task.cleanup_calls[0]
    assert task_ctx.cancelled
    assert cleanup_ctx is not task_ctx
    assert not cleanup_ctx.cancelled
    assert cleanup_ctx.err is None
    assert cleanup_ctx.deadline is None
    assert cleanup_ctx.value("region") == "eu"
    assert cleanup_ctx.task_name == "a"
    assert cleanup_ctx.clock is task_ctx.clock


def test_a_task_knows_its_stop_deadline_once_cancelled(fake_clock: FakeClock) -> None:
    manager = gt.TaskManager(stop_timeout=10)
    quick, default, by_handle = FakeTask.blocking(), FakeTask.blocking(), FakeTask.blocking()
    manager.add_task("quick", quick, stop_timeout=2)
    manager.add_task("default", default)
    handle = manager.add_task("by-handle", by_handle, stop_timeout=3)
    runner = start(manager, gt.background(fake_clock))
    assert quick.execute_calls[0].stop_deadline is None
    fake_clock.advance(1)
    handle.stop()
    assert by_handle.execute_calls[0].stop_deadline == 4.0
    fake_clock.advance(4)
    manager.stop()
    assert quick.execute_calls[0].stop_deadline == 7.0
    assert default.execute_calls[0].stop_deadline == 15.0
    assert finish(runner) == []


def test_without_any_stop_timeout_the_stop_deadline_is_none() -> None:
    manager = gt.TaskManager()
    task = FakeTask.blocking()
    manager.add_task("a", task)
    runner = start(manager)
    manager.stop()
    assert finish(runner) == []
    assert task.execute_calls[0].cancelled
    assert task.execute_calls[0].stop_deadline is None


# -- edge cases -------------------------------------------------------------------------------


def test_an_execute_task_discarded_after_an_initialize_failure_ends_stopped_and_done() -> None:
    manager = gt.TaskManager()
    discarded = manager.add_execute_task("x", FakeExecuteTask())
    manager.add_task("a", FakeTask(initialize=ValueError("no")))
    with gevent.Timeout(5):
        [error] = manager.run()
    assert error.task_name == "a"
    assert (discarded.state, discarded.done) == (TaskState.STOPPED, True)
    assert discarded.error is None
    assert discarded.wait(0) is True
    assert discarded.wait_running(0) is False
    assert states(manager) == {"x": TaskState.STOPPED, "a": TaskState.DONE}


def test_stopping_is_the_state_of_every_task_draining_after_cancellation() -> None:
    drains = {name: Draining(name) for name in ("a", "x")}
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask(execute=drains["a"]))
    manager.add_execute_task("x", drains["x"])
    manager.add_task("quick", FakeTask.blocking())
    runner = start(manager)
    manager.stop()
    settle()
    assert states(manager) == {"a": TaskState.STOPPING, "x": TaskState.STOPPING, "quick": TaskState.STOPPED}
    drains["x"].release()
    settle()
    assert states(manager)["x"] is TaskState.STOPPED
    assert states(manager)["a"] is TaskState.STOPPING
    drains["a"].release()
    assert finish(runner) == []
    assert states(manager) == {"a": TaskState.DONE, "x": TaskState.STOPPED, "quick": TaskState.DONE}
