"""Restart policies (SPEC §11): Restart's arguments, intensity and giving up, on=, backoff,
the restart sequence, states and events, logging, cancellation during a restart, stop groups.

Written against the spec, not the implementation. Time is a FakeClock throughout; the
restart window and the backoff are measured on it.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import pytest
from _supervision_helpers import (
    Events,
    Steps,
    after,
    block,
    error_lines,
    finish,
    restart_line,
    run,
    start,
    states,
    stop_leftover_managers,  # noqa: F401 - an autouse fixture
    until,
)
from gevent.event import Event

import greentask as gt
from greentask import (
    ExecuteTaskType,
    NamedError,
    RestartLimitExceeded,
    Stage,
    StopReason,
    TaskState,
    TaskType,
    UnexpectedStop,
)
from greentask.tasks import Backoff
from greentask.testing import CallLog, FakeClock, FakeExecuteTask, FakeTask, settle

INIT, E, C = Stage.INITIALIZE, Stage.EXECUTE, Stage.CLEANUP
KINDS = ["task", "execute"]


def add(
    manager: gt.TaskManager,
    kind: str,
    name: str,
    execute: Any,
    restart: gt.Restart | None,
    task_type: str = "strict",
    log: CallLog | None = None,
) -> tuple[gt.TaskHandle, FakeExecuteTask]:
    """Add a fake of ``kind`` ("task" or "execute") with ``execute`` as its execute stub."""
    if kind == "task":
        task = FakeTask(name, execute=execute, log=log)
        return manager.add_task(name, task, TaskType(task_type), restart=restart), task
    fake = FakeExecuteTask(name, execute=execute, log=log)
    return manager.add_execute_task(name, fake, ExecuteTaskType(task_type), restart=restart), fake


def exact(initial: float, maximum: float = 1000.0, factor: float = 2.0) -> Backoff:
    """A Backoff without jitter: its delays are exact."""
    return Backoff(initial=initial, maximum=maximum, factor=factor, jitter=0)


# -- Restart's arguments ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected", "argument"),
    [
        pytest.param({"on": "sometimes"}, ValueError, "on", id="on-unknown"),
        pytest.param({"on": "FAILURE"}, ValueError, "on", id="on-case"),
        pytest.param({"max_restarts": -1}, ValueError, "max_restarts", id="max_restarts-negative"),
        pytest.param({"max_restarts": 1.5}, TypeError, "max_restarts", id="max_restarts-float"),
        pytest.param({"max_restarts": 3.0}, TypeError, "max_restarts", id="max_restarts-integral-float"),
        pytest.param({"max_restarts": "3"}, TypeError, "max_restarts", id="max_restarts-str"),
        pytest.param({"max_restarts": None}, TypeError, "max_restarts", id="max_restarts-none"),
        pytest.param({"within": 0}, ValueError, "within", id="within-zero"),
        pytest.param({"within": -1.0}, ValueError, "within", id="within-negative"),
        pytest.param({"within": math.inf}, ValueError, "within", id="within-inf"),
        pytest.param({"within": math.nan}, ValueError, "within", id="within-nan"),
        pytest.param({"within": "60"}, TypeError, "within", id="within-str"),
        pytest.param({"within": None}, TypeError, "within", id="within-none"),
        pytest.param({"backoff": 0.5}, TypeError, "backoff", id="backoff-number"),
        pytest.param({"backoff": "exponential"}, TypeError, "backoff", id="backoff-str"),
        pytest.param({"backoff": Backoff}, TypeError, "backoff", id="backoff-class"),
    ],
)
def test_restart_refuses_bad_arguments_naming_them(
    kwargs: dict[str, Any], expected: type[Exception], argument: str
) -> None:
    with pytest.raises(expected) as info:
        gt.Restart(**kwargs)
    assert argument in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="defaults"),
        pytest.param({"on": "failure"}, id="on-failure"),
        pytest.param({"on": "always"}, id="on-always"),
        pytest.param({"max_restarts": 0}, id="max_restarts-zero"),
        pytest.param({"max_restarts": 1000}, id="max_restarts-large"),
        pytest.param({"within": 0.001}, id="within-small"),
        pytest.param({"within": 5}, id="within-int"),
        pytest.param({"backoff": Backoff(initial=0.5, maximum=5, jitter=0)}, id="backoff"),
        pytest.param({"on": "always", "max_restarts": 2, "within": 30.0, "backoff": None}, id="all"),
    ],
)
def test_restart_accepts_good_arguments(kwargs: dict[str, Any]) -> None:
    policy = gt.Restart(**kwargs)
    manager = gt.TaskManager()
    assert isinstance(manager.add_task("a", FakeTask(), restart=policy), gt.TaskHandle)
    assert isinstance(manager.add_execute_task("b", FakeExecuteTask(), restart=policy), gt.TaskHandle)


def test_always_with_stop_group_is_refused() -> None:
    manager = gt.TaskManager()
    with pytest.raises(ValueError, match="always"):
        manager.add_task("job", FakeTask(), TaskType.STOP_GROUP, restart=gt.Restart(on="always"))
    assert manager.status() == []


def test_failure_with_stop_group_is_accepted() -> None:
    manager = gt.TaskManager()
    handle = manager.add_task("job", FakeTask(), TaskType.STOP_GROUP, restart=gt.Restart(on="failure"))
    assert handle.restarts == 0
    assert [s.name for s in manager.status()] == ["job"]


@pytest.mark.parametrize("kind", KINDS)
def test_restart_must_be_a_restart_or_none(kind: str) -> None:
    manager = gt.TaskManager()
    with pytest.raises(TypeError, match="restart"):
        add(manager, kind, "a", None, "always")  # type: ignore[arg-type]
    assert manager.status() == []


# -- intensity: giving up -----------------------------------------------------------


@pytest.mark.parametrize("task_type", ["strict", "error"])
def test_exactly_max_restarts_then_it_gives_up_and_its_policy_applies(fake_clock: FakeClock, task_type: str) -> None:
    execute = Steps(ConnectionError)  # a fresh ConnectionError on every run
    db = FakeTask("db", execute=execute)
    other = FakeTask.blocking("other")
    manager = gt.TaskManager()
    handle = manager.add_task("db", db, TaskType(task_type), restart=gt.Restart(max_restarts=3, within=60.0))
    manager.add_task("other", other)

    errors = run(manager, gt.background(fake_clock))

    assert execute.calls == 4
    assert handle.restarts == 3
    [error] = errors  # one RestartLimitExceeded, and only it
    assert (error.task_name, error.stage, error.task_type) == ("db", E, TaskType(task_type))
    assert isinstance(error.error, RestartLimitExceeded)
    assert error.error.__cause__ is execute.raised[-1]
    message = str(error.error)
    assert re.search(r"task 'db' failed 4 times within 60(\.0)?s", message), message
    assert "not restarting" in message
    # Then the task's policy applies to it as to a failure: everything is cancelled.
    assert other.execute_calls[0].cancelled
    assert manager.stop_reason == StopReason("policy", "db", error.error)
    assert handle.error is error.error
    # Cleaned up once per initialize: three restarts, then once at shutdown.
    assert db.initialize_call_count == db.cleanup_call_count == 4
    assert handle.state is TaskState.DONE
    assert handle.done


@pytest.mark.parametrize("task_type", [ExecuteTaskType.STRICT, ExecuteTaskType.ERROR])
def test_an_execute_task_gives_up_too(fake_clock: FakeClock, task_type: ExecuteTaskType) -> None:
    execute = Steps(ConnectionError)
    other = FakeTask.blocking("other")
    manager = gt.TaskManager()
    handle = manager.add_execute_task("poller", execute, task_type, restart=gt.Restart(max_restarts=2))
    manager.add_task("other", other)

    [error] = run(manager, gt.background(fake_clock))

    assert execute.calls == 3
    assert handle.restarts == 2
    assert (error.task_name, error.stage, error.execute_task_type) == ("poller", E, task_type)
    assert isinstance(error.error, RestartLimitExceeded)
    assert error.error.__cause__ is execute.raised[-1]
    assert other.execute_calls[0].cancelled
    assert manager.stop_reason == StopReason("policy", "poller", error.error)


def test_max_restarts_zero_gives_up_at_the_first_failure(fake_clock: FakeClock) -> None:
    execute = Steps(ConnectionError)
    manager = gt.TaskManager()
    handle = manager.add_execute_task("poller", execute, restart=gt.Restart(max_restarts=0))
    manager.add_task("other", FakeTask.blocking())

    [error] = run(manager, gt.background(fake_clock))

    assert execute.calls == 1
    assert handle.restarts == 0
    assert isinstance(error.error, RestartLimitExceeded)
    assert error.error.__cause__ is execute.raised[0]


def test_failures_spread_out_beyond_the_window_never_give_up(fake_clock: FakeClock) -> None:
    # One restart allowed per 10 s; a run lasts 11 s before it fails.
    execute = Steps(after(11, ConnectionError))
    manager = gt.TaskManager()
    handle = manager.add_execute_task("flaky", execute, restart=gt.Restart(max_restarts=1, within=10))
    manager.add_task("other", FakeTask.blocking())
    runner = start(manager, gt.background(fake_clock))

    fake_clock.advance(11 * 6 + 1)

    assert execute.times == [0.0, 11.0, 22.0, 33.0, 44.0, 55.0, 66.0]
    assert handle.restarts == 6
    assert handle.state is TaskState.RUNNING
    assert manager.phase == "executing"
    manager.stop()
    assert finish(runner) == []


def test_failures_within_the_window_give_up(fake_clock: FakeClock) -> None:
    # The same, but a run lasts 9 s: the second failure is within 10 s of the first restart.
    execute = Steps(after(9, ConnectionError))
    manager = gt.TaskManager()
    handle = manager.add_execute_task("flaky", execute, restart=gt.Restart(max_restarts=1, within=10))
    manager.add_task("other", FakeTask.blocking())
    runner = start(manager, gt.background(fake_clock))

    fake_clock.advance(17.5)
    assert not runner.dead
    fake_clock.advance(0.5)

    [error] = finish(runner)
    assert execute.times == [0.0, 9.0]
    assert handle.restarts == 1
    assert isinstance(error.error, RestartLimitExceeded)
    assert error.error.__cause__ is execute.raised[-1]
    assert re.search(r"failed 2 times within 10(\.0)?s", str(error.error)), str(error.error)


def test_restarts_at_different_times_within_the_window_count_together(fake_clock: FakeClock) -> None:
    # Two restarts per 10 s. Failures at 0, 0, then after 6 s: at 6 the window (-4, 6]
    # holds the two restarts at 0, so it gives up.
    execute = Steps(ConnectionError, ConnectionError, after(6, ConnectionError))
    manager = gt.TaskManager()
    handle = manager.add_execute_task("flaky", execute, restart=gt.Restart(max_restarts=2, within=10))
    manager.add_task("other", FakeTask.blocking())
    runner = start(manager, gt.background(fake_clock))
    assert handle.restarts == 2
    fake_clock.advance(6)
    [error] = finish(runner)
    assert execute.times == [0.0, 0.0, 0.0]
    assert isinstance(error.error, RestartLimitExceeded)


def test_the_window_forgets_old_restarts(fake_clock: FakeClock) -> None:
    # Two restarts per 10 s: failures at 0 and 0 (two restarts), then at 11, 22, 33:
    # each time the window holds one earlier restart at most.
    execute = Steps(ConnectionError, ConnectionError, after(11, ConnectionError))
    manager = gt.TaskManager()
    handle = manager.add_execute_task("flaky", execute, restart=gt.Restart(max_restarts=2, within=10))
    manager.add_task("other", FakeTask.blocking())
    runner = start(manager, gt.background(fake_clock))
    fake_clock.advance(34)
    assert execute.times == [0.0, 0.0, 0.0, 11.0, 22.0, 33.0]
    assert handle.restarts == 5
    manager.stop()
    assert finish(runner) == []


# -- on="failure" / on="always" -----------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_on_failure_restarts_a_strict_task_that_returns_early(fake_clock: FakeClock, kind: str) -> None:
    execute = Steps(None, block)  # returns at once (an UnexpectedStop), then runs
    manager = gt.TaskManager()
    handle, _ = add(manager, kind, "db", execute, gt.Restart(on="failure"))
    manager.add_task("other", FakeTask.blocking())
    runner = start(manager, gt.background(fake_clock))

    assert execute.calls == 2
    assert handle.restarts == 1
    assert handle.state is TaskState.RUNNING
    assert manager.phase == "executing"
    assert isinstance(handle.status().error, UnexpectedStop)
    manager.stop()
    assert finish(runner) == []


@pytest.mark.parametrize("kind", KINDS)
def test_on_failure_does_not_restart_an_error_task_that_returns(fake_clock: FakeClock, kind: str) -> None:
    execute = Steps(None, block)
    manager = gt.TaskManager()
    handle, _ = add(manager, kind, "db", execute, gt.Restart(on="failure"), "error")
    manager.add_task("other", FakeTask.blocking())
    runner = start(manager, gt.background(fake_clock))
    fake_clock.advance(100)

    assert execute.calls == 1
    assert handle.restarts == 0
    assert handle.state is TaskState.STOPPED
    assert manager.phase == "executing"
    manager.stop()
    assert finish(runner) == []


@pytest.mark.parametrize("kind", KINDS)
def test_on_failure_restarts_an_error_task_that_raises(fake_clock: FakeClock, kind: str) -> None:
    execute = Steps(ConnectionError, block)
    manager = gt.TaskManager()
    handle, _ = add(manager, kind, "db", execute, gt.Restart(on="failure"), "error")
    manager.add_task("other", FakeTask.blocking())
    runner = start(manager, gt.background(fake_clock))

    assert execute.calls == 2
    assert handle.restarts == 1
    assert handle.state is TaskState.RUNNING
    manager.stop()
    assert finish(runner) == []


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("task_type", ["strict", "error"])
def test_on_always_restarts_clean_returns(fake_clock: FakeClock, kind: str, task_type: str) -> None:
    execute = Steps(None, after(5), block)  # returns at once, returns after 5 s, then runs
    manager = gt.TaskManager()
    handle, _ = add(manager, kind, "db", execute, gt.Restart(on="always"), task_type)
    manager.add_task("other", FakeTask.blocking())
    runner = start(manager, gt.background(fake_clock))
    fake_clock.advance(5)

    assert execute.times == [0.0, 0.0, 5.0]
    assert handle.restarts == 2
    assert handle.state is TaskState.RUNNING
    assert manager.phase == "executing"
    manager.stop()
    assert finish(runner) == []


@pytest.mark.parametrize("task_type", ["strict", "error"])
def test_on_always_gives_up_after_clean_returns_with_no_cause(fake_clock: FakeClock, task_type: str) -> None:
    execute = Steps(None)
    other = FakeTask.blocking("other")
    manager = gt.TaskManager()
    handle, _ = add(manager, "task", "db", execute, gt.Restart(on="always", max_restarts=2), task_type)
    manager.add_task("other", other)

    [error] = run(manager, gt.background(fake_clock))

    assert execute.calls == 3
    assert handle.restarts == 2
    assert (error.task_name, error.stage) == ("db", E)
    assert isinstance(error.error, RestartLimitExceeded)
    if task_type == "error":
        assert error.error.__cause__ is None
    else:
        # A STRICT task's early return is "what would be its UnexpectedStop" (on="failure");
        # whether under "always" it is a clean return (no cause) or that failure, §11 leaves open.
        assert error.error.__cause__ is None or isinstance(error.error.__cause__, UnexpectedStop)
    assert other.execute_calls[0].cancelled  # its policy applies as to a failure
    assert manager.stop_reason == StopReason("policy", "db", error.error)


def test_a_clean_return_after_cancellation_is_not_restarted_even_under_always(fake_clock: FakeClock) -> None:
    execute = Steps(block)
    manager = gt.TaskManager()
    handle = manager.add_execute_task("db", execute, restart=gt.Restart(on="always"))
    runner = start(manager, gt.background(fake_clock))
    manager.stop()
    assert finish(runner) == []
    assert execute.calls == 1
    assert handle.restarts == 0


# -- backoff ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_backoff_delays_are_exact_on_the_clock(fake_clock: FakeClock, kind: str) -> None:
    execute = Steps(*[ConnectionError] * 5, block)
    manager = gt.TaskManager()
    policy = gt.Restart(max_restarts=10, within=1000, backoff=exact(1, maximum=8))
    handle, _ = add(manager, kind, "db", execute, policy)
    manager.add_task("other", FakeTask.blocking())
    runner = start(manager, gt.background(fake_clock))

    assert execute.times == [0.0]
    assert handle.state is TaskState.RESTARTING
    fake_clock.advance(0.5)
    assert execute.times == [0.0]
    fake_clock.advance(0.5)
    assert execute.times == [0.0, 1.0]
    fake_clock.advance(30)
    # Waits 1, 2, 4, 8, then capped at 8.
    assert execute.times == [0.0, 1.0, 3.0, 7.0, 15.0, 23.0]
    assert handle.restarts == 5
    manager.stop()
    assert finish(runner) == []


def test_backoff_is_reset_once_a_run_lasted_within_seconds(fake_clock: FakeClock) -> None:
    # Runs at 0 and 1 fail at once; the run at 3 lasts 20 s (> within=10) and fails at
    # 23: the backoff was reset, so the next wait is 1 again, then 2.
    execute = Steps(ConnectionError, ConnectionError, after(20, ConnectionError), ConnectionError, block)
    manager = gt.TaskManager()
    manager.add_execute_task("db", execute, restart=gt.Restart(max_restarts=100, within=10, backoff=exact(1)))
    manager.add_task("other", FakeTask.blocking())
    runner = start(manager, gt.background(fake_clock))
    fake_clock.advance(40)
    assert execute.times == [0.0, 1.0, 3.0, 24.0, 26.0]
    manager.stop()
    assert finish(runner) == []


def test_backoff_is_not_reset_by_a_run_shorter_than_within(fake_clock: FakeClock) -> None:
    # The run at 3 lasts 9 s (< within=10) and fails at 12: the backoff goes on (4, then 8).
    execute = Steps(ConnectionError, ConnectionError, after(9, ConnectionError), ConnectionError, block)
    manager = gt.TaskManager()
    manager.add_execute_task("db", execute, restart=gt.Restart(max_restarts=100, within=10, backoff=exact(1)))
    manager.add_task("other", FakeTask.blocking())
    runner = start(manager, gt.background(fake_clock))
    fake_clock.advance(40)
    assert execute.times == [0.0, 1.0, 3.0, 16.0, 24.0]
    manager.stop()
    assert finish(runner) == []


def test_without_backoff_a_restart_happens_at_once(fake_clock: FakeClock) -> None:
    execute = Steps(ConnectionError, ConnectionError, block)
    manager = gt.TaskManager()
    handle = manager.add_execute_task("db", execute, restart=gt.Restart())
    manager.add_task("other", FakeTask.blocking())
    runner = start(manager, gt.background(fake_clock))
    assert execute.times == [0.0, 0.0, 0.0]
    assert handle.state is TaskState.RUNNING
    manager.stop()
    assert finish(runner) == []


# -- what a restart does ------------------------------------------------------------


def test_a_task_restarts_through_cleanup_wait_initialize_execute(fake_clock: FakeClock) -> None:
    log = CallLog()
    execute = Steps(ConnectionError, block)
    db = FakeTask("db", execute=execute, log=log)
    manager = gt.TaskManager()
    handle = manager.add_task("db", db, restart=gt.Restart(backoff=exact(5)))
    runner = start(manager, gt.background(fake_clock))

    assert log.calls == [("db", INIT), ("db", E), ("db", C)]
    assert handle.state is TaskState.RESTARTING
    assert not handle.done  # a task about to be restarted is not done
    assert not db.cleanup_calls[0].cancelled  # cleanup's usual without_cancel context
    fake_clock.advance(4.5)
    assert log.calls == [("db", INIT), ("db", E), ("db", C)]
    fake_clock.advance(0.5)
    assert log.calls == [("db", INIT), ("db", E), ("db", C), ("db", INIT), ("db", E)]
    assert handle.status().state is TaskState.RUNNING
    # A fresh task context for the new run.
    assert db.execute_calls[1] is not db.execute_calls[0]
    assert db.initialize_calls[1] is not db.initialize_calls[0]
    assert not db.execute_calls[1].cancelled

    manager.stop()
    assert finish(runner) == []
    assert log.calls[5:] == [("db", C)]
    assert db.execute_calls[1].cancelled


def test_an_execute_task_restarts_through_wait_then_execute(fake_clock: FakeClock) -> None:
    log = CallLog()
    poller = FakeExecuteTask("poller", execute=Steps(ConnectionError, block), log=log)
    manager = gt.TaskManager()
    handle = manager.add_execute_task("poller", poller, restart=gt.Restart(backoff=exact(2)))
    manager.add_task("other", FakeTask.blocking())
    runner = start(manager, gt.background(fake_clock))

    assert log.calls == [("poller", E)]
    assert handle.state is TaskState.RESTARTING
    assert not handle.done
    fake_clock.advance(2)
    assert log.calls == [("poller", E), ("poller", E)]
    assert handle.status().state is TaskState.RUNNING
    assert poller.execute_calls[1] is not poller.execute_calls[0]
    assert not poller.execute_calls[1].cancelled
    manager.stop()
    assert finish(runner) == []


def test_a_restarted_task_keeps_its_place_in_the_add_order(fake_clock: FakeClock) -> None:
    log = CallLog()
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask.blocking("a", log=log))
    manager.add_task("db", FakeTask("db", execute=Steps(ConnectionError, block), log=log), restart=gt.Restart())
    manager.add_task("c", FakeTask.blocking("c", log=log))
    runner = start(manager, gt.background(fake_clock))
    assert log.stages("db") == [INIT, E, C, INIT, E]
    assert [s.name for s in manager.status()] == ["a", "db", "c"]
    log.clear()
    manager.stop()
    assert finish(runner) == []
    assert log.calls == [("c", C), ("db", C), ("a", C)]


# -- states, events, the restart count ----------------------------------------------


def test_states_events_and_the_restart_count_of_a_task(fake_clock: FakeClock) -> None:
    refused = ConnectionError("refused")
    manager = gt.TaskManager()
    manager.add_task("other", FakeTask.blocking())
    handle = manager.add_task("db", FakeTask("db", execute=Steps(refused, block)), restart=gt.Restart(backoff=exact(1)))
    events = Events(manager, probe=lambda event: (handle.state, handle.restarts))
    runner = start(manager, gt.background(fake_clock))

    def sampled(*kinds: str) -> list[tuple[str, Any, Any]]:
        return [
            (event.kind, event.error, probe)
            for event, probe in zip(events.events, events.probes, strict=True)
            if event.task_name == "db" and event.kind in kinds
        ]

    watched = ("initializing", "started", "failed", "restarting")
    assert sampled(*watched) == [
        ("initializing", None, (TaskState.INITIALIZING, 0)),
        ("started", None, (TaskState.RUNNING, 0)),
        ("failed", refused, (TaskState.FAILED, 0)),
        ("restarting", refused, (TaskState.RESTARTING, 1)),
    ]
    # "failed" then "restarting" with the same error; the restart cleanup in between.
    kinds = events.kinds("db")
    assert kinds.index("failed") < kinds.index("cleaning_up") < kinds.index("restarting")
    # CLEANING_UP -> RESTARTING, never DONE in between (not even at its "cleaned_up" event).
    assert sampled("cleaning_up", "cleaned_up") == [
        ("cleaning_up", None, (TaskState.CLEANING_UP, 0)),
        ("cleaned_up", None, (TaskState.CLEANING_UP, 0)),
    ]
    # During the wait.
    assert handle.state is TaskState.RESTARTING
    assert handle.restarts == 1
    assert handle.status().restarts == 1
    assert {s.name: s.restarts for s in manager.status()} == {"other": 0, "db": 1}

    fake_clock.advance(1)
    assert sampled(*watched)[4:] == [
        ("initializing", None, (TaskState.INITIALIZING, 1)),
        ("started", None, (TaskState.RUNNING, 1)),
    ]
    assert handle.status().state is TaskState.RUNNING
    assert handle.status().restarts == 1
    manager.stop()
    assert finish(runner) == []
    assert handle.status().restarts == 1


def test_states_and_events_of_an_execute_task(fake_clock: FakeClock) -> None:
    refused = ConnectionError("refused")
    manager = gt.TaskManager()
    manager.add_task("other", FakeTask.blocking())
    handle = manager.add_execute_task("poller", Steps(refused, block), restart=gt.Restart(backoff=exact(1)))
    events = Events(manager, probe=lambda event: handle.state)
    runner = start(manager, gt.background(fake_clock))
    fake_clock.advance(1)

    observed = [
        (event.kind, event.error, probe)
        for event, probe in zip(events.events, events.probes, strict=True)
        if event.task_name == "poller"
    ]
    assert observed == [
        ("started", None, TaskState.RUNNING),
        ("failed", refused, TaskState.FAILED),
        ("restarting", refused, TaskState.RESTARTING),
        ("started", None, TaskState.RUNNING),
    ]
    assert handle.restarts == 1
    manager.stop()
    assert finish(runner) == []


# -- a restarted failure is handled, not returned -----------------------------------


def test_a_restarted_failure_is_logged_evented_and_stored_but_not_returned(
    fake_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = ConnectionError("refused"), ConnectionError("refused")
    manager = gt.TaskManager()
    manager.add_task("other", FakeTask.blocking())
    policy = gt.Restart(max_restarts=3, within=60.0, backoff=exact(0.2, maximum=10))
    handle = manager.add_task("db", FakeTask("db", execute=Steps(first, second, block)), restart=policy)
    events = Events(manager)
    with caplog.at_level(logging.ERROR, logger="greentask"):
        runner = start(manager, gt.background(fake_clock))
        fake_clock.advance(0.2)  # the second failure; the next wait is 0.4 s
        lines = error_lines(caplog.records)

        pattern_1 = restart_line("db", "execute", "ConnectionError('refused')", 1, 3, "60", "0.2")
        pattern_2 = restart_line("db", "execute", "ConnectionError('refused')", 2, 3, "60", "0.4")
        assert [line for line in lines if pattern_1.search(line)], lines
        [record] = [r for r in caplog.records if pattern_2.search(r.getMessage())]
        assert record.levelno == logging.ERROR
        assert record.exc_info is not None  # with its traceback
        assert record.exc_info[1] is second

        assert handle.status().error is second  # the latest failure
        assert handle.error is None  # nothing "recorded" yet
        assert [e.error for e in events.of("db", "failed")] == [first, second]
        assert [e.error for e in events.of("db", "restarting")] == [first, second]

        fake_clock.advance(0.4)
        assert handle.state is TaskState.RUNNING
        manager.stop()
        assert finish(runner) == []
    assert handle.restarts == 2
    assert handle.error is None


def test_an_initialize_failure_during_a_restart_counts(fake_clock: FakeClock) -> None:
    log = CallLog()
    initialize = Steps(None, OSError, None)
    db = FakeTask("db", initialize=initialize, execute=Steps(ConnectionError, block), log=log)
    manager = gt.TaskManager()
    manager.add_task("other", FakeTask.blocking())
    handle = manager.add_task("db", db, restart=gt.Restart(max_restarts=2))
    runner = start(manager, gt.background(fake_clock))

    assert handle.restarts == 2
    assert handle.state is TaskState.RUNNING
    assert db.initialize_call_count == 3
    assert db.execute_call_count == 2
    assert handle.status().error is initialize.raised[0]
    manager.stop()
    assert finish(runner) == []
    # Every initialize is followed by exactly one cleanup before the next one.
    assert log.stages("db") == [INIT, E, C, INIT, C, INIT, E, C]


def test_an_initialize_failure_during_a_restart_can_give_up(fake_clock: FakeClock) -> None:
    log = CallLog()
    initialize = Steps(None, OSError)
    db = FakeTask("db", initialize=initialize, execute=Steps(ConnectionError), log=log)
    other = FakeTask.blocking("other")
    manager = gt.TaskManager()
    manager.add_task("other", other)
    handle = manager.add_task("db", db, restart=gt.Restart(max_restarts=1))

    [error] = run(manager, gt.background(fake_clock))

    assert handle.restarts == 1
    assert (error.task_name, error.stage, error.task_type) == ("db", INIT, TaskType.STRICT)
    assert isinstance(error.error, RestartLimitExceeded)
    assert error.error.__cause__ is initialize.raised[-1]
    assert other.execute_calls[0].cancelled
    assert manager.stop_reason == StopReason("policy", "db", error.error)
    assert log.stages("db") == [INIT, E, C, INIT, C]
    assert handle.state is TaskState.DONE
    assert handle.done


def test_a_failure_in_the_initialize_phase_of_run_is_never_restarted(fake_clock: FakeClock) -> None:
    log = CallLog()
    refused = ConnectionError("refused")
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask.blocking("a", log=log))
    handle = manager.add_task("db", FakeTask("db", initialize=refused, log=log), restart=gt.Restart())
    manager.add_task("c", FakeTask.blocking("c", log=log))

    errors = run(manager, gt.background(fake_clock))

    assert errors == [NamedError("db", INIT, refused, task_type=TaskType.STRICT)]
    assert log.calls == [("a", INIT), ("db", INIT), ("db", C), ("a", C)]
    assert handle.restarts == 0
    assert handle.error is refused


def test_a_task_added_at_runtime_is_restarted_from_its_first_initialize(fake_clock: FakeClock) -> None:
    log = CallLog()
    initialize = Steps(OSError, None)
    manager = gt.TaskManager()
    manager.add_task("other", FakeTask.blocking())
    runner = start(manager, gt.background(fake_clock))

    db = FakeTask("db", initialize=initialize, execute=block, log=log)
    handle = manager.add_task("db", db, restart=gt.Restart())
    settle()

    assert log.stages("db") == [INIT, C, INIT, E]
    assert handle.restarts == 1
    assert handle.state is TaskState.RUNNING
    assert handle.status().error is initialize.raised[0]
    manager.stop()
    assert finish(runner) == []
    assert log.stages("db") == [INIT, C, INIT, E, C]


def test_a_task_added_at_runtime_gives_up_like_any_other(fake_clock: FakeClock) -> None:
    initialize = Steps(OSError)
    manager = gt.TaskManager()
    other = FakeTask.blocking()
    manager.add_task("other", other)
    runner = start(manager, gt.background(fake_clock))

    db = FakeTask("db", initialize=initialize)
    handle = manager.add_task("db", db, restart=gt.Restart(max_restarts=1))

    [error] = finish(runner)
    assert handle.restarts == 1
    assert (error.task_name, error.stage) == ("db", INIT)
    assert isinstance(error.error, RestartLimitExceeded)
    assert error.error.__cause__ is initialize.raised[-1]
    assert db.initialize_call_count == db.cleanup_call_count == 2
    assert other.execute_calls[0].cancelled


# -- cancellation ends a restart cycle ----------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_handle_stop_during_the_backoff_wait_ends_the_cycle(fake_clock: FakeClock, kind: str) -> None:
    log = CallLog()
    other = FakeTask.blocking("other")
    manager = gt.TaskManager()
    manager.add_task("other", other)
    handle, fake = add(manager, kind, "db", Steps(ConnectionError, block), gt.Restart(backoff=exact(10)), log=log)
    runner = start(manager, gt.background(fake_clock))
    assert handle.state is TaskState.RESTARTING

    handle.stop()
    settle()
    assert handle.done
    fake_clock.advance(30)
    assert fake.execute_call_count == 1
    assert handle.restarts == 1
    assert manager.phase == "executing"  # no other task is touched
    assert not other.execute_calls[0].cancelled
    if kind == "task":
        assert log.stages("db") == [INIT, E, C]  # cleaned up once, by the restart
        assert handle.status().state is TaskState.DONE
    else:
        assert handle.state in (TaskState.STOPPED, TaskState.FAILED)

    manager.stop()
    assert finish(runner) == []
    assert log.stages("db") == ([INIT, E, C] if kind == "task" else [E])


@pytest.mark.parametrize("kind", KINDS)
def test_manager_stop_during_the_backoff_wait_ends_the_cycle(fake_clock: FakeClock, kind: str) -> None:
    log = CallLog()
    manager = gt.TaskManager()
    manager.add_task("other", FakeTask.blocking())
    handle, fake = add(manager, kind, "db", Steps(ConnectionError, block), gt.Restart(backoff=exact(10)), log=log)
    runner = start(manager, gt.background(fake_clock))
    assert handle.state is TaskState.RESTARTING

    manager.stop()
    assert finish(runner) == []
    fake_clock.advance(30)
    assert fake.execute_call_count == 1
    assert handle.done
    assert log.stages("db") == ([INIT, E, C] if kind == "task" else [E])


@pytest.mark.parametrize("stopper", ["handle", "manager"])
def test_stop_during_a_restart_initialize_cleans_up_once(fake_clock: FakeClock, stopper: str) -> None:
    log = CallLog()
    gate = Event()
    initialize = Steps(None, until(gate))
    db = FakeTask("db", initialize=initialize, execute=Steps(ConnectionError, block), log=log)
    manager = gt.TaskManager()
    manager.add_task("other", FakeTask.blocking())
    handle = manager.add_task("db", db, restart=gt.Restart())
    runner = start(manager, gt.background(fake_clock))
    assert handle.state is TaskState.INITIALIZING
    assert log.stages("db") == [INIT, E, C, INIT]

    if stopper == "handle":
        handle.stop()
    else:
        manager.stop()
    settle()
    gate.set()  # in case the initialize does not look at its context
    settle()

    assert log.stages("db") == [INIT, E, C, INIT, C]
    assert handle.restarts == 1
    fake_clock.advance(100)
    manager.stop()
    assert finish(runner) == []
    assert log.stages("db") == [INIT, E, C, INIT, C]
    assert handle.done


def test_what_a_task_raises_after_cancellation_is_recorded_and_not_restarted(fake_clock: FakeClock) -> None:
    dying = OSError("flush failed")

    def execute(ctx: gt.Context) -> None:
        ctx.wait()
        raise dying

    steps = Steps(execute)
    manager = gt.TaskManager()
    handle = manager.add_execute_task("db", steps, restart=gt.Restart())
    runner = start(manager, gt.background(fake_clock))
    manager.stop()
    assert finish(runner) == [NamedError("db", E, dying, execute_task_type=ExecuteTaskType.STRICT)]
    assert steps.calls == 1
    assert handle.restarts == 0


# -- stop groups --------------------------------------------------------------------


def test_a_stop_group_task_with_restart_counts_only_on_its_clean_return(fake_clock: FakeClock) -> None:
    g1_done, g2_done = Event(), Event()
    g1 = Steps(ConnectionError, until(g1_done))
    manager = gt.TaskManager()
    h1 = manager.add_task("g1", FakeTask("g1", execute=g1), TaskType.STOP_GROUP, restart=gt.Restart())
    manager.add_task("g2", FakeTask("g2", execute=until(g2_done)), TaskType.STOP_GROUP)
    runner = start(manager, gt.background(fake_clock))
    assert h1.restarts == 1

    g2_done.set()
    settle()
    # g1's failure did not count: the group is not complete while g1 runs.
    assert manager.phase == "executing"
    assert h1.state is TaskState.RUNNING

    g1_done.set()
    assert finish(runner) == []
    assert manager.stop_reason == StopReason("policy", "g1", None)


def test_a_stop_group_task_that_gives_up_cancels_the_run(fake_clock: FakeClock) -> None:
    g2 = FakeTask.blocking("g2")
    manager = gt.TaskManager()
    h1 = manager.add_task(
        "g1", FakeTask("g1", execute=Steps(ConnectionError)), TaskType.STOP_GROUP, restart=gt.Restart(max_restarts=1)
    )
    manager.add_task("g2", g2, TaskType.STOP_GROUP)

    [error] = run(manager, gt.background(fake_clock))

    assert h1.restarts == 1
    assert (error.task_name, error.task_type) == ("g1", TaskType.STOP_GROUP)
    assert isinstance(error.error, RestartLimitExceeded)
    assert manager.stop_reason == StopReason("policy", "g1", error.error)
    assert g2.execute_calls[0].cancelled
    assert states(manager) == {"g1": TaskState.DONE, "g2": TaskState.DONE}
