"""TaskManager lifecycle: initialize in order, execute, stop, clean up in reverse (SPEC §3)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import gevent
import pytest
from gevent.event import Event
from gevent.hub import get_hub
from greenlet import GreenletExit

import greentask as gt
from greentask import ManagerStateError, NamedError, Stage, StopReason, TaskState, TaskType
from greentask.testing import CallLog, FakeClock, FakeExecuteTask, FakeTask, settle

INIT, E, C = Stage.INITIALIZE, Stage.EXECUTE, Stage.CLEANUP


def start(manager: gt.TaskManager, ctx: gt.Context | None = None) -> gevent.Greenlet[..., Any]:
    """Run the manager in a background greenlet and let it get going."""
    runner = gevent.spawn(manager.run, ctx)
    settle()
    return runner


def finish(runner: gevent.Greenlet[..., Any]) -> list[NamedError]:
    with gevent.Timeout(5):
        return runner.get()  # type: ignore[no-any-return]


def run(manager: gt.TaskManager, ctx: gt.Context | None = None) -> list[NamedError]:
    with gevent.Timeout(5):
        return manager.run(ctx)


# -- refused calls ------------------------------------------------------------------


def test_add_task_while_executing_is_accepted_since_part_ii() -> None:
    # SPEC §9 changed Part I's rule: a task may be added during the execute phase.
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask.blocking())
    runner = start(manager)
    handle = manager.add_task("b", FakeTask.blocking())
    assert handle.wait_running(timeout=5)
    manager.stop()
    assert finish(runner) == []
    assert [s.name for s in manager.status()] == ["a", "b"]
    assert [s.state for s in manager.status()] == [gt.TaskState.DONE, gt.TaskState.DONE]


def test_add_task_during_initialize_is_refused() -> None:
    manager = gt.TaskManager()
    refused: list[BaseException] = []

    def initialize(ctx: gt.Context) -> None:
        try:
            manager.add_task("late", FakeTask())
        except ManagerStateError as exc:
            refused.append(exc)

    manager.add_task("a", FakeTask(initialize=initialize, execute=None), TaskType.STOP_GROUP)
    assert run(manager) == []
    assert [str(e) for e in refused] == ["task manager is already running; will not manage task"]


def test_add_after_shutdown_is_refused() -> None:
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask(), TaskType.STOP_GROUP)
    assert run(manager) == []
    message = r"^task manager has already shut down; will not manage task$"
    with pytest.raises(ManagerStateError, match=message):
        manager.add_task("b", FakeTask())
    with pytest.raises(ManagerStateError, match=message):
        manager.add_execute_task("c", FakeExecuteTask())
    assert [s.name for s in manager.status()] == ["a"]


def test_manager_state_error_is_a_runtime_error() -> None:
    manager = gt.TaskManager()
    ctx, cancel = gt.with_cancel(gt.background())
    cancel()
    assert run(manager, ctx) == []
    with pytest.raises(RuntimeError, match="already shut down"):
        manager.add_task("b", FakeTask())


def test_none_task_is_refused() -> None:
    manager = gt.TaskManager()
    with pytest.raises(TypeError, match=r"^task cannot be None$"):
        manager.add_task("a", None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^task cannot be None$"):
        manager.add_execute_task("a", None)  # type: ignore[arg-type]
    assert manager.status() == []


def test_invalid_task_type_is_refused() -> None:
    manager = gt.TaskManager()
    with pytest.raises(
        ValueError, match=r"task_type must be one of TaskType.STRICT, TaskType.ERROR, TaskType.STOP_GROUP"
    ):
        manager.add_task("a", FakeTask(), "forever")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"task_type must be one of ExecuteTaskType.STRICT, ExecuteTaskType.ERROR"):
        manager.add_execute_task("a", FakeExecuteTask(), TaskType.STOP_GROUP)  # type: ignore[arg-type]
    assert manager.status() == []


def test_run_while_running_is_refused() -> None:
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask.blocking())
    runner = start(manager)
    with pytest.raises(ManagerStateError, match=r"^task manager is already running; will not run again$"):
        manager.run()
    manager.stop()
    assert finish(runner) == []


def test_run_during_initialize_is_refused() -> None:
    manager = gt.TaskManager()
    refused: list[str] = []

    def initialize(ctx: gt.Context) -> None:
        with pytest.raises(ManagerStateError) as info:
            manager.run()
        refused.append(str(info.value))

    manager.add_task("a", FakeTask(initialize=initialize), TaskType.STOP_GROUP)
    assert run(manager) == []
    assert refused == ["task manager is already running; will not run again"]


def test_run_after_shutdown_is_refused() -> None:
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask(), TaskType.STOP_GROUP)
    assert run(manager) == []
    with pytest.raises(ManagerStateError, match=r"^task manager has already shut down; will not run again$"):
        manager.run()


def test_run_while_shutting_down_is_refused() -> None:
    release = Event()
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask(execute=lambda ctx: release.wait()))
    runner = start(manager)
    manager.stop()
    settle()
    assert manager.phase == "stopping"
    with pytest.raises(ManagerStateError, match=r"^task manager is shutting down; will not run again$"):
        manager.run()
    with pytest.raises(ManagerStateError, match=r"^task manager is shutting down; will not manage task$"):
        manager.add_task("b", FakeTask())
    release.set()
    assert finish(runner) == []


# -- initialize ---------------------------------------------------------------------


def test_initialize_runs_serially_in_add_order() -> None:
    log = CallLog()
    gate = Event()
    first = FakeTask("first", log=log, initialize=lambda ctx: gate.wait(), execute=None)
    second = FakeTask("second", log=log, execute=None)
    third = FakeTask("third", log=log, execute=None)
    manager = gt.TaskManager()
    for task in (first, second, third):
        manager.add_task(task.name, task, TaskType.STOP_GROUP)
    runner = start(manager)
    # first is still initializing: nobody else has been touched.
    assert log.calls == [("first", INIT)]
    assert manager.phase == "initializing"
    gate.set()
    assert finish(runner) == []
    assert log.calls[:3] == [("first", INIT), ("second", INIT), ("third", INIT)]
    assert sorted(log.calls[3:6]) == sorted([("first", E), ("second", E), ("third", E)])
    assert log.calls[6:] == [("third", C), ("second", C), ("first", C)]


def test_initialize_runs_even_with_an_already_cancelled_ctx() -> None:
    log = CallLog()
    seen: list[bool] = []

    def initialize(ctx: gt.Context) -> None:
        seen.append(ctx.cancelled)

    tasks = [FakeTask(name, log=log, initialize=initialize) for name in ("a", "b", "c")]
    manager = gt.TaskManager()
    for task in tasks:
        manager.add_task(task.name, task)
    parent, cancel = gt.with_cancel(gt.background())
    cancel()
    assert run(manager, parent) == []
    assert seen == [True, True, True]
    assert log.stages("a") == [INIT, E, C]
    assert [c for c in log.calls if c[1] is INIT] == [("a", INIT), ("b", INIT), ("c", INIT)]
    assert [c for c in log.calls if c[1] is C] == [("c", C), ("b", C), ("a", C)]
    assert manager.stop_reason == StopReason("context", None, None)


def test_initialize_gets_a_child_of_the_run_ctx() -> None:
    task = FakeTask(execute=None)
    manager = gt.TaskManager()
    manager.add_task("a", task, TaskType.STOP_GROUP)
    parent = gt.with_value(gt.background(), "key", "value")
    assert run(manager, parent) == []
    [ctx] = task.initialize_calls
    assert ctx.value("key") == "value"
    assert ctx.cancelled  # the run context is cancelled once the stop group completed
    assert task.execute_calls == [ctx]


def test_initialize_failure_skips_the_rest_and_cleans_up_in_reverse_from_the_failed_task() -> None:
    log = CallLog()
    boom = ValueError("boom")
    a = FakeTask("a", log=log)
    b = FakeTask("b", log=log)
    c = FakeTask("c", log=log, initialize=boom)
    d = FakeTask("d", log=log)
    queued = FakeExecuteTask("queued", log=log)
    manager = gt.TaskManager()
    for task in (a, b, c, d):
        manager.add_task(task.name, task)
    manager.add_execute_task("queued", queued)
    errors = run(manager)
    assert errors == [NamedError("c", INIT, boom, task_type=TaskType.STRICT)]
    assert log.calls == [("a", INIT), ("b", INIT), ("c", INIT), ("c", C), ("b", C), ("a", C)]
    assert d.initialize_call_count == 0
    assert d.cleanup_call_count == 0
    assert queued.execute_call_count == 0
    states = {s.name: s.state for s in manager.status()}
    assert states == {
        "a": TaskState.DONE,
        "b": TaskState.DONE,
        "c": TaskState.DONE,
        "d": TaskState.PENDING,
        "queued": TaskState.STOPPED,  # SPEC §9: a discarded execute task ends STOPPED
    }


def test_initialize_failure_records_cleanup_errors_after_the_initialize_error() -> None:
    init_error = ConnectionError("refused")
    a_cleanup = KeyError("a")
    b_cleanup = OSError("b")
    a = FakeTask("a", cleanup=a_cleanup)
    b = FakeTask("b", initialize=init_error, cleanup=b_cleanup)
    manager = gt.TaskManager()
    manager.add_task("a", a)
    manager.add_task("b", b, TaskType.ERROR)
    assert run(manager) == [
        NamedError("b", INIT, init_error, task_type=TaskType.ERROR),
        NamedError("b", C, b_cleanup, task_type=TaskType.ERROR),
        NamedError("a", C, a_cleanup, task_type=TaskType.STRICT),
    ]
    assert a.execute_call_count == b.execute_call_count == 0
    assert manager.stop_reason == StopReason("policy", "b", init_error)


def test_initialize_failure_cancels_the_run_ctx_seen_by_earlier_initializers() -> None:
    a = FakeTask("a")
    manager = gt.TaskManager()
    manager.add_task("a", a)
    manager.add_task("b", FakeTask("b", initialize=ValueError))
    [error] = run(manager)
    assert isinstance(error.error, ValueError)
    assert a.initialize_calls[0].cancelled
    assert not a.cleanup_calls[0].cancelled


# -- cleanup ------------------------------------------------------------------------


def test_cleanup_runs_in_reverse_order_and_returns_its_errors() -> None:
    log = CallLog()
    a_error, c_error = ValueError("a"), RuntimeError("c")
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask("a", log=log, cleanup=a_error), TaskType.STOP_GROUP)
    manager.add_task("b", FakeTask("b", log=log), TaskType.STOP_GROUP)
    manager.add_task("c", FakeTask("c", log=log, cleanup=c_error), TaskType.STOP_GROUP)
    assert run(manager) == [
        NamedError("c", C, c_error, task_type=TaskType.STOP_GROUP),
        NamedError("a", C, a_error, task_type=TaskType.STOP_GROUP),
    ]
    assert [call for call in log.calls if call[1] is C] == [("c", C), ("b", C), ("a", C)]


def test_cleanup_gets_a_ctx_that_is_not_cancelled_and_keeps_the_run_ctx_values() -> None:
    seen: list[tuple[bool, object, float | None]] = []

    def cleanup(ctx: gt.Context) -> None:
        seen.append((ctx.cancelled, ctx.value("request-id"), ctx.deadline))

    clock = FakeClock()
    parent, cancel = gt.with_timeout(gt.with_value(gt.background(clock), "request-id", 42), 10)
    task = FakeTask(cleanup=cleanup)
    manager = gt.TaskManager()
    manager.add_task("a", task, TaskType.STOP_GROUP)
    assert run(manager, parent) == []
    assert seen == [(False, 42, None)]
    assert task.cleanup_calls[0].clock is clock
    assert task.execute_calls[0].cancelled
    cancel()


def test_every_cleanup_runs_even_when_earlier_ones_fail() -> None:
    tasks = [FakeTask(name, cleanup=ValueError(name)) for name in ("a", "b", "c")]
    manager = gt.TaskManager()
    for task in tasks:
        manager.add_task(task.name, task, TaskType.STOP_GROUP)
    errors = run(manager)
    assert [(e.task_name, e.stage) for e in errors] == [("c", C), ("b", C), ("a", C)]
    assert [t.cleanup_call_count for t in tasks] == [1, 1, 1]


def test_each_initialized_task_gets_exactly_one_cleanup_after_its_execute() -> None:
    log = CallLog()
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask.blocking("a", log=log))
    manager.add_task("b", FakeTask("b", log=log, execute=RuntimeError("x")), TaskType.ERROR)
    errors = run(manager)
    assert [(e.task_name, e.stage) for e in errors] == [("b", E)]
    assert log.stages("a") == [INIT, E, C]
    assert log.stages("b") == [INIT, E, C]


# -- stop() -------------------------------------------------------------------------


def test_stop_before_run_is_a_no_op() -> None:
    seen: list[bool] = []
    task = FakeTask(initialize=lambda ctx: seen.append(ctx.cancelled), execute=lambda ctx: seen.append(ctx.cancelled))
    manager = gt.TaskManager()
    manager.add_task("a", task, TaskType.STOP_GROUP)
    manager.stop(ValueError("too early"))
    assert manager.stop_reason is None
    assert manager.phase == "new"
    assert run(manager) == []
    assert seen == [False, False]
    assert manager.stop_reason == StopReason("policy", "a", None)


def test_stop_after_run_is_a_no_op() -> None:
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask(execute=None), TaskType.STOP_GROUP)
    assert run(manager) == []
    reason = manager.stop_reason
    manager.stop()
    manager.stop(KeyError("late"))
    assert manager.stop_reason is reason
    assert manager.phase == "done"


def test_stop_cancels_a_running_manager_with_its_cause() -> None:
    cause = KeyError("shutdown requested")
    a = FakeTask.blocking()
    manager = gt.TaskManager()
    manager.add_task("a", a)
    runner = start(manager)
    assert manager.phase == "executing"
    manager.stop(cause)
    assert finish(runner) == []
    ctx = a.execute_calls[0]
    assert ctx.cancelled
    assert ctx.cause is cause
    assert manager.stop_reason == StopReason("stop", None, cause)


def test_stop_is_idempotent_and_the_first_cause_wins() -> None:
    first, second = KeyError("first"), KeyError("second")
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask.blocking())
    runner = start(manager)
    manager.stop(first)
    manager.stop(second)
    assert finish(runner) == []
    assert manager.stop_reason == StopReason("stop", None, first)


def test_stop_from_inside_a_task_does_not_kill_the_caller_and_its_return_is_clean() -> None:
    reached: list[str] = []
    manager = gt.TaskManager()

    def execute(ctx: gt.Context) -> None:
        manager.stop()
        reached.append(f"after stop, cancelled={ctx.cancelled}")
        assert ctx.wait() is True
        reached.append("after wait")

    manager.add_task("stopper", FakeTask(execute=execute))  # STRICT: an early return would be an error
    manager.add_execute_task("exec-stopper", FakeExecuteTask(execute=lambda ctx: manager.stop()))
    other = FakeTask.blocking()
    manager.add_task("other", other)
    assert run(manager) == []
    assert reached == ["after stop, cancelled=True", "after wait"]
    assert other.execute_calls[0].cancelled
    states = {s.name: s.state for s in manager.status()}
    assert states == {"stopper": TaskState.DONE, "exec-stopper": TaskState.STOPPED, "other": TaskState.DONE}
    assert all(s.error is None for s in manager.status())
    assert manager.stop_reason == StopReason("stop", None, None)


def test_stop_during_initialize_cancels_the_ctx_the_initializers_see() -> None:
    log = CallLog()
    gate = Event()
    seen: list[bool] = []

    def first_initialize(ctx: gt.Context) -> None:
        seen.append(ctx.cancelled)
        gate.wait()
        seen.append(ctx.cancelled)

    def record(ctx: gt.Context) -> None:
        seen.append(ctx.cancelled)

    manager = gt.TaskManager()
    manager.add_task("a", FakeTask("a", log=log, initialize=first_initialize))
    manager.add_task("b", FakeTask("b", log=log, initialize=record, execute=record))
    queued = FakeExecuteTask("queued", log=log, execute=record)
    manager.add_execute_task("queued", queued)
    runner = start(manager)
    assert manager.phase == "initializing"
    manager.stop()
    gate.set()
    # As if ctx had been cancelled before run: every initialize, execute and cleanup runs.
    assert finish(runner) == []
    assert seen == [False, True, True, True, True]
    assert log.stages("a") == [INIT, E, C]
    assert log.stages("b") == [INIT, E, C]
    assert log.stages("queued") == [E]
    assert manager.stop_reason == StopReason("stop", None, None)


def test_stop_from_an_initializer() -> None:
    manager = gt.TaskManager()
    b = FakeTask("b")
    manager.add_task("a", FakeTask("a", initialize=lambda ctx: manager.stop(KeyError("init"))))
    manager.add_task("b", b)
    assert run(manager) == []
    assert b.initialize_calls[0].cancelled
    assert manager.stop_reason is not None
    assert manager.stop_reason.kind == "stop"


def test_cancelling_the_parent_ctx_stops_the_manager() -> None:
    parent, cancel = gt.with_cancel(gt.background())
    cause = OSError("parent gone")
    a = FakeTask.blocking()
    manager = gt.TaskManager()
    manager.add_task("a", a)
    runner = start(manager, parent)
    cancel(cause)
    assert finish(runner) == []
    assert a.execute_calls[0].cause is cause
    assert manager.stop_reason == StopReason("context", None, cause)


def test_manager_keeps_running_after_every_execute_returned_until_cancelled() -> None:
    manager = gt.TaskManager()
    a = FakeTask(execute=None)
    manager.add_task("a", a, TaskType.ERROR)
    manager.add_execute_task("x", FakeExecuteTask(), gt.ExecuteTaskType.ERROR)
    runner = start(manager)
    assert manager.phase == "executing"
    assert {s.name: s.state for s in manager.status()} == {"a": TaskState.STOPPED, "x": TaskState.STOPPED}
    assert a.cleanup_call_count == 0
    manager.stop()
    assert finish(runner) == []
    assert a.cleanup_call_count == 1


# -- LoopExit -----------------------------------------------------------------------


def _wchan(native_id: int) -> str:
    try:
        with open(f"/proc/self/task/{native_id}/wchan") as file:
            return file.read()
    except OSError:
        return ""


def test_run_never_gets_loop_exit_while_every_task_is_idle() -> None:
    """run() in the main greenlet, every other greenlet parked, no timers: the hub must stay up.

    The only wake-up comes from another OS thread, once it has seen this thread blocked
    in the event loop's epoll wait (Linux /proc), so the hub really had nothing to do.
    Without a keep-alive, gevent raises LoopExit instead of blocking there.
    """
    main_id = threading.get_native_id()
    if not os.path.exists(f"/proc/self/task/{main_id}/wchan"):
        pytest.skip("needs /proc/<pid>/task/<tid>/wchan to see the hub block")
    manager = gt.TaskManager()
    tasks = [FakeTask.blocking() for _ in range(3)]
    for index, task in enumerate(tasks):
        manager.add_task(f"t{index}", task)
    idle = threading.Event()
    finished = threading.Event()
    observed: list[str] = []

    def announce_idle() -> None:
        settle()
        idle.set()

    def stopper() -> None:
        idle.wait(5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not finished.is_set():  # a bounded poll of /proc
            wchan = _wchan(main_id)
            if "epoll" in wchan or "poll" in wchan:
                observed.append(wchan)
                break
            finished.wait(0.001)
        manager.stop()

    thread = threading.Thread(target=stopper)
    thread.start()
    gevent.spawn(announce_idle)
    try:
        # No gevent.Timeout here: its timer would keep the hub alive. The stopper
        # thread's own deadline bounds the wait instead.
        errors = manager.run()
    finally:
        finished.set()
        thread.join(5)
    # A LoopExit caught by run() would show up as the stop reason.
    assert manager.stop_reason == StopReason("stop", None, None)
    assert errors == []
    assert all(task.execute_calls[0].cancelled for task in tasks)
    if not observed:
        pytest.skip("could not see the hub thread block in the event loop (wchan unavailable)")


# -- KeyboardInterrupt / SystemExit -------------------------------------------------


@pytest.mark.parametrize("fatal", [KeyboardInterrupt, SystemExit])
def test_fatal_exception_in_execute_is_recorded_cleaned_up_and_reraised(fatal: type[BaseException]) -> None:
    log = CallLog()
    events: list[gt.ManagerEvent] = []
    other = FakeTask.blocking("other", log=log)
    raiser = FakeTask("raiser", log=log, execute=fatal)
    manager = gt.TaskManager(on_event=events.append)
    manager.add_task("other", other)
    manager.add_task("raiser", raiser, TaskType.ERROR)
    with gevent.Timeout(5), pytest.raises(fatal):
        manager.run()
    assert log.calls[-2:] == [("raiser", C), ("other", C)]
    assert other.execute_calls[0].cancelled
    status = {s.name: s for s in manager.status()}
    assert isinstance(status["raiser"].error, fatal)
    assert status["raiser"].state is TaskState.DONE
    assert [e.kind for e in events if e.task_name == "raiser"][-3:] == ["failed", "cleaning_up", "cleaned_up"]
    assert events[-1].kind == "done"
    assert manager.stop_reason is not None
    assert manager.stop_reason.kind == "policy"
    assert isinstance(manager.stop_reason.error, fatal)


@pytest.mark.parametrize("fatal", [KeyboardInterrupt, SystemExit])
def test_fatal_exception_in_initialize_is_recorded_cleaned_up_and_reraised(fatal: type[BaseException]) -> None:
    log = CallLog()
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask("a", log=log))
    manager.add_task("b", FakeTask("b", log=log, initialize=fatal))
    manager.add_task("c", FakeTask("c", log=log))
    with gevent.Timeout(5), pytest.raises(fatal):
        manager.run()
    assert log.calls == [("a", INIT), ("b", INIT), ("b", C), ("a", C)]
    assert isinstance(manager.status()[1].error, fatal)


@pytest.mark.parametrize("fatal", [KeyboardInterrupt, SystemExit])
def test_fatal_exception_in_cleanup_still_runs_every_cleanup_then_reraises(fatal: type[BaseException]) -> None:
    log = CallLog()
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask("a", log=log), TaskType.STOP_GROUP)
    manager.add_task("b", FakeTask("b", log=log, cleanup=fatal), TaskType.STOP_GROUP)
    with gevent.Timeout(5), pytest.raises(fatal):
        manager.run()
    assert [c for c in log.calls if c[1] is C] == [("b", C), ("a", C)]
    assert manager.phase == "done"


def test_the_first_fatal_exception_is_the_one_reraised() -> None:
    first = KeyboardInterrupt("first")
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask(execute=first))
    manager.add_task("b", FakeTask(cleanup=SystemExit(3)))
    with gevent.Timeout(5), pytest.raises(KeyboardInterrupt) as info:
        manager.run()
    assert info.value is first


def test_keyboard_interrupt_delivered_to_run_shuts_down_in_order() -> None:
    """A KeyboardInterrupt thrown into run() while it waits: orderly shutdown, then re-raised."""
    log = CallLog()
    manager = gt.TaskManager()
    a = FakeTask.blocking("a", log=log)
    manager.add_task("a", a)
    runner = gevent.getcurrent()

    def interrupt() -> None:
        settle()
        # Delivered from the hub, like gevent delivers a signal's KeyboardInterrupt.
        get_hub().loop.run_callback(runner.throw, KeyboardInterrupt("ctrl-c"))

    gevent.spawn(interrupt)
    with gevent.Timeout(5), pytest.raises(KeyboardInterrupt, match="ctrl-c"):
        manager.run()
    assert log.calls == [("a", INIT), ("a", E), ("a", C)]
    assert a.execute_calls[0].cancelled
    assert manager.stop_reason is not None
    assert manager.stop_reason.kind == "stop"
    assert isinstance(manager.stop_reason.error, KeyboardInterrupt)


def test_killing_the_greenlet_running_run_shuts_down_in_order() -> None:
    """gevent.kill() on run()'s greenlet: cancel, join every execute, clean up, return."""
    log = CallLog()
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask.blocking("a", log=log))
    runner = start(manager)
    runner.kill(block=False)
    errors = finish(runner)
    assert errors == []
    assert log.calls == [("a", INIT), ("a", E), ("a", C)]
    assert manager.stop_reason is not None
    assert manager.stop_reason.kind == "stop"
    assert isinstance(manager.stop_reason.error, GreenletExit)
    assert manager.phase == "done"


