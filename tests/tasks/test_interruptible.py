"""Interruptible: restart on a signal (real and through interrupt()), errors, handler restore."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import gevent
import pytest
from _taskctx import task_context

import greentask as gt
from greentask.tasks import Interruptible
from greentask.testing import CallLog, FakeClock, FakeExecuteTask, FakeTask

INIT, EXEC, CLEAN = "initialize", "execute", "cleanup"


def _run(task: Interruptible, ctx: gt.Context) -> gevent.Greenlet[..., Any]:
    """Run ``task.execute(ctx)``; the greenlet's value is ("ok", value) or ("raised", exc)."""

    def body() -> tuple[str, object]:
        try:
            task.execute(ctx)
        except BaseException as exc:
            return ("raised", exc)
        return ("ok", None)

    return gevent.spawn(body)


def _outcome(greenlet: gevent.Greenlet[..., Any]) -> tuple[str, Any]:
    with gevent.Timeout(5):
        return greenlet.get()  # type: ignore[no-any-return]


def _until(predicate: Callable[[], bool]) -> None:
    with gevent.Timeout(5):
        while not predicate():
            gevent.idle()


def _stages(log: CallLog, name: str = "svc") -> list[str]:
    return [stage.value for stage in log.stages(name)]


def _waits(ctx: gt.Context) -> None:
    ctx.wait()


def test_a_real_signal_restarts_the_task_inside_a_manager() -> None:
    log = CallLog()
    inner = FakeTask("svc", execute=_waits, log=log)
    manager = gt.TaskManager()
    manager.add_task("svc", Interruptible([signal.SIGUSR1], inner))
    runner = gevent.spawn(manager.run)
    _until(lambda: inner.execute_call_count == 1)

    os.kill(os.getpid(), signal.SIGUSR1)
    _until(lambda: inner.execute_call_count == 2)
    assert inner.execute_calls[0].cancelled
    assert not inner.execute_calls[1].cancelled

    manager.stop()
    with gevent.Timeout(5):
        assert runner.get() == []
    assert _stages(log) == [INIT, EXEC, CLEAN, INIT, EXEC, CLEAN]


def test_interrupt_restarts_cleanup_initialize_execute_in_order() -> None:
    log = CallLog()
    inner = FakeTask("svc", execute=_waits, log=log)
    task = Interruptible(signal.SIGUSR2, inner)
    ctx, cancel = gt.with_cancel(gt.background())
    task.initialize(ctx)
    running = _run(task, ctx)
    _until(lambda: inner.execute_call_count == 1)
    assert task.interrupt() is True
    _until(lambda: inner.execute_call_count == 2)
    assert _stages(log) == [INIT, EXEC, CLEAN, INIT, EXEC]
    assert not inner.cleanup_calls[0].cancelled  # cleanup gets a never-cancelled context
    assert inner.initialize_calls[1] is ctx

    cancel()
    assert _outcome(running) == ("ok", None)
    task.cleanup(gt.without_cancel(ctx))
    assert _stages(log) == [INIT, EXEC, CLEAN, INIT, EXEC, CLEAN]


def test_cancellation_returns_cleanly_without_a_restart() -> None:
    log = CallLog()
    inner = FakeTask("svc", execute=_waits, log=log)
    ctx, cancel = gt.with_cancel(gt.background())
    running = _run(Interruptible([signal.SIGUSR1], inner), ctx)
    _until(lambda: inner.execute_call_count == 1)
    cancel()
    assert _outcome(running) == ("ok", None)
    assert _stages(log) == [EXEC]


def test_a_cancelled_escaping_the_inner_execute_after_cancellation_is_clean() -> None:
    def wait_then_check(ctx: gt.Context) -> None:
        ctx.wait()
        ctx.check()

    inner = FakeTask("svc", execute=wait_then_check)
    task = Interruptible([signal.SIGUSR1], inner)
    ctx, cancel = gt.with_cancel(gt.background())
    running = _run(task, ctx)
    _until(lambda: inner.execute_call_count == 1)
    task.interrupt()  # the restart path: Cancelled after the inner ctx was cancelled
    _until(lambda: inner.execute_call_count == 2)
    cancel()  # the cancellation path
    assert _outcome(running) == ("ok", None)


