"""Nested managers, supervision trees (SPEC §12): a TaskManager added as a task, the
refusal rules, flattened errors and status with path names, events, cleanup order,
and the restart of a whole subtree.

Written against the spec, not the implementation. (HealthServer over a tree is tested
with the health server.)
"""

from __future__ import annotations

import logging

import pytest
from _supervision_helpers import (
    Events,
    Steps,
    after,
    block,
    error_lines,
    finish,
    run,
    start,
    states,
    stop_leftover_managers,  # noqa: F401 - an autouse fixture
    until,
)
from gevent.event import Event

import greentask as gt
from greentask import (
    ManagerStateError,
    NamedError,
    RestartLimitExceeded,
    Stage,
    StopReason,
    TaskState,
    TaskType,
    UnexpectedStop,
)
from greentask.tasks import Backoff
from greentask.testing import CallLog, FakeClock, FakeExecuteTask, FakeTask, settle, start_manager

INIT, E, C = Stage.INITIALIZE, Stage.EXECUTE, Stage.CLEANUP


def init_and_cleanup(log: CallLog) -> tuple[list[str], list[str]]:
    """The names initialized and cleaned up, each in call order."""
    return (
        [name for name, stage in log.calls if stage is INIT],
        [name for name, stage in log.calls if stage is C],
    )


# -- a manager is a task ------------------------------------------------------------


@pytest.mark.parametrize("task_type", [TaskType.STRICT, TaskType.ERROR, TaskType.STOP_GROUP])
def test_a_manager_can_be_added_as_a_task_of_any_type(task_type: TaskType) -> None:
    log = CallLog()
    child = gt.TaskManager(name="pipeline")
    db = FakeTask.blocking("db", log=log)
    child.add_task("db", db)
    parent = gt.TaskManager()
    parent.add_task("web", FakeTask.blocking("web", log=log))
    handle = parent.add_task("pipeline", child, task_type)
    assert isinstance(handle, gt.TaskHandle)
    runner = start(parent)

    assert log.stages("db") == [INIT, E]
    assert states(parent) == {"web": TaskState.RUNNING, "pipeline": TaskState.RUNNING, "pipeline/db": TaskState.RUNNING}
    assert handle.state is TaskState.RUNNING
    parent.stop()
    assert finish(runner) == []
    assert db.execute_calls[0].cancelled
    assert log.stages("db") == [INIT, E, C]
    assert handle.status().state is TaskState.DONE


def test_a_nested_stop_group_manager_completes_the_parents_group() -> None:
    child = gt.TaskManager()
    child.add_task("job", FakeTask("job"), TaskType.STOP_GROUP)  # returns at once
    child.add_task("db", FakeTask.blocking("db"))
    parent = gt.TaskManager()
    parent.add_task("pipeline", child, TaskType.STOP_GROUP)

    assert run(parent) == []
    assert parent.stop_reason == StopReason("policy", "pipeline", None)


# -- refusal rules ------------------------------------------------------------------


def test_a_manager_that_already_ran_cannot_be_added() -> None:
    child = gt.TaskManager()
    ctx, cancel = gt.with_cancel(gt.background())
    cancel()
    assert run(child, ctx) == []
    parent = gt.TaskManager()
    with pytest.raises(ManagerStateError):
        parent.add_task("pipeline", child)
    assert parent.status() == []


def test_a_running_manager_cannot_be_added() -> None:
    child = gt.TaskManager()
    child.add_task("db", FakeTask.blocking())
    with start_manager(child) as running:
        running.wait_running(timeout=5)
        parent = gt.TaskManager()
        with pytest.raises(ManagerStateError):
            parent.add_task("pipeline", child)
    assert parent.status() == []


def test_a_manager_cannot_be_added_to_two_parents() -> None:
    child = gt.TaskManager()
    gt.TaskManager().add_task("pipeline", child)
    other = gt.TaskManager()
    with pytest.raises(ManagerStateError):
        other.add_task("pipeline", child)
    assert other.status() == []


def test_a_manager_cannot_be_added_twice_to_one_parent() -> None:
    # §12 says ManagerStateError; §15 refuses the same object added twice with ValueError.
    child = gt.TaskManager()
    parent = gt.TaskManager()
    parent.add_task("pipeline", child)
    with pytest.raises((ManagerStateError, ValueError)):
        parent.add_task("again", child)
    assert [s.name for s in parent.status()] == ["pipeline"]


