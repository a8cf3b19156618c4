"""SPEC §15, manager-level amendments to Part I: shutdown during startup, the forcing
signal during startup and cleanup, `UnexpectedStop`'s message, and `on_cancel`
callbacks that have run before cleanup.

User code that misbehaves (event subscribers, unprintable exceptions, classes and
coroutine functions given as tasks) and task names are in
``test_manager_amendments_user_code.py``.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from gevent.event import Event
from greenlet import GreenletExit

import greentask as gt
from greentask import Stage, StopReason, StopTimeout, TaskState, TaskType, UnexpectedStop
from greentask.testing import CallLog, FakeClock, FakeExecuteTask, FakeTask, settle

INIT, E, C = Stage.INITIALIZE, Stage.EXECUTE, Stage.CLEANUP
SIG = signal.SIGUSR1


def start(manager: gt.TaskManager, ctx: gt.Context | None = None) -> gevent.Greenlet[..., Any]:
    """Run the manager in a background greenlet and let it get going."""
    runner = gevent.spawn(manager.run, ctx)
    settle()
    return runner


def finish(runner: gevent.Greenlet[..., Any]) -> list[gt.NamedError]:
    """run()'s result; a run that hangs fails the test (and is not left behind)."""
    try:
        with gevent.Timeout(5):
            return runner.get()  # type: ignore[no-any-return]
    finally:
        if not runner.dead:
            runner.kill(timeout=1)


def run(manager: gt.TaskManager, ctx: gt.Context | None = None) -> list[gt.NamedError]:
    with gevent.Timeout(5):
        return manager.run(ctx)


def hang(ctx: gt.Context) -> None:
    """A stage that ignores cancellation: only a kill ends it."""
    Event().wait()


def _kill_self(sig: int = SIG) -> None:
    os.kill(os.getpid(), sig)


@pytest.fixture
def python_handler() -> Iterator[list[int]]:
    """A Python-level SIGUSR1 handler, so a stray signal never kills the test process."""
    received: list[int] = []
    previous = signal.signal(SIG, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        signal.signal(SIG, previous)


# -- 1. Shutdown during startup is clean ---------------------------------------------


def _check_after_wait(ctx: gt.Context) -> None:
    ctx.wait()
    ctx.check()


def _check_after_cancellable(ctx: gt.Context) -> None:
    with ctx.cancellable():  # "connecting": interrupted by the stop
        Event().wait()
    ctx.check()


def _cancelled_from_cancellable(ctx: gt.Context) -> None:
    # The Cancelled that cancellable() delivered, re-raised by the task itself.
    try:
        with ctx.cancellable():
            Event().wait()
    finally:
        ctx.check()


def _greenlet_exit_after_wait(ctx: gt.Context) -> None:
    ctx.wait()
    raise GreenletExit


INTERRUPTED_INITIALIZE: dict[str, Callable[[gt.Context], None]] = {
    "check": _check_after_wait,
    "cancellable+check": _check_after_cancellable,
    "cancellable-reraised": _cancelled_from_cancellable,
    "greenlet_exit": _greenlet_exit_after_wait,
}


@pytest.mark.parametrize("initialize_timeout", [None, 30.0])
@pytest.mark.parametrize("how", list(INTERRUPTED_INITIALIZE))
def test_cancellation_escaping_an_initialize_after_stop_is_a_clean_shutdown(
    clock: FakeClock, how: str, initialize_timeout: float | None
) -> None:
    log = CallLog()
    events: list[gt.ManagerEvent] = []
    manager = gt.TaskManager(initialize_timeout=initialize_timeout, on_event=events.append)
    a = FakeTask("a", log=log)
    b = FakeTask("b", log=log, initialize=INTERRUPTED_INITIALIZE[how])
    c = FakeTask("c", log=log)
    queued = FakeExecuteTask("queued", log=log)
    manager.add_task("a", a)
    manager.add_task("b", b)
    manager.add_task("c", c)
    manager.add_execute_task("queued", queued)
    runner = start(manager, gt.background(clock))
    assert manager.phase == "initializing"
    assert log.calls == [("a", INIT), ("b", INIT)]

    cause = OSError("like SIGTERM")
    manager.stop(cause)
    # Not an error: the rest is skipped, the executes never start, and the initialized
    # tasks, the interrupted one included and first, are cleaned up in reverse.
    assert finish(runner) == []
    assert log.calls == [("a", INIT), ("b", INIT), ("b", C), ("a", C)]
    assert c.initialize_call_count == 0
    assert queued.execute_call_count == 0
    status = {s.name: s for s in manager.status()}
    assert status["a"].state is TaskState.DONE
    assert status["b"].state is TaskState.DONE
    assert status["c"].state in (TaskState.PENDING, TaskState.DONE)  # never initialized
    assert status["queued"].state is TaskState.STOPPED  # discarded, never run (§9)
    assert all(s.error is None for s in status.values())
    kinds = [e.kind for e in events]
    assert "failed" not in kinds
    assert "executing" not in kinds
    assert "started" not in kinds
    assert kinds[-1] == "done"
    assert manager.stop_reason == StopReason("stop", None, cause)


def test_a_checkpoint_in_the_first_initialize_when_ctx_is_already_cancelled() -> None:
    """Initialize runs even if ctx is already cancelled (§3); its checkpoint then ends
    the startup cleanly (§15)."""
    log = CallLog()
    parent, cancel = gt.with_cancel(gt.background())
    cancel()
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask("a", log=log, initialize=lambda ctx: ctx.check()))
    manager.add_task("b", FakeTask("b", log=log))
    assert run(manager, parent) == []
    assert log.calls == [("a", INIT), ("a", C)]
    assert manager.stop_reason is not None
    assert manager.stop_reason.kind == "context"


