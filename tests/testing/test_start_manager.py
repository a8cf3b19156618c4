"""start_manager / RunningManager: a TaskManager in the background."""

from __future__ import annotations

import pytest
from gevent.event import Event

import greentask as gt
from greentask.testing import CallLog, FakeClock, FakeExecuteTask, FakeTask, RunningManager, settle, start_manager

pytestmark = pytest.mark.greentask


def _manager(log, *names, **kwargs):
    manager = gt.TaskManager(**kwargs)
    for name in names:
        manager.add_task(name, FakeTask.blocking(name, log=log))
    return manager


def test_wait_running_returns_once_every_execute_has_started():
    log = CallLog()
    manager = _manager(log, "a", "b")
    late = FakeExecuteTask.blocking("late", log=log)
    manager.add_execute_task("late", late)
    running = start_manager(manager)
    assert isinstance(running, RunningManager)
    running.wait_running(timeout=5)
    assert sorted(name for name, stage in log.calls if stage is gt.Stage.EXECUTE) == ["a", "b", "late"]
    assert manager.phase == "executing"
    assert not running.done
    running.stop()
    assert running.wait(timeout=5) == []


@pytest.mark.parametrize("kind", ["task", "execute"])
def test_wait_running_does_not_wait_for_a_task_dropped_by_its_handle(kind):
    log = CallLog()
    manager = _manager(log, "a")
    if kind == "task":
        handle = manager.add_task("dropped", FakeTask.blocking("dropped", log=log))
    else:
        handle = manager.add_execute_task("dropped", FakeExecuteTask.blocking("dropped", log=log))
    handle.stop()  # before run: never initialized or executed
    running = start_manager(manager)
    running.wait_running(timeout=5)
    assert log.stages("dropped") == []
    assert handle.done
    running.stop()
    assert running.wait(timeout=5) == []


def test_stop_then_wait_returns_no_errors_and_cleans_up_in_reverse():
    log = CallLog()
    manager = _manager(log, "a", "b")
    running = start_manager(manager)
    running.wait_running(timeout=5)
    running.stop()
    assert running.wait(timeout=5) == []
    assert running.done
    assert log.stages("a") == [gt.Stage.INITIALIZE, gt.Stage.EXECUTE, gt.Stage.CLEANUP]
    cleanups = [name for name, stage in log.calls if stage is gt.Stage.CLEANUP]
    assert cleanups == ["b", "a"]
    assert manager.stop_reason.kind == "stop"


def test_stop_before_run_has_begun_still_stops_the_manager():
    log = CallLog()
    manager = _manager(log, "a")
    running = start_manager(manager)
    cause = RuntimeError("early")
    running.stop(cause)
    assert running.wait(timeout=5) == []
    assert manager.stop_reason == gt.StopReason("stop", None, cause)
    # Stopped while initializing: the manager still executes and cleans up each task.
    assert log.stages("a") == [gt.Stage.INITIALIZE, gt.Stage.EXECUTE, gt.Stage.CLEANUP]


def test_stop_before_run_with_no_tasks():
    running = start_manager(gt.TaskManager())
    running.stop()
    assert running.wait(timeout=5) == []
    assert [event.kind for event in running.events] == ["executing", "cancelled", "done"]


def test_wait_returns_the_errors_of_a_failed_run():
    boom = ConnectionError("refused")
    manager = gt.TaskManager()
    manager.add_task("db", FakeTask("db", execute=boom))
    running = start_manager(manager)
    [error] = running.wait(timeout=5)
    assert (error.task_name, error.stage, error.error) == ("db", gt.Stage.EXECUTE, boom)


def test_wait_times_out_while_the_manager_runs():
    running = start_manager(_manager(CallLog(), "a"))
    with pytest.raises(TimeoutError, match=r"did not finish within 0\.01s \(phase 'executing'\)"):
        running.wait(timeout=0.01)
    running.stop()
    running.wait(timeout=5)


def test_wait_reraises_what_run_raised():
    manager = gt.TaskManager()
    manager.add_task("quit", FakeTask("quit", execute=SystemExit(3)))
    running = start_manager(manager)
    with pytest.raises(SystemExit):
        running.wait(timeout=5)


def test_wait_running_raises_when_an_initialize_fails():
    manager = gt.TaskManager()
    manager.add_task("db", FakeTask("db", initialize=OSError("no disk")))
    running = start_manager(manager)
    with pytest.raises(RuntimeError, match=r"finished before every execute started.*no disk"):
        running.wait_running(timeout=5)