def test_a_nested_manager_cannot_be_run_directly() -> None:
    child = gt.TaskManager()
    child.add_task("db", FakeTask.blocking())
    parent = gt.TaskManager()
    parent.add_task("pipeline", child)
    with pytest.raises(ManagerStateError):
        run(child)
    # Nor after its parent ran it: run() runs a manager once.
    ctx, cancel = gt.with_cancel(gt.background())
    cancel()
    assert run(parent, ctx) == []
    with pytest.raises(ManagerStateError):
        run(child)


def test_a_nested_manager_cannot_be_run_while_its_parent_runs() -> None:
    child = gt.TaskManager()
    db = FakeTask.blocking()
    child.add_task("db", db)
    parent = gt.TaskManager()
    parent.add_task("pipeline", child)
    runner = start(parent)
    with pytest.raises(ManagerStateError):
        run(child)
    assert db.execute_call_count == 1
    assert not db.execute_calls[0].cancelled
    parent.stop()
    assert finish(runner) == []


# -- errors are flattened, with paths -----------------------------------------------


def test_errors_are_flattened_with_path_names_three_levels_deep_in_order() -> None:
    err_c, err_d, err_x = ConnectionError("c failed"), OSError("d cleanup"), OSError("x cleanup")
    leaf = gt.TaskManager(name="leaf")
    leaf.add_task("d", FakeTask("d", execute=block, cleanup=err_d))
    leaf.add_task("c", FakeTask("c", execute=err_c), TaskType.ERROR)
    mid = gt.TaskManager(name="mid")
    mid.add_task("b", leaf)
    root = gt.TaskManager(name="root")
    root.add_task("a", mid)
    root.add_task("x", FakeTask("x", execute=block, cleanup=err_x))

    errors = run(root)

    # c fails; at shutdown the root cleans up x, then a (mid -> b (leaf) -> c, then d).
    # The exceptions the nested stages raised to signal failure are not recorded.
    assert errors == [
        NamedError("a/b/c", E, err_c, task_type=TaskType.ERROR),
        NamedError("x", C, err_x, task_type=TaskType.STRICT),
        NamedError("a/b/d", C, err_d, task_type=TaskType.STRICT),
    ]
    assert root.stop_reason == StopReason("policy", "a/b/c", err_c)
    assert mid.stop_reason == StopReason("policy", "b/c", err_c)
    assert leaf.stop_reason == StopReason("policy", "c", err_c)


def test_the_policy_of_the_nested_task_applies_once() -> None:
    # The child's STRICT task returns early (UnexpectedStop); the nested task is ERROR,
    # whose failure cancels the parent once.
    web = FakeTask.blocking("web")
    child = gt.TaskManager()
    child.add_task("db", FakeTask("db"))
    parent = gt.TaskManager()
    parent.add_task("web", web)
    parent.add_task("pipeline", child, TaskType.ERROR)
    events = Events(parent)

    [error] = run(parent)

    assert (error.task_name, error.stage, error.task_type) == ("pipeline/db", E, TaskType.STRICT)
    assert isinstance(error.error, UnexpectedStop)
    assert parent.stop_reason == StopReason("policy", "pipeline/db", error.error)
    assert web.execute_calls[0].cancelled
    assert len(events.of("pipeline", "failed")) == 1
    assert len(events.of(None, "cancelled")) == 1
    assert states(parent)["pipeline"] is TaskState.DONE


def test_the_shutdown_log_line_names_the_innermost_task(caplog: pytest.LogCaptureFixture) -> None:
    refused = ConnectionError("refused")
    child = gt.TaskManager()
    child.add_task("db", FakeTask("db", execute=refused))
    parent = gt.TaskManager(name="app")
    parent.add_task("web", FakeTask.blocking())
    parent.add_task("pipeline", child)
    with caplog.at_level(logging.INFO, logger="greentask"):
        assert run(parent) == [NamedError("pipeline/db", E, refused, task_type=TaskType.STRICT)]
    lines = [r.getMessage() for r in caplog.records if r.name == "greentask" and "shutting down" in r.getMessage()]
    assert any("'pipeline/db'" in line and "ConnectionError('refused')" in line for line in lines), lines


def test_a_nested_initialize_failure_cleans_up_each_initialized_task_once() -> None:
    log = CallLog()
    refused = ConnectionError("refused")
    child = gt.TaskManager()
    child.add_task("x", FakeTask.blocking("x", log=log))
    child.add_task("db", FakeTask("db", initialize=refused, log=log))
    child.add_task("y", FakeTask.blocking("y", log=log))
    parent = gt.TaskManager()
    parent.add_task("a", FakeTask.blocking("a", log=log))
    handle = parent.add_task("pipeline", child)
    parent.add_task("b", FakeTask.blocking("b", log=log))

    errors = run(parent)

    assert errors == [NamedError("pipeline/db", INIT, refused, task_type=TaskType.STRICT)]
    assert log.calls == [("a", INIT), ("x", INIT), ("db", INIT), ("db", C), ("x", C), ("a", C)]
    assert handle.done