def test_a_cancelled_of_the_tasks_own_making_in_initialize_is_still_a_failure() -> None:
    """The manager judges by its own context's state, never by the exception's type."""

    def own_cancel(ctx: gt.Context) -> None:
        child, cancel = gt.with_cancel(ctx)
        cancel()
        child.check()

    log = CallLog()
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask("a", log=log))
    manager.add_task("b", FakeTask("b", log=log, initialize=own_cancel))
    manager.add_task("c", FakeTask("c", log=log))
    errors = run(manager)
    assert [(e.task_name, e.stage, type(e.error)) for e in errors] == [("b", INIT, gt.Cancelled)]
    assert log.calls == [("a", INIT), ("b", INIT), ("b", C), ("a", C)]


@pytest.mark.parametrize("how", ["check", "cancellable+check", "cancellable-returns"])
def test_a_signal_during_startup_exits_0(python_handler: list[int], how: str) -> None:
    log = CallLog()

    def initialize(ctx: gt.Context) -> None:
        _kill_self()
        if how == "check":
            ctx.wait()
            ctx.check()
        else:
            with ctx.cancellable():
                Event().wait()
            if how == "cancellable+check":
                ctx.check()

    manager = gt.TaskManager()
    a = FakeTask.blocking("a", log=log)
    b = FakeTask.blocking("b", log=log)
    b.initialize_stub = initialize
    c = FakeTask.blocking("c", log=log)
    manager.add_task("a", a)
    manager.add_task("b", b)
    manager.add_task("c", c)
    with gevent.Timeout(10):
        code = gt.run(manager, signals=[SIG])
    assert code == 0
    assert all(s.error is None for s in manager.status())
    for task in (a, b, c):
        assert task.cleanup_call_count == task.initialize_call_count
    if how != "cancellable-returns":
        assert log.calls == [("a", INIT), ("b", INIT), ("b", C), ("a", C)]
    assert python_handler == []


# -- 2. The second signal forces during startup too -----------------------------------


@pytest.mark.parametrize("initialize_timeout", [None, 100.0])
def test_force_kills_a_hanging_initialize_at_once(clock: FakeClock, initialize_timeout: float | None) -> None:
    log = CallLog()
    events: list[gt.ManagerEvent] = []
    manager = gt.TaskManager(initialize_timeout=initialize_timeout, on_event=events.append)
    a = FakeTask("a", log=log)
    b = FakeTask("b", log=log, initialize=hang)
    c = FakeTask("c", log=log)
    queued = FakeExecuteTask("queued", log=log)
    manager.add_task("a", a)
    manager.add_task("b", b)
    manager.add_task("c", c)
    manager.add_execute_task("queued", queued)
    runner = start(manager, gt.background(clock))

    manager.stop()  # the first signal: b ignores it
    settle()
    assert not runner.dead
    assert log.calls == [("a", INIT), ("b", INIT)]

    manager._force()  # the second signal
    errors = finish(runner)
    assert clock.now() == 0.0  # at once, not after initialize_timeout
    assert [(e.task_name, e.stage, type(e.error)) for e in errors] == [("b", INIT, StopTimeout)]
    assert errors[0].task_type is TaskType.STRICT
    message = str(errors[0].error)
    assert "'b'" in message
    assert "forced" in message
    assert "killed" in message
    # The rest skipped; cleanup for the initialized tasks, the interrupted one first.
    assert log.calls == [("a", INIT), ("b", INIT), ("b", C), ("a", C)]
    assert queued.execute_call_count == 0
    status = {s.name: s for s in manager.status()}
    assert status["b"].error is errors[0].error
    assert (status["a"].state, status["b"].state) == (TaskState.DONE, TaskState.DONE)
    assert [e.error for e in events if e.kind == "failed"] == [errors[0].error]


@pytest.mark.parametrize("cleanup_timeout", [None, 100.0])
def test_a_further_force_kills_a_hanging_cleanup_and_moves_to_the_next(
    clock: FakeClock, cleanup_timeout: float | None
) -> None:
    log = CallLog()
    a_cleaned: list[str] = []

    def a_cleanup(ctx: gt.Context) -> None:
        for _ in range(3):  # yields: a cleanup killed "at once" would not get here
            gevent.idle()
        a_cleaned.append("a")

    manager = gt.TaskManager(cleanup_timeout=cleanup_timeout)
    manager.add_task("a", FakeTask("a", log=log, cleanup=a_cleanup))
    manager.add_task("b", FakeTask("b", log=log, initialize=hang, cleanup=hang))
    runner = start(manager, gt.background(clock))
    manager.stop()
    settle()
    manager._force()  # kills b's initialize
    settle()
    assert not runner.dead
    assert log.calls == [("a", INIT), ("b", INIT), ("b", C)]  # b's cleanup hangs

    manager._force()  # a further signal: kills b's cleanup, moves on to a's
    errors = finish(runner)
    assert clock.now() == 0.0
    assert [(e.task_name, e.stage, type(e.error)) for e in errors] == [("b", INIT, StopTimeout), ("b", C, StopTimeout)]
    assert "forced" in str(errors[1].error)
    assert log.calls == [("a", INIT), ("b", INIT), ("b", C), ("a", C)]
    assert a_cleaned == ["a"]  # the next cleanup ran to its end, not killed
    assert [s.state for s in manager.status()] == [TaskState.DONE, TaskState.DONE]


def test_each_further_force_kills_only_the_cleanup_that_hangs_then(clock: FakeClock) -> None:
    log = CallLog()
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask("a", log=log, cleanup=hang))
    manager.add_task("b", FakeTask("b", log=log, initialize=hang, cleanup=hang))
    runner = start(manager, gt.background(clock))
    manager.stop()
    settle()
    manager._force()  # b's initialize
    settle()
    manager._force()  # b's cleanup
    settle()
    assert not runner.dead
    assert log.calls == [("a", INIT), ("b", INIT), ("b", C), ("a", C)]  # a's cleanup hangs now
    manager._force()  # a's cleanup
    errors = finish(runner)
    assert [(e.task_name, e.stage, type(e.error)) for e in errors] == [
        ("b", INIT, StopTimeout),
        ("b", C, StopTimeout),
        ("a", C, StopTimeout),
    ]