def test_wait_running_times_out_while_an_initialize_blocks():
    clock = FakeClock()
    manager = gt.TaskManager()
    manager.add_task("slow", FakeTask("slow", initialize=lambda ctx: ctx.sleep(10), execute=lambda ctx: ctx.wait()))
    running = start_manager(manager, gt.background(clock))
    with pytest.raises(TimeoutError, match=r"did not start every execute within 0\.01s"):
        running.wait_running(timeout=0.01)
    clock.advance(10)
    running.wait_running(timeout=5)
    running.stop()
    assert running.wait(timeout=5) == []


def test_wait_running_counts_execute_tasks_added_while_running():
    log = CallLog()
    manager = _manager(log, "a")
    added = Event()

    def adder(ctx):
        manager.add_execute_task("child", FakeExecuteTask.blocking("child", log=log))
        added.set()
        ctx.wait()

    manager.add_execute_task("adder", adder)
    running = start_manager(manager)
    running.wait_running(timeout=5)
    assert added.wait(timeout=5)
    settle()
    assert [e.task_name for e in running.events if e.kind == "started"] == ["a", "adder", "child"]
    running.stop()
    assert running.wait(timeout=5) == []


def test_events_are_recorded_in_order():
    manager = gt.TaskManager()
    manager.add_task("only", FakeTask("only"), gt.TaskType.STOP_GROUP)
    running = start_manager(manager)
    assert running.wait(timeout=5) == []
    assert [event.kind for event in running.events] == [
        "initializing",
        "initialized",
        "executing",
        "started",
        "stopped",
        "cancelled",
        "cleaning_up",
        "cleaned_up",
        "done",
    ]


def test_context_manager_stops_and_waits():
    log = CallLog()
    manager = _manager(log, "a")
    with start_manager(manager) as running:
        running.wait_running(timeout=5)
    assert running.done
    assert log.stages("a")[-1] is gt.Stage.CLEANUP


def test_context_manager_does_not_hide_the_error_leaving_it():
    manager = gt.TaskManager()
    manager.add_task("quit", FakeTask("quit", execute=SystemExit(3)))
    with pytest.raises(KeyError), start_manager(manager) as running:
        raise KeyError("test failure")
    assert running.done


def test_context_manager_raises_what_run_raised():
    manager = gt.TaskManager()
    manager.add_task("quit", FakeTask("quit", execute=SystemExit(3)))
    with pytest.raises(SystemExit), start_manager(manager):
        pass


def test_a_manager_that_already_ran_is_rejected():
    manager = gt.TaskManager()
    running = start_manager(manager)
    running.stop()
    running.wait(timeout=5)
    with pytest.raises(gt.ManagerStateError, match="task manager has already shut down; will not run again"):
        start_manager(manager)


def test_a_running_manager_is_rejected():
    manager = gt.TaskManager()
    running = start_manager(manager)
    settle()
    with pytest.raises(gt.ManagerStateError, match="task manager is already running; will not run again"):
        start_manager(manager)
    running.stop()
    running.wait(timeout=5)


def test_bad_arguments_are_rejected():
    with pytest.raises(TypeError, match="manager must be a TaskManager"):
        start_manager(object())
    with pytest.raises(TypeError, match="ctx must be a greentask Context"):
        start_manager(gt.TaskManager(), ctx="ctx")
    running = start_manager(gt.TaskManager())
    with pytest.raises(TypeError, match="cause must be an exception or None"):
        running.stop("why")
    running.stop()
    running.wait(timeout=5)
    assert "RunningManager" in repr(running)


def _stubborn_manager(release):
    manager = gt.TaskManager()
    manager.add_execute_task("stubborn", lambda ctx: release.wait())  # ignores cancellation
    return manager


def test_context_manager_raises_when_the_manager_does_not_finish():
    release = Event()
    running = start_manager(_stubborn_manager(release))
    running.close_timeout = 0.01

    def leave_the_block():
        with running:
            running.wait_running(timeout=5)

    with pytest.raises(TimeoutError, match=r"did not finish within 0\.01s \(phase 'stopping'\)"):
        leave_the_block()
    release.set()
    assert running.wait(timeout=5) == []


def test_context_manager_logs_instead_of_hiding_the_error_leaving_it(caplog):
    release = Event()
    running = start_manager(_stubborn_manager(release))
    running.close_timeout = 0.01

    def fail_inside_the_block():
        with running:
            running.wait_running(timeout=5)
            raise KeyError("test failure")

    with pytest.raises(KeyError):
        fail_inside_the_block()
    assert "did not finish when its RunningManager closed" in caplog.text
    release.set()
    assert running.wait(timeout=5) == []
