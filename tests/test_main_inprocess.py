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

from greentask.__main__ import main

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
