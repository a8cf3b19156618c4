"""Subprocess: real child processes (``sys.executable -c ...``) and real signals."""

from __future__ import annotations

import errno
import gc
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import gevent
import pytest
from _children import STOPPABLE, STUBBORN, Pipe, assert_reaped, python
from _taskctx import task_context

import greentask as gt
from greentask.tasks import Subprocess
from greentask.testing import FakeClock, FakeTask, eventually

# -- helpers ------------------------------------------------------------------


@pytest.fixture
def pipe() -> Iterator[Pipe]:
    p = Pipe()
    yield p
    p.close()


def raised_by(fn: Callable[[gt.Context], object], ctx: gt.Context) -> Exception | None:
    """Run ``fn(ctx)``; return what it raised (so the hub does not print it)."""
    try:
        fn(ctx)
    except Exception as exc:
        return exc
    return None


# -- exit codes -------------------------------------------------------------------


def test_exit_zero_is_a_clean_return() -> None:
    task = Subprocess(python("import sys; sys.exit(0)"))
    with gevent.Timeout(10):
        assert task.execute(gt.background()) is None
    assert task.returncode == 0
    assert task.pid is None


def test_nonzero_exit_fails_naming_the_code_and_the_command() -> None:
    args = python("import sys; sys.exit(3)")
    task = Subprocess(args)
    with gevent.Timeout(10), pytest.raises(subprocess.CalledProcessError) as info:
        task.execute(gt.background())
    assert info.value.returncode == 3
    assert info.value.cmd == args
    assert "exit status 3" in str(info.value)
    assert repr(args) in str(info.value)
    assert task.returncode == 3


def test_death_by_signal_fails_naming_the_signal() -> None:
    task = Subprocess(python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    with gevent.Timeout(10), pytest.raises(subprocess.CalledProcessError) as info:
        task.execute(gt.background())
    assert info.value.returncode == -signal.SIGKILL
    assert "SIGKILL" in str(info.value)


def test_a_program_that_cannot_be_found_fails_at_construction_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-command"
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(f'program {str(missing)!r} not found')}$") as info:
        Subprocess([str(missing)])
    assert info.value.errno == errno.ENOENT
    with pytest.raises(FileNotFoundError, match=r"^program 'no-such-command-greentask' not found on PATH"):
        Subprocess(["no-such-command-greentask", "--flag"])
    with pytest.raises(FileNotFoundError, match="no-such-command' not found"):
        Subprocess(missing)  # a path alone
    with pytest.raises(FileNotFoundError, match=re.escape(f"program {str(missing)!r} not found")):
        Subprocess(["anything"], executable=str(missing))  # executable= is what runs


def test_the_program_is_looked_up_where_the_child_will_look(tmp_path: Path) -> None:
    tool = tmp_path / "bin" / "greentask-tool"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o755)
    with pytest.raises(FileNotFoundError, match="not found on PATH"):
        Subprocess(["greentask-tool"])  # not on this process's PATH
    task = Subprocess(["greentask-tool"], env={"PATH": str(tool.parent)})  # on the child's
    with gevent.Timeout(10):
        task.execute(gt.background())
    assert task.returncode == 0
    with pytest.raises(FileNotFoundError, match="relative to the current directory"):
        Subprocess(["./greentask-tool"])
    with pytest.raises(FileNotFoundError, match=re.escape(f"relative to cwd {str(tmp_path)!r}")):
        Subprocess(["./greentask-tool"], cwd=tmp_path)
    assert Subprocess(["./greentask-tool"], cwd=tool.parent).args == ["./greentask-tool"]
    assert Subprocess("no-such-command-greentask || true", shell=True).args  # the shell's business


@pytest.mark.parametrize("command", ["ls -l", b"ls -l", "true"])
def test_a_string_command_without_shell_is_refused(command: str | bytes) -> None:
    with pytest.raises(TypeError, match="a string command needs shell=True") as info:
        Subprocess(command)
    assert repr(command) in str(info.value)
    assert Subprocess(command, shell=True).args == command


