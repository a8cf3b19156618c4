"""Deterministic testing of greentask tasks: fakes, a fake clock, a harness, a plugin.

- `FakeTask`, `FakeExecuteTask`, `CallLog`: scripted tasks that record their calls.
- `FakeClock`: time that moves only when the test advances it.
- `TaskHarness`: step one task through initialize / execute / cancel / cleanup.
- `start_manager`: run a `TaskManager` in the background.
- `settle`, `eventually`, `consistently`: synchronize without sleeping.
"""

from ._clock import FakeClock as FakeClock
from ._fakes import CallLog as CallLog
from ._fakes import FakeExecuteTask as FakeExecuteTask
from ._fakes import FakeTask as FakeTask
from ._fakes import Stub as Stub
from ._settle import settle as settle

__all__ = [
    "CallLog",
    "FakeClock",
    "FakeExecuteTask",
    "FakeTask",
    "Stub",
    "settle",
]
