"""Stop order (SPEC §10): TOGETHER (goasync's, the default) and REVERSE (Erlang/OTP's)."""

from __future__ import annotations

from typing import Any

import pytest
from _manager_helpers import Draining, Unkillable, finish, ignore_cancellation, start, states
from gevent.event import Event

import greentask as gt
from greentask import (
    ExecuteTaskType,
    ManagerEvent,
    NamedError,
    Stage,
    StopOrder,
    StopReason,
    StopTimeout,
    TaskState,
    TaskType,
)
from greentask.testing import CallLog, FakeClock, FakeExecuteTask, FakeTask, settle

INIT, E, C = Stage.INITIALIZE, Stage.EXECUTE, Stage.CLEANUP


def draining_manager(
    names: str, order: list[str], log: CallLog, **kwargs: Any
) -> tuple[gt.TaskManager, dict[str, Any]]:
    """A REVERSE manager with one draining task (from add_task) per letter of ``names``."""
    manager = gt.TaskManager(stop_order=StopOrder.REVERSE, **kwargs)
    drains: dict[str, Draining] = {}
    for name in names:
        drains[name] = Draining(name, order)
        manager.add_task(name, FakeTask(name, execute=drains[name], log=log))
    return manager, drains


def cancelled(drains: dict[str, Draining]) -> dict[str, bool]:
    return {name: drain.ctx is not None and drain.ctx.cancelled for name, drain in drains.items()}


# -- the argument ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reverse"),
    [(StopOrder.TOGETHER, False), (StopOrder.REVERSE, True), ("together", False), ("reverse", True)],
)
def test_stop_order_accepts_the_enum_and_its_strings(value: Any, reverse: bool) -> None:
    manager = gt.TaskManager(stop_order=value)
    first, second = FakeTask.blocking(), Draining("second")
    manager.add_task("first", first)
    manager.add_task("second", FakeTask(execute=second))
    runner = start(manager)
    manager.stop()
    settle()
    assert second.ctx is not None
    assert second.ctx.cancelled
    assert first.execute_calls[0].cancelled is not reverse  # REVERSE: "first" waits for "second" to drain
    second.release()
    assert finish(runner) == []
    assert first.execute_calls[0].cancelled


@pytest.mark.parametrize("value", ["backwards", "", "REVERSED", 1, object()])
def test_a_bad_stop_order_is_refused_naming_the_argument(value: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="stop_order"):
        gt.TaskManager(stop_order=value)


# -- TOGETHER -------------------------------------------------------------------------------


def test_together_is_the_default_and_cancels_every_task_context_at_once() -> None:
    manager = gt.TaskManager()
    tasks = [FakeTask.blocking() for _ in range(3)]
    for index, task in enumerate(tasks):
        manager.add_task(f"t{index}", task)
    execute = FakeExecuteTask.blocking()
    manager.add_execute_task("x", execute)
    runner = start(manager)
    late = FakeTask.blocking()
    manager.add_task("late", late)
    settle()
    manager.stop()
    contexts = [task.execute_calls[0] for task in (*tasks, late)] + [execute.execute_calls[0]]
    assert all(ctx.cancelled for ctx in contexts)
    assert finish(runner) == []


def test_together_stop_timeout_counts_from_cancellation_for_everyone(fake_clock: FakeClock) -> None:
    manager = gt.TaskManager(stop_timeout=2)
    for name in ("a", "b"):
        manager.add_task(name, FakeTask(execute=ignore_cancellation))
    manager.add_execute_task("x", ignore_cancellation)
    runner = start(manager, gt.background(fake_clock))
    fake_clock.advance(5)
    manager.stop()
    fake_clock.advance(1.9)
    assert not runner.dead
    fake_clock.advance(0.1)
    errors = finish(runner)
    assert sorted((e.task_name, type(e.error)) for e in errors) == [
        ("a", StopTimeout),
        ("b", StopTimeout),
        ("x", StopTimeout),
    ]
    assert {s.stopped_at for s in manager.status()} == {7.0}


