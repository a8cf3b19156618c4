"""The command line: ``python -m greentask [options] module:attr`` and the ``greentask`` script.

Every test runs a real subprocess (the CLI monkey-patches, which must not happen in
the pytest process), reads its output line by line with a deadline, and checks the
exit code.
"""

from __future__ import annotations

import re
import signal
import sys
import textwrap
from pathlib import Path

import pytest
from _proc import Proc

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path = REPO) -> Proc:
    return Proc([sys.executable, "-m", "greentask", *args], cwd)


APP = textwrap.dedent(
    """
    from gevent import monkey

    PATCHED_AT_IMPORT = monkey.is_module_patched("socket")

    import logging

    import gevent
    import gevent.event
    import greentask as gt


    def build():
        manager = gt.TaskManager(name="app")

        def serve(ctx):
            print(f"ready patched={PATCHED_AT_IMPORT}", flush=True)
            ctx.wait()
            print(f"stopping, cause={ctx.cause!r}", flush=True)

        manager.add_execute_task("serve", serve)
        return manager


    manager = build()


    def build_stubborn():
        manager = gt.TaskManager(name="stubborn")

        def stubborn(ctx):
            print("ready", flush=True)
            gevent.event.Event().wait()  # ignores cancellation

        manager.add_execute_task("stubborn", stubborn)
        return manager


    def build_nothing():
        return 42


    def build_raises():
        raise RuntimeError("factory trouble")


    not_callable = "just a string"

    def already_ran():
        ran = gt.TaskManager(name="ran")
        ran.add_execute_task("once", lambda ctx: None, gt.ExecuteTaskType.ERROR)
        gevent.spawn_later(0, ran.stop)
        logging.disable(logging.CRITICAL)  # its log lines are not what the test reads
        try:
            ran.run()
        finally:
            logging.disable(logging.NOTSET)
        return ran
    """
)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "tmpmod.py").write_text(APP)
    (tmp_path / "brokenmod.py").write_text("raise ValueError('module trouble')\n")
    (tmp_path / "needsdep.py").write_text("import greentask_no_such_dependency\n")
    return tmp_path


# -- good paths ------------------------------------------------------------------------


def test_factory_runs_patched_and_sigterm_exits_0(app_dir: Path) -> None:
    proc = cli("tmpmod:build", cwd=app_dir)
    proc.expect(r"^ready patched=True$")  # patched before the module was imported
    proc.signal(signal.SIGTERM)
    assert proc.finish() == 0, proc.output()
    proc.expect(r"received SIGTERM, shutting down gracefully \(send again to force\)")
    proc.expect(r"^stopping, cause=SignalReceived\('received SIGTERM'\)$")
    proc.expect(r"INFO greentask: app: stopped cleanly")


def test_manager_attribute_with_no_patch_and_sigint_exits_0(app_dir: Path) -> None:
    proc = cli("--no-patch", "tmpmod:manager", cwd=app_dir)
    proc.expect(r"^ready patched=False$")
    proc.signal(signal.SIGINT)
    assert proc.finish() == 0, proc.output()
    proc.expect(r"received SIGINT, shutting down gracefully")


def test_stop_timeout_option_kills_a_stubborn_task_and_exits_1(app_dir: Path) -> None:
    proc = cli("--stop-timeout", "0.1", "tmpmod:build_stubborn", cwd=app_dir)
    proc.expect(r"^ready$")
    proc.signal(signal.SIGTERM)
    assert proc.finish() == 1, proc.output()
    proc.expect(r"ERROR greentask: stubborn: execute: task 'stubborn': StopTimeout\(.*within 0\.1s")
    proc.expect(r"stubborn: stopped with 1 error")


def test_second_sigterm_forces_the_stop(app_dir: Path) -> None:
    proc = cli("tmpmod:build_stubborn", cwd=app_dir)
    proc.expect(r"^ready$")
    proc.signal(signal.SIGTERM)
    proc.expect(r"received SIGTERM, shutting down gracefully")
    proc.signal(signal.SIGTERM)
    assert proc.finish() == 1, proc.output()
    proc.expect(r"received SIGTERM again, forcing shutdown")
    proc.expect(r"StopTimeout\(\"task 'stubborn' was still running when shutdown was forced; killed\"\)")


def test_log_level_option_filters_log_lines(app_dir: Path) -> None:
    proc = cli("--log-level", "warning", "tmpmod:build", cwd=app_dir)
    proc.expect(r"^ready patched=True$")
    proc.signal(signal.SIGTERM)
    assert proc.finish() == 0, proc.output()
    proc.expect(r"WARNING greentask: received SIGTERM")
    assert not [line for line in proc.lines if " INFO " in line], proc.output()


def test_console_script_runs_the_same_main(app_dir: Path) -> None:
    script = Path(sys.executable).parent / "greentask"
    assert script.exists(), "the greentask console script is not installed"
    proc = Proc([str(script), "tmpmod:build"], app_dir)  # cwd on sys.path for the script too
    proc.expect(r"^ready patched=True$")
    proc.signal(signal.SIGTERM)
    assert proc.finish() == 0, proc.output()


def test_help_documents_options_and_exit_codes() -> None:
    proc = cli("--help")
    assert proc.finish() == 0
    text = proc.output()
    needles = ("--no-patch", "--stop-timeout S", "--dump-signal SIG", "--log-level L", "module:attr", "patch_all()")
    for needle in (*needles, "exit status:", "already run"):
        assert needle in text, text


