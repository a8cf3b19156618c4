"""The pytest plugin: fixtures, marker, ini option and the leak check, run through pytester.

The plugin is installed through the ``pytest11`` entry point, so the inner pytest runs
(in pytester's fresh project directory) load it exactly as a project that only did
``pip install greentask`` would; the last test proves it from a subprocess. Each inner
run holds several small tests, and the outer test checks the outcome of each one (an
in-process run costs far more than the tests in it).
"""

from __future__ import annotations

import gevent
import pytest

from greentask.testing._leaks import alive_greenlets

# The inner runs share this process and its hub: their deliberate leaks and hub errors
# must not count against the outer tests, even with greentask_leak_check = true.
pytestmark = pytest.mark.greentask(leak_check=False)


@pytest.fixture(autouse=True)
def _kill_greenlets_leaked_by_inner_runs():
    """Inner tests without the check leave greenlets behind in this process: kill them."""
    before = set(alive_greenlets())
    yield
    gevent.killall([glet for glet in alive_greenlets() if glet not in before], block=True, timeout=5)


def run_inner(pytester, *args):
    """Run pytest in-process; return ``{test name: outcome}`` and ``{test name: failure text}``.

    The outcome is "passed", or "<phase> failed" for the first phase that failed.
    """
    reprec = pytester.inline_run(*args)
    outcomes: dict[str, str] = {}
    texts: dict[str, str] = {}
    for report in reprec.getreports("pytest_runtest_logreport"):
        name = report.nodeid.rpartition("::")[2]
        if report.failed and name not in texts:
            outcomes[name] = f"{report.when} failed"
            texts[name] = report.longreprtext
        elif report.when == "call" and report.passed:
            outcomes.setdefault(name, "passed")
        elif report.when == "teardown" and name not in outcomes:
            outcomes[name] = "passed"
    return outcomes, texts


def test_with_the_ini_option_every_test_is_checked(pytester):
    pytester.makepyprojecttoml(
        """
        [tool.pytest.ini_options]
        addopts = "--strict-markers"
        greentask_leak_check = true
        """
    )
    pytester.makepyfile(
        test_inner="""
        import gevent
        import pytest
        from gevent.event import Event

        NEVER = Event()

        def test_leaks_a_greenlet():
            gevent.spawn(NEVER.wait)

        def test_clean():
            gevent.spawn(lambda: None).join()

        @pytest.mark.greentask(leak_check=False)
        def test_opted_out():
            gevent.spawn(NEVER.wait)

        def test_options_are_registered(request):
            assert request.config.getini("greentask_leak_check") is True
            [line] = [m for m in request.config.getini("markers") if m.startswith("greentask")]
            assert line.startswith("greentask(leak_check=True): run greentask's leak check")
        """
    )
    outcomes, texts = run_inner(pytester, "-W", "error::pytest.PytestConfigWarning")
    assert outcomes == {
        "test_leaks_a_greenlet": "teardown failed",
        "test_clean": "passed",
        "test_opted_out": "passed",
        "test_options_are_registered": "passed",
    }
    message = texts["test_leaks_a_greenlet"].splitlines()
    assert message[:2] == ["greentask leak check failed:", "1 greenlet was left running (now killed):"]
    assert "Event.wait" in message[2]
    assert message[2].endswith("test_inner.py:8 in test_leaks_a_greenlet)")


def test_without_the_ini_option_unrelated_tests_are_untouched(pytester):
    pytester.makepyfile(
        test_inner="""
        import gevent
        from gevent.event import Event

        def test_leaks_a_greenlet():
            gevent.spawn(Event().wait)

        def test_a_greenlet_fails_unobserved():
            assert "print_exception" not in vars(gevent.get_hub())
            gevent.spawn(lambda: 1 / 0).join()
        """
    )
    outcomes, _ = run_inner(pytester)
    assert outcomes == {"test_leaks_a_greenlet": "passed", "test_a_greenlet_fails_unobserved": "passed"}