def test_a_further_force_kills_a_hanging_cleanup_after_a_forced_execute_phase(clock: FakeClock) -> None:
    """The same rule once executes were running: the second signal kills the execute,
    a further one the cleanup that hangs."""
    log = CallLog()
    manager = gt.TaskManager()
    manager.add_task("a", FakeTask.blocking("a", log=log))
    manager.add_task("b", FakeTask("b", log=log, execute=hang, cleanup=hang))
    runner = start(manager, gt.background(clock))
    assert manager.phase == "executing"
    manager.stop()
    settle()
    manager._force()  # kills b's execute
    settle()
    assert not runner.dead
    assert log.calls[-1] == ("b", C)
    manager._force()  # kills b's cleanup
    errors = finish(runner)
    assert [(e.task_name, e.stage, type(e.error)) for e in errors] == [("b", E, StopTimeout), ("b", C, StopTimeout)]
    assert log.calls[-2:] == [("b", C), ("a", C)]


def test_a_second_signal_during_startup_kills_the_initialize_and_exits_1(
    caplog: pytest.LogCaptureFixture, python_handler: list[int]
) -> None:
    caplog.set_level(logging.INFO, logger="greentask")
    log = CallLog()
    never = Event()

    def initialize(ctx: gt.Context) -> None:
        _kill_self()
        ctx.wait()  # the first signal cancelled us...
        _kill_self()  # ...ask again, and ignore cancellation
        never.wait()

    manager = gt.TaskManager()  # no initialize_timeout: only the second signal can end this
    manager.add_task("a", FakeTask.blocking("a", log=log))
    manager.add_task("b", FakeTask("b", log=log, initialize=initialize))
    manager.add_task("c", FakeTask.blocking("c", log=log))
    with gevent.Timeout(10):
        code = gt.run(manager, signals=(SIG,))
    assert code == 1
    assert log.calls == [("a", INIT), ("b", INIT), ("b", C), ("a", C)]
    status = {s.name: s for s in manager.status()}
    assert isinstance(status["b"].error, StopTimeout)
    assert "forced" in str(status["b"].error)
    assert status["a"].error is None
    error_records = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert any(isinstance(r.exc_info[1], StopTimeout) for r in error_records if r.exc_info)
    # The log never claims to kill what it does not kill: no execute was running.
    forcing = [r.getMessage() for r in caplog.records if "forcing shutdown" in r.getMessage()]
    assert forcing
    assert all("executing" not in m for m in forcing), forcing
    assert python_handler == []


# -- 3. UnexpectedStop says what happened ---------------------------------------------

UNEXPECTED = (
    "unexpected shutdown for task process: returned before the manager was cancelled "
    "(a STRICT task must run until cancelled)"
)


@pytest.mark.parametrize("kind", ["task", "execute"])
def test_unexpected_stop_says_what_happened(kind: str) -> None:
    manager = gt.TaskManager()
    manager.add_task("other", FakeTask.blocking())
    if kind == "task":
        manager.add_task("early", FakeTask(execute=None))
    else:
        manager.add_execute_task("early", FakeExecuteTask(execute=None))
    [error] = run(manager)
    assert (error.task_name, error.stage, type(error.error)) == ("early", E, UnexpectedStop)
    assert str(error.error) == UNEXPECTED
    assert str(error.error).startswith("unexpected shutdown for task process")  # goasync's text


# -- 4. on_cancel callbacks have run before cleanup begins ---------------------------


