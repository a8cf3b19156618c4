"""Repeatable: runs again and again, swallows and logs errors, yields, backs off, stops."""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable
from typing import Any

import gevent
import pytest
from _taskctx import task_context
from gevent.event import Event
from greenlet import GreenletExit

import greentask as gt
from greentask.tasks import Backoff, Repeatable
from greentask.testing import CallLog, FakeClock, FakeExecuteTask, FakeTask, settle


def _run(task: Repeatable, ctx: gt.Context) -> gevent.Greenlet[..., Any]:
    """Start ``task.execute(ctx)`` in a greenlet that hands back what it raised."""

    def body() -> Exception | None:
        try:
            task.execute(ctx)
        except Exception as exc:
            return exc
        return None

    return gevent.spawn(body)


def _join(greenlet: gevent.Greenlet[..., Any]) -> None:
    with gevent.Timeout(5):
        greenlet.join()
    assert greenlet.dead


def test_an_inner_task_that_fails_at_once_does_not_freeze_other_greenlets() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    runs = 0

    def fail(ctx: gt.Context) -> None:
        nonlocal runs
        runs += 1
        raise ValueError("boom")

    repeat = _run(Repeatable(fail), ctx)
    counted = 0

    def count() -> None:
        nonlocal counted
        while True:
            counted += 1
            gevent.idle()

    counter = gevent.spawn(count)
    timer_fired = Event()
    gevent.spawn_later(0.01, timer_fired.set)  # a real timer must still fire
    try:
        with gevent.Timeout(5):
            while counted < 50 or runs < 50:
                gevent.idle()
            timer_fired.wait()
        assert not repeat.dead

        cancel()
        runs_at_cancel = runs
        _join(repeat)
        assert repeat.value is None
        assert runs == runs_at_cancel  # cancellation ended it at once: no further run
    finally:
        counter.kill()
        repeat.kill()


def test_errors_are_swallowed_and_logged_with_traceback(caplog: pytest.LogCaptureFixture) -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    runs = 0

    def flaky(ctx: gt.Context) -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise ValueError(f"failure {runs}")
        cancel()

    with caplog.at_level(logging.ERROR, logger="greentask"):
        repeat = _run(Repeatable(flaky), ctx)
        _join(repeat)
    assert repeat.value is None
    assert runs == 3
    records = [r for r in caplog.records if r.name == "greentask"]
    assert [str(r.exc_info[1]) for r in records if r.exc_info] == ["failure 1", "failure 2"]
    assert all(r.levelno == logging.ERROR and r.exc_info[2] is not None for r in records if r.exc_info)
    assert len(records) == 2


def test_log_lines_name_the_manager_and_the_task(caplog: pytest.LogCaptureFixture) -> None:
    ctx, stop = task_context(FakeClock(), "poller")
    runs = 0

    def flaky(ctx: gt.Context) -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise ConnectionError("refused")
        stop(None)

    with caplog.at_level(logging.ERROR, logger="greentask"):
        _join(_run(Repeatable(flaky), ctx))
    assert caplog.messages == ["greentask: web: task 'poller': a run failed: ConnectionError('refused')"]


def test_clean_returns_run_again_until_cancelled() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    task = FakeExecuteTask()

    def stop_on_fifth(c: gt.Context) -> None:
        if task.execute_call_count == 5:
            cancel()

    task.execute_stub = stop_on_fifth
    repeat = _run(Repeatable(task), ctx)
    _join(repeat)
    assert task.execute_call_count == 5
    assert all(c is ctx for c in task.execute_calls)


def test_cancelled_escaping_after_cancellation_just_ends_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    started = Event()

    def wait_then_check(ctx: gt.Context) -> None:
        started.set()
        ctx.wait()
        ctx.check()  # raises Cancelled

    task = FakeExecuteTask(execute=wait_then_check)
    with caplog.at_level(logging.ERROR, logger="greentask"):
        repeat = _run(Repeatable(task), ctx)
        with gevent.Timeout(5):
            started.wait()
        cancel()
        _join(repeat)
    assert repeat.successful()
    assert repeat.value is None
    assert task.execute_call_count == 1
    assert not [r for r in caplog.records if r.name == "greentask" and r.levelno >= logging.ERROR]


