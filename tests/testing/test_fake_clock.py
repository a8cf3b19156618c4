"""FakeClock: advance() fires due timers in order, settles, and autojump."""

from __future__ import annotations

import gc
import math
import weakref

import gevent
import pytest
from gevent.event import Event

import greentask as gt
from greentask.testing import FakeClock, FakeTask, TaskHarness, settle, start_manager

pytestmark = pytest.mark.greentask


def test_now_starts_at_start_and_advance_moves_it():
    clock = FakeClock(start=100)
    assert clock.now() == 100.0
    clock.advance(2.5)
    assert clock.now() == 102.5
    clock.advance(0)
    assert clock.now() == 102.5


def test_advance_fires_exactly_the_due_timers_in_deadline_order():
    clock = FakeClock()
    fired = []
    for when, label in [(3, "c"), (1, "a"), (2, "b1"), (5, "e"), (2, "b2"), (2.5, "b3")]:
        clock.call_at(when, lambda label=label: fired.append((label, clock.now())))
    clock.advance(2.5)
    assert fired == [("a", 1.0), ("b1", 2.0), ("b2", 2.0), ("b3", 2.5)]
    assert clock.pending_timers == 2
    assert clock.next_deadline() == 3.0
    clock.advance(2.4)
    assert fired[4:] == [("c", 3.0)]
    assert clock.now() == 4.9
    clock.advance(0.1)
    assert fired[5:] == [("e", 5.0)]
    assert clock.pending_timers == 0
    assert clock.next_deadline() is None


def test_cancelled_timer_does_not_fire():
    clock = FakeClock()
    fired = []
    keep = clock.call_at(1, fired.append, "keep")
    drop = clock.call_at(1, fired.append, "drop")
    drop.cancel()
    drop.cancel()
    clock.advance(1)
    assert fired == ["keep"]
    keep.cancel()  # after firing: no effect
    assert clock.pending_timers == 0


def test_many_cancelled_timers_are_compacted_away():
    clock = FakeClock()
    handles = [clock.call_at(10 + i, lambda: None) for i in range(200)]
    for handle in handles[1:]:
        handle.cancel()
    clock.call_at(1, lambda: None)  # triggers compaction
    assert len(clock._heap) == 2
    assert clock.pending_timers == 2
    assert clock.next_deadline() == 1


def test_advance_returns_only_when_woken_greenlets_have_run():
    clock = FakeClock()
    ctx = gt.background(clock)
    relay = Event()
    seen = []

    def sleeper():
        ctx.sleep(1)
        seen.append(("sleeper", clock.now()))
        relay.set()

    def follower():
        relay.wait()
        gevent.idle()
        seen.append(("follower", clock.now()))

    gevent.spawn(sleeper)
    gevent.spawn(follower)
    clock.advance(0.5)
    assert seen == []
    clock.advance(0.5)
    assert seen == [("sleeper", 1.0), ("follower", 1.0)]


def test_greenlets_started_before_advance_arm_their_timers_at_the_current_time():
    clock = FakeClock()
    ctx = gt.background(clock)
    woke = []
    gevent.spawn(lambda: woke.append(ctx.sleep(5)))
    clock.advance(5)
    assert woke == [True]


def test_a_timer_rearmed_while_advancing_fires_again_in_the_same_advance():
    clock = FakeClock()
    ctx = gt.background(clock)
    ticks = []

    def periodic():
        while ctx.sleep(1):
            ticks.append(clock.now())

    glet = gevent.spawn(periodic)
    clock.advance(3.5)
    assert ticks == [1.0, 2.0, 3.0]
    clock.advance(0.5)
    assert ticks == [1.0, 2.0, 3.0, 4.0]
    glet.kill()


def test_a_timer_armed_by_a_callback_fires_in_the_same_advance_only_if_due():
    clock = FakeClock()
    fired = []

    def first():
        fired.append(("first", clock.now()))
        clock.call_at(clock.now() + 0.5, lambda: fired.append(("second", clock.now())))
        clock.call_at(clock.now() + 5, lambda: fired.append(("late", clock.now())))

    clock.call_at(1, first)
    clock.advance(2)
    assert fired == [("first", 1.0), ("second", 1.5)]
    assert clock.next_deadline() == 6.0