# -- status is a tree, flattened ----------------------------------------------------


def test_status_lists_the_subtree_right_after_the_nested_manager_depth_first() -> None:
    inner = gt.TaskManager()
    inner.add_task("q", FakeTask.blocking())
    child = gt.TaskManager()
    child.add_task("db", FakeTask.blocking())
    child.add_task("inner", inner)
    child.add_execute_task("poll", FakeExecuteTask.blocking())
    parent = gt.TaskManager()
    parent.add_task("web", FakeTask.blocking())
    parent.add_task("pipeline", child)
    parent.add_task("api", FakeTask.blocking())
    names = ["web", "pipeline", "pipeline/db", "pipeline/inner", "pipeline/inner/q", "pipeline/poll", "api"]

    assert [s.name for s in parent.status()] == names
    runner = start(parent)
    rows = parent.status()
    assert [(s.name, s.kind, s.state) for s in rows] == [
        ("web", "task", TaskState.RUNNING),
        ("pipeline", "task", TaskState.RUNNING),
        ("pipeline/db", "task", TaskState.RUNNING),
        ("pipeline/inner", "task", TaskState.RUNNING),
        ("pipeline/inner/q", "task", TaskState.RUNNING),
        ("pipeline/poll", "execute", TaskState.RUNNING),
        ("api", "task", TaskState.RUNNING),
    ]
    assert [s.name for s in child.status()] == ["db", "inner", "inner/q", "poll"]
    parent.stop()
    assert finish(runner) == []
    assert [(s.name, s.state) for s in parent.status()] == [
        (name, TaskState.STOPPED if name == "pipeline/poll" else TaskState.DONE) for name in names
    ]


# -- events -------------------------------------------------------------------------


def test_parent_subscribers_receive_the_childs_task_events_with_path_names() -> None:
    child = gt.TaskManager()
    child.add_task("db", FakeTask.blocking())
    parent = gt.TaskManager()
    parent.add_task("pipeline", child)
    events = Events(parent)
    runner = start(parent)
    parent.stop()
    assert finish(runner) == []

    lifecycle = ["initializing", "initialized", "started", "stopped", "cleaning_up", "cleaned_up"]
    assert events.kinds("pipeline/db") == lifecycle
    assert events.kinds("pipeline") == lifecycle
    assert events.kinds("db") == []
    # Only the parent's own manager events (the child's are not passed on).
    assert events.kinds(None) == ["executing", "cancelled", "done"]
    # The child's initialize and cleanup phases happen inside the nested task's stages.
    index = events.index
    assert index("initializing", "pipeline") < index("initializing", "pipeline/db")
    assert index("initialized", "pipeline/db") < index("initialized", "pipeline")
    assert index("cleaning_up", "pipeline") < index("cleaning_up", "pipeline/db")
    assert index("cleaned_up", "pipeline/db") < index("cleaned_up", "pipeline")


def test_on_event_of_the_parent_receives_the_childs_events_too() -> None:
    received: list[gt.ManagerEvent] = []
    inner = gt.TaskManager()
    inner.add_task("q", FakeTask("q", execute=ConnectionError("refused")))
    child = gt.TaskManager()
    child.add_task("inner", inner)
    parent = gt.TaskManager(on_event=received.append)
    parent.add_task("pipeline", child)
    [error] = run(parent)
    failed = [(e.task_name, e.error) for e in received if e.kind == "failed" and e.task_name == "pipeline/inner/q"]
    assert failed == [("pipeline/inner/q", error.error)]


# -- cleanup order across the tree --------------------------------------------------


def test_cleanup_runs_in_reverse_across_the_tree() -> None:
    log = CallLog()
    child = gt.TaskManager()
    child.add_task("x", FakeTask.blocking("x", log=log))
    child.add_task("y", FakeTask.blocking("y", log=log))
    parent = gt.TaskManager()
    parent.add_task("a", FakeTask.blocking("a", log=log))
    parent.add_task("pipeline", child)
    parent.add_task("b", FakeTask.blocking("b", log=log))
    runner = start(parent)
    parent.stop()
    assert finish(runner) == []
    assert init_and_cleanup(log) == (["a", "x", "y", "b"], ["b", "y", "x", "a"])
    assert log.calls.index(("b", INIT)) < min(log.calls.index((name, E)) for name in "abxy")


# -- a nested manager that returns --------------------------------------------------


