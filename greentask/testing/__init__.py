"""Deterministic testing of greentask tasks: fakes, a fake clock, a harness, a plugin.

- `FakeTask`, `FakeExecuteTask`, `CallLog`: scripted tasks that record their calls.
- `FakeClock`: time that moves only when the test advances it (or autojumps).
- `TaskHarness`: step one task through initialize / execute / cancel / cleanup.
- `start_manager` / `RunningManager`: run a `TaskManager` in the background.
- `settle`, `eventually`, `consistently`: synchronize without sleeping.
- `greentask.testing.plugin`: the pytest plugin (``fake_clock``, ``task_harness``,
  the ``greentask`` marker and the leak check), loaded automatically by pytest.
"""

from ._clock import FakeClock as FakeClock
from ._fakes import CallLog as CallLog
from ._fakes import FakeExecuteTask as FakeExecuteTask
from ._fakes import FakeTask as FakeTask
from ._fakes import Stub as Stub
from ._harness import TaskHarness as TaskHarness
from ._running import RunningManager as RunningManager
from ._running import start_manager as start_manager
from ._settle import settle as settle
from ._waiting import consistently as consistently
from ._waiting import eventually as eventually

__all__ = [
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
]