def test_a_return_without_signal_or_cancellation_raises_unexpected_stop() -> None:
    log = CallLog()
    inner = FakeTask("svc", log=log)  # execute returns at once
    ctx, cancel = gt.with_cancel(gt.background())
    kind, raised = _outcome(_run(Interruptible([signal.SIGUSR1], inner), ctx))
    assert kind == "raised"
    assert isinstance(raised, gt.UnexpectedStop)
    assert _stages(log) == [EXEC]  # not restarted
    cancel()


def test_an_execute_error_ends_it_with_that_error() -> None:
    error = ConnectionError("lost")
    inner = FakeTask("svc", execute=error)
    ctx, cancel = gt.with_cancel(gt.background())
    assert _outcome(_run(Interruptible([signal.SIGUSR1], inner), ctx)) == ("raised", error)
    cancel()


def test_an_execute_error_while_being_interrupted_ends_it_with_that_error() -> None:
    log = CallLog()

    def fails_when_cancelled(ctx: gt.Context) -> None:
        ctx.wait()
        raise OSError("could not drain")

    inner = FakeTask("svc", execute=fails_when_cancelled, log=log)
    task = Interruptible([signal.SIGUSR1], inner)
    ctx, cancel = gt.with_cancel(gt.background())
    running = _run(task, ctx)
    _until(lambda: inner.execute_call_count == 1)
    task.interrupt()
    kind, raised = _outcome(running)
    assert kind == "raised"
    assert isinstance(raised, OSError)
    assert _stages(log) == [EXEC]
    cancel()


def test_a_cleanup_error_during_a_restart_ends_it_and_is_not_cleaned_up_twice() -> None:
    log = CallLog()
    error = ValueError("cleanup failed")
    inner = FakeTask("svc", execute=_waits, cleanup=error, log=log)
    task = Interruptible([signal.SIGUSR1], inner)
    ctx, cancel = gt.with_cancel(gt.background())
    task.initialize(ctx)
    running = _run(task, ctx)
    _until(lambda: inner.execute_call_count == 1)
    task.interrupt()
    assert _outcome(running) == ("raised", error)
    task.cleanup(ctx)  # the manager's final cleanup: the restart already cleaned up
    assert _stages(log) == [INIT, EXEC, CLEAN]
    cancel()


def test_an_initialize_error_during_a_restart_ends_it_and_is_cleaned_up_once() -> None:
    log = CallLog()
    error = RuntimeError("config invalid")

    def fails_second_time(ctx: gt.Context) -> None:
        if inner.initialize_call_count == 2:
            raise error

    inner = FakeTask("svc", initialize=fails_second_time, execute=_waits, log=log)
    task = Interruptible([signal.SIGUSR1], inner)
    ctx, cancel = gt.with_cancel(gt.background())
    task.initialize(ctx)
    running = _run(task, ctx)
    _until(lambda: inner.execute_call_count == 1)
    task.interrupt()
    assert _outcome(running) == ("raised", error)
    task.cleanup(ctx)  # like the manager: a failed initialize is cleaned up too
    assert _stages(log) == [INIT, EXEC, CLEAN, INIT, CLEAN]
    cancel()


def test_step_errors_inside_a_manager_are_recorded_for_the_wrapper() -> None:
    log = CallLog()
    error = ValueError("cleanup failed")
    inner = FakeTask("svc", execute=_waits, cleanup=error, log=log)
    task = Interruptible([signal.SIGUSR1], inner)
    manager = gt.TaskManager()
    manager.add_task("svc", task)
    runner = gevent.spawn(manager.run)
    _until(lambda: inner.execute_call_count == 1)
    task.interrupt()
    with gevent.Timeout(5):
        errors = runner.get()
    assert [(e.task_name, e.stage, e.error) for e in errors] == [("svc", gt.Stage.EXECUTE, error)]
    assert _stages(log) == [INIT, EXEC, CLEAN]


