"""SPEC §15, manager-level amendments: user code cannot break the manager, mistakes fail
where they are made, and names everywhere (greenlet names, ``ctx.task_name``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gevent
import gevent.util
import pytest
from gevent.event import Event
from greenlet import GreenletExit

import greentask as gt
from greentask import ExecuteTaskType, Stage, StopReason, TaskType
from greentask.testing import FakeClock, FakeExecuteTask, FakeTask, settle

INIT, E, C = Stage.INITIALIZE, Stage.EXECUTE, Stage.CLEANUP


def start(manager: gt.TaskManager, ctx: gt.Context | None = None) -> gevent.Greenlet[..., Any]:
    """Run the manager in a background greenlet and let it get going."""
    runner = gevent.spawn(manager.run, ctx)
    settle()
    return runner


def finish(runner: gevent.Greenlet[..., Any]) -> list[gt.NamedError]:
    """run()'s result; a run that hangs fails the test (and is not left behind)."""
    try:
        with gevent.Timeout(5):
            return runner.get()  # type: ignore[no-any-return]
    finally:
        if not runner.dead:
            runner.kill(timeout=1)


def _greentask_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "greentask"]


# -- 5. User code cannot break the manager -------------------------------------------


class CustomBaseError(BaseException):
    """A BaseException that is neither an Exception nor a cancellation."""


def _raise_cancelled() -> None:
    dead, cancel = gt.with_cancel(gt.background())
    cancel()
    dead.check()  # raises Cancelled


def _raise_greenlet_exit() -> None:
    raise GreenletExit


def _raise_custom() -> None:
    raise CustomBaseError("from a subscriber")


def _raise_value_error() -> None:
    raise ValueError("from a subscriber")


SUBSCRIBER_RAISES: dict[str, tuple[Callable[[], None], type[BaseException]]] = {
    "Cancelled": (_raise_cancelled, gt.Cancelled),
    "GreenletExit": (_raise_greenlet_exit, GreenletExit),
    "custom BaseException": (_raise_custom, CustomBaseError),
    "Exception": (_raise_value_error, ValueError),
}


@pytest.mark.parametrize("how", list(SUBSCRIBER_RAISES))
def test_a_subscriber_raising_on_every_event_is_logged_and_ignored(caplog: pytest.LogCaptureFixture, how: str) -> None:
    caplog.set_level(logging.DEBUG, logger="greentask")
    raise_it, raised_type = SUBSCRIBER_RAISES[how]
    events: list[gt.ManagerEvent] = []

    def broken(event: gt.ManagerEvent) -> None:
        raise_it()

    boom = ValueError("boom")
    gate = Event()

    def fail(ctx: gt.Context) -> None:
        gate.wait()
        raise boom

    other = FakeTask.blocking()
    failing = FakeTask(execute=fail)
    manager = gt.TaskManager(on_event=broken)
    manager.subscribe(events.append)  # after the broken one: it still gets everything
    manager.add_task("other", other)
    manager.add_task("failing", failing)
    manager.add_execute_task("job", FakeExecuteTask.blocking())
    runner = start(manager)
    assert manager.phase == "executing"
    assert all(s.error is None for s in manager.status())
    gate.set()  # a STRICT failure still shuts the manager down and run() returns
    errors = finish(runner)
    assert [(e.task_name, e.stage, e.error) for e in errors] == [("failing", E, boom)]
    assert manager.stop_reason == StopReason("policy", "failing", boom)
    assert other.cleanup_call_count == 1
    assert failing.cleanup_call_count == 1
    kinds = [e.kind for e in events]
    assert "cancelled" in kinds
    assert kinds[-1] == "done"
    assert kinds.count("cleaned_up") == 2
    assert all(s.error is None for s in manager.status() if s.name != "failing")
    messages = _greentask_messages(caplog)
    assert any("shutting down: task 'failing' failed in execute: ValueError('boom')" in m for m in messages)
    logged = [r.exc_info[1] for r in caplog.records if r.name == "greentask" and r.exc_info]
    assert any(isinstance(exc, raised_type) for exc in logged), "the subscriber's exception was not logged"