def test_a_cancelled_context_starts_no_process(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    task = Subprocess(python(f"open({str(marker)!r}, 'w').close()"))
    ctx, cancel = gt.with_cancel(gt.background())
    cancel()
    task.execute(ctx)
    assert task.returncode is None
    assert not marker.exists()


# -- stopping -----------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_cancel_sends_stop_signal_and_any_exit_after_it_is_clean(
    sig: signal.Signals, pipe: Pipe, tmp_path: Path
) -> None:
    marker = tmp_path / "signal"
    task = Subprocess([*python(STOPPABLE), str(marker), sig.name], stop_signal=sig, stdout=pipe.fd)
    ctx, cancel = gt.with_cancel(gt.background(FakeClock()))
    with gevent.Timeout(10):
        runner = gevent.spawn(task.execute, ctx)
        word, pid = pipe.readline().split()
        assert word == "ready"
        assert task.pid == int(pid)
        cancel()
        runner.get()
    assert marker.read_text() == sig.name
    assert task.returncode == 0
    assert task.pid is None
    assert_reaped(int(pid))


def test_nonzero_exit_after_the_stop_signal_is_clean(pipe: Pipe) -> None:
    # No handler: SIGTERM kills the child (returncode -15), which is a clean stop now.
    code = "import os, time; print('ready', os.getpid(), flush=True); time.sleep(60)"
    task = Subprocess(python(code), stdout=pipe.fd)
    ctx, cancel = gt.with_cancel(gt.background(FakeClock()))
    with gevent.Timeout(10):
        runner = gevent.spawn(task.execute, ctx)
        assert pipe.readline().startswith("ready")
        cancel()
        assert runner.get() is None
    assert task.returncode == -signal.SIGTERM


def test_child_ignoring_the_stop_signal_is_killed_after_stop_timeout(pipe: Pipe) -> None:
    clock = FakeClock()
    task = Subprocess(python(STUBBORN), stop_timeout=5, stdout=pipe.fd)
    ctx, cancel = gt.with_cancel(gt.background(clock))
    with gevent.Timeout(10):
        runner = gevent.spawn(raised_by, task.execute, ctx)
        _, pid = pipe.readline().split()
        cancel()
        assert pipe.readline() == "got SIGTERM"  # it received the signal, and lives on
        clock.advance(4.9)
        assert not runner.dead
        assert Path(f"/proc/{pid}").exists()
        clock.advance(0.1)
        error = runner.get()
    assert isinstance(error, gt.StopTimeout)
    assert f"(pid {pid}) did not exit within 5.0s of SIGTERM; killed with SIGKILL" in str(error)
    assert task.returncode == -signal.SIGKILL
    assert_reaped(int(pid))


def test_killed_execute_kills_and_reaps_the_child(pipe: Pipe) -> None:
    task = Subprocess(python(STUBBORN), stdout=pipe.fd)
    with gevent.Timeout(10):
        runner = gevent.spawn(task.execute, gt.background())
        _, pid = pipe.readline().split()
        runner.kill()
    assert task.returncode == -signal.SIGKILL
    assert task.pid is None
    assert_reaped(int(pid))


def test_stop_signal_reaches_the_whole_process_group_with_start_new_session(pipe: Pipe, tmp_path: Path) -> None:
    marker = tmp_path / "grandchild"
    leader = f"""
        import signal, subprocess, sys
        grandchild = subprocess.Popen([sys.executable, "-c", {textwrap.dedent(STOPPABLE)!r},
                                       {str(marker)!r}, "SIGTERM"], stdout=subprocess.PIPE)
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(grandchild.wait()))
        grandchild.stdout.readline()  # the grandchild is ready
        print("ready", flush=True)
        signal.pause()
    """
    task = Subprocess(python(leader), start_new_session=True, stdout=pipe.fd)
    ctx, cancel = gt.with_cancel(gt.background(FakeClock()))
    with gevent.Timeout(10):
        runner = gevent.spawn(task.execute, ctx)
        assert pipe.readline() == "ready"  # the leader and its child are ready
        cancel()
        runner.get()
    assert marker.read_text() == "SIGTERM"
    assert task.returncode == 0


# -- the stop budget (SPEC §15) ------------------------------------------------------


@pytest.mark.parametrize(
    ("own", "manager", "killed_at"),
    [
        (10.0, 10.0, 9.0),  # equal: SIGKILL a margin before the manager's kill
        (30.0, 10.0, 9.0),  # larger: the manager's budget wins
        (10.0, 30.0, 10.0),  # smaller: its own applies
        (10.0, None, 10.0),  # no manager deadline
        (10.0, 5.0, 4.5),  # the margin: a tenth of the budget
    ],
)
def test_a_child_ignoring_the_stop_signal_is_killed_within_the_stop_budget(
    pipe: Pipe, own: float, manager: float | None, killed_at: float
) -> None:
    clock = FakeClock()
    ctx, stop = task_context(clock, "worker")
    task = Subprocess(python(STUBBORN), stop_timeout=own, stdout=pipe.fd)
    with gevent.Timeout(10):
        runner = gevent.spawn(raised_by, task.execute, ctx)
        _, pid = pipe.readline().split()
        stop(manager)
        assert pipe.readline() == "got SIGTERM"
        clock.advance(round(killed_at - 0.01, 2))
        assert not runner.dead
        assert task.returncode is None
        clock.advance(0.01)
        error = runner.get()
    assert isinstance(error, gt.StopTimeout)
    assert f"did not exit within {killed_at}s of SIGTERM; killed with SIGKILL" in str(error)
    assert task.returncode == -signal.SIGKILL
    assert_reaped(int(pid))


def test_in_a_manager_the_default_stop_timeout_leaves_the_manager_a_margin(pipe: Pipe) -> None:
    clock = FakeClock()
    manager = gt.TaskManager(stop_timeout=10)
    task = Subprocess(python(STUBBORN), stdout=pipe.fd)  # stop_timeout=10.0, like the manager's
    manager.add_task("worker", task)
    with gevent.Timeout(10):
        run = gevent.spawn(manager.run, gt.background(clock))
        _, pid = pipe.readline().split()
        manager.stop()
        assert pipe.readline() == "got SIGTERM"
        clock.advance(9.0)
        [error] = run.get()
    assert (error.task_name, error.stage) == ("worker", gt.Stage.EXECUTE)
    assert "did not exit within 9.0s of SIGTERM; killed with SIGKILL" in str(error.error)  # its own, not the manager's
    assert_reaped(int(pid))


# -- nothing outlives the task (SPEC §15) ------------------------------------------------


def test_a_kill_during_the_reap_does_not_leave_a_zombie(pipe: Pipe) -> None:
    task = Subprocess(python(STUBBORN), stdout=pipe.fd)
    with gevent.Timeout(10):
        runner = gevent.spawn(task.execute, gt.background())
        _, pid = pipe.readline().split()
        runner.kill(block=False)  # the first kill: SIGKILL, then it waits to reap
        gevent.idle()
        runner.kill(block=False)  # a second one, while it reaps
        runner.join()
    assert isinstance(runner.exception, gevent.GreenletExit) or runner.successful()
    assert task.returncode == -signal.SIGKILL
    assert_reaped(int(pid))