def test_a_signal_during_a_restart_leads_to_another_restart() -> None:
    log = CallLog()
    task: Interruptible

    def cleanup(ctx: gt.Context) -> None:
        if inner.cleanup_call_count == 1:
            task.interrupt()

    inner = FakeTask("svc", execute=_waits, cleanup=cleanup, log=log)
    task = Interruptible([signal.SIGUSR1], inner)
    ctx, cancel = gt.with_cancel(gt.background())
    running = _run(task, ctx)
    _until(lambda: inner.execute_call_count == 1)
    task.interrupt()
    _until(lambda: inner.execute_call_count == 3)
    assert _stages(log) == [EXEC, CLEAN, INIT, EXEC, CLEAN, INIT, EXEC]
    assert not inner.execute_calls[2].cancelled
    cancel()
    assert _outcome(running) == ("ok", None)


def test_cancellation_during_a_restart_skips_initialize_and_the_second_cleanup() -> None:
    log = CallLog()
    ctx, cancel = gt.with_cancel(gt.background())
    inner = FakeTask("svc", execute=_waits, cleanup=lambda c: cancel(), log=log)
    task = Interruptible([signal.SIGUSR1], inner)
    task.initialize(ctx)
    running = _run(task, ctx)
    _until(lambda: inner.execute_call_count == 1)
    task.interrupt()
    assert _outcome(running) == ("ok", None)
    task.cleanup(ctx)
    assert _stages(log) == [INIT, EXEC, CLEAN]


def test_a_plain_function_is_restarted_with_no_op_initialize_and_cleanup() -> None:
    contexts: list[gt.Context] = []

    def execute(ctx: gt.Context) -> None:
        contexts.append(ctx)
        ctx.wait()

    task = Interruptible([signal.SIGUSR1], execute)
    ctx, cancel = gt.with_cancel(gt.background())
    assert task.initialize(ctx) is None
    running = _run(task, ctx)
    _until(lambda: len(contexts) == 1)
    task.interrupt()
    _until(lambda: len(contexts) == 2)
    cancel()
    assert _outcome(running) == ("ok", None)
    assert task.cleanup(ctx) is None


def test_previous_handlers_are_restored_at_the_os_level() -> None:
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        received.append(signum)

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        inner = FakeExecuteTask.blocking()
        ctx, cancel = gt.with_cancel(gt.background())
        running = _run(Interruptible([signal.SIGUSR1], inner), ctx)
        _until(lambda: inner.execute_call_count == 1)
        os.kill(os.getpid(), signal.SIGUSR1)
        _until(lambda: inner.execute_call_count == 2)
        assert received == []  # while executing, the signal restarts the task
        cancel()
        assert _outcome(running) == ("ok", None)

        assert signal.getsignal(signal.SIGUSR1) is handler
        os.kill(os.getpid(), signal.SIGUSR1)
        _until(lambda: received == [signal.SIGUSR1])
        assert inner.execute_call_count == 2
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_a_default_disposition_is_restored_as_the_default() -> None:
    previous = signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    try:
        ctx, cancel = gt.with_cancel(gt.background())
        inner = FakeExecuteTask.blocking()
        running = _run(Interruptible([signal.SIGUSR2], inner), ctx)
        _until(lambda: inner.execute_call_count == 1)
        cancel()
        assert _outcome(running) == ("ok", None)
        assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_handlers_are_restored_after_an_error_too() -> None:
    received: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    try:
        ctx, cancel = gt.with_cancel(gt.background())
        kind, _ = _outcome(_run(Interruptible([signal.SIGUSR1], FakeExecuteTask(execute=ValueError)), ctx))
        assert kind == "raised"
        os.kill(os.getpid(), signal.SIGUSR1)
        _until(lambda: received == [signal.SIGUSR1])
        cancel()
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_a_restart_is_logged_naming_the_manager_and_the_task(caplog: pytest.LogCaptureFixture) -> None:
    ctx, stop = task_context(FakeClock(), "config")
    inner = FakeTask("config", execute=_waits)
    task = Interruptible([signal.SIGHUP], inner)
    with caplog.at_level(logging.INFO, logger="greentask"):
        runner = _run(task, ctx)
        _until(lambda: inner.execute_call_count == 1)
        assert task.interrupt()
        _until(lambda: inner.execute_call_count == 2)
        stop(None)
        assert _outcome(runner) == ("ok", None)
    assert caplog.messages == ["greentask: web: task 'config': got an interrupt() call; restarting the task"]


