"""Property test of Context trees (SPEC §2) against a small model.

Random trees of with_cancel / with_value / with_timeout / without_cancel contexts on a
FakeClock, random cancels and clock advances. After every step:

- a context is cancelled iff it or an ancestor (up to the nearest without_cancel or
  background) was cancelled or its own deadline passed;
- its err is the err of the earliest such event (shared by identity), a
  `DeadlineExceeded` iff that event was a deadline, and its cause is that cancel's cause;
- its deadline is the earlier of its own and its parent's;
- a cancelled context is never in its parent's children set, and a live one is;
- a ``rawlink`` callback ran exactly once for every cancelled context and for no other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import greentask as gt
from greentask import Cancelled, DeadlineExceeded
from greentask.context import _State
from greentask.testing import FakeClock, settle

KINDS = ("cancel", "value", "timeout", "deadline", "without")
SECONDS = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0)

# An event's key orders events: (step, time within an advance, creation sequence).
Key = tuple[int, float, int]


@dataclass(eq=False)
class Node:
    ctx: gt.Context
    kind: str
    parent: Node | None
    seq: int
    cancel: Any = None
    own_deadline: float | None = None
    has_timer: bool = False  # its own deadline is the earlier one and still ahead
    # (key, is_deadline, cause): the first event of this node's own.
    events: list[tuple[Key, bool, BaseException | None]] = field(default_factory=list)
    links: int = 0

    def chain(self) -> list[Node]:
        """This node and its ancestors whose cancellation reaches it."""
        out: list[Node] = []
        node: Node | None = self
        while node is not None and node.kind not in ("root", "without"):
            out.append(node)
            node = node.parent
        return out

    def first_event(self) -> tuple[Node, tuple[Key, bool, BaseException | None]] | None:
        candidates = [(n, n.events[0]) for n in self.chain() if n.events]
        return min(candidates, key=lambda c: c[1][0]) if candidates else None

    def expected_deadline(self) -> float | None:
        if self.kind in ("root", "without"):
            return None
        assert self.parent is not None
        inherited = self.parent.expected_deadline()
        if self.own_deadline is None:
            return inherited
        return self.own_deadline if inherited is None else min(inherited, self.own_deadline)

    def state_parent(self) -> Node | None:
        """The nearest ancestor owning a cancel state, or None (stops at without/root)."""
        node = self.parent
        while node is not None and node.kind == "value":
            node = node.parent
        if node is None or node.kind in ("root", "without"):
            return None
        return node


create = st.tuples(st.just("create"), st.sampled_from(KINDS), st.integers(0, 10_000), st.sampled_from(SECONDS))
cancel = st.tuples(st.just("cancel"), st.integers(0, 10_000), st.booleans())
advance = st.tuples(st.just("advance"), st.sampled_from((0.0, 0.5, 1.0, 2.5)))
steps = st.lists(st.one_of(create, create, cancel, advance), max_size=40)


def check(nodes: list[Node], clock: FakeClock) -> None:
    for node in nodes:
        ctx = node.ctx
        first = node.first_event()
        assert ctx.cancelled is (first is not None), node
        assert ctx.deadline == node.expected_deadline()
        assert node.links == (1 if first is not None else 0)
        state = ctx._state
        if first is None:
            assert ctx.err is None
            assert ctx.cause is None
            owner = node.state_parent()
            if node.kind in ("cancel", "timeout", "deadline") and owner is not None:
                assert owner.ctx._state is not None
                assert owner.ctx._state.children is not None
                assert state in owner.ctx._state.children
            continue
        owner, (_key, is_deadline, cause) = first
        assert ctx.err is owner.ctx.err
        assert type(ctx.err) is (DeadlineExceeded if is_deadline else Cancelled)
        assert ctx.cause is (ctx.err if cause is None else cause)
        assert state is not None
        assert state.parent is None
    # No live state anywhere lists a cancelled child.
    for node in nodes:
        state = node.ctx._state
        if isinstance(state, _State) and state.children:
            assert all(child.err is None for child in state.children)
    # A timer is pending exactly for each live context whose own deadline is the earlier.
    assert clock.pending_timers == sum(1 for n in nodes if n.has_timer and not n.ctx.cancelled)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_context_tree_matches_the_model(ops: list[tuple[Any, ...]]) -> None:
    clock = FakeClock()
    try:
        run_model(clock, ops)
    finally:
        clock.close()


def run_model(clock: FakeClock, ops: list[tuple[Any, ...]]) -> None:
    root = Node(gt.background(clock), "root", None, 0)
    nodes = [root]

    def link(node: Node) -> None:
        def on_cancelled(ctx: gt.Context) -> None:
            assert ctx is node.ctx
            node.links += 1

        node.ctx.rawlink(on_cancelled)

    for step, op in enumerate(ops, start=1):
        if op[0] == "create":
            _, kind, index, seconds = op
            parent = nodes[index % len(nodes)]
            seq = len(nodes)
            if kind == "cancel":
                ctx, cancel_fn = gt.with_cancel(parent.ctx)
                node = Node(ctx, kind, parent, seq, cancel_fn)
            elif kind == "value":
                node = Node(gt.with_value(parent.ctx, ("key", seq), seq), kind, parent, seq)
            elif kind == "without":
                node = Node(gt.without_cancel(parent.ctx), kind, parent, seq)
            else:
                when = clock.now() + seconds
                inherited = parent.expected_deadline()
                has_timer = (inherited is None or when < inherited) and when > clock.now() and not parent.ctx.cancelled
                if kind == "timeout":
                    ctx, cancel_fn = gt.with_timeout(parent.ctx, seconds)
                else:
                    ctx, cancel_fn = gt.with_deadline(parent.ctx, when)
                node = Node(ctx, kind, parent, seq, cancel_fn, own_deadline=when, has_timer=has_timer)
                if when <= clock.now():
                    node.events.append(((step, -math.inf, seq), True, None))
            nodes.append(node)
            link(node)
            # Values are found through every kind of child.
            for ancestor in [node, *_ancestors(node)]:
                if ancestor.kind == "value":
                    assert node.ctx.value(("key", ancestor.seq)) == ancestor.seq
        elif op[0] == "cancel":
            _, index, with_cause = op
            cancellable = [n for n in nodes if n.cancel is not None]
            if not cancellable:
                continue
            node = cancellable[index % len(cancellable)]
            cause = KeyError(f"cause {step}") if with_cause else None
            node.cancel(cause)
            node.events.append(((step, -math.inf, 0), False, cause))
        else:
            _, seconds = op
            start, end = clock.now(), clock.now() + seconds
            clock.advance(seconds)
            for node in nodes:
                d = node.own_deadline
                if d is not None and start < d <= end:
                    node.events.append(((step, d, node.seq), True, None))
        for node in nodes:
            node.events.sort(key=lambda e: e[0])
        settle()
        check(nodes, clock)


def _ancestors(node: Node) -> list[Node]:
    out = []
    parent = node.parent
    while parent is not None:
        out.append(parent)
        parent = parent.parent
    return out
