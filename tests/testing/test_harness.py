"""TaskHarness: one task stepped through initialize / execute / cancel / cleanup."""

from __future__ import annotations

import gevent
import pytest
from gevent.event import Event

import greentask as gt
from greentask.testing import CallLog, FakeClock, FakeExecuteTask, FakeTask, TaskHarness, settle

pytestmark = pytest.mark.greentask


def test_full_lifecycle_calls_each_stage_with_the_run_context():
    log = CallLog()
    task = FakeTask.blocking("db", log=log)
    with TaskHarness(task) as harness:
        harness.initialize()
        harness.start()
        settle()
        assert harness.running
        harness.cancel()
        assert harness.wait(timeout=5) is None
        harness.cleanup()
    assert log.calls == [("db", gt.Stage.INITIALIZE), ("db", gt.Stage.EXECUTE), ("db", gt.Stage.CLEANUP)]
    assert task.initialize_calls == [harness.ctx]
    assert task.execute_calls == [harness.ctx]
    assert harness.ctx.cancelled
    [cleanup_ctx] = task.cleanup_calls
    assert not cleanup_ctx.cancelled
    assert cleanup_ctx.clock is harness.clock


def test_initialize_and_cleanup_return_what_the_task_returns_and_raise_what_it_raises():
    boom = OSError("disk full")
    task = FakeTask(initialize=lambda ctx: "ready", cleanup=boom)
    harness = TaskHarness(task)
    assert harness.initialize() == "ready"
    with pytest.raises(OSError) as caught:
        harness.cleanup()
    assert caught.value is boom


def test_wait_returns_the_result_of_execute():
    harness = TaskHarness(FakeTask(execute=lambda ctx: 42)).start()
    assert harness.wait(timeout=5) == 42
    assert harness.done
    assert not harness.running
    assert harness.result == 42
    assert harness.error is None


def test_wait_raises_the_error_of_execute_and_the_hub_does_not_print_it():
    boom = ValueError("boom")
    harness = TaskHarness(FakeTask(execute=boom)).start()
    with pytest.raises(ValueError) as caught:
        harness.wait(timeout=5)
    assert caught.value is boom
    assert harness.error is boom
    assert harness.done
    # The module's greentask marker turns on the leak check, which fails this test
    # if the hub reported the error.


def test_wait_times_out_in_real_seconds_when_execute_does_not_finish():
    with TaskHarness(FakeTask.blocking()) as harness:
        harness.start()
        with pytest.raises(TimeoutError, match=r"did not finish within 0\.01s"):
            harness.wait(timeout=0.01)
        assert harness.running
        assert harness.error is None
    assert harness.done


def test_state_properties_before_start():
    harness = TaskHarness(FakeTask())
    assert not harness.running
    assert not harness.done
    assert harness.error is None
    assert harness.result is None
    assert harness.greenlet is None
    assert "not started" in repr(harness)


def test_wait_before_start_is_an_error():
    with pytest.raises(RuntimeError, match="start\\(\\) has not been called"):
        TaskHarness(FakeTask()).wait()


def test_start_twice_is_an_error():
    with TaskHarness(FakeTask.blocking()) as harness:
        harness.start()
        with pytest.raises(RuntimeError, match="start\\(\\) was already called"):
            harness.start()


def test_cancel_passes_its_cause_to_the_task():
    causes = []
    task = FakeTask(execute=lambda ctx: causes.append((ctx.wait(), ctx.cause)))
    reason = RuntimeError("shutting down")
    with TaskHarness(task) as harness:
        harness.start()
        settle()
        harness.cancel(reason)
        harness.wait(timeout=5)
    assert causes == [(True, reason)]


def test_cancelled_escaping_execute_after_cancel_is_a_clean_stop():
    def execute(ctx):
        ctx.wait()
        ctx.check()

    with TaskHarness(FakeTask(execute=execute)) as harness:
        harness.start()
        harness.cancel()
        assert harness.wait(timeout=5) is None
        assert harness.error is None


def test_cancelled_escaping_execute_before_cancel_is_a_failure():
    clock = FakeClock()

    def execute(ctx):
        inner, _cancel = gt.with_timeout(ctx, 1)
        inner.wait()
        inner.check()

    with TaskHarness(FakeTask(execute=execute), clock=clock) as harness:
        harness.start()
        clock.advance(1)
        with pytest.raises(gt.DeadlineExceeded):
            harness.wait(timeout=5)
        assert isinstance(harness.error, gt.DeadlineExceeded)


def test_works_with_a_fake_clock():
    clock = FakeClock()
    ticks = []

    def execute(ctx):
        while ctx.sleep(10):
            ticks.append(ctx.clock.now())

    with TaskHarness(FakeTask(execute=execute), clock=clock) as harness:
        assert harness.clock is clock
        harness.start()
        clock.advance(35)
        assert ticks == [10.0, 20.0, 30.0]
        harness.cancel()
        harness.wait(timeout=5)
    assert ticks == [10.0, 20.0, 30.0]