def test_a_strict_nested_manager_whose_stop_group_completed_is_an_unexpected_stop() -> None:
    web = FakeTask.blocking("web")
    db = FakeTask.blocking("db")
    child = gt.TaskManager()
    child.add_task("job", FakeTask("job"), TaskType.STOP_GROUP)
    child.add_task("db", db)
    parent = gt.TaskManager()
    parent.add_task("web", web)
    parent.add_task("pipeline", child, TaskType.STRICT)

    [error] = run(parent)

    assert (error.task_name, error.stage, error.task_type) == ("pipeline", E, TaskType.STRICT)
    assert isinstance(error.error, UnexpectedStop)
    assert parent.stop_reason == StopReason("policy", "pipeline", error.error)
    assert web.execute_calls[0].cancelled
    assert db.execute_calls[0].cancelled
    assert db.cleanup_call_count == 1


def test_an_error_nested_manager_whose_stop_group_completed_just_stops() -> None:
    child = gt.TaskManager()
    child.add_task("job", FakeTask("job"), TaskType.STOP_GROUP)
    parent = gt.TaskManager()
    web = FakeTask.blocking("web")
    parent.add_task("web", web)
    handle = parent.add_task("pipeline", child, TaskType.ERROR)
    runner = start(parent)
    assert handle.state is TaskState.STOPPED
    assert parent.phase == "executing"
    assert not web.execute_calls[0].cancelled
    parent.stop()
    assert finish(runner) == []


@pytest.mark.parametrize(("task_type", "unexpected"), [(TaskType.STRICT, True), (TaskType.ERROR, False)])
def test_child_stop_makes_the_nested_task_return(task_type: TaskType, unexpected: bool) -> None:
    cause = RuntimeError("maintenance")
    db = FakeTask.blocking("db")
    child = gt.TaskManager()
    child.add_task("db", db)
    parent = gt.TaskManager()
    parent.add_task("web", FakeTask.blocking("web"))
    parent.add_task("pipeline", child, task_type)
    runner = start(parent)

    child.stop(cause)
    settle()

    assert db.execute_calls[0].cause is cause
    if unexpected:
        [error] = finish(runner)
        assert (error.task_name, type(error.error)) == ("pipeline", UnexpectedStop)
    else:
        assert parent.phase == "executing"
        assert db.cleanup_call_count == 0  # the child's cleanup phase comes at the parent's shutdown
        parent.stop()
        assert finish(runner) == []
    assert db.cleanup_call_count == 1


# -- restart of a subtree -----------------------------------------------------------


