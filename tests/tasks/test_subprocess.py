"""Subprocess: real child processes (``sys.executable -c ...``) and real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import gevent
import pytest
from gevent.fileobject import FileObjectPosix

import greentask as gt
from greentask.tasks import Subprocess
from greentask.testing import FakeClock, FakeTask, eventually

# -- helpers ------------------------------------------------------------------


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


class Pipe:
    """An OS pipe: the child writes to `fd`, the test reads lines cooperatively."""

    def __init__(self) -> None:
        read_fd, self.fd = os.pipe()
        self._reader = FileObjectPosix(read_fd, "rb")

    def readline(self) -> str:
        return self._reader.readline().decode().strip()

    def close(self) -> None:
        os.close(self.fd)
        self._reader.close()


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


def assert_reaped(pid: int) -> None:
    """No zombie: the child was waited for, and its /proc entry is gone."""
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    assert not Path(f"/proc/{pid}").exists()


# A child that reports "ready <pid>" on fd 1 once its handler for `sig` is installed;
# on that signal it writes the signal's name to `marker` and exits 0.
STOPPABLE = """
    import os, signal, sys, time
    marker, sig = sys.argv[1], signal.Signals[sys.argv[2]]
    def on_signal(signum, frame):
        with open(marker, "w") as f:
            f.write(signal.Signals(signum).name)
        sys.exit(0)
    signal.signal(sig, on_signal)
    print("ready", os.getpid(), flush=True)
    while True:
        time.sleep(60)
"""

# A child that reports each SIGTERM on fd 1 but keeps running.
STUBBORN = """
    import os, signal, sys, time
    signal.signal(signal.SIGTERM, lambda *a: print("got SIGTERM", flush=True))
    print("ready", os.getpid(), flush=True)
    while True:
        time.sleep(60)
"""


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


def test_command_not_found_fails_and_leaves_no_state(tmp_path: Path) -> None:
    task = Subprocess([str(tmp_path / "no-such-command")])
    with pytest.raises(FileNotFoundError):
        task.execute(gt.background())
    assert task.pid is None


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