def test_a_cancelled_from_the_inner_tasks_own_deadline_is_an_error_of_that_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    ctx, cancel = gt.with_cancel(gt.background(clock))

    def with_own_deadline(ctx: gt.Context) -> None:
        sub, sub_cancel = gt.with_timeout(ctx, 1.0)
        try:
            sub.wait()
            sub.check()  # DeadlineExceeded, while ctx itself is not cancelled
        finally:
            sub_cancel()

    task = FakeExecuteTask(execute=with_own_deadline)
    with caplog.at_level(logging.ERROR, logger="greentask"):
        repeat = _run(Repeatable(task), ctx)
        settle()
        clock.advance(1.0)
        clock.advance(1.0)
        assert task.execute_call_count == 3
        assert not repeat.dead
        cancel()
        _join(repeat)
    assert repeat.value is None
    errors = [r.exc_info[1] for r in caplog.records if r.name == "greentask" and r.exc_info]
    assert len(errors) == 2
    assert all(isinstance(e, gt.DeadlineExceeded) for e in errors)


def test_a_kill_before_cancellation_passes_through() -> None:
    ctx, _cancel = gt.with_cancel(gt.background())
    started = Event()

    def block(ctx: gt.Context) -> None:
        started.set()
        Event().wait()

    task = FakeExecuteTask(execute=block)
    repeat = _run(Repeatable(task), ctx)
    with gevent.Timeout(5):
        started.wait()
        repeat.kill()
    assert repeat.dead
    assert isinstance(repeat.value, GreenletExit)
    assert task.execute_call_count == 1


def _recording(clock: FakeClock, outcomes: list[Callable[[], None] | None]) -> tuple[FakeExecuteTask, list[float]]:
    """An execute that records clock.now() and plays ``outcomes`` (raise or return), then blocks."""
    times: list[float] = []

    def execute(ctx: gt.Context) -> None:
        times.append(clock.now())
        index = len(times) - 1
        if index >= len(outcomes):
            ctx.wait()
            return
        outcome = outcomes[index]
        if outcome is not None:
            outcome()

    return FakeExecuteTask(execute=execute), times


def _fail() -> None:
    raise RuntimeError("down")


def test_backoff_delays_double_between_failures_up_to_the_cap_on_the_fake_clock() -> None:
    clock = FakeClock()
    ctx, cancel = gt.with_cancel(gt.background(clock))
    task, times = _recording(clock, [_fail] * 9)
    backoff = Backoff(initial=0.1, maximum=1.0, factor=2.0, jitter=0)
    repeat = _run(Repeatable(task, backoff=backoff), ctx)
    settle()
    assert times == [0.0]
    clock.advance(5.0)

    expected = [0.0]
    for delay in [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]:
        expected.append(expected[-1] + delay)  # the clock adds each delay to "now"
    assert times == expected[: len(times)]
    assert len(times) == 8  # 0, .1, .3, .7, 1.5, 2.5, 3.5, 4.5; the next is at 5.5
    clock.advance(1.0)
    assert times == expected
    cancel()
    _join(repeat)


def test_backoff_resets_after_a_clean_return() -> None:
    clock = FakeClock()
    ctx, cancel = gt.with_cancel(gt.background(clock))
    # fail, fail, succeed, fail, fail, then block
    task, times = _recording(clock, [_fail, _fail, None, _fail, _fail])
    repeat = _run(Repeatable(task, backoff=Backoff(initial=0.1, maximum=10.0, jitter=0)), ctx)
    settle()
    clock.advance(1.0)
    t2 = 0.0 + 0.1 + 0.2  # after two failures: waits of 0.1 and 0.2
    # The clean run at t2 resets the backoff: the run after it starts at once, and
    # the wait after the next failure is 0.1 again, not 0.4.
    assert times == [0.0, 0.1, t2, t2, t2 + 0.1, t2 + 0.1 + 0.2]
    cancel()
    _join(repeat)


