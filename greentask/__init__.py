"""greentask: goasync's task-manager model for gevent.

Split a program into single-purpose tasks; a `TaskManager` initializes them in order,
runs them concurrently as greenlets, watches them for failure, shuts everything down
on a signal or a failure, and cleans up in reverse order.

Importing greentask never monkey-patches anything.
"""

from . import tasks as tasks
from ._types import StopOrder as StopOrder
from .context import CancelFunc as CancelFunc
from .context import Cancelled as Cancelled
from .context import Clock as Clock
from .context import Context as Context
from .context import DeadlineExceeded as DeadlineExceeded
from .context import background as background
from .context import with_cancel as with_cancel
from .context import with_deadline as with_deadline
from .context import with_timeout as with_timeout
from .context import with_value as with_value
from .context import without_cancel as without_cancel
from .errors import ManagerEvent as ManagerEvent
from .errors import ManagerStateError as ManagerStateError
from .errors import NamedError as NamedError
from .errors import RestartLimitExceeded as RestartLimitExceeded
from .errors import Stage as Stage
from .errors import StopReason as StopReason
from .errors import StopTimeout as StopTimeout
from .errors import TaskState as TaskState
from .errors import TaskStatus as TaskStatus
from .errors import UnexpectedStop as UnexpectedStop
from .errors import errors_to_group as errors_to_group
from .handle import TaskHandle as TaskHandle
from .manager import ExecuteTask as ExecuteTask
from .manager import ExecuteTaskType as ExecuteTaskType
from .manager import Task as Task
from .manager import TaskManager as TaskManager
from .manager import TaskType as TaskType
from .restart import Restart as Restart
from .runner import run as run

__version__ = "0.1.0"

__all__ = [
    "CancelFunc",
    "Cancelled",
    "Clock",
    "Context",
    "DeadlineExceeded",
    "ExecuteTask",
    "ExecuteTaskType",
    "ManagerEvent",
    "ManagerStateError",
    "NamedError",
    "Restart",
    "RestartLimitExceeded",
    "Stage",
    "StopOrder",
    "StopReason",
    "StopTimeout",
    "Task",
    "TaskHandle",
    "TaskManager",
    "TaskState",
    "TaskStatus",
    "TaskType",
    "UnexpectedStop",
    "background",
    "errors_to_group",
    "run",
    "with_cancel",
    "with_deadline",
    "with_timeout",
    "with_value",
    "without_cancel",
]