@pytest.mark.parametrize("how", list(SUBSCRIBER_RAISES))
def test_a_subscriber_raising_does_not_turn_a_clean_task_into_a_failure(how: str) -> None:
    raise_it, _ = SUBSCRIBER_RAISES[how]

    def broken(event: gt.ManagerEvent) -> None:
        raise_it()

    manager = gt.TaskManager(on_event=broken)
    task = FakeTask.blocking()
    manager.add_task("a", task)
    manager.add_task("group", FakeTask(), TaskType.STOP_GROUP)  # returns: the run ends cleanly
    with gevent.Timeout(5):
        assert manager.run() == []
    assert task.execute_call_count == 1
    assert task.cleanup_call_count == 1
    assert manager.stop_reason is not None
    assert manager.stop_reason.kind == "policy"
    assert manager.stop_reason.error is None


@pytest.mark.parametrize("fatal_type", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("on_kind", ["initialized", "started", "stopped", "cancelled"])
def test_keyboard_interrupt_or_system_exit_from_a_subscriber_shuts_down_in_order_and_is_reraised(
    fatal_type: type[BaseException], on_kind: str
) -> None:
    fatal = fatal_type("from a subscriber")
    raised: list[BaseException] = []

    def subscriber(event: gt.ManagerEvent) -> None:
        if event.kind == on_kind and not raised:
            raised.append(fatal)
            raise fatal

    a = FakeTask.blocking("a")
    b = FakeTask.blocking("b")
    manager = gt.TaskManager(on_event=subscriber)
    manager.add_task("a", a)
    manager.add_task("b", b)

    def returns_then_stops(ctx: gt.Context) -> None:
        gevent.idle()
        manager.stop()  # for "cancelled"; "stopped" is this task's own clean return

    manager.add_execute_task("stopper", returns_then_stops, ExecuteTaskType.ERROR)
    with gevent.Timeout(5), pytest.raises(fatal_type) as info:
        manager.run()
    assert info.value is fatal
    assert raised == [fatal]
    assert manager.phase == "done"
    for task in (a, b):
        assert task.cleanup_call_count == task.initialize_call_count  # every initialized one, once
    assert a.initialize_call_count == 1


class Unprintable(Exception):
    """An exception whose __repr__ and __str__ both raise."""

    def __repr__(self) -> str:
        raise RuntimeError("repr failed")

    def __str__(self) -> str:
        raise RuntimeError("str failed")


@pytest.mark.parametrize("stage", ["execute", "initialize", "cleanup"])
def test_an_exception_whose_repr_and_str_raise_is_recorded_logged_and_evented(
    caplog: pytest.LogCaptureFixture, stage: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="greentask")
    odd = Unprintable()
    events: list[gt.ManagerEvent] = []
    manager = gt.TaskManager(on_event=events.append)
    manager.add_task("other", FakeTask.blocking())
    bad = FakeTask.blocking()
    if stage == "execute":
        bad.execute_stub = odd
    elif stage == "initialize":
        bad.initialize_stub = odd
    else:
        bad.cleanup_stub = odd
        manager.add_task("group", FakeTask(), TaskType.STOP_GROUP)  # ends the run
    manager.add_task("bad", bad)
    with gevent.Timeout(5):
        errors = manager.run()
    assert [(e.task_name, e.stage.value, e.error) for e in errors] == [("bad", stage, odd)]
    assert {s.name: s.error for s in manager.status()}["bad"] is odd
    assert [e.error for e in events if e.kind == "failed"] == [odd]
    kinds = [e.kind for e in events]
    assert "cancelled" in kinds
    assert kinds[-1] == "done"
    assert bad.cleanup_call_count == 1
    # Every log record can be rendered (a placeholder stands for the broken text).
    messages = _greentask_messages(caplog)
    if stage != "cleanup":
        assert manager.stop_reason == StopReason("policy", "bad", odd)
        prefix = f"shutting down: task 'bad' failed in {stage}: "
        assert any(prefix in m for m in messages), messages
    str(errors[0])  # NamedError's text does not raise either


def test_gt_run_logs_an_unprintable_error_and_returns_1(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="greentask")
    odd = Unprintable()
    manager = gt.TaskManager()
    manager.add_task("other", FakeTask.blocking())
    manager.add_task("bad", FakeTask(execute=odd))
    with gevent.Timeout(5):
        assert gt.run(manager, signals=()) == 1
    records = [r for r in caplog.records if r.name == "greentask"]
    for record in records:
        record.getMessage()  # renders
    assert any(r.exc_info is not None and r.exc_info[1] is odd for r in records)
    assert any("task 'bad'" in r.getMessage() for r in records if r.levelno == logging.ERROR)


def test_a_subscriber_raising_on_the_event_of_an_unprintable_failure() -> None:
    """Both at once: the failure is still recorded and the run ends."""
    odd = Unprintable()

    def broken(event: gt.ManagerEvent) -> None:
        raise CustomBaseError(repr(event.kind))

    manager = gt.TaskManager(on_event=broken)
    manager.add_task("other", FakeTask.blocking())
    manager.add_task("bad", FakeTask(execute=odd))
    with gevent.Timeout(5):
        errors = manager.run()
    assert [(e.task_name, e.error) for e in errors] == [("bad", odd)]


# -- 6. Mistakes fail where they are made ---------------------------------------------


class Database:
    def initialize(self, ctx: gt.Context) -> None: ...

    def execute(self, ctx: gt.Context) -> None: ...

    def cleanup(self, ctx: gt.Context) -> None: ...


class Worker:
    def execute(self, ctx: gt.Context) -> None: ...


def test_add_task_refuses_a_class_instead_of_an_instance() -> None:
    manager = gt.TaskManager()
    with pytest.raises(TypeError) as info:
        manager.add_task("db", Database)  # type: ignore[arg-type]
    message = str(info.value)
    assert "'db'" in message
    assert "class" in message.lower()
    assert manager.status() == []


@pytest.mark.parametrize("cls", [Worker, Database])
def test_add_execute_task_refuses_a_class_instead_of_an_instance(cls: type) -> None:
    manager = gt.TaskManager()
    with pytest.raises(TypeError) as info:
        manager.add_execute_task("job", cls)
    message = str(info.value)
    assert "'job'" in message
    assert "class" in message.lower()
    assert manager.status() == []


def _async_stage_task(stage: str) -> object:
    class AsyncStage(Database):
        pass

    async def coroutine_stage(self: object, ctx: gt.Context) -> None: ...

    setattr(AsyncStage, stage, coroutine_stage)
    return AsyncStage()


COROUTINES = "greentask runs greenlets, not coroutines"


@pytest.mark.parametrize("stage", ["initialize", "execute", "cleanup"])
def test_add_task_refuses_an_async_def_stage(stage: str) -> None:
    manager = gt.TaskManager()
    with pytest.raises(TypeError) as info:
        manager.add_task("db", _async_stage_task(stage))  # type: ignore[arg-type]
    message = str(info.value)
    assert "'db'" in message
    assert COROUTINES in message
    assert manager.status() == []


async def _coroutine_function(ctx: gt.Context) -> None: ...


class AsyncWorker:
    async def execute(self, ctx: gt.Context) -> None: ...


@pytest.mark.parametrize(
    "task",
    [_coroutine_function, AsyncWorker(), _async_stage_task("execute")],
    ids=["async def function", "async def execute", "task with async def execute"],
)
def test_add_execute_task_refuses_a_coroutine_function(task: object) -> None:
    manager = gt.TaskManager()
    with pytest.raises(TypeError) as info:
        manager.add_execute_task("job", task)  # type: ignore[arg-type]
    message = str(info.value)
    assert "'job'" in message
    assert COROUTINES in message
    assert manager.status() == []


def test_the_same_object_added_twice_with_add_task_is_refused() -> None:
    manager = gt.TaskManager()
    task = FakeTask.blocking()
    manager.add_task("first", task)
    with pytest.raises(ValueError):
        manager.add_task("second", task)
    assert [s.name for s in manager.status()] == ["first"]
    # The refusal left the manager usable: the one task runs through its lifecycle once.
    runner = start(manager)
    manager.stop()
    assert finish(runner) == []
    assert (task.initialize_call_count, task.execute_call_count, task.cleanup_call_count) == (1, 1, 1)


def test_the_same_task_object_may_go_to_two_managers() -> None:
    """The rule is per manager (its initialize/cleanup would run twice on one object)."""
    task = FakeTask()
    gt.TaskManager().add_task("a", task)
    gt.TaskManager().add_task("a", task)


def test_execute_tasks_and_plain_functions_may_be_added_many_times() -> None:
    calls: list[str | None] = []

    def work(ctx: gt.Context) -> None:
        calls.append(ctx.task_name)
        ctx.wait()

    fake = FakeExecuteTask.blocking()
    full = FakeTask.blocking()  # used as an execute task: only its execute runs
    manager = gt.TaskManager()
    for i in range(4):
        manager.add_execute_task(f"worker-{i}", work)
        manager.add_execute_task(f"fake-{i}", fake)
        manager.add_execute_task(f"full-{i}", full)
    runner = start(manager)
    assert manager.phase == "executing"
    manager.add_execute_task("worker-4", work)  # at runtime too
    settle()
    assert sorted(c for c in calls if c is not None) == [f"worker-{i}" for i in range(5)]
    assert fake.execute_call_count == 4
    assert full.execute_call_count == 4
    manager.stop()
    assert finish(runner) == []
    assert full.initialize_call_count == 0
    assert full.cleanup_call_count == 0


# -- 7. Names everywhere ----------------------------------------------------------------


class Recorder:
    """Records (greenlet name, ctx.task_name) per stage."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[str, str | None]] = {}

    def _record(self, stage: str, ctx: gt.Context) -> None:
        self.seen[stage] = (str(getattr(gevent.getcurrent(), "name", "")), ctx.task_name)

    def initialize(self, ctx: gt.Context) -> None:
        self._record("initialize", ctx)

    def execute(self, ctx: gt.Context) -> None:
        self._record("execute", ctx)
        ctx.wait()

    def cleanup(self, ctx: gt.Context) -> None:
        self._record("cleanup", ctx)


@pytest.mark.parametrize("timeouts", [False, True], ids=["no timeouts", "initialize/cleanup timeouts"])
def test_ctx_task_name_in_every_stage(clock: FakeClock, timeouts: bool) -> None:
    options: dict[str, float] = {"initialize_timeout": 10.0, "cleanup_timeout": 10.0} if timeouts else {}
    manager = gt.TaskManager(**options)
    poller = Recorder()
    manager.add_task("poller-7", poller)
    job = Recorder()
    manager.add_execute_task("job-3", job)
    runner = start(manager, gt.background(clock))
    manager.stop()
    assert finish(runner) == []
    assert {stage: task_name for stage, (_, task_name) in poller.seen.items()} == {
        "initialize": "poller-7",
        "execute": "poller-7",
        "cleanup": "poller-7",
    }
    assert job.seen["execute"][1] == "job-3"


def test_ctx_task_name_is_none_outside_a_task() -> None:
    assert gt.background().task_name is None
    ctx, cancel = gt.with_cancel(gt.background())
    assert ctx.task_name is None
    cancel()


def test_every_greenlet_spawned_for_a_task_carries_its_name(clock: FakeClock) -> None:
    manager = gt.TaskManager(initialize_timeout=10.0, cleanup_timeout=10.0)
    poller = Recorder()
    manager.add_task("poller-7", poller)
    job = Recorder()
    manager.add_execute_task("job-3", job)
    late = Recorder()
    runner = start(manager, gt.background(clock))
    assert manager.phase == "executing"
    manager.add_execute_task("late-9", late)
    settle()
    run_info = "\n".join(gevent.util.format_run_info())
    for name in ("poller-7", "job-3", "late-9"):
        assert name in run_info, f"{name!r} does not show in gevent.util.format_run_info()"
    manager.stop()
    assert finish(runner) == []
    # initialize and cleanup ran in helper greenlets (under their timeouts), execute in
    # the manager's execute greenlets: every one named after the task.
    for stage in ("initialize", "execute", "cleanup"):
        greenlet_name, _ = poller.seen[stage]
        assert "poller-7" in greenlet_name, (stage, greenlet_name)
    assert "job-3" in job.seen["execute"][0]
    assert "late-9" in late.seen["execute"][0]


def test_the_greenlet_of_a_task_added_at_runtime_carries_its_name(clock: FakeClock) -> None:
    """A task added with add_task while executing (§9) is initialized in a greenlet of
    the manager: named after the task, like its execute."""
    manager = gt.TaskManager()
    manager.add_task("anchor", FakeTask.blocking())
    runner = start(manager, gt.background(clock))
    assert manager.phase == "executing"
    runtime = Recorder()
    manager.add_task("runtime-5", runtime)
    settle()
    manager.stop()
    assert finish(runner) == []
    assert set(runtime.seen) == {"initialize", "execute", "cleanup"}
    for stage in ("initialize", "execute"):
        greenlet_name, task_name = runtime.seen[stage]
        assert "runtime-5" in greenlet_name, (stage, greenlet_name)
        assert task_name == "runtime-5"
    assert runtime.seen["cleanup"][1] == "runtime-5"