def test_the_run_context_is_a_child_of_ctx():
    clock = FakeClock()
    parent, cancel_parent = gt.with_cancel(gt.with_value(gt.background(clock), "user", "ada"))
    seen = []
    task = FakeTask(execute=lambda ctx: seen.append((ctx.value("user"), ctx.wait())))
    with TaskHarness(task, ctx=parent, clock=clock) as harness:
        harness.start()
        settle()
        cancel_parent()
        harness.wait(timeout=5)
    assert seen == [("ada", True)]
    assert harness.clock is clock


def test_execute_only_tasks_have_no_op_initialize_and_cleanup():
    fake = FakeExecuteTask(execute=lambda ctx: "fake")
    harness = TaskHarness(fake)
    assert harness.initialize() is None
    assert harness.start().wait(timeout=5) == "fake"
    assert harness.cleanup() is None
    assert fake.execute_call_count == 1


def test_a_plain_callable_is_an_execute_only_task():
    calls = []

    def job(ctx):
        calls.append(ctx)
        return "job"

    harness = TaskHarness(job)
    assert harness.initialize() is None
    assert harness.start().wait(timeout=5) == "job"
    assert harness.cleanup() is None
    assert calls == [harness.ctx]
    assert harness.task is job


def test_exiting_the_block_cancels_and_joins():
    task = FakeTask.blocking()
    with TaskHarness(task) as harness:
        harness.start()
        settle()
        assert harness.running
    assert harness.done
    assert harness.ctx.cancelled
    assert task.cleanup_call_count == 0


def test_close_kills_a_task_that_ignores_cancellation():
    never = Event()
    exits = []

    def stubborn(ctx):
        try:
            never.wait()
        except BaseException as exc:
            exits.append(type(exc))
            raise

    harness = TaskHarness(stubborn).start()
    settle()
    with pytest.raises(TimeoutError, match=r"did not stop within 0\.01s of cancellation; killed"):
        harness.close(timeout=0.01)
    assert harness.done
    assert exits == [gevent.GreenletExit]
    assert isinstance(harness.error, gevent.GreenletExit)


def test_exiting_the_block_does_not_hide_the_error_leaving_it(caplog):
    never = Event()
    harness = TaskHarness(lambda ctx: never.wait())
    harness.close_timeout = 0.01
    harness.start()
    settle()

    def fail_inside_the_block():
        with harness:
            raise KeyError("test failure")

    with pytest.raises(KeyError):
        fail_inside_the_block()
    assert harness.done
    assert "did not stop when its harness closed" in caplog.text


def test_exiting_the_block_raises_when_the_task_ignores_cancellation():
    never = Event()
    harness = TaskHarness(lambda ctx: never.wait())
    harness.close_timeout = 0.01
    harness.start()
    settle()

    def leave_the_block():
        with harness:
            pass

    with pytest.raises(TimeoutError, match=r"did not stop within 0\.01s of cancellation; killed"):
        leave_the_block()
    assert harness.done


def test_close_before_start_only_cancels():
    harness = TaskHarness(FakeTask())
    harness.close()
    assert harness.ctx.cancelled
    assert not harness.done


def test_repr_shows_the_state():
    harness = TaskHarness(FakeTask("db", execute=KeyError("x")))
    harness.start()
    assert "running" in repr(harness)
    with pytest.raises(KeyError):
        harness.wait(timeout=5)
    assert "failed: KeyError('x')" in repr(harness)
    ok = TaskHarness(FakeTask("ok")).start()
    ok.wait(timeout=5)
    assert repr(ok).endswith("done>")


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((None,), {}, TypeError, "task cannot be None"),
        ((object(),), {}, TypeError, "task must have a callable execute"),
        ((FakeTask(),), {"ctx": "ctx"}, TypeError, "ctx must be a greentask Context"),
        ((FakeTask(),), {"clock": object()}, TypeError, "clock must"),
        ((FakeTask(),), {"ctx": gt.background(), "clock": FakeClock()}, ValueError, "clock must be None or ctx's"),
    ],
)
def test_bad_arguments_are_rejected(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        TaskHarness(*args, **kwargs)


@pytest.mark.parametrize(("timeout", "error"), [(-1, ValueError), ("1", TypeError), (float("nan"), ValueError)])
def test_wait_rejects_bad_timeouts(timeout, error):
    harness = TaskHarness(FakeTask()).start()
    with pytest.raises(error, match="timeout must be None or a"):
        harness.wait(timeout)
    harness.wait(timeout=5)


def test_task_harness_fixture_makes_harnesses(task_harness, fake_clock):
    task = FakeTask.blocking()
    harness = task_harness(task, clock=fake_clock)
    assert isinstance(harness, TaskHarness)
    assert harness.clock is fake_clock
    harness.initialize()
    harness.start()
    settle()
    assert harness.running
    # Not cancelled here: the fixture cancels and joins it at teardown.
