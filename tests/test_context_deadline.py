"""Context deadlines (SPEC §2): with_timeout / with_deadline on FakeClock and the real clock."""

from __future__ import annotations

import math
import time

import gevent

import greentask as gt
from greentask import Cancelled, DeadlineExceeded
from greentask.testing import FakeClock, settle


def test_with_timeout_is_cancelled_at_exactly_the_deadline(clock: FakeClock) -> None:
    ctx, _ = gt.with_timeout(gt.background(clock), 5)
    assert ctx.deadline == 5.0
    clock.advance(4.999)
    assert not ctx.cancelled
    assert ctx.err is None
    clock.advance(0.001)
    assert clock.now() == 5.0
    assert ctx.cancelled
    assert type(ctx.err) is DeadlineExceeded
    assert isinstance(ctx.err, Cancelled)
    assert ctx.cause is ctx.err
    assert clock.pending_timers == 0


def test_with_deadline_is_cancelled_at_exactly_the_deadline(clock: FakeClock) -> None:
    clock.advance(100)
    ctx, _ = gt.with_deadline(gt.background(clock), 105)
    assert ctx.deadline == 105.0
    clock.advance(4.999)
    assert not ctx.cancelled
    clock.advance(0.001)
    assert isinstance(ctx.err, DeadlineExceeded)


def test_with_timeout_is_measured_from_now(clock: FakeClock) -> None:
    clock.advance(7)
    ctx, cancel = gt.with_timeout(gt.background(clock), 2)
    assert ctx.deadline == 9.0
    cancel()


def test_deadline_cancels_descendants_with_deadline_exceeded(clock: FakeClock) -> None:
    ctx, _ = gt.with_timeout(gt.background(clock), 5)
    child, _ = gt.with_cancel(ctx)
    valued = gt.with_value(child, "k", 1)
    assert child.deadline == 5.0
    assert valued.deadline == 5.0
    clock.advance(5)
    assert child.err is ctx.err
    assert valued.err is ctx.err
    assert child.cause is ctx.err


def test_the_parents_earlier_deadline_wins(clock: FakeClock) -> None:
    parent, _ = gt.with_timeout(gt.background(clock), 5)
    child, _ = gt.with_timeout(parent, 10)
    assert child.deadline == 5.0
    assert clock.pending_timers == 1  # the child needs no timer of its own
    clock.advance(5)
    assert child.cancelled
    assert child.err is parent.err
    assert isinstance(child.err, DeadlineExceeded)


def test_an_equal_deadline_is_the_parents(clock: FakeClock) -> None:
    parent, _ = gt.with_deadline(gt.background(clock), 5)
    child, _ = gt.with_deadline(parent, 5)
    assert child.deadline == 5.0
    assert clock.pending_timers == 1
    clock.advance(5)
    assert child.err is parent.err


def test_the_childs_earlier_deadline_wins_and_leaves_the_parent_alone(clock: FakeClock) -> None:
    parent, cancel_parent = gt.with_timeout(gt.background(clock), 5)
    child, _ = gt.with_timeout(parent, 3)
    assert child.deadline == 3.0
    assert parent.deadline == 5.0
    clock.advance(3)
    assert isinstance(child.err, DeadlineExceeded)
    assert not parent.cancelled
    assert parent._state is not None
    assert not parent._state.children  # the expired child was unregistered
    cancel_parent()


def test_grandparents_deadline_reaches_through_with_cancel(clock: FakeClock) -> None:
    top, _ = gt.with_timeout(gt.background(clock), 4)
    middle, _ = gt.with_cancel(top)
    bottom, _ = gt.with_timeout(middle, 60)
    assert bottom.deadline == 4.0
    clock.advance(4)
    assert bottom.err is top.err


def test_cancel_releases_the_timer(clock: FakeClock) -> None:
    ctx, cancel = gt.with_timeout(gt.background(clock), 5)
    assert clock.pending_timers == 1
    cancel()
    assert clock.pending_timers == 0
    assert type(ctx.err) is Cancelled  # a cancel, not a deadline
    clock.advance(10)
    assert type(ctx.err) is Cancelled