@pytest.mark.parametrize("stop_timeout", [None, 30.0])
def test_on_cancel_callbacks_of_many_tasks_have_run_before_cleanup_begins(stop_timeout: float | None) -> None:
    tasks, per_task = 200, 5
    finished: list[str] = []
    seen_by_cleanups: list[int] = []

    def callback() -> None:
        for _ in range(3):  # work that yields to the hub
            gevent.idle()
        finished.append("done")

    class Registers:
        def initialize(self, ctx: gt.Context) -> None:
            for _ in range(2):
                ctx.on_cancel(callback)

        def execute(self, ctx: gt.Context) -> None:
            for _ in range(per_task - 2):
                ctx.on_cancel(callback)
            ctx.wait()

        def cleanup(self, ctx: gt.Context) -> None:
            seen_by_cleanups.append(len(finished))

    manager = gt.TaskManager(stop_timeout=stop_timeout)
    for i in range(tasks):
        manager.add_task(f"t{i}", Registers())
    runner = start(manager)
    assert manager.phase == "executing"
    manager.stop()
    assert finish(runner) == []
    assert seen_by_cleanups == [tasks * per_task] * tasks


def test_an_on_cancel_callback_registered_after_cancellation_runs_before_cleanup() -> None:
    ran: list[str] = []
    seen_by_cleanup: list[list[str]] = []

    def late() -> None:
        gevent.idle()
        ran.append("late")

    def execute(ctx: gt.Context) -> None:
        ctx.wait()
        ctx.on_cancel(late)  # already cancelled: runs "soon"

    manager = gt.TaskManager()
    manager.add_task("a", FakeTask(execute=execute, cleanup=lambda ctx: seen_by_cleanup.append(list(ran))))
    runner = start(manager)
    manager.stop()
    assert finish(runner) == []
    assert seen_by_cleanup == [["late"]]


def test_an_on_cancel_callback_registered_during_cleanup_has_run_when_run_returns() -> None:
    """ "never after run returned": one registered on the (cancelled) task context while
    cleanup runs cannot run before cleanup, but still runs before run returns."""
    ran: list[str] = []
    contexts: list[gt.Context] = []

    def late() -> None:
        gevent.idle()
        ran.append("late")

    def execute(ctx: gt.Context) -> None:
        contexts.append(ctx)
        ctx.wait()

    manager = gt.TaskManager()
    manager.add_task("a", FakeTask(execute=execute, cleanup=lambda ctx: contexts[0].on_cancel(late)))
    runner = start(manager)
    manager.stop()
    assert finish(runner) == []
    assert ran == ["late"]


def test_a_blocking_on_cancel_callback_holds_cleanup_until_it_returns_without_stop_timeout() -> None:
    release = Event()
    ran: list[str] = []

    def slow() -> None:
        release.wait()
        ran.append("slow")

    task = FakeTask.blocking()
    manager = gt.TaskManager()
    manager.add_task("a", task)
    manager.add_task("registers", FakeTask(initialize=lambda ctx: ctx.on_cancel(slow), execute=lambda ctx: ctx.wait()))
    runner = start(manager)
    manager.stop()
    settle()
    assert task.cleanup_call_count == 0
    assert not runner.dead
    release.set()
    assert finish(runner) == []
    assert ran == ["slow"]
    assert task.cleanup_call_count == 1


