"""``with ctx.cancellable():`` (SPEC §2): pre-emptive delivery of `Cancelled` into one greenlet."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
import greenlet
import pytest
from gevent import socket
from gevent.event import Event
from gevent.hub import get_hub
from gevent.queue import Queue
from greenlet import GreenletExit

import greentask as gt
from greentask import Cancelled, DeadlineExceeded
from greentask.context import CancelScope
from greentask.testing import FakeClock, settle


class Blocked:
    """Runs ``block()`` inside ``ctx.cancellable()`` in a new greenlet and records what happened."""

    def __init__(self, ctx: gt.Context, block: Callable[[], object]) -> None:
        self.ctx = ctx
        self.block = block
        self.entered = Event()
        self.steps: list[str] = []
        self.seen: list[BaseException] = []
        self.greenlet = gevent.spawn(self._run)
        with gevent.Timeout(5):
            self.entered.wait()
        # Event.wait returned, so the greenlet has reached its blocking call.

    def _run(self) -> CancelScope:
        with self.ctx.cancellable() as scope:
            self.entered.set()
            try:
                self.block()
            except BaseException as exc:
                self.seen.append(exc)
                raise
            self.steps.append("block returned")
        self.steps.append("after with")
        return scope

    def result(self) -> CancelScope:
        with gevent.Timeout(5):
            return self.greenlet.get()


def assert_interrupted(blocked: Blocked, ctx: gt.Context, kind: type[Cancelled] = Cancelled) -> None:
    scope = blocked.result()
    assert scope.cancelled_caught is True
    assert blocked.steps == ["after with"]  # interrupted, swallowed, continued after the with
    [exc] = blocked.seen
    assert type(exc) is kind
    assert exc is not ctx.err  # a fresh instance, so the shared err's traceback never grows
    assert ctx._state is not None
    assert not ctx._state.callbacks  # the block unregistered itself


# -- delivery into blocking calls ------------------------------------------------


def test_cancel_interrupts_gevent_sleep() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    blocked = Blocked(ctx, lambda: gevent.sleep(60))
    cancel()
    assert_interrupted(blocked, ctx)


def test_cancel_interrupts_queue_get() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    queue: Queue[int] = Queue()
    blocked = Blocked(ctx, queue.get)
    cancel()
    assert_interrupted(blocked, ctx)
    queue.put(1)
    assert queue.get(timeout=5) == 1  # the interrupted get took nothing


def test_cancel_interrupts_a_socket_recv_on_localhost() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname(), timeout=5)
        server, _ = listener.accept()
        with client, server:
            ctx, cancel = gt.with_cancel(gt.background())
            received: list[bytes] = []
            blocked = Blocked(ctx, lambda: received.append(server.recv(1024)))
            cancel()
            assert_interrupted(blocked, ctx)
            assert received == []
            # The socket still works after the interrupted recv.
            client.sendall(b"ping")
            with gevent.Timeout(5):
                assert server.recv(1024) == b"ping"
    finally:
        listener.close()


def test_cancel_interrupts_the_main_test_greenlet() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    gevent.spawn(cancel)
    reached = []
    with gevent.Timeout(5), ctx.cancellable() as scope:
        gevent.sleep(60)
        reached.append(True)
    assert scope.cancelled_caught
    assert reached == []


def test_parents_cancel_interrupts_a_block_on_a_child() -> None:
    parent, cancel = gt.with_cancel(gt.background())
    child = gt.with_value(gt.with_cancel(parent)[0], "k", 1)
    blocked = Blocked(child, Event().wait)
    cancel()
    scope = blocked.result()
    assert scope.cancelled_caught
    assert blocked.steps == ["after with"]


def test_deadline_interrupts_with_deadline_exceeded(clock: FakeClock) -> None:
    ctx, _ = gt.with_timeout(gt.background(clock), 5)
    blocked = Blocked(ctx, Event().wait)
    clock.advance(4.999)
    assert not blocked.greenlet.dead
    clock.advance(0.001)
    assert blocked.greenlet.dead
    assert_interrupted(blocked, ctx, DeadlineExceeded)


def test_a_block_that_cancels_its_own_context_is_interrupted_at_its_next_blocking_call() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    steps: list[str] = []
    with gevent.Timeout(5), ctx.cancellable() as scope:
        cancel()
        steps.append("still running")
        gevent.sleep(0)
        steps.append("not reached")
    assert steps == ["still running"]
    assert scope.cancelled_caught


def test_check_inside_the_block_ends_the_block() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    steps: list[int] = []
    with ctx.cancellable() as scope:
        for i in range(10):
            if i == 3:
                cancel()
            ctx.check()
            steps.append(i)
    assert steps == [0, 1, 2]
    assert scope.cancelled_caught


# -- already cancelled on entry ----------------------------------------------------


@pytest.mark.parametrize(
    "first_blocking_call",
    [lambda: gevent.sleep(0), gevent.idle, lambda: Event().wait(), lambda: gevent.sleep(60)],
    ids=["sleep0", "idle", "event-wait", "sleep60"],
)
def test_already_cancelled_on_entry_runs_until_the_first_blocking_call(
    first_blocking_call: Callable[[], object],
) -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    cancel()
    steps: list[str] = []

    def body() -> CancelScope:
        with ctx.cancellable() as scope:
            steps.append("entered")
            steps.append(f"computed {sum(range(10))}")
            first_blocking_call()
            steps.append("not reached")
        steps.append("after with")
        return scope

    with gevent.Timeout(5):
        scope = gevent.spawn(body).get()
    assert steps == ["entered", "computed 45", "after with"]
    assert scope.cancelled_caught


def test_already_cancelled_on_entry_without_blocking_runs_the_whole_body_and_nothing_arrives_later() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    cancel()
    steps: list[str] = []
    with ctx.cancellable() as scope:
        steps.append("body")
    gevent.sleep(0)  # blocking after the block: must not raise
    with gevent.Timeout(5):
        assert gevent.spawn(lambda: 42).get() == 42
    assert steps == ["body"]
    assert not scope.cancelled_caught


# -- scoping -----------------------------------------------------------------------


def test_nested_blocks_on_different_contexts_each_catch_only_their_own() -> None:
    outer_ctx, cancel_outer = gt.with_cancel(gt.background())
    inner_ctx, cancel_inner = gt.with_cancel(gt.background())
    steps: list[str] = []
    inner_done, resume = Event(), Event()

    def body() -> tuple[CancelScope, CancelScope]:
        with outer_ctx.cancellable() as outer:
            with inner_ctx.cancellable() as inner:
                steps.append("inner blocks")
                Event().wait()
            steps.append("after inner")
            inner_done.set()
            resume.wait()
            steps.append("not reached")
        steps.append("after outer")
        return outer, inner

    g = gevent.spawn(body)
    settle()
    cancel_inner()
    with gevent.Timeout(5):
        inner_done.wait()
    assert steps == ["inner blocks", "after inner"]
    cancel_outer()
    with gevent.Timeout(5):
        outer, inner = g.get()
    assert steps == ["inner blocks", "after inner", "after outer"]
    assert inner.cancelled_caught
    assert outer.cancelled_caught


def test_outer_cancellation_passes_through_the_inner_block() -> None:
    outer_ctx, cancel_outer = gt.with_cancel(gt.background())
    inner_ctx, cancel_inner = gt.with_cancel(gt.background())
    steps: list[str] = []
    scopes: list[CancelScope] = []

    def body() -> None:
        with outer_ctx.cancellable() as outer:
            scopes.append(outer)
            with inner_ctx.cancellable() as inner:
                scopes.append(inner)
                Event().wait()
            steps.append("not reached: after inner")
        steps.append("after outer")

    g = gevent.spawn(body)
    settle()
    cancel_outer()
    with gevent.Timeout(5):
        g.get()
    assert steps == ["after outer"]
    outer, inner = scopes
    assert outer.cancelled_caught
    assert not inner.cancelled_caught
    assert inner_ctx._state is not None
    assert not inner_ctx._state.callbacks  # the inner block unregistered on the way out
    cancel_inner()


def test_nested_blocks_on_parent_and_child_the_outer_catches_a_parent_cancel() -> None:
    parent, cancel = gt.with_cancel(gt.background())
    child, _ = gt.with_cancel(parent)
    steps: list[str] = []

    def body() -> tuple[CancelScope, CancelScope]:
        with parent.cancellable() as outer:
            with child.cancellable() as inner:
                Event().wait()
            steps.append("not reached")
        steps.append("after outer")
        return outer, inner

    g = gevent.spawn(body)
    settle()
    cancel()
    with gevent.Timeout(5):
        outer, inner = g.get()
    assert steps == ["after outer"]
    assert outer.cancelled_caught
    assert not inner.cancelled_caught


def test_another_contexts_check_is_not_swallowed() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    other, cancel_other = gt.with_cancel(gt.background())
    cancel_other()
    with pytest.raises(Cancelled) as info, ctx.cancellable() as scope:
        other.check()
    assert info.value is other.err
    assert not scope.cancelled_caught
    cancel()


def test_a_kill_is_not_swallowed() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    blocked = Blocked(ctx, Event().wait)
    blocked.greenlet.kill(block=True, timeout=5)
    assert blocked.greenlet.dead
    [exc] = blocked.seen
    assert type(exc) is GreenletExit
    assert blocked.steps == []  # the kill propagated out of the block
    assert ctx._state is not None
    assert not ctx._state.callbacks
    cancel()


def test_other_exceptions_propagate_and_are_not_counted() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    with pytest.raises(ValueError, match="boom"), ctx.cancellable() as scope:
        raise ValueError("boom")
    assert not scope.cancelled_caught
    cancel()


def test_normal_exit_is_not_counted_and_unregisters() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    scope = ctx.cancellable()
    assert not scope.cancelled_caught
    with scope:
        assert ctx._state is not None
        assert ctx._state.callbacks is not None
        assert len(ctx._state.callbacks) == 1
    assert not scope.cancelled_caught
    assert ctx._state is not None
    assert not ctx._state.callbacks
    cancel()


def test_a_late_cancellation_after_the_block_no_longer_reaches_the_greenlet() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    left, resume = Event(), Event()
    steps: list[str] = []

    def body() -> CancelScope:
        with ctx.cancellable() as scope:
            gevent.sleep(0)
        left.set()
        resume.wait()
        steps.append("resumed normally")
        return scope

    g = gevent.spawn(body)
    with gevent.Timeout(5):
        left.wait()
    cancel()
    settle()
    assert not g.dead  # still parked in resume.wait(), not interrupted
    resume.set()
    with gevent.Timeout(5):
        scope = g.get()
    assert steps == ["resumed normally"]
    assert not scope.cancelled_caught


def test_a_cancel_racing_with_the_wakeup_does_not_reach_a_greenlet_that_left_the_block() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    event = Event()
    steps: list[str] = []

    def body() -> CancelScope:
        with ctx.cancellable() as scope:
            event.wait()
            steps.append("woken")
        steps.append("after with")
        gevent.sleep(0)
        steps.append("not interrupted")
        return scope

    g = gevent.spawn(body)
    settle()
    event.set()  # its wakeup is scheduled before the cancellation callbacks
    cancel()
    with gevent.Timeout(5):
        scope = g.get()
    assert steps == ["woken", "after with", "not interrupted"]
    assert not scope.cancelled_caught


def test_only_the_greenlet_that_entered_is_interrupted() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    bystander_event = Event()
    bystander = gevent.spawn(bystander_event.wait)
    spawned: list[gevent.Greenlet[..., Any]] = []

    def block() -> None:
        # A greenlet spawned inside the block is not the one that entered it.
        spawned.append(gevent.spawn(bystander_event.wait))
        Event().wait()

    blocked = Blocked(ctx, block)
    cancel()
    assert_interrupted(blocked, ctx)
    settle()
    assert not bystander.dead
    assert not spawned[0].dead
    bystander_event.set()
    with gevent.Timeout(5):
        assert bystander.get() is True
        assert spawned[0].get() is True


def test_cancellable_on_background_is_never_interrupted() -> None:
    event = Event()
    blocked = Blocked(gt.background(), event.wait)
    event.set()
    scope = blocked.result()
    assert blocked.steps == ["block returned", "after with"]
    assert not scope.cancelled_caught


def test_a_block_can_be_entered_only_once() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    scope = ctx.cancellable()
    with scope:
        pass
    with pytest.raises(RuntimeError, match="once"), scope:
        pass
    cancel()


def test_each_block_of_many_greenlets_is_interrupted() -> None:
    ctx, cancel = gt.with_cancel(gt.background())
    blocked = [Blocked(ctx, Event().wait) for _ in range(20)]
    cancel()
    for b in blocked:
        assert_interrupted(b, ctx)


def test_delivery_continues_after_a_raw_greenlet_dies_of_its_cancelled() -> None:
    # A raw greenlet (parent: the hub) that lets a Cancelled escape dies of it while the
    # hub runs the callbacks; the blocks registered after it must still be reached.
    ctx, cancel = gt.with_cancel(gt.background())
    entered = Event()
    raw_seen: list[BaseException] = []

    def raw_body() -> None:
        with ctx.cancellable():
            entered.set()
            try:
                Event().wait()
            except Cancelled as exc:
                raw_seen.append(exc)
                raise Cancelled("not the one it threw") from exc  # escapes the block

    raw = greenlet.greenlet(raw_body, parent=get_hub())
    get_hub().loop.run_callback(raw.switch)
    with gevent.Timeout(5):
        entered.wait()
    blocked = Blocked(ctx, Event().wait)
    cancel()
    assert_interrupted(blocked, ctx)
    assert raw.dead
    assert len(raw_seen) == 1