def test_cancelling_the_parent_releases_every_descendants_timer(clock: FakeClock) -> None:
    parent, cancel = gt.with_cancel(gt.background(clock))
    a, _ = gt.with_timeout(parent, 5)
    b, _ = gt.with_timeout(a, 3)
    c, _ = gt.with_deadline(parent, 7)
    assert clock.pending_timers == 3
    cancel()
    assert clock.pending_timers == 0
    for ctx in (a, b, c):
        assert ctx.err is parent.err


def test_cancel_after_the_deadline_is_a_no_op(clock: FakeClock) -> None:
    ctx, cancel = gt.with_timeout(gt.background(clock), 1)
    clock.advance(1)
    err = ctx.err
    cancel(ValueError("late"))
    assert ctx.err is err
    assert ctx.cause is err


def test_a_deadline_in_the_past_is_born_cancelled(clock: FakeClock) -> None:
    clock.advance(10)
    ctx, _ = gt.with_deadline(gt.background(clock), 5)
    assert isinstance(ctx.err, DeadlineExceeded)
    assert ctx.deadline == 5.0
    assert clock.pending_timers == 0
    now_ctx, _ = gt.with_deadline(gt.background(clock), 10)
    assert isinstance(now_ctx.err, DeadlineExceeded)
    negative, _ = gt.with_deadline(gt.background(clock), -1)
    assert negative.cancelled


def test_zero_timeout_is_born_cancelled_and_not_registered_with_the_parent(clock: FakeClock) -> None:
    parent, cancel = gt.with_cancel(gt.background(clock))
    ctx, _ = gt.with_timeout(parent, 0)
    assert isinstance(ctx.err, DeadlineExceeded)
    assert not parent.cancelled
    assert parent._state is not None
    assert not parent._state.children
    cancel()


def test_infinite_timeout_never_fires(clock: FakeClock) -> None:
    ctx, cancel = gt.with_timeout(gt.background(clock), math.inf)
    assert ctx.deadline == math.inf
    clock.advance(1e12)
    assert not ctx.cancelled
    cancel()
    assert clock.pending_timers == 0


def test_deadline_wakes_waiters_and_sleepers(clock: FakeClock) -> None:
    ctx, _ = gt.with_timeout(gt.background(clock), 5)
    waiter = gevent.spawn(ctx.wait)
    sleeper = gevent.spawn(ctx.sleep, 60)
    settle()
    clock.advance(5)
    assert waiter.dead
    assert waiter.value is True
    assert sleeper.dead
    assert sleeper.value is False


def test_wait_timeout_shorter_than_the_deadline_returns_false(clock: FakeClock) -> None:
    ctx, cancel = gt.with_timeout(gt.background(clock), 5)
    g = gevent.spawn(ctx.wait, 2)
    settle()
    clock.advance(2)
    assert g.dead
    assert g.value is False
    assert not ctx.cancelled
    cancel()


def test_timers_fire_in_deadline_order(clock: FakeClock) -> None:
    root = gt.background(clock)
    order: list[str] = []
    for name, seconds in (("c", 3), ("a", 1), ("b", 2)):
        ctx, _ = gt.with_timeout(root, seconds)
        ctx.rawlink(lambda _ctx, name=name: order.append(name))  # type: ignore[misc]
    clock.advance(3)
    assert order == ["a", "b", "c"]


def test_real_clock_deadline_fires_and_never_early() -> None:
    ctx, _ = gt.with_timeout(gt.background(), 0.05)
    assert ctx.deadline is not None
    with gevent.Timeout(5):
        assert ctx.wait() is True
    assert time.monotonic() >= ctx.deadline
    assert isinstance(ctx.err, DeadlineExceeded)


def test_real_clock_cancel_releases_the_loop_timer() -> None:
    ctx, cancel = gt.with_timeout(gt.background(), 0.02)
    assert ctx._state is not None
    timer = ctx._state.timer
    assert timer is not None
    cancel()
    assert ctx._state.timer is None
    # Had the timer survived, it would fire while we wait a little longer than it.
    assert gt.background().sleep(0.05) is True
    assert type(ctx.err) is Cancelled
