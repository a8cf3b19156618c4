"""settle(): run every runnable greenlet until none is left runnable."""

from __future__ import annotations

import gevent
import pytest
from gevent.event import Event

from greentask.testing import settle

pytestmark = pytest.mark.greentask


def test_settle_runs_spawned_greenlets_until_they_block():
    seen = []
    gate = Event()

    def worker(n):
        seen.append(("start", n))
        gate.wait()
        seen.append(("end", n))

    glets = [gevent.spawn(worker, n) for n in range(3)]
    assert seen == []
    settle()
    assert seen == [("start", 0), ("start", 1), ("start", 2)]
    gate.set()
    settle()
    assert seen[3:] == [("end", 0), ("end", 1), ("end", 2)]
    assert all(glet.dead for glet in glets)


def test_settle_follows_a_chain_of_handshakes():
    events = [Event() for _ in range(20)]
    order = []

    def relay(i):
        events[i].wait()
        order.append(i)
        if i + 1 < len(events):
            events[i + 1].set()

    for i in reversed(range(len(events))):
        gevent.spawn(relay, i)
    settle()
    events[0].set()
    settle()
    assert order == list(range(20))


def test_settle_runs_greenlets_parked_in_idle():
    steps = []

    def idler():
        for i in range(5):
            gevent.idle()
            steps.append(i)

    glet = gevent.spawn(idler)
    settle()
    assert steps == [0, 1, 2, 3, 4]
    assert glet.dead


def test_settle_runs_pending_loop_callbacks():
    ran = []
    gevent.get_hub().loop.run_callback(ran.append, "callback")
    settle()
    assert ran == ["callback"]


def test_settle_does_not_wait_for_real_time_sleepers():
    woke = []
    sleeper = gevent.spawn(lambda: woke.append(gevent.sleep(60)))
    settle()
    assert woke == []
    assert not sleeper.dead
    sleeper.kill()


def test_settle_gives_up_with_a_greenlet_that_never_blocks(caplog):
    spins = [0]

    def spinner():
        while True:
            spins[0] += 1
            gevent.sleep(0)

    glet = gevent.spawn(spinner)
    settle()
    assert spins[0] > 0
    assert not glet.dead
    assert "settle() gave up: a greenlet never blocks" in caplog.text
    glet.kill()


def test_settle_gives_up_after_max_rounds_with_a_greenlet_that_idles_forever():
    rounds = [0]

    def idler():
        while True:
            rounds[0] += 1
            gevent.idle()

    glet = gevent.spawn(idler)
    settle(max_rounds=20)
    assert 10 <= rounds[0] <= 40
    assert not glet.dead
    glet.kill()


def test_settle_ignores_internal_helper_greenlets():
    rounds = [0]

    def helper():
        while True:
            rounds[0] += 1
            gevent.idle()

    glet = gevent.Greenlet(helper)
    glet._greentask_internal = True
    glet.start()
    settle(max_rounds=1000)
    assert rounds[0] < 10
    glet.kill()


def test_settle_cannot_be_called_from_the_hub():
    outcome = []

    def in_hub():
        try:
            settle()
        except RuntimeError as exc:
            outcome.append(str(exc))

    gevent.get_hub().loop.run_callback(in_hub)
    settle()
    assert outcome == ["settle() cannot be called from the hub; call it from a greenlet"]


def test_settle_validates_max_rounds():
    with pytest.raises(TypeError, match=r"max_rounds must be an int, got 1\.5"):
        settle(max_rounds=1.5)
    with pytest.raises(ValueError, match="max_rounds must be a positive int, got 0"):
        settle(max_rounds=0)


def test_settle_chains_to_a_previously_installed_greenlet_trace():
    import greenlet

    events = []
    previous = greenlet.gettrace()
    greenlet.settrace(lambda event, args: events.append(event))
    try:
        gevent.spawn(lambda: None)
        settle()
    finally:
        greenlet.settrace(previous)
    assert "switch" in events


def test_a_trace_hook_installed_on_top_while_settling_is_left_in_place():
    import greenlet

    from greentask.testing._settle import ACTIVITY

    seen = []
    previous = greenlet.gettrace()
    with ACTIVITY:
        below = greenlet.gettrace()

        def chained(event, args):
            seen.append(event)
            below(event, args)

        greenlet.settrace(chained)
    try:
        assert greenlet.gettrace() is chained
        gevent.spawn(lambda: None)
        settle()
        assert "switch" in seen
        assert greenlet.gettrace() is chained
    finally:
        greenlet.settrace(previous)
    # Once every hook is gone, settle installs its own again.
    hooks = []
    gevent.spawn(lambda: hooks.append(greenlet.gettrace()))
    settle()
    assert hooks == [ACTIVITY._trace]
    assert greenlet.gettrace() is previous
