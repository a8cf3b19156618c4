"""pytest plugin for greentask, registered through the ``pytest11`` entry point.

Installing greentask makes pytest load this module; it changes nothing for tests that
do not ask for it. It provides:

- the ``fake_clock`` fixture: a `FakeClock` (autojump off; set
  ``fake_clock.autojump_threshold = 0`` to turn it on), closed at teardown;
- the ``task_harness`` fixture: a factory ``task_harness(task, clock=None, ctx=None)``
  returning a `TaskHarness`; every harness it made is cancelled and joined at teardown
  (a task that ignores cancellation for 5 s is killed and fails the test);
- the ``greentask`` marker, and the ini option ``greentask_leak_check`` (bool,
  default false);
- a leak check: the test fails (an error at its teardown, after every function-scoped
  fixture was torn down) when it left running a gevent greenlet that started during
  the test (such greenlets are then killed), or when gevent's hub reported an error
  during it (a "Greenlet failed" traceback, a failing loop callback). It is on for
  tests that use a greentask fixture or carry the ``greentask`` marker, and for every
  test when ``greentask_leak_check = true``; ``@pytest.mark.greentask(leak_check=False)``
  turns it off for one test. See `greentask.testing._leaks` for how it works.

The module itself imports only pytest; reaching it imports the ``greentask`` package
(and so gevent), which monkey-patches nothing. Nothing is patched or installed for a
test that is not checked; for a checked one, the hub's error reporting is wrapped and
a greenlet trace hook installed for the test's duration only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .._clock import Clock
    from ..context import Context
    from ._clock import FakeClock
    from ._harness import TaskHarness

__all__ = ["fake_clock", "pytest_addoption", "pytest_configure", "task_harness"]

LEAK_CHECK_INI = "greentask_leak_check"
MARKER = "greentask"
_FIXTURES = frozenset({"fake_clock", "task_harness"})


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``greentask_leak_check`` ini option."""
    parser.addini(
        LEAK_CHECK_INI,
        type="bool",
        default=False,
        help="greentask: run the greenlet leak / hub error check for every test (default: false)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``greentask`` marker."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}(leak_check=True): run greentask's leak check for this test (fail it if it leaves a "
        "greenlet running or the gevent hub reports an error); leak_check=False turns the check off",
    )


def _uses_greentask_fixture(request: pytest.FixtureRequest) -> bool:
    """Whether the test uses this plugin's fixtures (not same-named fixtures of its own)."""
    names = _FIXTURES.intersection(request.fixturenames)
    if not names:
        return False
    name2defs = getattr(getattr(request.node, "_fixtureinfo", None), "name2fixturedefs", None)
    if name2defs is None:  # pytest internals changed: go by the name
        return True
    for name in names:
        defs = name2defs.get(name)
        if not defs:
            return True
        # Ours, or an override that builds on ours (it requests the same name).
        if getattr(defs[-1].func, "__module__", None) == __name__ or name in defs[-1].argnames:
            return True
    return False


def _leak_check_enabled(request: pytest.FixtureRequest) -> bool:
    marker = request.node.get_closest_marker(MARKER)
    if marker is not None:
        return bool(marker.kwargs.get("leak_check", True))
    if request.config.getini(LEAK_CHECK_INI):
        return True
    return _uses_greentask_fixture(request)


@pytest.fixture(autouse=True)
def _greentask_leak_check(request: pytest.FixtureRequest) -> Iterator[None]:
    """The leak check (a no-op unless enabled for this test; see the module docstring)."""
    if not _leak_check_enabled(request):
        yield
        return
    from ._leaks import LeakCheck

    check = LeakCheck()
    yield
    problems = check.finish()
    if problems is not None:
        pytest.fail(problems, pytrace=False)


@pytest.fixture
def fake_clock() -> Iterator[FakeClock]:
    """A `greentask.testing.FakeClock` starting at 0, closed at teardown.

    Build contexts on it with ``gt.background(fake_clock)`` and move time with
    ``fake_clock.advance(seconds)``. Using it turns the leak check on for the test.
    """
    from ._clock import FakeClock

    clock = FakeClock()
    try:
        yield clock
    finally:
        clock.close()


@pytest.fixture
def task_harness() -> Iterator[Callable[..., TaskHarness]]:
    """A factory ``task_harness(task, clock=None, ctx=None) -> TaskHarness``.

    At teardown every harness it made is closed: cancelled, then joined for up to 5
    real seconds; a task still running then is killed and the test fails. Cleanup is
    not called for you. Using it turns the leak check on for the test.
    """
    from ._harness import TaskHarness

    made: list[TaskHarness] = []

    def make(task: object, clock: Clock | None = None, ctx: Context | None = None) -> TaskHarness:
        harness = TaskHarness(task, clock=clock, ctx=ctx)
        made.append(harness)
        return harness

    yield make
    failures: list[str] = []
    for harness in reversed(made):
        try:
            harness.close()
        except TimeoutError as exc:
            failures.append(str(exc))
    if failures:
        pytest.fail("task_harness teardown: " + "; ".join(failures), pytrace=False)