def test_an_on_cancel_callback_that_blocks_forever_is_killed_after_stop_timeout_and_logged(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="greentask")
    stuck: list[Any] = []

    def blocks_forever() -> None:
        stuck.append(gevent.getcurrent())
        Event().wait()

    a = FakeTask.blocking()
    manager = gt.TaskManager(stop_timeout=2)
    manager.add_task("a", a)
    manager.add_task(
        "b", FakeTask(initialize=lambda ctx: ctx.on_cancel(blocks_forever), execute=lambda ctx: ctx.wait())
    )
    runner = start(manager, gt.background(clock))
    manager.stop()
    settle()
    assert len(stuck) == 1
    clock.advance(1.75)
    assert not runner.dead
    assert a.cleanup_call_count == 0  # cleanup waits for the callback...
    errors_logged_before = [r for r in caplog.records if r.name == "greentask" and r.levelno >= logging.ERROR]
    assert errors_logged_before == []
    clock.advance(0.25)  # ...up to stop_timeout, then it is killed
    assert finish(runner) == []  # logged, not a task's error
    assert a.cleanup_call_count == 1
    assert stuck[0].dead
    errors_logged = [r for r in caplog.records if r.name == "greentask" and r.levelno == logging.ERROR]
    assert errors_logged, "the killed on_cancel callback was not logged at ERROR"


def test_a_task_stopped_by_its_handle_is_cleaned_up_after_its_on_cancel_callbacks() -> None:
    log: list[str] = []
    release = Event()

    def callback() -> None:
        release.wait()
        log.append("callback finished")

    def execute(ctx: gt.Context) -> None:
        ctx.on_cancel(callback)
        ctx.wait()

    other = FakeTask.blocking()
    manager = gt.TaskManager()
    handle = manager.add_task("a", FakeTask(execute=execute, cleanup=lambda ctx: log.append("cleanup")))
    manager.add_task("other", other)
    runner = start(manager)
    handle.stop()
    settle()
    assert handle.state is TaskState.STOPPED  # its execute returned; its cleanup waits
    assert log == []
    release.set()
    with gevent.Timeout(5):
        assert handle.wait()
    assert log == ["callback finished", "cleanup"]
    assert other.cleanup_call_count == 0  # nothing else was touched
    manager.stop()
    assert finish(runner) == []


def test_a_hanging_on_cancel_callback_of_a_stopped_task_is_killed_after_its_stop_timeout(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="greentask")
    stuck: list[Any] = []

    def blocks_forever() -> None:
        stuck.append(gevent.getcurrent())
        Event().wait()

    def execute(ctx: gt.Context) -> None:
        ctx.on_cancel(blocks_forever)
        ctx.wait()

    task = FakeTask(execute=execute)
    manager = gt.TaskManager(name="web", stop_timeout=30)
    handle = manager.add_task("a", task, stop_timeout=2)
    runner = start(manager, gt.background(clock))
    handle.stop()
    settle()
    clock.advance(1.75)
    assert task.cleanup_call_count == 0
    clock.advance(0.25)  # the task's own stop_timeout, not the manager's
    with gevent.Timeout(5):
        assert handle.wait()
    assert task.cleanup_call_count == 1
    assert stuck[0].dead
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "web: task 'a': 1 on_cancel callback(s) still running after waiting stop_timeout (2.0s) for them; killed"
    ]
    manager.stop()
    assert finish(runner) == []


def test_a_forced_stop_kills_the_on_cancel_callbacks_that_hold_the_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without stop_timeout only the forced stop (gt.run's second signal) can end them."""
    caplog.set_level(logging.INFO, logger="greentask")
    stuck: list[Any] = []

    def blocks_forever() -> None:
        stuck.append(gevent.getcurrent())
        Event().wait()

    task = FakeTask(initialize=lambda ctx: ctx.on_cancel(blocks_forever), execute=lambda ctx: ctx.wait())
    manager = gt.TaskManager(name="web")
    manager.add_task("a", task)
    runner = start(manager)
    manager.stop()
    settle()
    assert len(stuck) == 1
    assert not runner.dead
    assert task.cleanup_call_count == 0
    manager._force()  # what gt.run's second signal calls
    assert finish(runner) == []
    assert stuck[0].dead
    assert task.cleanup_call_count == 1
    assert "web: 1 on_cancel callback(s) still running when the shutdown was forced; killed" in [
        r.getMessage() for r in caplog.records if r.levelno == logging.ERROR
    ]