def test_a_timer_for_a_time_already_reached_fires_soon_without_advance():
    clock = FakeClock(start=10)
    fired = []
    clock.call_at(10, fired.append, "now")
    clock.call_at(3, fired.append, "past")
    assert fired == []
    settle()
    assert fired == ["past", "now"]
    assert clock.now() == 10


def test_a_due_timer_whose_callback_fails_is_reported_and_the_others_still_fire():
    clock = FakeClock()
    fired = []
    reported = []
    hub = gevent.get_hub()
    hub.handle_error = lambda context, t, v, tb: reported.append(v)
    try:
        clock.call_at(0, lambda: 1 / 0)
        clock.call_at(0, fired.append, "after")
        settle()
    finally:
        del hub.handle_error
    assert fired == ["after"]
    assert [type(error) for error in reported] == [ZeroDivisionError]


def test_with_timeout_is_cancelled_exactly_at_its_deadline():
    clock = FakeClock()
    ctx, cancel = gt.with_timeout(gt.background(clock), 5)
    clock.advance(4.999)
    assert not ctx.cancelled
    clock.advance(0.001)
    assert ctx.cancelled
    assert isinstance(ctx.err, gt.DeadlineExceeded)
    cancel()


def test_advance_rejects_going_backwards():
    clock = FakeClock(start=1)
    with pytest.raises(ValueError, match=r"non-negative \(time can't go backwards\), got -1"):
        clock.advance(-1)
    assert clock.now() == 1


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_advance_rejects_nan_and_infinity(bad):
    with pytest.raises(ValueError, match="seconds must be"):
        FakeClock().advance(bad)


@pytest.mark.parametrize("bad", ["1", None, True])
def test_advance_rejects_non_numbers(bad):
    with pytest.raises(TypeError, match="seconds must be a number"):
        FakeClock().advance(bad)


def test_advance_cannot_be_called_from_the_hub():
    clock = FakeClock()
    outcome = []

    def in_hub():
        try:
            clock.advance(1)
        except RuntimeError as exc:
            outcome.append(str(exc))

    gevent.get_hub().loop.run_callback(in_hub)
    settle()
    assert outcome == ["advance() cannot be called from the hub; call it from a greenlet"]


def test_advance_cannot_be_nested():
    clock = FakeClock()
    ctx = gt.background(clock)
    outcome = []

    def nested():
        ctx.sleep(1)
        try:
            clock.advance(1)
        except RuntimeError as exc:
            outcome.append(str(exc))

    gevent.spawn(nested)
    clock.advance(1)
    assert outcome == ["advance() is already running; a greenlet it woke cannot advance the clock again"]
    assert clock.now() == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"start": "0"}, TypeError, "start must be a number"),
        ({"start": math.nan}, ValueError, "start must be a number"),
        ({"start": math.inf}, ValueError, "start must be a finite number"),
        ({"autojump_threshold": -1}, ValueError, "autojump_threshold must be None or a non-negative"),
        ({"autojump_threshold": "0"}, TypeError, "autojump_threshold must be None or a non-negative"),
    ],
)
def test_constructor_validates_its_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        FakeClock(**kwargs)


def test_call_at_validates_its_arguments():
    clock = FakeClock()
    with pytest.raises(TypeError, match="when must be a number"):
        clock.call_at("1", lambda: None)
    with pytest.raises(ValueError, match="when must be a number"):
        clock.call_at(math.nan, lambda: None)
    with pytest.raises(TypeError, match="callback must be callable"):
        clock.call_at(1, None)


def test_repr_shows_time_and_pending_timers():
    clock = FakeClock(start=2)
    handle = clock.call_at(3, lambda: None)
    assert repr(clock) == "<FakeClock now=2.0 pending=1>"
    assert "pending" in repr(handle)
    clock.advance(1)
    assert "done" in repr(handle)


