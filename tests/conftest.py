"""Fixtures shared by the whole suite.

The greentask plugin's leak check is on for every test (``greentask_leak_check = true``
in pyproject.toml): a test that leaves a greenlet running fails. ``hub_errors`` adds a
stricter, explicit check: nothing may reach gevent's hub as an error to print.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import _proc
import pytest
from gevent.hub import get_hub

from greentask.testing import FakeClock


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    """A FakeClock at 0.0, closed after the test."""
    fake = FakeClock()
    yield fake
    fake.close()


@pytest.fixture(autouse=True)
def kill_procs() -> Iterator[None]:
    """Kill every process a test started with `_proc.Proc`, and all their descendants.

    Whether the test passed or failed: each Proc's session and process group, and the
    processes that carry its environment marker (also those in sessions of their own,
    orphaned when their parent died), get SIGKILL. A test whose finished process left
    descendants running fails at teardown.
    """
    yield
    leaked = _proc.kill_all()
    assert not leaked, f"processes left running by finished programs (killed now): {leaked!r}"


@pytest.fixture(autouse=True)
def hub_errors(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[Any, ...]]]:
    """Fail any test during which gevent's hub was handed an error to print.

    Yields the list of what the hub received, for tests that assert on it mid-way.
    Not applied to tests/testing/, whose tests drive the hub's error reporting
    themselves (the plugin's leak check is what they test).
    """
    reported: list[tuple[Any, ...]] = []
    if "testing" in request.node.path.parent.parts[-1:]:
        yield reported
        return
    hub = get_hub()
    monkeypatch.setattr(hub, "handle_error", lambda *args: reported.append(args))
    monkeypatch.setattr(hub, "print_exception", lambda *args: reported.append(args))
    yield reported
    assert reported == [], f"gevent's hub was handed errors: {reported!r}"


@pytest.fixture
def hub_printed(hub_errors: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The same list as ``hub_errors`` (the name some tests use)."""
    return hub_errors