def test_together_a_tasks_own_stop_timeout_overrides_the_managers(fake_clock: FakeClock) -> None:
    manager = gt.TaskManager(stop_timeout=10)
    quick = manager.add_task("quick", FakeTask(execute=ignore_cancellation), stop_timeout=1)
    slow = manager.add_task("slow", FakeTask(execute=ignore_cancellation))
    quick_x = manager.add_execute_task("quick-x", ignore_cancellation, stop_timeout=3)
    runner = start(manager, gt.background(fake_clock))
    manager.stop()
    fake_clock.advance(1)
    assert isinstance(quick.error, StopTimeout)
    assert slow.error is None
    assert quick_x.error is None
    fake_clock.advance(2)
    assert isinstance(quick_x.error, StopTimeout)
    assert slow.error is None
    fake_clock.advance(7)
    errors = finish(runner)
    assert [e.task_name for e in errors] == ["quick", "quick-x", "slow"]
    assert all(isinstance(e.error, StopTimeout) for e in errors)


# -- REVERSE --------------------------------------------------------------------------------


def test_reverse_stops_tasks_one_at_a_time_in_reverse_add_order() -> None:
    log, order = CallLog(), []
    manager, drains = draining_manager("abc", order, log)
    runner = start(manager)
    manager.stop()
    settle()
    assert order == ["c"]
    assert cancelled(drains) == {"a": False, "b": False, "c": True}
    # The tasks waiting for their turn keep running with an uncancelled context.
    assert states(manager) == {"a": TaskState.RUNNING, "b": TaskState.RUNNING, "c": TaskState.STOPPING}
    assert drains["a"].ctx is not None
    assert drains["a"].ctx.stop_deadline is None
    assert manager.phase == "stopping"
    drains["c"].release()
    settle()
    assert order == ["c", "b"]
    assert cancelled(drains) == {"a": False, "b": True, "c": True}
    assert states(manager)["c"] is TaskState.STOPPED
    drains["b"].release()
    settle()
    assert order == ["c", "b", "a"]
    assert log.stages("c") == [INIT, E]  # no cleanup before every execute has finished
    drains["a"].release()
    assert finish(runner) == []
    assert [name for name, stage in log.calls if stage is C] == ["c", "b", "a"]
    assert states(manager) == dict.fromkeys("abc", TaskState.DONE)


def test_reverse_stops_every_execute_task_first_all_at_once() -> None:
    log, order = CallLog(), []
    manager, drains = draining_manager("ab", order, log)
    for name in ("x", "y"):
        drains[name] = Draining(name, order)
        manager.add_execute_task(name, drains[name], ExecuteTaskType.ERROR)
    runner = start(manager)
    manager.stop()
    settle()
    assert sorted(order) == ["x", "y"]
    assert cancelled(drains) == {"a": False, "b": False, "x": True, "y": True}
    drains["x"].release()
    settle()
    assert cancelled(drains)["b"] is False  # still waiting for "y"
    drains["y"].release()
    settle()
    assert order[2:] == ["b"]
    drains["b"].release()
    settle()
    assert order[2:] == ["b", "a"]
    drains["a"].release()
    assert finish(runner) == []


def test_reverse_orders_runtime_tasks_by_their_add_order() -> None:
    log, order = CallLog(), []
    manager, drains = draining_manager("ab", order, log)
    runner = start(manager)
    for name in ("x", "y"):
        drains[name] = Draining(name, order)
        manager.add_task(name, FakeTask(name, execute=drains[name], log=log))
        settle()
    runtime_x = Draining("rx", order)
    drains["rx"] = runtime_x
    manager.add_execute_task("rx", runtime_x)
    settle()
    manager.stop()
    for expected in (["rx"], ["rx", "y"], ["rx", "y", "x"], ["rx", "y", "x", "b"], ["rx", "y", "x", "b", "a"]):
        settle()
        assert order == expected
        drains[expected[-1]].release()
    assert finish(runner) == []
    assert [name for name, stage in log.calls if stage is C] == ["y", "x", "b", "a"]


