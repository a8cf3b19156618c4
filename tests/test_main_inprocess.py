"""`greentask.__main__.main` called in-process (always with --no-patch: never patch the test process).

The subprocess tests in test_main.py prove the real command line; these pin the
argument handling and target loading where coverage can see them.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import greentask as gt
from greentask.__main__ import ManagerLoadError, load_manager, main

APP = textwrap.dedent(
    """
    import greentask as gt
    from greentask.testing import FakeTask

    manager = gt.TaskManager()
    manager.add_task("once", FakeTask("once"), gt.TaskType.STOP_GROUP)

    def build():
        return manager

    def build_nothing():
        return None

    not_a_manager = 42

    def build_fresh():
        return gt.TaskManager(name="fresh")

    def build_raises():
        raise LookupError("no settings")

    def build_checks_a_context():
        ctx, cancel = gt.with_cancel(gt.background())
        cancel()
        ctx.check()  # raises Cancelled: a BaseException, not an Exception

    def build_raises_greenlet_exit():
        from greenlet import GreenletExit
        raise GreenletExit

    class Broken(BaseException):
        def __repr__(self):
            raise RuntimeError("repr boom")

    def build_raises_broken():
        raise Broken()
    """
)


@pytest.fixture
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "inproc_app.py").write_text(APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "inproc_app"
    sys.modules.pop("inproc_app", None)


def test_a_factory_target_runs_the_manager_and_exits_0(app_module: str) -> None:
    assert main(["--no-patch", f"{app_module}:build"]) == 0


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_colon_here", "module:attr"),
        ("inproc_missing_module_xyz:build", "inproc_missing_module_xyz"),
        ("{app}:missing_attr", "missing_attr"),
        ("{app}:not_a_manager", "not_a_manager"),
        ("{app}:build_nothing", "build_nothing"),
        ("{app}:build_checks_a_context", "Cancelled('context cancelled')"),
        ("{app}:build_raises_greenlet_exit", "GreenletExit()"),
        ("{app}:build_raises_broken", "<Broken object (repr failed)>"),
    ],
)
def test_a_bad_target_is_one_line_on_stderr_and_exit_2(
    app_module: str, target: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--no-patch", target.format(app=app_module)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert message in err[0]


def test_help_exits_0_and_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "exit status" in capsys.readouterr().out


def test_a_bad_option_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--no-patch", "--stop-timeout", "soon", "x:y"]) == 2
    assert "stop-timeout" in capsys.readouterr().err


# -- load_manager: shared by the CLI and the gunicorn worker ---------------------------------


def test_load_manager_calls_a_factory_each_time(app_module: str) -> None:
    first = load_manager(f"{app_module}:build_fresh")
    second = load_manager(f"{app_module}:build_fresh")
    assert isinstance(first, gt.TaskManager)
    assert first is not second
    assert first.phase == "new"


def test_load_manager_returns_a_manager_attribute_as_it_is(app_module: str) -> None:
    module = __import__(app_module)
    assert load_manager(f"{app_module}:manager") is module.manager


def test_load_manager_keeps_the_users_exception_as_the_cause(app_module: str) -> None:
    with pytest.raises(ManagerLoadError) as info:
        load_manager(f"{app_module}:build_raises")
    assert str(info.value) == f"calling '{app_module}:build_raises' failed: LookupError('no settings')"
    assert isinstance(info.value.__cause__, LookupError)
    assert info.value.__cause__.__traceback__ is not None


def test_load_manager_refuses_a_manager_that_already_ran(app_module: str) -> None:
    assert main(["--no-patch", f"{app_module}:manager"]) == 0  # runs it (a STOP_GROUP: it ends)
    with pytest.raises(ManagerLoadError, match=r"has already run \(phase 'done'\); a manager runs once"):
        load_manager(f"{app_module}:manager")


def test_load_manager_refuses_what_is_not_a_target_string() -> None:
    with pytest.raises(ManagerLoadError, match=r"target must be a string 'module:attr', got 42"):
        load_manager(42)  # type: ignore[arg-type]


def test_main_prints_the_traceback_only_at_debug(app_module: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--no-patch", f"{app_module}:build_raises"]) == 2
    quiet = capsys.readouterr().err.strip().splitlines()
    assert quiet == [f"greentask: error: calling '{app_module}:build_raises' failed: LookupError('no settings')"]
    assert main(["--no-patch", "--log-level", "debug", f"{app_module}:build_raises"]) == 2
    loud = capsys.readouterr().err.strip().splitlines()
    assert loud[0] == "Traceback (most recent call last):"
    assert loud[-2:] == ["LookupError: no settings", quiet[0]]


@pytest.mark.parametrize(("value", "signum"), [("SIGUSR1", 10), ("usr2", 12), ("10", 10)])
def test_dump_signal_is_parsed_and_given_to_run(
    app_module: str, value: str, signum: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, object] = {}

    def fake_run(manager: gt.TaskManager, **options: object) -> int:
        seen.update(options)
        return 0

    monkeypatch.setattr("greentask.__main__.run", fake_run)
    assert main(["--no-patch", "--dump-signal", value, f"{app_module}:build_fresh"]) == 0
    assert seen == {"stop_timeout": None, "dump_signal": signum}


def test_a_module_missing_a_dependency_is_not_a_missing_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "inproc_needs_dep.py").write_text("import inproc_no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(ManagerLoadError, match=r"importing module 'inproc_needs_dep' failed: ModuleNotFoundError"):
            load_manager("inproc_needs_dep:manager")
    finally:
        sys.modules.pop("inproc_needs_dep", None)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("SIGNOPE", "must be a signal name or number"),
        ("999", "must be a signal name or number"),
        ("SIGKILL", "SIGKILL cannot be caught"),
        ("int", "SIGINT already stops the manager"),
    ],
)
def test_a_bad_dump_signal_is_a_usage_error(value: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--no-patch", "--dump-signal", value, "x:y"]) == 2
    assert message in capsys.readouterr().err