# -- nothing outlives run, nothing is printed ---------------------------------------


def test_no_execute_greenlet_outlives_run() -> None:
    greenlets: list[gevent.Greenlet[..., Any]] = []

    def execute(ctx: gt.Context) -> None:
        greenlets.append(gevent.getcurrent())  # type: ignore[arg-type]
        ctx.wait()

    manager = gt.TaskManager()
    for index in range(5):
        manager.add_task(f"t{index}", FakeTask(execute=execute))
        manager.add_execute_task(f"x{index}", execute)
    runner = start(manager)
    for index in range(5):
        manager.add_execute_task(f"late{index}", execute)
    settle()
    manager.stop()
    assert finish(runner) == []
    assert len(greenlets) == 15
    assert all(g.dead for g in greenlets)


def test_task_errors_are_never_printed_by_the_hub(capsys: pytest.CaptureFixture[str], hub_errors: list[Any]) -> None:
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask(execute=ValueError("execute"), cleanup=KeyError("cleanup")))
    manager.add_task("b", FakeTask(execute=lambda ctx: (ctx.wait(), 1 / 0)), TaskType.ERROR)
    manager.add_execute_task("c", FakeExecuteTask(execute=OSError("exec")), gt.ExecuteTaskType.ERROR)
    errors = run(manager)
    assert sorted((e.task_name, e.stage, type(e.error).__name__) for e in errors) == [
        ("a", C, "KeyError"),
        ("a", E, "ValueError"),
        ("b", E, "ZeroDivisionError"),
        ("c", E, "OSError"),
    ]
    assert hub_errors == []
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "failed with" not in captured.err
    # A second manager whose initialize fails is just as quiet.
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask(initialize=ValueError("init")))
    assert len(run(manager)) == 1
    assert capsys.readouterr().err == ""