def test_reverse_kills_a_stubborn_task_after_its_own_stop_timeout_before_stopping_the_next(
    fake_clock: FakeClock,
) -> None:
    order: list[str] = []
    manager = gt.TaskManager(stop_order="reverse", stop_timeout=10)
    first = Draining("a", order)
    manager.add_task("a", FakeTask(execute=first))
    stubborn = FakeTask(execute=ignore_cancellation)
    manager.add_task("stubborn", stubborn, stop_timeout=2)
    runner = start(manager, gt.background(fake_clock))
    fake_clock.advance(1)
    manager.stop()
    settle()
    assert stubborn.execute_calls[0].stop_deadline == 3.0
    fake_clock.advance(1.9)
    assert order == []
    assert first.ctx is not None
    assert not first.ctx.cancelled
    fake_clock.advance(0.1)
    assert order == ["a"]
    assert first.cancelled_at == 3.0
    assert first.ctx.stop_deadline == 13.0  # its turn came at 3; the manager's stop_timeout applies
    first.release()
    errors = finish(runner)
    assert [(e.task_name, e.stage, type(e.error)) for e in errors] == [("stubborn", E, StopTimeout)]
    assert stubborn.cleanup_call_count == 1


def test_reverse_abandons_a_task_that_refuses_to_die_then_stops_the_next(fake_clock: FakeClock) -> None:
    order: list[str] = []
    unkillable = Unkillable()
    manager = gt.TaskManager(stop_order=StopOrder.REVERSE, stop_timeout=2)
    first = Draining("a", order)
    manager.add_task("a", FakeTask(execute=first))
    manager.add_task("zombie", FakeTask(execute=unkillable))
    runner = start(manager, gt.background(fake_clock))
    manager.stop()
    fake_clock.advance(2)
    assert unkillable.kills == 1
    assert order == []
    fake_clock.advance(1.9)
    assert order == []
    fake_clock.advance(0.1)
    assert order == ["a"]
    assert first.cancelled_at == 4.0
    first.release()
    errors = finish(runner)
    assert [(e.task_name, type(e.error)) for e in errors] == [("zombie", StopTimeout)]
    assert "abandoned" in str(errors[0].error)
    unkillable.finish()


def test_reverse_a_stubborn_execute_task_is_killed_after_its_stop_timeout_then_the_tasks_stop(
    fake_clock: FakeClock,
) -> None:
    order: list[str] = []
    manager = gt.TaskManager(stop_order=StopOrder.REVERSE)
    first = Draining("a", order)
    manager.add_task("a", FakeTask(execute=first))
    manager.add_execute_task("x", ignore_cancellation, stop_timeout=1.5)
    runner = start(manager, gt.background(fake_clock))
    manager.stop()
    fake_clock.advance(1.4)
    assert order == []
    fake_clock.advance(0.1)
    assert order == ["a"]
    first.release()
    errors = finish(runner)
    assert [(e.task_name, type(e.error)) for e in errors] == [("x", StopTimeout)]


def test_reverse_a_task_that_ends_while_waiting_its_turn_is_recorded_without_policy() -> None:
    order: list[str] = []
    boom = OSError("lost the connection while waiting")
    strict_go, failing_go = Event(), Event()

    def fail(ctx: gt.Context) -> None:
        failing_go.wait()
        raise boom

    manager = gt.TaskManager(stop_order=StopOrder.REVERSE)
    strict = manager.add_task("strict", FakeTask(execute=lambda ctx: strict_go.wait()))
    failing = manager.add_task("failing", FakeTask(execute=fail), TaskType.ERROR)
    last = Draining("last", order)
    manager.add_task("last", FakeTask(execute=last))
    runner = start(manager)
    manager.stop()
    settle()
    assert order == ["last"]
    strict_go.set()  # a STRICT task returning while it waits: clean, no UnexpectedStop
    failing_go.set()  # a raise while it waits: recorded, no policy
    settle()
    assert strict.state is TaskState.STOPPED
    assert strict.error is None
    assert failing.state is TaskState.FAILED
    assert failing.error is boom
    assert manager.stop_reason == StopReason("stop", None, None)
    last.release()
    assert finish(runner) == [NamedError("failing", E, boom, task_type=TaskType.ERROR)]