def test_interrupt_outside_execute_does_nothing() -> None:
    inner = FakeTask("svc")
    task = Interruptible([signal.SIGUSR1], inner)
    assert task.interrupt() is False
    assert inner.execute_call_count == 0


def test_one_instance_cannot_execute_twice_at_once() -> None:
    task = Interruptible([signal.SIGUSR1], FakeExecuteTask.blocking())
    ctx, cancel = gt.with_cancel(gt.background())
    first = _run(task, ctx)
    gevent.idle()
    kind, raised = _outcome(_run(task, ctx))
    assert kind == "raised"
    assert isinstance(raised, RuntimeError)
    assert "already executing" in str(raised)
    cancel()
    assert _outcome(first) == ("ok", None)


def test_signals_are_normalized() -> None:
    task = FakeExecuteTask()
    assert Interruptible(signal.SIGUSR1, task).signals == (signal.SIGUSR1,)
    assert Interruptible(int(signal.SIGUSR1), task).signals == (signal.SIGUSR1,)
    assert Interruptible((signal.SIGUSR1, signal.SIGUSR2, signal.SIGUSR1), task).signals == (
        signal.SIGUSR1,
        signal.SIGUSR2,
    )


@pytest.mark.parametrize(
    ("signals", "task", "error", "match"),
    [
        ([], FakeExecuteTask(), ValueError, "signals must name at least one signal"),
        ("SIGHUP", FakeExecuteTask(), TypeError, "signals must be a signal number or an iterable"),
        (None, FakeExecuteTask(), TypeError, "signals must be a signal number or an iterable"),
        (["SIGHUP"], FakeExecuteTask(), TypeError, "signals must hold signal numbers"),
        ([True], FakeExecuteTask(), TypeError, "signals must hold signal numbers"),
        ([100_000], FakeExecuteTask(), ValueError, "signals must hold valid signal numbers"),
        ([signal.SIGKILL], FakeExecuteTask(), ValueError, "cannot be caught"),
        ([signal.SIGUSR1], None, TypeError, "task cannot be None"),
        ([signal.SIGUSR1], object(), TypeError, "task must be callable"),
    ],
)
def test_bad_arguments_are_rejected(signals: object, task: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Interruptible(signals, task)  # type: ignore[arg-type]


def test_when_one_of_two_interruptibles_on_a_signal_ends_the_other_still_gets_the_signal() -> None:
    # Regression: the first one to end put the previous handler back at the OS level
    # while the second still watched the signal, so the next signal bypassed it.
    python_handler_calls: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: python_handler_calls.append(signum))
    try:
        first = FakeTask("first", execute=_waits)
        second = FakeTask("second", execute=_waits)
        ctx_first, cancel_first = gt.with_cancel(gt.background())
        ctx_second, cancel_second = gt.with_cancel(gt.background())
        runner_first = _run(Interruptible([signal.SIGUSR2], first), ctx_first)
        runner_second = _run(Interruptible([signal.SIGUSR2], second), ctx_second)
        _until(lambda: first.execute_call_count == 1 and second.execute_call_count == 1)

        cancel_first()
        assert _outcome(runner_first) == ("ok", None)
        os.kill(os.getpid(), signal.SIGUSR2)
        _until(lambda: second.execute_call_count == 2)
        assert python_handler_calls == []

        cancel_second()
        assert _outcome(runner_second) == ("ok", None)
        os.kill(os.getpid(), signal.SIGUSR2)  # now the previous handler gets it again
        _until(lambda: python_handler_calls == [signal.SIGUSR2])
    finally:
        signal.signal(signal.SIGUSR2, previous)