def test_reader_greenlets_carry_the_task_name_and_end_with_it() -> None:
    ctx, _stop = task_context(FakeClock(), "worker")
    task = Subprocess(python(STUBBORN), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with gevent.Timeout(10):
        runner = gevent.spawn(task.execute, ctx)
        eventually(lambda: task.process is not None)
        process = task.process
        readers = [
            g
            for g in gc.get_objects()
            if isinstance(g, gevent.Greenlet) and g.args and g.args[0] in (process.stdout, process.stderr)
        ]
        assert [g.name for g in readers] == ["worker", "worker"]
        runner.kill()
    assert all(g.dead for g in readers)


# -- output -------------------------------------------------------------------------


def test_output_is_captured_with_pipe() -> None:
    code = "import sys; print('hello'); print('oops', file=sys.stderr)"
    task = Subprocess(python(code), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with gevent.Timeout(10):
        task.execute(gt.background())
    assert task.stdout == b"hello\n"
    assert task.stderr == b"oops\n"


def test_large_output_does_not_block_the_child() -> None:
    size = 1 << 20  # far more than a pipe buffer
    task = Subprocess(python(f"import sys; sys.stdout.write('x' * {size})"), stdout=subprocess.PIPE, text=True)
    with gevent.Timeout(10):
        task.execute(gt.background())
    assert task.stdout == "x" * size
    assert task.stderr is None


def test_captured_output_is_attached_to_the_failure() -> None:
    code = "import sys; print('partial'); sys.exit(2)"
    task = Subprocess(python(code), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    with gevent.Timeout(10), pytest.raises(subprocess.CalledProcessError) as info:
        task.execute(gt.background())
    assert info.value.stdout == b"partial\n"
    assert task.stdout == b"partial\n"


# -- inside a TaskManager -----------------------------------------------------------


def test_subprocess_in_a_task_manager_is_stopped_by_the_stop_signal(pipe: Pipe, tmp_path: Path) -> None:
    marker = tmp_path / "signal"
    manager = gt.TaskManager(stop_timeout=30)
    child = Subprocess([*python(STOPPABLE), str(marker), "SIGTERM"], stdout=pipe.fd)
    manager.add_task("child", child)
    manager.add_task("other", FakeTask.blocking("other"))
    with gevent.Timeout(10):
        run = gevent.spawn(manager.run)
        _, pid = pipe.readline().split()
        manager.stop()
        assert run.get() == []
    assert marker.read_text() == "SIGTERM"
    assert_reaped(int(pid))


def test_subprocess_failing_in_a_task_manager_is_recorded() -> None:
    manager = gt.TaskManager()
    manager.add_task("child", Subprocess(python("import sys; sys.exit(7)")))
    manager.add_task("other", FakeTask.blocking("other"))
    with gevent.Timeout(10):
        [error] = manager.run()
    assert (error.task_name, error.stage) == ("child", gt.Stage.EXECUTE)
    assert isinstance(error.error, subprocess.CalledProcessError)
    assert error.error.returncode == 7
    assert manager.stop_reason is not None
    assert manager.stop_reason.task_name == "child"


def test_runs_again_after_returning() -> None:
    task = Subprocess(python("print('run')"), stdout=subprocess.PIPE)
    with gevent.Timeout(10):
        task.execute(gt.background())
        task.execute(gt.background())
    assert task.stdout == b"run\n"
    assert task.returncode == 0


# -- arguments ------------------------------------------------------------------------


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="args must not be empty"):
        Subprocess([])
    with pytest.raises(TypeError, match="args must be a string"):
        Subprocess(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="args must hold strings"):
        Subprocess(["echo", 5])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="stop_signal must be a signal number"):
        Subprocess(["true"], stop_signal="SIGTERM")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stop_signal must be a valid signal number"):
        Subprocess(["true"], stop_signal=999)
    with pytest.raises(ValueError, match="stop_timeout must be a non-negative"):
        Subprocess(["true"], stop_timeout=-1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'stdout_file'"):
        Subprocess(["true"], stdout_file=None)


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie no longer runs anything)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_its_children_are_not_left_behind_as_orphans_by_default(tmp_path: Path) -> None:
    marker = tmp_path / "grandchild.pid"
    script = textwrap.dedent(
        f"""
        import subprocess, sys, time
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(marker)!r}, "w").write(str(p.pid))
        time.sleep(60)
        """
    )
    task = Subprocess([sys.executable, "-c", script], stop_timeout=5)
    ctx, cancel = gt.with_cancel(gt.background())
    runner = gevent.spawn(task.execute, ctx)
    eventually(lambda: marker.exists() and marker.read_text() != "", timeout=10)
    grandchild = int(marker.read_text())
    assert _running(grandchild)
    cancel()
    with gevent.Timeout(10):
        runner.get()
    eventually(lambda: not _running(grandchild), timeout=10)