def test_reverse_errors_keep_the_order_in_which_they_were_raised() -> None:
    order: list[str] = []
    errors_raised = {name: OSError(f"{name} failed while stopping") for name in "abc"}

    def raiser(name: str) -> Any:
        def then() -> None:
            raise errors_raised[name]

        return then

    manager = gt.TaskManager(stop_order=StopOrder.REVERSE)
    drains = {name: Draining(name, order, then=raiser(name)) for name in "abc"}
    for name, drain in drains.items():
        manager.add_task(name, FakeTask(execute=drain))
    runner = start(manager)
    manager.stop()
    for name in "cba":
        settle()
        drains[name].release()
    errors = finish(runner)
    assert [(e.task_name, e.error) for e in errors] == [(name, errors_raised[name]) for name in "cba"]


def test_reverse_sets_stop_reason_and_emits_cancelled_at_the_moment_of_cancellation() -> None:
    events: list[ManagerEvent] = []
    cause = KeyError("deploy")
    log, order = CallLog(), []
    manager, drains = draining_manager("ab", order, log, on_event=events.append)
    runner = start(manager)
    manager.stop(cause)
    assert manager.stop_reason == StopReason("stop", None, cause)
    assert (events[-1].kind, events[-1].task_name, events[-1].error) == ("cancelled", None, cause)
    assert cancelled(drains)["a"] is False
    for name in "ba":
        settle()
        drains[name].release()
    assert finish(runner) == []
    assert [e.kind for e in events].count("cancelled") == 1


def test_reverse_a_policy_stop_is_reported_at_once_while_tasks_still_wait() -> None:
    events: list[ManagerEvent] = []
    boom = RuntimeError("worker crashed")
    go = Event()

    def crash(ctx: gt.Context) -> None:
        go.wait()
        raise boom

    log, order = CallLog(), []
    manager, drains = draining_manager("ab", order, log, on_event=events.append)
    manager.add_execute_task("worker", crash)
    runner = start(manager)
    go.set()
    settle()
    assert manager.stop_reason == StopReason("policy", "worker", boom)
    kinds = [(e.kind, e.task_name) for e in events]
    assert kinds.index(("failed", "worker")) < kinds.index(("cancelled", None))
    assert order == ["b"]  # the execute task has ended: "b" is being stopped, "a" waits
    assert cancelled(drains) == {"a": False, "b": True}
    for name in "ba":
        drains[name].release()
        settle()
    assert finish(runner) == [NamedError("worker", E, boom, execute_task_type=ExecuteTaskType.STRICT)]


def test_reverse_starts_on_cancellation_of_the_parent_context() -> None:
    parent, cancel_parent = gt.with_cancel(gt.background())
    log, order = CallLog(), []
    manager, drains = draining_manager("ab", order, log)
    runner = start(manager, parent)
    cancel_parent()
    settle()
    assert order == ["b"]
    for name in "ba":
        drains[name].release()
        settle()
    assert finish(runner) == []
    assert manager.stop_reason is not None
    assert manager.stop_reason.kind == "context"