def test_a_subtree_restart_reinitializes_every_child_task_in_order(
    fake_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    log = CallLog()
    fail = Event()
    db_execute = Steps(until(fail, ConnectionError), block)
    child = gt.TaskManager()
    child.add_task("db", FakeTask("db", execute=db_execute, log=log))
    child.add_task("cache", FakeTask.blocking("cache", log=log))
    web = FakeTask.blocking("web", log=log)
    parent = gt.TaskManager()
    parent.add_task("web", web)
    handle = parent.add_task("pipeline", child, restart=gt.Restart(max_restarts=3, within=60))
    events = Events(parent)
    with caplog.at_level(logging.ERROR, logger="greentask"):
        runner = start(parent, gt.background(fake_clock))
        extra = FakeTask.blocking("extra", log=log)
        child.add_task("extra", extra)  # added at runtime: dropped at a restart
        settle()
        assert log.stages("extra") == [INIT, E]
        log.clear()

        fail.set()
        settle()

        [first_error] = db_execute.raised
        assert log.calls == [
            ("extra", C),
            ("cache", C),
            ("db", C),
            ("db", INIT),
            ("cache", INIT),
            ("db", E),
            ("cache", E),
        ]
        assert handle.restarts == 1
        assert handle.state is TaskState.RUNNING
        assert not web.execute_calls[0].cancelled  # the rest of the parent is untouched
        assert parent.phase == "executing"
        assert extra.initialize_call_count == extra.execute_call_count == extra.cleanup_call_count == 1
        # Handled like any restarted failure: evented and logged with path names.
        assert [e.error for e in events.of("pipeline/db", "failed")] == [first_error]
        assert len(events.of("pipeline", "restarting")) == 1
        lines = error_lines(caplog.records)
        assert any("'pipeline/db'" in line for line in lines), lines
        assert any("restart 1 of at most 3" in line for line in lines), lines

        log.clear()
        parent.stop()
        assert finish(runner) == []  # not added to the parent's result
    assert log.calls == [("cache", C), ("db", C), ("web", C)]


def test_a_subtree_that_gives_up_records_one_restart_limit_exceeded(fake_clock: FakeClock) -> None:
    db_execute = Steps(ConnectionError)

    def cache_execute(ctx: gt.Context) -> None:
        ctx.wait()
        raise OSError("flush failed")  # a second error in every failure of the child

    db = FakeTask("db", execute=db_execute)
    cache = FakeTask("cache", execute=cache_execute)
    child = gt.TaskManager()
    child.add_task("db", db)
    child.add_task("cache", cache)
    web = FakeTask.blocking("web")
    parent = gt.TaskManager()
    parent.add_task("web", web)
    handle = parent.add_task("pipeline", child, restart=gt.Restart(max_restarts=1))

    errors = run(parent, gt.background(fake_clock))

    assert db_execute.calls == 2
    assert handle.restarts == 1
    [gave_up] = [e for e in errors if isinstance(e.error, RestartLimitExceeded)]
    assert (gave_up.task_name, gave_up.stage, gave_up.task_type) == ("pipeline", E, TaskType.STRICT)
    # Its cause is the child's first error of the last failure: db's second one.
    assert gave_up.error.__cause__ is db_execute.raised[1]
    assert not [e for e in errors if e.error in db_execute.raised]
    assert parent.stop_reason is not None
    assert (parent.stop_reason.task_name, parent.stop_reason.error) == ("pipeline", gave_up.error)
    assert web.execute_calls[0].cancelled
    assert db.initialize_call_count == db.cleanup_call_count == 2
    assert cache.initialize_call_count == cache.cleanup_call_count == 2


def test_a_nested_manager_goes_through_its_stages_again_but_runs_once(fake_clock: FakeClock) -> None:
    # A subtree restart re-runs initialize/execute/cleanup on one manager object.
    child = gt.TaskManager()
    child.add_task("db", FakeTask("db", execute=Steps(ConnectionError, ConnectionError, block)))
    parent = gt.TaskManager()
    handle = parent.add_task("pipeline", child, restart=gt.Restart())
    runner = start(parent, gt.background(fake_clock))
    assert handle.restarts == 2
    assert states(parent) == {"pipeline": TaskState.RUNNING, "pipeline/db": TaskState.RUNNING}
    parent.stop()
    assert finish(runner) == []
    with pytest.raises(ManagerStateError):
        run(child)


def test_a_subtree_restarted_on_always_runs_its_stop_group_again(fake_clock: FakeClock) -> None:
    log = CallLog()
    child = gt.TaskManager()
    child.add_task("job", FakeTask("job", execute=after(5), log=log), TaskType.STOP_GROUP)
    parent = gt.TaskManager()
    parent.add_task("web", FakeTask.blocking("web"))
    handle = parent.add_task("pipeline", child, TaskType.ERROR, restart=gt.Restart(on="always", max_restarts=10))
    runner = start(parent, gt.background(fake_clock))
    fake_clock.advance(10)
    assert handle.restarts == 2
    assert log.stages("job") == [INIT, E, C, INIT, E, C, INIT, E]
    parent.stop()
    assert finish(runner) == []
    assert log.stages("job")[-1] is C


def test_handle_stop_of_a_nested_manager_stops_and_cleans_up_its_subtree_once() -> None:
    log = CallLog()
    db = FakeTask.blocking("db", log=log)
    child = gt.TaskManager()
    child.add_task("db", db)
    web = FakeTask.blocking("web", log=log)
    parent = gt.TaskManager()
    parent.add_task("web", web)
    handle = parent.add_task("pipeline", child)
    runner = start(parent)

    handle.stop()
    settle()

    assert handle.done
    assert db.execute_calls[0].cancelled
    assert log.stages("db") == [INIT, E, C]
    assert parent.phase == "executing"
    assert not web.execute_calls[0].cancelled
    parent.stop()
    assert finish(runner) == []
    assert log.stages("db") == [INIT, E, C]


def test_stop_during_a_subtree_restart_wait_ends_the_cycle(fake_clock: FakeClock) -> None:
    log = CallLog()
    child = gt.TaskManager()
    child.add_task("db", FakeTask("db", execute=Steps(ConnectionError, block), log=log))
    parent = gt.TaskManager()
    parent.add_task("web", FakeTask.blocking("web"))
    handle = parent.add_task("pipeline", child, restart=gt.Restart(backoff=Backoff(initial=10, maximum=10, jitter=0)))
    runner = start(parent, gt.background(fake_clock))
    assert handle.state is TaskState.RESTARTING
    assert log.stages("db") == [INIT, E, C]

    parent.stop()
    assert finish(runner) == []
    fake_clock.advance(20)
    assert log.stages("db") == [INIT, E, C]
    assert handle.done
