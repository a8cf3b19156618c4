"""Provided tasks: wrappers for the common shapes of work, servers and child processes.

- `Repeatable`: run an execute again and again until cancelled.
- `RepeatTimer`: run an execute every ``interval`` seconds, on a drift-free grid.
- `Interruptible`: restart a task (cleanup, initialize, execute) on an OS signal.
- `ForceStop`: kill an execute that ignores cancellation after ``timeout`` seconds.
- `Server`: run a gevent ``StreamServer`` / ``WSGIServer``.
- `Subprocess`: run an OS process.
- `HealthServer`: HTTP liveness/readiness/status probes for a `TaskManager`.
- `Backoff`: exponential backoff with jitter, for `Repeatable`.
"""

from ._backoff import Backoff as Backoff
from ._force import ForceStop as ForceStop
from ._health import HealthServer as HealthServer
from ._interruptible import Interruptible as Interruptible
from ._repeat import Repeatable as Repeatable
from ._repeat import RepeatTimer as RepeatTimer
from ._server import Server as Server
from ._subprocess import Subprocess as Subprocess

__all__: list[str] = [
    "Backoff",
    "ForceStop",
    "HealthServer",
    "Interruptible",
    "RepeatTimer",
    "Repeatable",
    "Server",
    "Subprocess",
]