def test_reverse_skips_tasks_already_stopped_by_handle() -> None:
    log, order = CallLog(), []
    manager = gt.TaskManager(stop_order=StopOrder.REVERSE)
    drains = {name: Draining(name, order) for name in "abc"}
    handles = {name: manager.add_task(name, FakeTask(name, execute=drains[name], log=log)) for name in "abc"}
    runner = start(manager)
    handles["b"].stop()
    settle()
    assert order == ["b"]
    manager.stop()
    settle()
    assert order == ["b", "c"]
    drains["c"].release()
    settle()
    assert order == ["b", "c", "a"]  # not held back by "b", which is still draining on its own
    drains["a"].release()
    settle()
    assert not runner.dead
    drains["b"].release()
    assert finish(runner) == []
    assert sorted(name for name, stage in log.calls if stage is C) == ["a", "b", "c"]


def test_reverse_skips_tasks_whose_execute_already_returned() -> None:
    log, order = CallLog(), []
    manager = gt.TaskManager(stop_order=StopOrder.REVERSE)
    first = Draining("a", order)
    manager.add_task("a", FakeTask("a", execute=first, log=log))
    manager.add_task("returned", FakeTask("returned", log=log), TaskType.ERROR)
    runner = start(manager)
    manager.stop()
    settle()
    assert order == ["a"]
    first.release()
    assert finish(runner) == []
    assert [name for name, stage in log.calls if stage is C] == ["returned", "a"]


def test_reverse_a_runtime_task_still_initializing_is_cancelled_at_once() -> None:
    """It is not executing, so it has no turn in the staged order: it never executes, and
    its initialize (which waits for its ctx) must not hold the shutdown (our reading)."""
    log, order = CallLog(), []
    manager, drains = draining_manager("a", order, log)
    runner = start(manager)
    late = FakeTask("late", initialize=lambda ctx: ctx.wait(), execute=lambda ctx: ctx.wait(), log=log)
    handle = manager.add_task("late", late)
    settle()
    assert handle.state is TaskState.INITIALIZING
    manager.stop()
    settle()
    assert late.initialize_calls[0].cancelled
    assert order == ["a"]
    drains["a"].release()
    assert finish(runner) == []
    assert log.stages("late") == [INIT, C]


@pytest.mark.parametrize("stopped_first", [True, False])
def test_forced_stop_kills_everything_still_executing_at_once_under_reverse(stopped_first: bool) -> None:
    log, order = CallLog(), []
    manager, drains = draining_manager("abc", order, log)
    drains["x"] = Draining("x", order)
    manager.add_execute_task("x", drains["x"])
    runner = start(manager)
    if stopped_first:
        manager.stop()
        settle()
        assert order == ["x"]
    manager._force()  # what gt.run's second signal calls
    errors = finish(runner)
    assert sorted((e.task_name, e.stage) for e in errors if isinstance(e.error, StopTimeout)) == [
        ("a", E),
        ("b", E),
        ("c", E),
        ("x", E),
    ]
    assert not any(drain.returned for drain in drains.values())
    assert [name for name, stage in log.calls if stage is C] == ["c", "b", "a"]


def test_reverse_worst_case_is_bounded(fake_clock: FakeClock) -> None:
    period = 1.0
    zombies = [Unkillable() for _ in range(4)]
    manager = gt.TaskManager(stop_order=StopOrder.REVERSE, stop_timeout=period)
    manager.add_execute_task("x", zombies[0])
    for index, zombie in enumerate(zombies[1:]):
        manager.add_task(f"t{index}", FakeTask(execute=zombie))
    runner = start(manager, gt.background(fake_clock))
    manager.stop()
    k = len(zombies)
    bound = 2 * period * (k + 1)
    while not runner.dead and fake_clock.now() < bound:
        fake_clock.advance(period / 4)
    returned_at = fake_clock.now()
    errors = finish(runner)
    # Each step waits T for the kill, then T more before abandoning; only then the next
    # task's turn comes: one at a time (about 2·T·k), never more than 2·T·(k + 1).
    assert 2 * period * k - period < returned_at <= bound
    assert sorted(e.task_name for e in errors) == ["t0", "t1", "t2", "x"]
    assert all("abandoned" in str(e.error) for e in errors)
    for zombie in zombies:
        zombie.finish()