def test_the_check_is_on_for_greentask_fixtures_and_the_marker(pytester):
    pytester.makepyfile(
        test_inner="""
        import gevent
        import pytest
        from gevent.event import Event

        import greentask as gt

        STOP = Event()
        LEAKED = []

        @pytest.fixture(scope="module")
        def server():
            glet = gevent.spawn(STOP.wait)
            yield glet
            STOP.set()
            glet.join()

        def test_fake_clock_user_leaks(fake_clock):
            ctx = gt.background(fake_clock)
            LEAKED.append(gevent.spawn(ctx.sleep, 10))
            fake_clock.advance(5)

        def test_the_leaked_greenlet_was_killed():
            [glet] = LEAKED
            assert glet.dead

        def test_task_harness_user_leaks(task_harness):
            gevent.spawn(Event().wait)

        @pytest.mark.greentask
        def test_a_greenlet_fails_unobserved():
            gevent.spawn(lambda: 1 / 0).join()

        @pytest.mark.greentask
        def test_a_loop_callback_fails():
            gevent.get_hub().loop.run_callback(lambda: {}["missing"])
            gevent.sleep(0)

        def test_the_hub_is_restored_afterwards():
            assert "print_exception" not in vars(gevent.get_hub())

        def test_greenlets_alive_before_the_test_are_not_leaks(server, fake_clock):
            assert not server.dead

        @pytest.mark.greentask
        def test_a_clean_marked_test(server):
            gevent.spawn(lambda: None).join()
        """
    )
    outcomes, texts = run_inner(pytester)
    assert outcomes == {
        "test_fake_clock_user_leaks": "teardown failed",
        "test_the_leaked_greenlet_was_killed": "passed",
        "test_task_harness_user_leaks": "teardown failed",
        "test_a_greenlet_fails_unobserved": "teardown failed",
        "test_a_loop_callback_fails": "teardown failed",
        "test_the_hub_is_restored_afterwards": "passed",
        "test_greenlets_alive_before_the_test_are_not_leaks": "passed",
        "test_a_clean_marked_test": "passed",
    }
    assert "1 greenlet was left running (now killed):" in texts["test_fake_clock_user_leaks"]
    assert "in test_fake_clock_user_leaks)" in texts["test_fake_clock_user_leaks"]
    greenlet_error = texts["test_a_greenlet_fails_unobserved"].splitlines()
    assert greenlet_error[1] == "the gevent hub reported 1 error during the test:"
    assert greenlet_error[2].startswith("    ZeroDivisionError('division by zero') in <Greenlet")
    assert "    KeyError('missing') in " in texts["test_a_loop_callback_fails"]


def test_same_named_fixtures_of_a_project_do_not_turn_the_check_on(pytester):
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def fake_clock():
            return "the project's own clock"

        @pytest.fixture
        def task_harness(task_harness):
            return task_harness  # builds on greentask's: the check stays on
        """
    )
    pytester.makepyfile(
        test_inner="""
        import gevent
        from gevent.event import Event

        def test_own_fake_clock_leaks(fake_clock):
            assert fake_clock == "the project's own clock"
            gevent.spawn(Event().wait)

        def test_overridden_task_harness_leaks(task_harness):
            gevent.spawn(Event().wait)
        """
    )
    outcomes, _ = run_inner(pytester)
    assert outcomes == {"test_own_fake_clock_leaks": "passed", "test_overridden_task_harness_leaks": "teardown failed"}


def test_fake_clock_and_task_harness_fixtures(pytester):
    pytester.makepyfile(
        test_inner="""
        from gevent.event import Event

        import greentask as gt
        from greentask.testing import FakeClock, FakeTask, TaskHarness, settle

        CLOCKS = []
        HARNESSES = []

        def test_fake_clock_is_a_fake_clock(fake_clock):
            assert isinstance(fake_clock, FakeClock)
            assert fake_clock.now() == 0
            ctx, cancel = gt.with_timeout(gt.background(fake_clock), 5)
            fake_clock.advance(5)
            assert ctx.cancelled
            fake_clock.autojump_threshold = 0
            fake_clock.call_at(100, lambda: None)
            CLOCKS.append(fake_clock)

        def test_fake_clock_was_closed():
            [clock] = CLOCKS
            assert clock.autojump_threshold is None
            assert clock._jumper is None

        def test_task_harness_makes_harnesses(task_harness, fake_clock):
            harness = task_harness(FakeTask.blocking(), clock=fake_clock)
            assert isinstance(harness, TaskHarness)
            assert harness.clock is fake_clock
            harness.start()
            settle()
            assert harness.running
            HARNESSES.append(harness)

        def test_task_harness_cancelled_and_joined_it():
            [harness] = HARNESSES
            assert harness.ctx.cancelled
            assert harness.done

        def test_a_task_that_ignores_cancellation_fails_the_test(task_harness):
            never = Event()
            harness = task_harness(lambda ctx: never.wait())
            harness.close_timeout = 0.01
            harness.start()
            settle()
        """
    )
    outcomes, texts = run_inner(pytester)
    assert outcomes == {
        "test_fake_clock_is_a_fake_clock": "passed",
        "test_fake_clock_was_closed": "passed",
        "test_task_harness_makes_harnesses": "passed",
        "test_task_harness_cancelled_and_joined_it": "passed",
        "test_a_task_that_ignores_cancellation_fails_the_test": "teardown failed",
    }
    message = texts["test_a_task_that_ignores_cancellation_fails_the_test"]
    assert message.startswith("task_harness teardown: task <function ")
    assert message.endswith("did not stop within 0.01s of cancellation; killed")


def test_the_plugin_loads_from_the_entry_point_in_a_fresh_project(pytester):
    pytester.makepyfile(
        """
        import gevent
        import gevent.monkey
        import greentask as gt

        def test_fixtures_work_without_any_configuration(request, fake_clock, task_harness):
            assert request.config.pluginmanager.has_plugin("greentask")
            assert not gevent.monkey.is_anything_patched()
            harness = task_harness(lambda ctx: ctx.sleep(30), clock=fake_clock)
            harness.start()
            fake_clock.advance(30)
            assert harness.wait(timeout=5) is True

        def test_leaky(fake_clock):
            gevent.spawn(gevent.sleep, 60)
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*plugins:*greentask-*", "*1 greenlet was left running (now killed):*"])
