"""RepeatTimer: runs at t0 + k*interval on the fake clock, no drift, skips missed ticks."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import gevent
import pytest
from _taskctx import task_context

import greentask as gt
from greentask.tasks import RepeatTimer
from greentask.testing import CallLog, FakeClock, FakeExecuteTask, FakeTask, settle


def _run(task: RepeatTimer, ctx: gt.Context) -> gevent.Greenlet[..., Any]:
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


def _recorder(clock: FakeClock, then: Callable[[gt.Context, int], object] | None = None) -> tuple[Any, list[float]]:
    times: list[float] = []

    def execute(ctx: gt.Context) -> None:
        times.append(clock.now())
        if then is not None:
            then(ctx, len(times) - 1)

    return FakeExecuteTask(execute=execute), times


def test_runs_at_once_then_exactly_once_per_interval() -> None:
    clock = FakeClock(start=10.0)
    ctx, cancel = gt.with_cancel(gt.background(clock))
    task, times = _recorder(clock)
    timer = _run(RepeatTimer(0.25, task), ctx)
    settle()
    assert times == [10.0]
    for k in range(1, 41):
        clock.advance(0.25)
        assert times == [10.0 + i * 0.25 for i in range(k + 1)]
    clock.advance(0.24)
    assert len(times) == 41  # not yet
    clock.advance(0.01)
    assert len(times) == 42
    cancel()
    _join(timer)
    assert timer.value is None


def test_no_drift_over_a_thousand_intervals_even_when_runs_take_time() -> None:
    start = 1000.0
    interval = 0.1  # not exactly representable: accumulating it would drift
    clock = FakeClock(start=start)
    ctx, cancel = gt.with_cancel(gt.background(clock))
    task, times = _recorder(clock, lambda ctx, _: ctx.sleep(0.03))  # every run takes 0.03s
    timer = _run(RepeatTimer(interval, task), ctx)
    settle()
    clock.advance(1000 * interval + interval / 2)
    assert len(times) == 1001
    assert times == [start + k * interval for k in range(1001)]
    cancel()
    _join(timer)


def test_an_overrun_skips_the_missed_ticks_instead_of_bunching_them() -> None:
    clock = FakeClock()
    ctx, cancel = gt.with_cancel(gt.background(clock))

    def slow_second_run(ctx: gt.Context, index: int) -> None:
        if index == 1:
            ctx.sleep(2.5)  # from 1.0 to 3.5: ticks 2 and 3 are missed

    task, times = _recorder(clock, slow_second_run)
    timer = _run(RepeatTimer(1.0, task), ctx)
    settle()
    clock.advance(6.0)
    assert times == [0.0, 1.0, 4.0, 5.0, 6.0]
    cancel()
    _join(timer)


def test_a_run_that_ends_on_a_grid_point_is_followed_at_that_point() -> None:
    clock = FakeClock()
    ctx, cancel = gt.with_cancel(gt.background(clock))

    def second_run_takes_two_intervals(ctx: gt.Context, index: int) -> None:
        if index == 1:
            ctx.sleep(2.0)  # from 1.0 to exactly 3.0

    task, times = _recorder(clock, second_run_takes_two_intervals)
    timer = _run(RepeatTimer(1.0, task), ctx)
    settle()
    clock.advance(4.0)
    assert times == [0.0, 1.0, 3.0, 4.0]
    cancel()
    _join(timer)


def test_errors_are_swallowed_and_logged_and_the_grid_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    ctx, cancel = gt.with_cancel(gt.background(clock))

    def fail(ctx: gt.Context, index: int) -> None:
        raise ValueError(f"run {index}")

    task, times = _recorder(clock, fail)
    with caplog.at_level(logging.ERROR, logger="greentask"):
        timer = _run(RepeatTimer(2.0, task), ctx)
        settle()
        clock.advance(6.0)
    assert times == [0.0, 2.0, 4.0, 6.0]
    logged = [r.exc_info[1] for r in caplog.records if r.name == "greentask" and r.exc_info]
    assert [str(e) for e in logged] == ["run 0", "run 1", "run 2", "run 3"]
    assert not timer.dead
    cancel()
    _join(timer)
    assert timer.value is None


def test_cancellation_during_the_wait_returns_at_once_and_releases_the_timer() -> None:
    clock = FakeClock()
    ctx, cancel = gt.with_cancel(gt.background(clock))
    task, times = _recorder(clock)
    timer = _run(RepeatTimer(60.0, task), ctx)
    settle()
    assert times == [0.0]
    assert clock.pending_timers == 1
    cancel()
    _join(timer)
    assert timer.value is None
    assert clock.now() == 0.0
    assert clock.pending_timers == 0
    assert times == [0.0]


def test_cancellation_during_a_run_ends_after_that_run() -> None:
    clock = FakeClock()
    ctx, cancel = gt.with_cancel(gt.background(clock))
    task, times = _recorder(clock, lambda ctx, _: ctx.wait())
    timer = _run(RepeatTimer(1.0, task), ctx)
    settle()
    cancel()
    _join(timer)
    assert timer.value is None
    assert times == [0.0]


def test_the_own_deadline_of_the_context_ends_it() -> None:
    clock = FakeClock()
    ctx, cancel = gt.with_timeout(gt.background(clock), 2.5)
    task, times = _recorder(clock)
    timer = _run(RepeatTimer(1.0, task), ctx)
    settle()
    clock.advance(3.0)
    _join(timer)
    assert times == [0.0, 1.0, 2.0]
    cancel()


def test_initialize_and_cleanup_pass_through() -> None:
    log = CallLog()
    inner = FakeTask("inner", log=log)
    timer = RepeatTimer(1.0, inner)
    ctx = gt.background()
    timer.initialize(ctx)
    timer.cleanup(ctx)
    assert log.stages("inner") == [gt.Stage.INITIALIZE, gt.Stage.CLEANUP]
    assert timer.interval == 1.0
    assert RepeatTimer(1, lambda ctx: None).initialize(ctx) is None


@pytest.mark.parametrize(
    ("interval", "error", "match"),
    [
        (0, ValueError, "interval must be a positive"),
        (-1.0, ValueError, "interval must be a positive"),
        (math.nan, ValueError, "interval must be a positive"),
        (math.inf, ValueError, "interval must be a positive"),
        ("1", TypeError, "interval must be a number"),
        (True, TypeError, "interval must be a number"),
    ],
)
def test_bad_intervals_are_rejected(interval: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        RepeatTimer(interval, FakeExecuteTask())  # type: ignore[arg-type]


def test_log_lines_name_the_manager_and_the_task(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    ctx, stop = task_context(clock, "metrics")
    timer = _run(RepeatTimer(5.0, FakeExecuteTask(execute=OSError("disk full"))), ctx)
    with caplog.at_level(logging.ERROR, logger="greentask"):
        settle()
    stop(None)
    with gevent.Timeout(5):
        timer.join()
    assert caplog.messages == ["greentask: web: task 'metrics': a run failed: OSError('disk full')"]


def test_a_missing_task_is_rejected() -> None:
    with pytest.raises(TypeError, match="task cannot be None"):
        RepeatTimer(1.0, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="execute"):
        RepeatTimer(1.0, 42)  # type: ignore[arg-type]


def test_runs_inside_a_task_manager() -> None:
    clock = FakeClock()
    times: list[float] = []
    manager = gt.TaskManager()
    manager.add_execute_task("tick", RepeatTimer(5.0, lambda ctx: times.append(clock.now())))
    runner = gevent.spawn(manager.run, gt.background(clock))
    settle()
    clock.advance(12.0)
    assert times == [0.0, 5.0, 10.0]
    manager.stop()
    with gevent.Timeout(5):
        assert runner.get() == []
    assert times == [0.0, 5.0, 10.0]
    [status] = manager.status()
    assert status.state is gt.TaskState.STOPPED