def test_manager_stop_timeout_kills_a_stubborn_task_on_fake_time():
    clock = FakeClock()
    never = Event()

    def stubborn(ctx):
        while True:
            never.wait()  # ignores cancellation

    manager = gt.TaskManager(stop_timeout=30)
    manager.add_execute_task("stubborn", stubborn)
    running = start_manager(manager, gt.background(clock))
    running.wait_running(timeout=5)
    running.stop()
    clock.advance(29.999)
    assert not running.done
    assert manager.phase == "stopping"
    clock.advance(0.001)
    errors = running.wait(timeout=5)
    assert [(error.task_name, error.stage, type(error.error)) for error in errors] == [
        ("stubborn", gt.Stage.EXECUTE, gt.StopTimeout)
    ]
    assert "did not stop within 30.0s" in str(errors[0].error)


def test_autojump_runs_an_hour_of_fake_sleep_without_waiting_for_it():
    with FakeClock(autojump_threshold=0) as clock:
        task = FakeTask(execute=lambda ctx: ctx.sleep(3600))
        with TaskHarness(task, clock=clock) as harness:
            harness.start()
            assert harness.wait(timeout=5) is True
        assert clock.now() == 3600.0


def test_autojump_with_a_positive_threshold_steps_through_every_timer():
    with FakeClock(autojump_threshold=0.001) as clock:
        ctx = gt.background(clock)
        ticks = []

        def periodic():
            for _ in range(3):
                ctx.sleep(60)
                ticks.append(clock.now())

        glet = gevent.spawn(periodic)
        glet.join(timeout=5)
        assert ticks == [60.0, 120.0, 180.0]


def test_autojump_can_be_turned_on_and_off_through_the_property():
    clock = FakeClock()
    ctx = gt.background(clock)
    assert clock.autojump_threshold is None
    woke = gevent.spawn(ctx.sleep, 10)
    settle()
    assert not woke.dead
    clock.autojump_threshold = 0
    assert clock.autojump_threshold == 0.0
    woke.join(timeout=5)
    assert woke.value is True
    assert clock.now() == 10
    jumper = clock._jumper
    assert jumper is not None
    assert jumper._greentask_internal is True
    clock.close()
    assert clock.autojump_threshold is None
    assert jumper.dead
    sleeper = gevent.spawn(ctx.sleep, 5)
    settle()
    assert not sleeper.dead  # no autojump any more
    clock.advance(5)
    assert sleeper.dead


def test_autojump_helper_idles_when_there_are_no_timers_and_wakes_for_a_new_one():
    clock = FakeClock(autojump_threshold=0)
    first, second = Event(), Event()
    clock.call_at(1, first.set)
    assert first.wait(timeout=5)
    jumper = clock._jumper
    settle()
    assert not jumper.dead  # parked, waiting for a timer
    clock.call_at(7, second.set)
    assert second.wait(timeout=5)
    assert clock.now() == 7
    clock.close()


def test_autojump_helper_exits_once_the_clock_is_garbage_collected():
    clock = FakeClock(autojump_threshold=0)
    fired = Event()
    clock.call_at(1, fired.set)
    assert fired.wait(timeout=5)
    jumper = clock._jumper
    settle()
    assert not jumper.dead  # parked until a timer is armed
    ref = weakref.ref(clock)
    del clock
    gc.collect()
    assert ref() is None
    jumper.join(timeout=5)
    assert jumper.dead


def test_autojump_can_be_turned_off_from_the_hub():
    clock = FakeClock(autojump_threshold=60)
    clock.call_at(1, lambda: None)
    jumper = clock._jumper
    settle()
    gevent.get_hub().loop.run_callback(setattr, clock, "autojump_threshold", None)
    jumper.join(timeout=5)
    assert jumper.dead
    assert clock.now() == 0


def test_autojump_helper_sleeping_through_the_threshold_exits_once_the_clock_is_gone():
    clock = FakeClock(autojump_threshold=0.05)
    clock.call_at(3600, lambda: None)
    jumper = clock._jumper
    settle()  # the helper is now sleeping through its threshold
    del clock
    gc.collect()
    jumper.join(timeout=5)
    assert jumper.dead
