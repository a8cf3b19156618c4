"""greentask.testing fakes: FakeTask, FakeExecuteTask and CallLog."""

from __future__ import annotations

import gevent
import pytest

import greentask as gt
from greentask import Stage
from greentask.testing import CallLog, FakeExecuteTask, FakeTask, settle

INIT, E, C = Stage.INITIALIZE, Stage.EXECUTE, Stage.CLEANUP


def ctx() -> gt.Context:
    return gt.background()


# -- stubs --------------------------------------------------------------------------


def test_no_stub_returns_none_and_records_the_call() -> None:
    fake = FakeTask()
    context = ctx()
    assert fake.initialize(context) is None
    assert fake.execute(context) is None
    assert fake.cleanup(context) is None
    assert fake.initialize_calls == [context]
    assert fake.execute_calls == [context]
    assert fake.cleanup_calls == [context]
    assert (fake.initialize_call_count, fake.execute_call_count, fake.cleanup_call_count) == (1, 1, 1)


def test_callable_stub_gets_the_ctx_and_its_value_is_returned() -> None:
    seen: list[gt.Context] = []

    def stub(context: gt.Context) -> str:
        seen.append(context)
        return "value"

    fake = FakeTask(initialize=stub, execute=stub, cleanup=stub)
    context = ctx()
    assert fake.initialize(context) == "value"
    assert fake.execute(context) == "value"
    assert fake.cleanup(context) == "value"
    assert seen == [context, context, context]


def test_exception_class_stub_raises_a_fresh_instance_each_call() -> None:
    fake = FakeTask(execute=ValueError)
    raised = []
    for _ in range(2):
        with pytest.raises(ValueError) as info:
            fake.execute(ctx())
        raised.append(info.value)
    assert raised[0] is not raised[1]
    assert fake.execute_call_count == 2


def test_exception_instance_stub_raises_the_same_object_without_growing_its_traceback() -> None:
    boom = ConnectionError("refused")
    fake = FakeExecuteTask(execute=boom)
    depths = []
    for _ in range(5):
        with pytest.raises(ConnectionError) as info:
            fake.execute(ctx())
        assert info.value is boom
        depth = 0
        tb = boom.__traceback__
        while tb is not None:
            depth += 1
            tb = tb.tb_next
        depths.append(depth)
    assert len(set(depths)) == 1


def test_base_exception_stubs() -> None:
    fake = FakeTask(execute=KeyboardInterrupt, cleanup=gt.Cancelled("stop"))
    with pytest.raises(KeyboardInterrupt):
        fake.execute(ctx())
    with pytest.raises(gt.Cancelled, match="stop"):
        fake.cleanup(ctx())


def test_stubs_can_be_replaced_later() -> None:
    fake = FakeTask()
    assert fake.initialize_stub is None
    assert fake.execute_stub is None
    assert fake.cleanup_stub is None
    fake.execute_stub = ValueError
    fake.initialize_stub = lambda context: "init"
    boom = KeyError("k")
    fake.cleanup_stub = boom
    assert fake.execute_stub is ValueError
    assert fake.cleanup_stub is boom
    assert fake.initialize(ctx()) == "init"
    with pytest.raises(ValueError):
        fake.execute(ctx())
    with pytest.raises(KeyError):
        fake.cleanup(ctx())
    fake.execute_stub = None
    assert fake.execute(ctx()) is None
    assert fake.execute_call_count == 2


@pytest.mark.parametrize("stage", ["initialize", "execute", "cleanup"])
@pytest.mark.parametrize("bad", [42, "boom", 3.5])
def test_bad_stub_is_refused_naming_the_stage(stage: str, bad: object) -> None:
    with pytest.raises(TypeError) as info:
        FakeTask(**{stage: bad})  # type: ignore[arg-type]
    assert str(info.value) == f"{stage} must be a callable, an exception class or instance, or None, got {bad!r}"
    fake = FakeTask()
    with pytest.raises(TypeError, match=f"^{stage} must be"):
        setattr(fake, f"{stage}_stub", bad)


def test_bad_execute_stub_on_an_execute_task() -> None:
    with pytest.raises(TypeError, match=r"^execute must be"):
        FakeExecuteTask(execute=3)  # type: ignore[arg-type]
    fake = FakeExecuteTask()
    with pytest.raises(TypeError, match=r"^execute must be"):
        fake.execute_stub = 3  # type: ignore[assignment]


# -- names and logs -----------------------------------------------------------------


def test_default_names_are_unique() -> None:
    names = {FakeTask().name for _ in range(3)} | {FakeExecuteTask().name for _ in range(3)}
    assert len(names) == 6
    assert all(name.startswith("fake-") for name in names)
    assert FakeTask("db").name == "db"
    assert repr(FakeTask("db")) == "<FakeTask 'db'>"
    assert repr(FakeExecuteTask("job")) == "<FakeExecuteTask 'job'>"


def test_bad_name_and_log() -> None:
    with pytest.raises(TypeError, match=r"^name must be a string or None, got 5$"):
        FakeTask(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^log must be a CallLog or None, got \[\]$"):
        FakeExecuteTask(log=[])  # type: ignore[arg-type]


def test_call_log_records_calls_across_fakes_in_order() -> None:
    log = CallLog()
    a = FakeTask("a", log=log)
    b = FakeExecuteTask("b", log=log, execute=ValueError)
    context = ctx()
    a.initialize(context)
    with pytest.raises(ValueError):
        b.execute(context)
    a.execute(context)
    a.cleanup(context)
    assert log.calls == [("a", INIT), ("b", E), ("a", E), ("a", C)]
    assert log.stages("a") == [INIT, E, C]
    assert log.stages("b") == [E]
    assert log.stages("nobody") == []
    assert repr(log).startswith("CallLog([('a', ")
    log.clear()
    assert log.calls == []
    log.record("manual", C)
    assert log.calls == [("manual", C)]


def test_the_call_is_recorded_before_the_stub_runs() -> None:
    log = CallLog()
    seen: list[list[tuple[str, Stage]]] = []
    fake = FakeTask("a", log=log, execute=lambda context: seen.append(list(log.calls)))
    fake.execute(ctx())
    assert seen == [[("a", E)]]
    assert fake.execute_call_count == 1


# -- blocking() and the protocols ---------------------------------------------------


@pytest.mark.parametrize("cls", [FakeTask, FakeExecuteTask])
def test_blocking_waits_for_cancellation(cls: type[FakeExecuteTask]) -> None:
    log = CallLog()
    fake = cls.blocking("waiter", log=log)
    assert isinstance(fake, cls)
    assert fake.name == "waiter"
    context, cancel = gt.with_cancel(gt.background())
    worker = gevent.spawn(fake.execute, context)
    settle()
    assert not worker.dead
    assert log.calls == [("waiter", E)]
    cancel()
    with gevent.Timeout(5):
        assert worker.get() is None


def test_fakes_satisfy_the_task_protocols() -> None:
    assert isinstance(FakeTask(), gt.Task)
    assert isinstance(FakeTask(), gt.ExecuteTask)
    assert isinstance(FakeExecuteTask(), gt.ExecuteTask)
    assert not isinstance(FakeExecuteTask(), gt.Task)


def test_fakes_drive_a_manager() -> None:
    log = CallLog()
    db = FakeTask("db", initialize=ConnectionError("refused"), log=log)
    manager = gt.TaskManager()
    manager.add_task("db", db)
    with gevent.Timeout(5):
        [error] = manager.run()
    assert isinstance(error.error, ConnectionError)
    assert db.cleanup_call_count == 1
    assert log.calls == [("db", INIT), ("db", C)]
