"""Hand-written fakes for scripting tasks in tests (goasync's counterfeiter fakes).

Each stage of a fake is driven by a *stub*: a callable ``stub(ctx)`` (its return value
is returned), an exception class (raised as a fresh instance per call), an exception
instance (raised as that same object every time, its traceback reset first so it does
not grow), or None (return at once). Every call is recorded: the contexts per stage,
and, with a shared `CallLog`, ``(name, Stage)`` across fakes in call order.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from ..context import Context
from ..errors import Stage

__all__ = ["CallLog", "FakeExecuteTask", "FakeTask", "Stub"]

#: What a stage of a fake does: a callable ``fn(ctx)``, an exception class or
#: instance to raise, or None to return at once.
Stub = Callable[[Context], object] | type[BaseException] | BaseException | None

_names = itertools.count(1)


def _check_stub(stage: str, stub: object) -> Any:
    if stub is None or isinstance(stub, BaseException):
        return stub
    if isinstance(stub, type) and issubclass(stub, BaseException):
        return stub
    if callable(stub):
        return stub
    msg = f"{stage} must be a callable, an exception class or instance, or None, got {stub!r}"
    raise TypeError(msg)


def _run_stub(stub: Any, ctx: Context) -> object:
    if stub is None:
        return None
    if isinstance(stub, BaseException):
        raise stub.with_traceback(None)
    if isinstance(stub, type) and issubclass(stub, BaseException):
        raise stub()
    return stub(ctx)


class CallLog:
    """Records calls across several fakes, to assert ordering between tasks.

    Example::

        log = CallLog()
        a, b = FakeTask("a", log=log), FakeTask("b", log=log)
        ...
        assert log.calls == [("a", Stage.INITIALIZE), ("b", Stage.INITIALIZE), ...]
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, Stage]] = []

    def record(self, name: str, stage: Stage) -> None:
        """Append ``(name, stage)``."""
        self.calls.append((name, stage))

    def stages(self, name: str) -> list[Stage]:
        """The stages called on the fake named ``name``, in order."""
        return [stage for called, stage in self.calls if called == name]

    def clear(self) -> None:
        """Forget every recorded call."""
        self.calls.clear()

    def __repr__(self) -> str:
        return f"CallLog({self.calls!r})"


class _StubbedStage:
    """One scripted stage: its stub, the contexts it was called with."""

    __slots__ = ("calls", "stage", "stub")

    def __init__(self, stage: Stage, stub: object) -> None:
        self.stage = stage
        self.stub = _check_stub(stage.value, stub)
        self.calls: list[Context] = []


class FakeExecuteTask:
    """A scripted execute-only task (`greentask.ExecuteTask`).

    Args:
        name: used in the `CallLog` (default ``fake-N``).
        execute: the stub for ``execute`` (see the module docstring).
        log: a shared `CallLog`.
    """

    def __init__(self, name: str | None = None, *, execute: Stub = None, log: CallLog | None = None) -> None:
        if name is not None and not isinstance(name, str):
            msg = f"name must be a string or None, got {name!r}"
            raise TypeError(msg)
        if log is not None and not isinstance(log, CallLog):
            msg = f"log must be a CallLog or None, got {log!r}"
            raise TypeError(msg)
        self.name = name if name is not None else f"fake-{next(_names)}"
        self.log = log
        self._execute = _StubbedStage(Stage.EXECUTE, execute)

    def _call(self, stage: _StubbedStage, ctx: Context) -> object:
        stage.calls.append(ctx)
        if self.log is not None:
            self.log.record(self.name, stage.stage)
        return _run_stub(stage.stub, ctx)

    def execute(self, ctx: Context) -> object:
        """Record the call, then run the execute stub."""
        return self._call(self._execute, ctx)

    @property
    def execute_stub(self) -> Stub:
        """The execute stub; assign to change it."""
        return self._execute.stub  # type: ignore[no-any-return]

    @execute_stub.setter
    def execute_stub(self, stub: Stub) -> None:
        self._execute.stub = _check_stub("execute", stub)

    @property
    def execute_calls(self) -> list[Context]:
        """The contexts execute was called with, in order."""
        return self._execute.calls

    @property
    def execute_call_count(self) -> int:
        """How many times execute was called."""
        return len(self._execute.calls)

    @classmethod
    def blocking(cls, name: str | None = None, *, log: CallLog | None = None) -> FakeExecuteTask:
        """A fake whose execute waits until its context is cancelled, then returns."""
        return cls(name, execute=_wait_for_cancel, log=log)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class FakeTask(FakeExecuteTask):
    """A scripted task with ``initialize``/``execute``/``cleanup`` (`greentask.Task`).

    Args:
        name: used in the `CallLog` (default ``fake-N``).
        initialize, execute, cleanup: the stubs (see the module docstring).
        log: a shared `CallLog`.

    Example::

        db = FakeTask("db", initialize=ConnectionError("refused"))
        manager.add_task("db", db)
        [error] = manager.run()
        assert db.cleanup_call_count == 1
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        initialize: Stub = None,
        execute: Stub = None,
        cleanup: Stub = None,
        log: CallLog | None = None,
    ) -> None:
        super().__init__(name, execute=execute, log=log)
        self._initialize = _StubbedStage(Stage.INITIALIZE, initialize)
        self._cleanup = _StubbedStage(Stage.CLEANUP, cleanup)

    def initialize(self, ctx: Context) -> object:
        """Record the call, then run the initialize stub."""
        return self._call(self._initialize, ctx)

    def cleanup(self, ctx: Context) -> object:
        """Record the call, then run the cleanup stub."""
        return self._call(self._cleanup, ctx)

    @property
    def initialize_stub(self) -> Stub:
        """The initialize stub; assign to change it."""
        return self._initialize.stub  # type: ignore[no-any-return]

    @initialize_stub.setter
    def initialize_stub(self, stub: Stub) -> None:
        self._initialize.stub = _check_stub("initialize", stub)

    @property
    def cleanup_stub(self) -> Stub:
        """The cleanup stub; assign to change it."""
        return self._cleanup.stub  # type: ignore[no-any-return]

    @cleanup_stub.setter
    def cleanup_stub(self, stub: Stub) -> None:
        self._cleanup.stub = _check_stub("cleanup", stub)

    @property
    def initialize_calls(self) -> list[Context]:
        """The contexts initialize was called with, in order."""
        return self._initialize.calls

    @property
    def initialize_call_count(self) -> int:
        """How many times initialize was called."""
        return len(self._initialize.calls)

    @property
    def cleanup_calls(self) -> list[Context]:
        """The contexts cleanup was called with, in order."""
        return self._cleanup.calls

    @property
    def cleanup_call_count(self) -> int:
        """How many times cleanup was called."""
        return len(self._cleanup.calls)

    @classmethod
    def blocking(cls, name: str | None = None, *, log: CallLog | None = None) -> FakeTask:
        """A fake whose execute waits until its context is cancelled, then returns."""
        return cls(name, execute=_wait_for_cancel, log=log)


def _wait_for_cancel(ctx: Context) -> None:
    ctx.wait()
