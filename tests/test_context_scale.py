"""Context at scale (SPEC §2 costs, §8 traps): no leaks from short children, many waiters.

No speed assertions: the sizes are picked so the tests stay fast, and a regression to a
quadratic structure shows up as a pytest-timeout, not as a flaky bound.
"""

from __future__ import annotations

import gc
import tracemalloc
import weakref

import gevent

import greentask as gt
from greentask.testing import FakeClock, settle

N_CHILDREN = 200_000
N_WAITERS = 10_000
N_TRACED = 50_000  # tracemalloc makes each child ~5x slower; 50k still shows a 2-byte leak


def wait_until_parked(ctx: gt.Context, n: int) -> None:
    """Bounded poll until ``n`` greenlets wait on ``ctx`` (settle() may give up on a 10k burst)."""
    with gevent.Timeout(30):
        while ctx._state is None or len(ctx._state.callbacks or ()) < n:
            gevent.idle()


def children_of(ctx: gt.Context) -> int:
    assert ctx._state is not None
    return len(ctx._state.children or ())


def test_a_long_lived_parent_does_not_keep_cancelled_children() -> None:
    parent, cancel_parent = gt.with_cancel(gt.background())
    for _ in range(N_CHILDREN):
        _child, cancel = gt.with_cancel(parent)
        cancel()
    assert children_of(parent) == 0
    cancel_parent()


def test_a_cancelled_childs_state_is_freed() -> None:
    parent, cancel_parent = gt.with_cancel(gt.background())
    child, cancel = gt.with_cancel(parent)
    grandchild, cancel_grandchild = gt.with_cancel(child)
    refs = [weakref.ref(child._state), weakref.ref(grandchild._state)]
    cancel()
    del child, grandchild, cancel, cancel_grandchild
    gc.collect()
    assert [r() for r in refs] == [None, None]
    assert children_of(parent) == 0
    cancel_parent()


def test_a_child_cancelled_by_its_real_clock_timer_is_freed() -> None:
    parent, cancel_parent = gt.with_cancel(gt.background())
    child, cancel = gt.with_timeout(parent, 0.01)
    ref = weakref.ref(child._state)
    with gevent.Timeout(5):
        assert child.wait() is True
    settle()  # the hub is still inside the timer callback that woke us: let it return
    del child, cancel
    gc.collect()
    assert ref() is None
    assert children_of(parent) == 0
    cancel_parent()


def test_a_timeout_child_cancelled_early_is_freed_with_its_real_clock_timer() -> None:
    parent, cancel_parent = gt.with_cancel(gt.background())
    child, cancel = gt.with_timeout(parent, 3600)
    ref = weakref.ref(child._state)
    cancel()
    del child, cancel
    gc.collect()
    assert ref() is None
    cancel_parent()


def test_memory_does_not_grow_with_the_number_of_short_children() -> None:
    parent, cancel_parent = gt.with_cancel(gt.with_value(gt.background(), "k", "v"))

    def churn(n: int) -> None:
        for _ in range(n):
            child, cancel = gt.with_cancel(parent)
            child.value("k")
            cancel()

    tracemalloc.start()
    try:
        churn(1_000)  # warm up free lists
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        churn(N_TRACED)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # A leak of even one small object per child would be megabytes here.
    assert after - before < 64 * 1024, f"grew {after - before} bytes over {N_TRACED} children"
    assert children_of(parent) == 0
    cancel_parent()


def test_a_burst_of_live_children_is_released_after_they_are_cancelled() -> None:
    parent, cancel_parent = gt.with_cancel(gt.background())
    children = [gt.with_cancel(parent) for _ in range(10_000)]
    assert children_of(parent) == 10_000
    for _, cancel in children:
        cancel()
    assert children_of(parent) == 0
    assert parent._state is not None
    assert parent._state.children is None  # the big emptied set itself was dropped
    cancel_parent()


def test_short_timeout_children_on_fake_clock_release_their_timers() -> None:
    clock = FakeClock()
    parent, cancel_parent = gt.with_cancel(gt.background(clock))
    for _ in range(20_000):
        _child, cancel = gt.with_timeout(parent, 5)
        cancel()
    assert clock.pending_timers == 0
    assert children_of(parent) == 0
    cancel_parent()


def test_many_waiters_on_one_shared_context_can_all_be_killed() -> None:
    # SPEC §8: killing N greenlets parked on one shared Event is quadratic; the
    # per-context waiter dict makes each removal O(1).
    ctx, cancel = gt.with_cancel(gt.background())
    waiters = [gevent.spawn(ctx.wait) for _ in range(N_WAITERS)]
    wait_until_parked(ctx, N_WAITERS)
    assert ctx._state is not None
    assert ctx._state.callbacks is not None
    assert len(ctx._state.callbacks) == N_WAITERS
    with gevent.Timeout(60):
        gevent.killall(waiters, block=True)
    assert all(g.dead for g in waiters)
    assert all(isinstance(g.value, gevent.GreenletExit) for g in waiters)
    assert not ctx._state.callbacks
    assert not ctx.cancelled
    cancel()


def test_cancel_wakes_every_waiter_on_one_shared_context() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    waiters = [gevent.spawn(ctx.wait) for _ in range(N_WAITERS)]
    wait_until_parked(ctx, N_WAITERS)
    cancel()
    with gevent.Timeout(60):
        gevent.joinall(waiters, raise_error=True)
    assert [g.value for g in waiters] == [True] * N_WAITERS
    assert ctx._state is not None
    assert not ctx._state.callbacks


def test_cancel_of_a_parent_wakes_waiters_on_many_children() -> None:
    parent, cancel = gt.with_cancel(gt.background())
    children = [gt.with_cancel(parent)[0] for _ in range(2_000)]
    waiters = [gevent.spawn(child.wait) for child in children]
    for child in children:
        wait_until_parked(child, 1)
    cancel()
    with gevent.Timeout(60):
        gevent.joinall(waiters, raise_error=True)
    assert all(g.value is True for g in waiters)
    assert children_of(parent) == 0
