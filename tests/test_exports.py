"""The public API: each package's __all__ lists exactly its public names, and they all resolve."""

from __future__ import annotations
import __future__

import subprocess
import sys
import types

import pytest

import greentask
import greentask.errors
import greentask.manager
import greentask.tasks
import greentask.testing

PACKAGES = [greentask, greentask.tasks, greentask.testing]

# SPEC §1: the names importable from greentask itself.
SPEC_TOP_LEVEL = {
    "Context",
    "background",
    "with_cancel",
    "with_timeout",
    "with_deadline",
    "with_value",
    "without_cancel",
    "Cancelled",
    "DeadlineExceeded",
    "Clock",
    "TaskManager",
    "TaskType",
    "ExecuteTaskType",
    "Task",
    "ExecuteTask",
    "NamedError",
    "Stage",
    "UnexpectedStop",
    "StopTimeout",
    "ManagerStateError",
    "errors_to_group",
    "TaskState",
    "TaskStatus",
    "ManagerEvent",
    "StopReason",
    "run",
}


def public_names(module: types.ModuleType) -> set[str]:
    """Names a user sees in the module: not underscored, not submodules, not __future__ flags."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and not isinstance(value, __future__._Feature)
    }


@pytest.mark.parametrize("module", PACKAGES, ids=lambda m: m.__name__)
def test_all_lists_exactly_the_public_names(module: types.ModuleType) -> None:
    assert sorted(module.__all__) == sorted(public_names(module))


@pytest.mark.parametrize("module", PACKAGES, ids=lambda m: m.__name__)
def test_all_has_no_duplicates_and_every_name_resolves(module: types.ModuleType) -> None:
    assert len(module.__all__) == len(set(module.__all__))
    assert all(isinstance(name, str) for name in module.__all__)
    for name in module.__all__:
        assert getattr(module, name) is not None, name


@pytest.mark.parametrize("module", PACKAGES, ids=lambda m: m.__name__)
def test_star_import_gives_exactly_all(module: types.ModuleType) -> None:
    namespace: dict[str, object] = {}
    exec(f"from {module.__name__} import *", namespace)
    namespace.pop("__builtins__")
    assert sorted(namespace) == sorted(module.__all__)


def test_top_level_exports_every_spec_name() -> None:
    assert set(greentask.__all__) >= SPEC_TOP_LEVEL
    assert isinstance(greentask.__version__, str)


@pytest.mark.parametrize("module", [greentask.errors, greentask.manager], ids=lambda m: m.__name__)
def test_errors_and_manager_names_are_re_exported_as_the_same_objects(module: types.ModuleType) -> None:
    for name in module.__all__:
        assert getattr(greentask, name) is getattr(module, name), name


@pytest.mark.parametrize("name", sorted(greentask.__all__))
def test_every_top_level_callable_has_a_docstring(name: str) -> None:
    value = getattr(greentask, name)
    if callable(value):
        assert (value.__doc__ or "").strip(), f"{name} has no docstring"


def test_importing_greentask_does_not_monkey_patch() -> None:
    code = (
        "import greentask, greentask.tasks, greentask.testing\n"
        "from gevent import monkey\n"
        "assert not monkey.is_anything_patched(), 'something was patched'\n"
        "import socket, gevent.socket\n"
        "assert socket.socket is not gevent.socket.socket\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr
