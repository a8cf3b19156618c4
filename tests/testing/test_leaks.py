"""LeakCheck, the machinery behind the plugin's leak check, used directly."""

from __future__ import annotations

import types

import gevent
import pytest
from gevent.event import Event

from greentask.testing import _leaks
from greentask.testing._leaks import LeakCheck, _spawned_at, alive_greenlets

# These tests make the hub report errors and leak greenlets on purpose, and look at the
# hub's attributes: the plugin's own check must stay off even with greentask_leak_check.
pytestmark = pytest.mark.greentask(leak_check=False)


@pytest.fixture
def release():
    event = Event()
    yield event
    event.set()


def test_a_greenlet_started_during_the_check_and_still_alive_is_a_leak_and_is_killed(release):
    check = LeakCheck()
    leaked = gevent.spawn(release.wait)
    finished = gevent.spawn(lambda: None)
    report = check.finish()
    assert report is not None
    lines = report.splitlines()
    assert lines[:2] == ["greentask leak check failed:", "1 greenlet was left running (now killed):"]
    assert lines[2].endswith("in test_a_greenlet_started_during_the_check_and_still_alive_is_a_leak_and_is_killed)")
    assert leaked.dead
    assert finished.dead


def test_nothing_to_report_when_every_greenlet_finished():
    check = LeakCheck()
    gevent.spawn(gevent.idle)
    assert check.finish() is None


def test_greenlets_scheduled_or_running_before_the_check_are_not_leaks(release):
    running_before = gevent.spawn(release.wait)
    gevent.idle()
    assert not running_before.dead
    nudge = Event()

    def waits_twice():
        nudge.wait()
        release.wait()

    resumed = gevent.spawn(waits_twice)
    gevent.idle()
    scheduled_before = gevent.spawn(release.wait)  # has not run yet
    check = LeakCheck()
    nudge.set()  # `resumed` runs again during the check
    assert check.finish() is None
    assert not running_before.dead
    assert not resumed.dead
    assert not scheduled_before.dead


def test_without_a_readable_callback_queue_a_full_scan_finds_the_greenlets_alive_before(monkeypatch, release):
    monkeypatch.setattr(_leaks, "_scheduled_greenlets", lambda hub: None)
    scheduled_before = gevent.spawn(release.wait)
    check = LeakCheck()
    leaked = gevent.spawn(release.wait)
    report = check.finish()
    assert report is not None
    assert "1 greenlet was left running" in report
    assert leaked.dead
    assert not scheduled_before.dead


def test_an_unreadable_callback_queue_is_reported_as_none():
    hub = types.SimpleNamespace(loop=types.SimpleNamespace())
    assert _leaks._scheduled_greenlets(hub) is None


def test_internal_greenlets_are_never_leaks(release):
    check = LeakCheck()
    helper = gevent.Greenlet(release.wait)
    helper._greentask_internal = True
    helper.start()
    assert check.finish() is None
    assert not helper.dead


def test_errors_the_hub_reports_are_recorded_and_still_printed(capsys):
    hub = gevent.get_hub()
    check = LeakCheck()
    gevent.spawn(lambda: 1 / 0).join()
    hub.print_exception("a context", ValueError, None, None)  # reported without an instance
    report = check.finish()
    assert report is not None
    lines = report.splitlines()
    assert lines[1] == "the gevent hub reported 2 errors during the test:"
    assert lines[2].startswith("    ZeroDivisionError('division by zero') in <Greenlet")
    assert lines[3] == "    ValueError() in 'a context'"
    assert "ZeroDivisionError" in capsys.readouterr().err
    assert "print_exception" not in vars(hub)


def test_nested_checks_restore_the_hub_in_order():
    hub = gevent.get_hub()
    outer = LeakCheck()
    inner = LeakCheck()
    gevent.spawn(lambda: {}["inner"]).join()
    inner_report = inner.finish()
    assert "print_exception" in vars(hub)  # the outer check still watches
    gevent.spawn(lambda: {}["outer"]).join()
    outer_report = outer.finish()
    assert "KeyError('inner')" in inner_report
    assert "KeyError('outer')" not in inner_report
    assert "KeyError('inner')" in outer_report
    assert "KeyError('outer')" in outer_report
    assert "print_exception" not in vars(hub)


def test_finish_twice_reports_nothing_new():
    check = LeakCheck()
    assert check.finish() is None
    assert check.finish() is None


def test_spawned_at_is_empty_without_a_usable_spawning_stack():
    assert _spawned_at(types.SimpleNamespace(spawning_stack=None)) == ""
    assert _spawned_at(types.SimpleNamespace(spawning_stack=object())) == ""


def test_spawned_at_falls_back_to_the_innermost_frame_when_every_frame_is_a_librarys():
    frame = types.SimpleNamespace(
        f_code=types.SimpleNamespace(co_filename=gevent.__file__, co_name="spawn"),
        f_lineno=1,
        f_back=None,
        f_globals={},
        f_locals={},
    )
    assert _spawned_at(types.SimpleNamespace(spawning_stack=frame)) == f" (spawned at {gevent.__file__}:1 in spawn)"


def test_alive_greenlets_lists_started_unfinished_greenlets(release):
    blocked = gevent.spawn(release.wait)
    never_started = gevent.Greenlet(release.wait)
    gevent.idle()
    alive = alive_greenlets()
    assert blocked in alive
    assert never_started not in alive
    release.set()
    blocked.join(timeout=5)
    assert blocked not in alive_greenlets()