def test_jittered_backoff_waits_stay_within_bounds() -> None:
    clock = FakeClock()
    ctx, cancel = gt.with_cancel(gt.background(clock))
    task, times = _recording(clock, [_fail] * 6)
    backoff = Backoff(initial=1.0, maximum=100.0, factor=2.0, jitter=0.5, rng=random.Random(3))
    repeat = _run(Repeatable(task, backoff=backoff), ctx)
    settle()
    clock.advance(200.0)
    assert len(times) == 7
    for step, (before, after) in enumerate(itertools.pairwise(times)):
        base = 2.0**step
        assert base * 0.5 <= after - before <= base * 1.5
    cancel()
    _join(repeat)


def test_cancellation_during_a_backoff_wait_returns_at_once() -> None:
    clock = FakeClock()
    ctx, cancel = gt.with_cancel(gt.background(clock))
    task, times = _recording(clock, [_fail] * 100)
    repeat = _run(Repeatable(task, backoff=Backoff(initial=10.0, maximum=10.0, jitter=0)), ctx)
    settle()
    assert times == [0.0]
    assert clock.pending_timers == 1
    cancel()
    _join(repeat)
    assert repeat.value is None
    assert clock.now() == 0.0
    assert times == [0.0]
    assert clock.pending_timers == 0


def test_initialize_and_cleanup_pass_through_to_the_inner_task() -> None:
    log = CallLog()
    inner = FakeTask("inner", initialize=lambda ctx: "ready", cleanup=lambda ctx: "gone", log=log)
    repeat = Repeatable(inner)
    ctx = gt.background()
    assert repeat.initialize(ctx) == "ready"
    assert repeat.cleanup(ctx) == "gone"
    assert log.stages("inner") == [gt.Stage.INITIALIZE, gt.Stage.CLEANUP]
    assert inner.initialize_calls == [ctx]
    assert repeat.task is inner


def test_an_execute_only_task_or_function_has_no_op_initialize_and_cleanup() -> None:
    ctx = gt.background()
    for inner in (FakeExecuteTask(), lambda ctx: None):
        repeat = Repeatable(inner)
        assert repeat.initialize(ctx) is None
        assert repeat.cleanup(ctx) is None


@pytest.mark.parametrize(
    ("task", "kwargs", "match"),
    [
        (None, {}, "task cannot be None"),
        (object(), {}, "task must be callable"),
        (FakeTask, {}, "Repeatable's task is the class FakeTask, not an instance"),
        (FakeExecuteTask(), {"backoff": 1.0}, "backoff must be a Backoff"),
    ],
)
def test_bad_arguments_raise_type_error_naming_them(task: object, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(TypeError, match=match):
        Repeatable(task, **kwargs)  # type: ignore[arg-type]


def test_runs_inside_a_task_manager_and_its_errors_do_not_fail_the_manager() -> None:
    clock = FakeClock()
    log = CallLog()
    manager = gt.TaskManager()

    def execute(ctx: gt.Context) -> None:
        if inner.execute_call_count < 3:
            raise ConnectionError("refused")
        manager.stop()

    inner = FakeTask("poller", execute=execute, log=log)
    manager.add_task("poller", Repeatable(inner, backoff=Backoff(initial=1.0, jitter=0)))
    runner = gevent.spawn(manager.run, gt.background(clock))
    settle()
    assert inner.execute_call_count == 1
    clock.advance(1.0)
    assert inner.execute_call_count == 2
    clock.advance(2.0)
    with gevent.Timeout(5):
        errors = runner.get()
    assert errors == []
    assert [s.value for s in log.stages("poller")] == ["initialize", "execute", "execute", "execute", "cleanup"]