def test_importing_greentask_never_monkey_patches() -> None:
    code = (
        "import greentask, greentask.__main__, greentask.runner, greentask.tasks, greentask.testing\n"
        "from gevent import monkey\n"
        "print('patched' if monkey.is_anything_patched() else 'not patched')\n"
    )
    proc = Proc([sys.executable, "-c", code], REPO)
    assert proc.finish() == 0, proc.output()
    assert proc.lines == ["not patched"]


# -- error paths: one line on stderr, exit code 2 ------------------------------------------


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("tmpmod", r"target must look like 'module:attr' \(e\.g\. 'myapp\.main:manager'\), got 'tmpmod'"),
        ("tmpmod:", r"target must look like 'module:attr'.*got 'tmpmod:'"),
        ("tmp-mod:build", r"target must look like 'module:attr'.*got 'tmp-mod:build'"),
        ("nosuchmod:build", r"no module named 'nosuchmod' \(target 'nosuchmod:build'\)"),
        ("nosuchpkg.sub:build", r"no module named 'nosuchpkg' \(target 'nosuchpkg.sub:build'\)"),
        ("tmpmod:missing", r"module 'tmpmod' has no attribute 'missing' \(target 'tmpmod:missing'\)"),
        ("tmpmod:build.deeper", r"module 'tmpmod' has no attribute 'build\.deeper' \(target 'tmpmod:build\.deeper'\)"),
        (
            "tmpmod:not_callable",
            r"'tmpmod:not_callable' is neither a TaskManager nor a callable returning one, got 'just a string'",
        ),
        ("tmpmod:build_nothing", r"'tmpmod:build_nothing' returned 42, expected a TaskManager"),
    ],
)
def test_bad_target_gives_one_line_and_exit_2(app_dir: Path, target: str, message: str) -> None:
    proc = cli(target, cwd=app_dir)
    assert proc.finish() == 2, proc.output()
    assert len(proc.lines) == 1, proc.output()
    assert re.fullmatch(r"greentask: error: " + message, proc.lines[0]), proc.lines[0]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("brokenmod:x", r"importing module 'brokenmod' failed: ValueError\('module trouble'\)"),
        ("needsdep:x", r"importing module 'needsdep' failed: ModuleNotFoundError\(.*greentask_no_such_dependency.*\)"),
        ("tmpmod:build_raises", r"calling 'tmpmod:build_raises' failed: RuntimeError\('factory trouble'\)"),
    ],
)
def test_target_code_that_raises_is_one_line_and_exit_2(app_dir: Path, target: str, message: str) -> None:
    proc = cli(target, cwd=app_dir)
    assert proc.finish() == 2, proc.output()
    assert len(proc.lines) == 1, proc.output()
    assert re.fullmatch(r"greentask: error: " + message, proc.lines[0]), proc.output()


@pytest.mark.parametrize(
    ("target", "raised"),
    [
        ("brokenmod:x", r"ValueError: module trouble"),
        ("tmpmod:build_raises", r"RuntimeError: factory trouble"),
    ],
)
def test_log_level_debug_prints_the_traceback_before_the_line(app_dir: Path, target: str, raised: str) -> None:
    proc = cli("--log-level", "DEBUG", target, cwd=app_dir)
    assert proc.finish() == 2, proc.output()
    assert proc.lines[0] == "Traceback (most recent call last):", proc.output()
    assert re.fullmatch(raised, proc.lines[-2]), proc.output()
    assert proc.lines[-1].startswith("greentask: error: "), proc.output()


def test_a_manager_that_already_ran_is_refused_with_exit_2(app_dir: Path) -> None:
    proc = cli("tmpmod:already_ran", cwd=app_dir)
    assert proc.finish() == 2, proc.output()
    assert proc.lines == [
        "greentask: error: 'tmpmod:already_ran' is a TaskManager that has already run (phase 'done'); "
        "a manager runs once: name a factory that builds a fresh one"
    ], proc.output()


def test_dump_signal_logs_the_status_and_stacks_and_keeps_running(app_dir: Path) -> None:
    proc = cli("--dump-signal", "usr1", "tmpmod:build", cwd=app_dir)
    proc.expect(r"^ready patched=True$")
    proc.signal(signal.SIGUSR1)
    proc.expect(r"INFO greentask: app: SIGUSR1: status tree:")
    proc.expect(r"\bserve\b")  # the task, in the tree and as a greenlet's name
    proc.expect(r"INFO greentask: app: SIGUSR1: threads and greenlets:")
    proc.signal(signal.SIGTERM)  # still running: a stop signal stops it as usual
    assert proc.finish() == 0, proc.output()
    proc.expect(r"app: stopped cleanly")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("SIGNOPE", r"must be a signal name or number such as SIGUSR1, USR1 or \d+, got 'SIGNOPE'"),
        ("KILL", r"SIGKILL cannot be caught, got 'KILL'"),
        ("SIGTERM", r"SIGTERM already stops the manager; pick another signal such as SIGUSR1, got 'SIGTERM'"),
    ],
)
def test_a_bad_dump_signal_is_a_usage_error(value: str, message: str) -> None:
    proc = cli("--dump-signal", value, "tmpmod:build")
    assert proc.finish() == 2
    assert re.fullmatch(r"greentask: error: argument --dump-signal: " + message, proc.lines[-1]), proc.output()


def test_bad_option_value_exits_2() -> None:
    proc = cli("--stop-timeout", "-1", "tmpmod:build")
    assert proc.finish() == 2
    assert proc.lines[-1] == (
        "greentask: error: argument --stop-timeout: must be a non-negative number of seconds, got '-1'"
    )
