"""Context (SPEC §2): background, with_cancel, with_value, without_cancel, properties,
wait/sleep/check, on_cancel, gevent interop, exception types, bad arguments.

Deadlines are in test_context_deadline.py, ``cancellable()`` in
test_context_cancellable.py, leaks and scale in test_context_scale.py, the property
test in test_context_property.py.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import gevent
import pytest
from gevent import getcurrent
from gevent.event import Event
from gevent.hub import get_hub
from greenlet import GreenletExit

import greentask as gt
from greentask import Cancelled, Context, DeadlineExceeded
from greentask.context import MonotonicClock
from greentask.testing import FakeClock, settle


def waitables(*objects: Any) -> list[Any]:
    """A mixed list for gevent.wait / iwait (the stubs want one element type)."""
    return list(objects)


def tb_depth(exc: BaseException) -> int:
    depth, tb = 0, exc.__traceback__
    while tb is not None:
        depth, tb = depth + 1, tb.tb_next
    return depth


# -- exception types -------------------------------------------------------------


def test_cancelled_is_a_base_exception_and_a_greenlet_exit() -> None:
    assert issubclass(Cancelled, GreenletExit)
    assert issubclass(Cancelled, BaseException)
    assert not issubclass(Cancelled, Exception)


def test_deadline_exceeded_subclasses_cancelled() -> None:
    assert issubclass(DeadlineExceeded, Cancelled)
    assert not issubclass(DeadlineExceeded, Exception)


def test_except_exception_does_not_swallow_cancelled() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    cancel()
    swallowed: list[Exception] = []

    def checkpoint() -> None:
        try:
            ctx.check()
        except Exception as exc:  # the point: this must not catch it
            swallowed.append(exc)

    with pytest.raises(Cancelled) as info:
        checkpoint()
    assert swallowed == []
    assert info.value is ctx.err


def test_greenlet_ending_with_cancelled_is_not_reported_by_the_hub(hub_printed: list[tuple[Any, ...]]) -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    cancel()
    g = gevent.spawn(ctx.check)
    with gevent.Timeout(5):
        g.join()
    assert g.dead
    assert g.value is ctx.err  # gevent treats GreenletExit as a normal end
    assert hub_printed == []


# -- background ------------------------------------------------------------------


def test_background_is_never_cancelled() -> None:
    ctx = gt.background()
    assert not ctx.cancelled
    assert ctx.err is None
    assert ctx.cause is None
    assert ctx.deadline is None
    assert not ctx.ready()
    ctx.check()  # returns
    assert ctx.wait(0) is False
    child, cancel = gt.with_cancel(ctx)
    cancel()
    assert child.cancelled
    assert not ctx.cancelled


def test_background_defaults_to_the_real_monotonic_clock() -> None:
    ctx = gt.background()
    assert isinstance(ctx.clock, MonotonicClock)
    assert isinstance(ctx.clock, gt.Clock)
    before = time.monotonic()
    now = ctx.clock.now()
    after = time.monotonic()
    assert before <= now <= after


def test_background_uses_the_given_clock_and_children_inherit_it(clock: FakeClock) -> None:
    root = gt.background(clock)
    assert root.clock is clock
    child, cancel = gt.with_cancel(root)
    timed, cancel_timed = gt.with_timeout(child, 5)
    valued = gt.with_value(timed, "k", 1)
    detached = gt.without_cancel(valued)
    deadlined, cancel_deadlined = gt.with_deadline(detached, 3)
    for ctx in (child, timed, valued, detached, deadlined):
        assert ctx.clock is clock
    assert timed.deadline == 5.0  # measured on the fake clock, which reads 0
    for c in (cancel, cancel_timed, cancel_deadlined):
        c()


def test_background_with_fake_clock_waits_on_fake_time(clock: FakeClock) -> None:
    ctx = gt.background(clock)
    g = gevent.spawn(ctx.wait, 10)
    settle()
    clock.advance(9.999)
    assert not g.dead
    clock.advance(0.001)
    assert g.dead
    assert g.value is False


def test_background_makes_distinct_roots() -> None:
    a, b = gt.background(), gt.background()
    assert a is not b
    assert a.clock is b.clock


# -- with_cancel -----------------------------------------------------------------


def test_cancel_sets_err_and_cause_synchronously() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    assert not ctx.cancelled
    assert ctx.err is None
    assert ctx.cause is None
    cancel()
    assert ctx.cancelled
    assert ctx.ready()
    assert type(ctx.err) is Cancelled
    assert ctx.cause is ctx.err


def test_cancel_with_cause_keeps_the_cause() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    boom = ValueError("boom")
    cancel(boom)
    assert type(ctx.err) is Cancelled
    assert ctx.cause is boom


def test_cancel_is_idempotent() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    first = ValueError("first")
    cancel(first)
    err = ctx.err
    cancel()
    cancel(RuntimeError("second"))
    assert ctx.err is err
    assert ctx.cause is first


def test_cancelling_parent_cancels_all_descendants_including_grandchildren() -> None:
    root, cancel_root = gt.with_cancel(gt.background())
    child, _ = gt.with_cancel(root)
    grandchild, _ = gt.with_cancel(child)
    valued = gt.with_value(grandchild, "k", "v")
    great, _ = gt.with_cancel(valued)
    sibling, _ = gt.with_cancel(root)
    timed, _ = gt.with_timeout(sibling, 60)
    descendants = [child, grandchild, valued, great, sibling, timed]
    cause = KeyError("why")

    cancel_root(cause)

    # Set at once, everywhere, before any other greenlet ran.
    for ctx in descendants:
        assert ctx.cancelled
        assert ctx.err is root.err
        assert ctx.cause is cause


def test_cancelling_a_child_never_touches_the_parent_or_siblings() -> None:
    parent, cancel_parent = gt.with_cancel(gt.background())
    child, cancel_child = gt.with_cancel(parent)
    grandchild, _ = gt.with_cancel(child)
    sibling, _ = gt.with_cancel(parent)

    cancel_child()

    assert child.cancelled
    assert grandchild.cancelled
    assert grandchild.err is child.err
    assert not parent.cancelled
    assert not sibling.cancelled
    assert parent._state is not None
    assert parent._state.children == {sibling._state}
    cancel_parent()
    assert sibling.cancelled
    assert child.err is not parent.err  # the child keeps its own, earlier err


def test_child_of_cancelled_parent_is_born_cancelled_with_parents_err_and_cause(clock: FakeClock) -> None:
    parent, cancel_parent = gt.with_cancel(gt.background(clock))
    cause = OSError("gone")
    cancel_parent(cause)

    child, cancel_child = gt.with_cancel(parent)
    timed, _ = gt.with_timeout(parent, 5)
    deadlined, _ = gt.with_deadline(parent, 5)
    valued = gt.with_value(parent, "k", 1)
    for ctx in (child, timed, deadlined, valued):
        assert ctx.cancelled
        assert ctx.err is parent.err
        assert ctx.cause is cause
    assert type(timed.err) is Cancelled  # the parent's err, not a DeadlineExceeded
    assert clock.pending_timers == 0  # no timer armed for a context born cancelled
    assert parent._state is not None
    assert not parent._state.children
    cancel_child(ValueError("late"))  # idempotent: does not replace the inherited cause
    assert child.cause is cause


def test_cancel_walks_a_very_deep_chain_without_recursion() -> None:
    root, cancel = gt.with_cancel(gt.background())
    leaf = root
    for _ in range(50_000):
        leaf, _ = gt.with_cancel(leaf)
    cancel()
    assert leaf.cancelled
    assert leaf.err is root.err


def test_cancel_of_a_child_removes_it_from_the_parent() -> None:
    parent, _ = gt.with_cancel(gt.background())
    child, cancel = gt.with_cancel(parent)
    assert parent._state is not None
    assert parent._state.children == {child._state}
    cancel()
    assert not parent._state.children


def test_with_cancel_of_background_is_a_root_of_cancellation() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    assert ctx.deadline is None
    cancel()
    assert ctx.cancelled


def test_cancel_hook_runs_synchronously_once_after_every_flag_is_set() -> None:
    # Private hook used by TaskManager: run by whichever greenlet cancels.
    parent, cancel = gt.with_cancel(gt.background())
    child, _ = gt.with_cancel(parent)
    seen: list[tuple[Any, bool, bool]] = []
    assert parent._state is not None
    parent._state.hook = lambda: seen.append((getcurrent(), parent.cancelled, child.cancelled))
    cancel()
    assert seen == [(getcurrent(), True, True)]
    cancel()
    assert len(seen) == 1


def test_a_failing_cancel_hook_is_logged_and_cancellation_completes(caplog: pytest.LogCaptureFixture) -> None:
    parent, cancel = gt.with_cancel(gt.background())
    child, _ = gt.with_cancel(parent)
    assert parent._state is not None
    assert child._state is not None

    def failing_hook() -> None:
        raise ZeroDivisionError("hook")

    parent._state.hook = failing_hook
    ran = []
    child._state.hook = lambda: ran.append(True)
    with caplog.at_level(logging.ERROR, logger="greentask"):
        cancel()
    assert child.cancelled
    assert ran == [True]
    [record] = [r for r in caplog.records if r.name == "greentask"]
    assert record.exc_info is not None
    assert record.exc_info[0] is ZeroDivisionError


# -- with_value ------------------------------------------------------------------


def test_value_lookup_walks_up_the_parents() -> None:
    root = gt.background()
    a = gt.with_value(root, "a", 1)
    b = gt.with_value(a, "b", 2)
    c = gt.with_value(b, "a", 3)  # shadows
    assert a.value("a") == 1
    assert b.value("a") == 1
    assert b.value("b") == 2
    assert c.value("a") == 3
    assert c.value("b") == 2
    assert c.value("missing") is None
    assert c.value("missing", "dflt") == "dflt"
    assert root.value("a") is None
    assert a.value("b") is None  # never looks down


def test_value_lookup_goes_through_cancel_timeout_and_without_cancel_children(clock: FakeClock) -> None:
    root = gt.with_value(gt.background(clock), "user", "ann")
    child, cancel = gt.with_cancel(root)
    timed, cancel_timed = gt.with_timeout(child, 5)
    detached = gt.without_cancel(timed)
    grandchild, cancel_grandchild = gt.with_cancel(detached)
    for ctx in (child, timed, detached, grandchild):
        assert ctx.value("user") == "ann"
    cancel()
    assert grandchild.value("user") == "ann"  # values survive cancellation
    cancel_timed()
    cancel_grandchild()


def test_value_keys_compare_with_equality_and_stored_values_may_be_falsy() -> None:
    ctx = gt.with_value(gt.background(), ("tenant", 7), 0)
    assert ctx.value(("tenant", 7), "dflt") == 0
    assert ctx.value(("tenant", 8), "dflt") == "dflt"
    private = object()
    ctx2 = gt.with_value(ctx, private, None)
    assert ctx2.value(private, "dflt") is None
    assert ctx2.value(object(), "dflt") == "dflt"


def test_with_value_shares_the_parents_cancellation_and_deadline(clock: FakeClock) -> None:
    parent, cancel = gt.with_timeout(gt.background(clock), 5)
    valued = gt.with_value(parent, "k", "v")
    assert valued.deadline == 5.0
    assert not valued.cancelled
    cancel(ValueError("x"))
    assert valued.cancelled
    assert valued.err is parent.err
    assert valued.cause is parent.cause


def test_with_value_of_background_is_never_cancelled() -> None:
    ctx = gt.with_value(gt.background(), "k", 1)
    assert not ctx.cancelled
    assert ctx.err is None
    assert ctx.deadline is None


# -- without_cancel --------------------------------------------------------------


def test_without_cancel_keeps_values_and_clock_but_is_never_cancelled(clock: FakeClock) -> None:
    parent, cancel = gt.with_timeout(gt.with_value(gt.background(clock), "k", "v"), 5)
    detached = gt.without_cancel(parent)
    assert detached.value("k") == "v"
    assert detached.clock is clock
    assert detached.deadline is None
    cancel()
    assert parent.cancelled
    assert not detached.cancelled
    assert detached.err is None
    assert detached.cause is None
    assert detached.wait(0) is False


def test_without_cancel_is_not_cancelled_by_the_parents_deadline(clock: FakeClock) -> None:
    parent, _ = gt.with_timeout(gt.background(clock), 5)
    detached = gt.without_cancel(parent)
    below, cancel_below = gt.with_cancel(detached)
    clock.advance(10)
    assert isinstance(parent.err, DeadlineExceeded)
    assert not detached.cancelled
    assert not below.cancelled
    cancel_below()
    assert below.cancelled


def test_without_cancel_of_a_cancelled_parent_is_not_cancelled() -> None:
    parent, cancel = gt.with_cancel(gt.background())
    cancel()
    detached = gt.without_cancel(parent)
    child, cancel_child = gt.with_cancel(detached)
    assert not detached.cancelled
    assert not child.cancelled
    cancel_child()
    assert child.cancelled


# -- properties and repr ---------------------------------------------------------


def test_repr_tells_the_state(clock: FakeClock) -> None:
    assert repr(gt.background()) == "<Context never cancelled>"
    ctx, cancel = gt.with_timeout(gt.background(clock), 2.5)
    assert repr(ctx) == "<Context active deadline=2.500>"
    cancel()
    assert repr(ctx).startswith("<Context cancelled: Cancelled(")
    assert repr(gt.background().clock) == "MonotonicClock()"


def test_err_and_cause_are_read_only() -> None:
    ctx, _ = gt.with_cancel(gt.background())
    with pytest.raises(AttributeError):
        ctx.err = Cancelled()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        ctx.cancelled = True  # type: ignore[misc]


# -- wait ------------------------------------------------------------------------


def test_wait_returns_true_at_once_when_already_cancelled() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    cancel()
    assert ctx.wait() is True
    assert ctx.wait(0) is True
    assert ctx.wait(5) is True


def test_wait_zero_timeout_on_an_active_context_returns_false_without_blocking() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    assert ctx.wait(0) is False
    assert ctx.wait(0.0) is False
    cancel()


def test_wait_is_woken_by_cancel_and_returns_true() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    g = gevent.spawn(ctx.wait)
    settle()
    assert not g.dead
    cancel()
    with gevent.Timeout(5):
        assert g.get() is True
    assert ctx._state is not None
    assert not ctx._state.callbacks


def test_wait_timeout_on_fake_clock_returns_false_at_exactly_the_timeout(clock: FakeClock) -> None:
    ctx, cancel = gt.with_cancel(gt.background(clock))
    g = gevent.spawn(ctx.wait, 3)
    settle()
    assert clock.pending_timers == 1
    clock.advance(2.999)
    assert not g.dead
    clock.advance(0.001)
    assert g.dead
    assert g.value is False
    assert ctx._state is not None
    assert not ctx._state.callbacks  # the waiter unregistered itself
    cancel()


def test_wait_with_timeout_woken_by_cancel_returns_true_and_releases_the_timer(clock: FakeClock) -> None:
    ctx, cancel = gt.with_cancel(gt.background(clock))
    g = gevent.spawn(ctx.wait, 30)
    settle()
    assert clock.pending_timers == 1
    cancel()
    with gevent.Timeout(5):
        assert g.get() is True
    assert clock.pending_timers == 0


def test_wait_is_woken_by_a_parents_cancel() -> None:
    parent, cancel = gt.with_cancel(gt.background())
    child = gt.with_value(gt.with_cancel(parent)[0], "k", 1)
    g = gevent.spawn(child.wait)
    settle()
    cancel()
    with gevent.Timeout(5):
        assert g.get() is True


def test_wait_real_clock_timeout_returns_false() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    start = time.monotonic()
    with gevent.Timeout(5):
        assert ctx.wait(0.02) is False
    assert time.monotonic() - start >= 0.02  # never early
    cancel()


def test_killed_waiter_unregisters_itself() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    g = gevent.spawn(ctx.wait)
    settle()
    assert ctx._state is not None
    assert ctx._state.callbacks is not None
    assert len(ctx._state.callbacks) == 1
    g.kill(block=True, timeout=5)
    assert g.dead
    assert not ctx._state.callbacks
    cancel()


# -- sleep -----------------------------------------------------------------------


def test_sleep_returns_true_when_the_full_time_passed(clock: FakeClock) -> None:
    ctx, cancel = gt.with_cancel(gt.background(clock))
    g = gevent.spawn(ctx.sleep, 2)
    settle()
    clock.advance(1.999)
    assert not g.dead
    clock.advance(0.001)
    assert g.dead
    assert g.value is True
    cancel()


def test_sleep_returns_false_when_cancelled_first(clock: FakeClock) -> None:
    ctx, cancel = gt.with_cancel(gt.background(clock))
    g = gevent.spawn(ctx.sleep, 2)
    settle()
    clock.advance(1)
    cancel()
    with gevent.Timeout(5):
        assert g.get() is False
    assert clock.pending_timers == 0
    assert clock.now() == 1.0


def test_sleep_on_a_cancelled_context_returns_false_at_once(clock: FakeClock) -> None:
    ctx, cancel = gt.with_cancel(gt.background(clock))
    cancel()
    assert ctx.sleep(100) is False
    assert ctx.sleep(0) is False
    assert clock.pending_timers == 0


def test_sleep_zero_yields_and_returns_true() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    other_ran: list[bool] = []
    gevent.spawn(lambda: other_ran.append(True))
    assert ctx.sleep(0) is True
    assert other_ran == [True]  # it yielded to the other greenlet
    cancel()


def test_sleep_zero_returns_false_if_cancelled_while_yielding() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    gevent.spawn(cancel)
    assert ctx.sleep(0) is False


def test_sleep_on_background_with_fake_clock(clock: FakeClock) -> None:
    ctx = gt.background(clock)
    g = gevent.spawn(ctx.sleep, 1.5)
    settle()
    clock.advance(1.5)
    assert g.dead
    assert g.value is True


def test_sleep_real_clock_sleeps_at_least_the_time() -> None:
    ctx = gt.background()
    start = time.monotonic()
    with gevent.Timeout(5):
        assert ctx.sleep(0.02) is True
    assert time.monotonic() - start >= 0.02


def test_sleep_infinite_is_woken_by_cancel(clock: FakeClock) -> None:
    ctx, cancel = gt.with_cancel(gt.background(clock))
    g = gevent.spawn(ctx.sleep, math.inf)
    settle()
    clock.advance(1e12)
    assert not g.dead
    cancel()
    with gevent.Timeout(5):
        assert g.get() is False


# -- check -----------------------------------------------------------------------


def test_check_returns_while_active_and_raises_err_once_cancelled() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    ctx.check()  # returns
    cancel()
    with pytest.raises(Cancelled) as info:
        ctx.check()
    assert info.value is ctx.err


def test_check_raises_deadline_exceeded_after_the_deadline(clock: FakeClock) -> None:
    ctx, _ = gt.with_timeout(gt.background(clock), 1)
    clock.advance(1)
    with pytest.raises(DeadlineExceeded) as info:
        ctx.check()
    assert info.value is ctx.err


def test_check_does_not_grow_the_traceback_when_called_repeatedly() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    cancel()
    depths = []
    for _ in range(50):
        try:
            ctx.check()
        except Cancelled as exc:
            depths.append(tb_depth(exc))
    assert ctx.err is not None
    assert len(set(depths)) == 1
    assert depths[0] <= 2  # this frame and check()'s


# -- on_cancel -------------------------------------------------------------------


def test_on_cancel_runs_once_in_its_own_greenlet() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    runs: list[Any] = []
    ctx.on_cancel(lambda: runs.append(getcurrent()))
    settle()
    assert runs == []
    cancel()
    assert runs == []  # not synchronously in the canceller
    settle()
    assert len(runs) == 1
    assert runs[0] is not getcurrent()
    assert runs[0] is not get_hub()
    assert isinstance(runs[0], gevent.Greenlet)
    cancel()
    settle()
    assert len(runs) == 1


def test_on_cancel_runs_soon_when_already_cancelled() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    cancel()
    runs: list[Any] = []
    stop = ctx.on_cancel(lambda: runs.append(getcurrent()))
    assert runs == []
    settle()
    assert len(runs) == 1
    assert runs[0] is not getcurrent()
    assert stop() is False


def test_on_cancel_stop_before_cancel_returns_true_and_fn_never_runs() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    runs: list[int] = []
    stop = ctx.on_cancel(lambda: runs.append(1))
    assert stop() is True
    assert stop() is False
    cancel()
    settle()
    assert runs == []


def test_on_cancel_stop_after_it_started_returns_false() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    runs: list[int] = []
    stop = ctx.on_cancel(lambda: runs.append(1))
    cancel()
    settle()
    assert runs == [1]
    assert stop() is False


def test_on_cancel_fires_through_a_parent_and_through_a_deadline(clock: FakeClock) -> None:
    parent, cancel = gt.with_cancel(gt.background(clock))
    child = gt.with_value(gt.with_cancel(parent)[0], "k", 1)
    timed, _ = gt.with_timeout(gt.background(clock), 5)
    runs: list[str] = []
    child.on_cancel(lambda: runs.append("child"))
    timed.on_cancel(lambda: runs.append("timed"))
    cancel()
    settle()
    assert runs == ["child"]
    clock.advance(5)
    assert runs == ["child", "timed"]


def test_on_cancel_functions_run_in_registration_order() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    runs: list[int] = []
    for i in range(5):
        ctx.on_cancel(lambda i=i: runs.append(i))  # type: ignore[misc]
    cancel()
    settle()
    assert runs == [0, 1, 2, 3, 4]


def test_on_cancel_of_background_never_runs() -> None:
    ctx = gt.background()
    stop = ctx.on_cancel(lambda: None)
    assert stop() is False


def test_on_cancel_fn_that_raises_is_logged_not_printed_by_the_hub(
    caplog: pytest.LogCaptureFixture, hub_printed: list[tuple[Any, ...]]
) -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    after: list[int] = []

    def boom() -> None:
        raise ValueError("boom")

    ctx.on_cancel(boom)
    ctx.on_cancel(lambda: after.append(1))
    with caplog.at_level(logging.ERROR, logger="greentask"):
        cancel()
        settle()
    assert after == [1]  # the failure did not stop the others
    records = [r for r in caplog.records if r.name == "greentask"]
    assert len(records) == 1
    assert records[0].exc_info is not None
    assert records[0].exc_info[0] is ValueError
    assert hub_printed == []


# -- rawlink / gevent interop ----------------------------------------------------


def test_gevent_wait_returns_ctx_once_cancelled() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    event = Event()
    gevent.spawn(cancel)
    with gevent.Timeout(5):
        ready = gevent.wait(waitables(ctx, event), count=1)
    assert ready == [ctx]
    assert not event.is_set()
    assert ctx._state is not None
    assert not ctx._state.callbacks  # gevent unlinked us


def test_gevent_wait_with_an_already_cancelled_ctx() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    cancel()
    with gevent.Timeout(5):
        assert gevent.wait([ctx], timeout=5) == [ctx]


def test_gevent_wait_with_event_first_returns_the_event_and_unlinks_ctx() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    event = Event()
    gevent.spawn(event.set)
    with gevent.Timeout(5):
        ready = gevent.wait(waitables(ctx, event), count=1)
    assert ready == [event]
    assert ctx._state is not None
    assert not ctx._state.callbacks
    cancel()


def test_gevent_wait_with_timeout_and_an_uncancelled_ctx_returns_nothing() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    with gevent.Timeout(5):
        assert gevent.wait([ctx], timeout=0.01) == []
    assert ctx._state is not None
    assert not ctx._state.callbacks
    assert gevent.wait([gt.background()], timeout=0.01) == []
    cancel()


def test_gevent_wait_with_a_greenlet_and_ctx() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    blocked = gevent.spawn(Event().wait)
    gevent.spawn(cancel)
    with gevent.Timeout(5):
        assert gevent.wait(waitables(blocked, ctx), count=1) == [ctx]
    blocked.kill()


def test_gevent_iwait_yields_ctx_once_cancelled() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    event = Event()
    gevent.spawn(cancel)
    with gevent.Timeout(5), gevent.iwait(waitables(event, ctx)) as it:
        first = next(iter(it))
    assert first is ctx
    event.set()


def test_gevent_iwait_yields_both_in_readiness_order() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    event = Event()

    def later() -> None:
        event.set()
        gevent.idle()
        cancel()

    gevent.spawn(later)
    with gevent.Timeout(5):
        assert list(gevent.iwait(waitables(ctx, event))) == [event, ctx]


def test_rawlink_calls_back_once_in_the_hub_with_the_context() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    calls: list[tuple[Any, Any]] = []
    ctx.rawlink(lambda c: calls.append((c, getcurrent())))
    cancel()
    settle()
    assert calls == [(ctx, get_hub())]
    cancel()
    settle()
    assert len(calls) == 1


def test_rawlink_on_a_cancelled_ctx_calls_back_soon() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    cancel()
    calls: list[Any] = []
    ctx.rawlink(calls.append)
    assert calls == []
    settle()
    assert calls == [ctx]


def test_unlink_before_cancel_prevents_the_callback() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    calls: list[Any] = []
    kept: list[Any] = []
    ctx.rawlink(calls.append)
    ctx.rawlink(kept.append)
    ctx.unlink(calls.append)
    cancel()
    settle()
    assert calls == []
    assert kept == [ctx]


def test_unlink_on_a_cancelled_ctx_before_the_hub_ran_prevents_the_callback() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    cancel()
    calls: list[Any] = []
    ctx.rawlink(calls.append)
    ctx.unlink(calls.append)
    settle()
    assert calls == []


def test_unlink_of_an_unknown_callback_or_on_background_is_harmless() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    ctx.unlink(print)
    gt.background().unlink(print)
    gt.background().rawlink(print)  # never called: background is never cancelled
    cancel()
    assert ctx.cancelled


def test_a_failing_rawlink_callback_is_logged_and_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    calls: list[Any] = []

    def bad(_: Any) -> None:
        raise RuntimeError("bad link")

    ctx.rawlink(bad)
    ctx.rawlink(calls.append)
    with caplog.at_level(logging.ERROR, logger="greentask"):
        cancel()
        settle()
    assert calls == [ctx]
    assert [r.exc_info[0] for r in caplog.records if r.name == "greentask" and r.exc_info] == [RuntimeError]


def test_ready_mirrors_cancelled() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    assert ctx.ready() is False
    cancel()
    assert ctx.ready() is True


# -- bad arguments ---------------------------------------------------------------


class _NotAClock:
    now = 1.0  # not callable

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> None:
        """Looks half right."""


def _bad_calls() -> list[Any]:
    bg = gt.background()
    active, _ = gt.with_cancel(bg)
    cancelled, cancel = gt.with_cancel(bg)
    cancel()
    p = pytest.param
    return [
        p(gt.background, ("clock",), TypeError, "clock", 0, id="background-str-clock"),
        p(gt.background, (object(),), TypeError, "clock", 0, id="background-object-clock"),
        p(gt.background, (FakeClock,), TypeError, "clock", 0, id="background-clock-class"),
        p(gt.background, (_NotAClock(),), TypeError, "clock", 0, id="background-half-clock"),
        p(gt.with_cancel, (None,), TypeError, "parent", 0, id="with_cancel-none"),
        p(gt.with_cancel, (bg.clock,), TypeError, "parent", 0, id="with_cancel-not-context"),
        p(gt.with_timeout, (None, 1), TypeError, "parent", 0, id="with_timeout-parent"),
        p(gt.with_timeout, (bg, -1), ValueError, "seconds", 1, id="with_timeout-negative"),
        p(gt.with_timeout, (bg, math.nan), ValueError, "seconds", 1, id="with_timeout-nan"),
        p(gt.with_timeout, (bg, "1"), TypeError, "seconds", 1, id="with_timeout-str"),
        p(gt.with_timeout, (bg, True), TypeError, "seconds", 1, id="with_timeout-bool"),
        p(gt.with_timeout, (bg, None), TypeError, "seconds", 1, id="with_timeout-none"),
        p(gt.with_deadline, ("ctx", 1), TypeError, "parent", 0, id="with_deadline-parent"),
        p(gt.with_deadline, (bg, "soon"), TypeError, "when", 1, id="with_deadline-str"),
        p(gt.with_deadline, (bg, None), TypeError, "when", 1, id="with_deadline-none"),
        p(gt.with_deadline, (bg, False), TypeError, "when", 1, id="with_deadline-bool"),
        p(gt.with_deadline, (bg, math.nan), ValueError, "when", 1, id="with_deadline-nan"),
        p(gt.with_value, (None, "k", 1), TypeError, "parent", 0, id="with_value-parent"),
        p(gt.with_value, (bg, None, 1), TypeError, "key", 1, id="with_value-none-key"),
        p(gt.with_value, (bg, ["un", "hashable"], 1), TypeError, "key", 1, id="with_value-unhashable-key"),
        p(gt.without_cancel, (None,), TypeError, "parent", 0, id="without_cancel-parent"),
        p(active.wait, (-1,), ValueError, "timeout", 0, id="wait-negative"),
        p(active.wait, (math.nan,), ValueError, "timeout", 0, id="wait-nan"),
        p(active.wait, ("1",), TypeError, "timeout", 0, id="wait-str"),
        p(cancelled.wait, (-1,), ValueError, "timeout", 0, id="wait-negative-on-cancelled"),
        p(active.sleep, (-0.5,), ValueError, "seconds", 0, id="sleep-negative"),
        p(active.sleep, (math.nan,), ValueError, "seconds", 0, id="sleep-nan"),
        p(active.sleep, (None,), TypeError, "seconds", 0, id="sleep-none"),
        p(cancelled.sleep, (-1,), ValueError, "seconds", 0, id="sleep-negative-on-cancelled"),
        p(active.value, (None,), TypeError, "key", 0, id="value-none-key"),
        p(active.value, ({},), TypeError, "key", 0, id="value-unhashable-key"),
        p(active.on_cancel, (None,), TypeError, "fn", 0, id="on_cancel-none"),
        p(active.on_cancel, ("print",), TypeError, "fn", 0, id="on_cancel-str"),
        p(bg.on_cancel, (42,), TypeError, "fn", 0, id="on_cancel-on-background"),
        p(active.rawlink, (None,), TypeError, "callback", 0, id="rawlink-none"),
        p(gt.with_cancel(bg)[1], ("boom",), TypeError, "cause", 0, id="cancel-str-cause"),
        p(gt.with_cancel(bg)[1], (ValueError,), TypeError, "cause", 0, id="cancel-exception-class-cause"),
        p(cancel, (42,), TypeError, "cause", 0, id="cancel-bad-cause-when-already-cancelled"),
    ]


@pytest.mark.parametrize(("fn", "args", "exc_type", "name", "bad_index"), _bad_calls())
def test_bad_arguments_raise_naming_the_argument(
    fn: Callable[..., Any], args: tuple[Any, ...], exc_type: type[Exception], name: str, bad_index: int
) -> None:
    with pytest.raises(exc_type) as info:
        fn(*args)
    message = str(info.value)
    assert message.startswith(f"{name} ")  # names the argument, lowercase
    bad = args[bad_index]
    if bad is not None:  # "key must not be None" needs no value
        assert repr(bad) in message


def test_a_rejected_cancel_cause_does_not_cancel() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    with pytest.raises(TypeError):
        cancel("boom")  # type: ignore[arg-type]
    assert not ctx.cancelled


def test_context_is_exported_and_typed() -> None:
    assert gt.Context is Context
    assert isinstance(gt.background(), Context)


def test_stop_from_a_greenlet_woken_by_the_same_cancellation_still_prevents_fn() -> None:
    # The waiter was registered first, so it runs first; before the hub reaches the
    # on_cancel entry, the woken greenlet unregisters it.
    ctx, cancel = gt.with_cancel(gt.background())
    runs: list[int] = []
    stopped: list[bool] = []
    stop_box: list[Callable[[], bool]] = []

    def waiter() -> None:
        ctx.wait()
        stopped.append(stop_box[0]())

    g = gevent.spawn(waiter)
    settle()
    stop_box.append(ctx.on_cancel(lambda: runs.append(1)))
    cancel()
    with gevent.Timeout(5):
        g.get()
    settle()
    assert stopped == [True]
    assert runs == []


class _LeakyTimer:
    def cancel(self) -> None:
        """A timer handle that ignores cancel (a careless third-party clock)."""


class _LeakyClock:
    """A clock whose timers cannot be cancelled: a deadline may fire after a cancel."""

    def __init__(self, inner: FakeClock) -> None:
        self.inner = inner

    def now(self) -> float:
        return self.inner.now()

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> _LeakyTimer:
        self.inner.call_at(when, callback, *args)
        return _LeakyTimer()


def test_a_deadline_firing_after_cancel_changes_nothing(clock: FakeClock) -> None:
    ctx, cancel = gt.with_timeout(gt.background(_LeakyClock(clock)), 5)
    runs: list[int] = []
    ctx.on_cancel(lambda: runs.append(1))
    cause = ValueError("first")
    cancel(cause)
    err = ctx.err
    clock.advance(10)  # the uncancellable timer fires now
    assert ctx.err is err
    assert type(err) is Cancelled
    assert ctx.cause is cause
    assert runs == [1]


def test_rawlink_with_an_equal_fresh_bound_method_can_be_unlinked() -> None:
    class Receiver:
        def __init__(self) -> None:
            self.calls: list[Any] = []

        def on_ready(self, ctx: Any) -> None:
            self.calls.append(ctx)

    ctx, cancel = gt.with_cancel(gt.background())
    receiver = Receiver()
    ctx.rawlink(receiver.on_ready)
    ctx.unlink(receiver.on_ready)  # a new bound-method object, equal to the first
    cancel()
    settle()
    assert receiver.calls == []


def test_rawlink_accepts_an_unhashable_callback() -> None:
    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __init__(self) -> None:
            self.calls: list[Any] = []

        def __eq__(self, other: object) -> bool:
            return other is self

        def __call__(self, ctx: Any) -> None:
            self.calls.append(ctx)

    ctx, cancel = gt.with_cancel(gt.background())
    kept, dropped = Unhashable(), Unhashable()
    ctx.rawlink(kept)
    ctx.rawlink(dropped)
    ctx.unlink(dropped)
    cancel()
    settle()
    assert kept.calls == [ctx]
    assert dropped.calls == []
