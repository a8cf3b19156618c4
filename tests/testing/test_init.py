"""greentask.testing exports exactly its public names, in a sorted __all__."""

from __future__ import annotations

import types

import greentask.testing


def test_all_lists_exactly_the_public_names_sorted():
    public = {
        name
        for name, value in vars(greentask.testing).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert greentask.testing.__all__ == sorted(public)
    assert set(greentask.testing.__all__) == {
        "CallLog",
        "FakeClock",
        "FakeExecuteTask",
        "FakeTask",
        "RunningManager",
        "Stub",
        "TaskHarness",
        "consistently",
        "eventually",
        "settle",
        "start_manager",
    }


def test_importing_the_plugin_monkey_patches_nothing():
    import gevent.monkey

    import greentask.testing.plugin  # noqa: F401

    assert not gevent.monkey.is_anything_patched()
