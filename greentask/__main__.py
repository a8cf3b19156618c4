"""Command line: ``python -m greentask [options] module:attr`` (also the ``greentask`` script).

Runs the `TaskManager` found at ``module:attr`` with `greentask.run`:

1. monkey-patches the standard library with ``gevent.monkey.patch_all()`` (unless
   ``--no-patch``), *before* the user's module is imported, so its sockets, locks and
   ``time.sleep`` cooperate with gevent;
2. configures logging (``logging.basicConfig`` at ``--log-level``);
3. imports ``module`` (the current directory is on ``sys.path``) and resolves ``attr``
   (dotted paths allowed): a `TaskManager`, or a callable returning one, called with
   no arguments;
4. returns what `greentask.run` returns (0 clean, 1 errors recorded), with
   ``--stop-timeout`` given to it.

A target that cannot be loaded ends with a one-line ``greentask: error: ...`` on
stderr and exit code 2 (when the user's code itself raised while being imported or
called, its traceback is printed first). Importing ``greentask`` (or this module)
never monkey-patches anything; only `main` does.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import re
import sys
import traceback
from collections.abc import Sequence

from .manager import TaskManager
from .runner import run

__all__ = ["main"]

EXIT_USAGE = 2

_TARGET = re.compile(r"^(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<attr>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_DESCRIPTION = """\
Run a greentask TaskManager until it stops or a signal arrives.

TARGET is module:attr, where attr (dotted paths allowed) names a TaskManager, or a
callable taking no arguments that returns one (a factory). The current directory is
on the import path.

Unless --no-patch is given, gevent.monkey.patch_all() runs before the module is
imported.

SIGINT and SIGTERM stop the manager gracefully; a second signal forces the stop
(remaining execute tasks are killed, cleanup still runs). With NOTIFY_SOCKET set
(systemd Type=notify), READY=1 and STOPPING=1 are sent."""

_EPILOG = """\
exit status:
  0  the manager stopped cleanly (a graceful stop on a signal is clean)
  1  an error was recorded (a forced stop included); the errors are logged
  2  bad arguments, or the target could not be loaded: bad syntax, missing module
     or attribute, not a TaskManager nor a callable returning one, or the module
     or factory raised

example:
  python -m greentask --stop-timeout 10 myapp.main:build_manager"""


class _TargetError(Exception):
    """The target could not be turned into a TaskManager; the message is the one line."""


def _stop_timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        msg = f"must be a number of seconds, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if math.isnan(value) or value < 0:
        msg = f"must be a non-negative number of seconds, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="greentask",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", metavar="TARGET", help="module:attr naming a TaskManager or a factory returning one")
    parser.add_argument(
        "--no-patch",
        action="store_true",
        help="do not call gevent.monkey.patch_all() before importing the module",
    )
    parser.add_argument(
        "--stop-timeout",
        metavar="S",
        type=_stop_timeout,
        default=None,
        help="seconds execute tasks get to return after cancellation before they are killed "
        "(overrides the manager's stop_timeout; default: the manager's)",
    )
    parser.add_argument(
        "--log-level",
        metavar="L",
        type=str.upper,
        choices=_LEVELS,
        default="INFO",
        help=f"logging level, one of {', '.join(_LEVELS)} (case-insensitive; default: INFO)",
    )
    return parser


def _import_module(name: str, target: str) -> object:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if name == missing or name.startswith(missing + "."):
            msg = f"no module named {missing!r} (target {target!r})"
            raise _TargetError(msg) from None
        traceback.print_exc()
        msg = f"importing module {name!r} failed: {exc!r}"
        raise _TargetError(msg) from None
    except Exception as exc:  # noqa: BLE001 - the user's code failed: report it, exit 2
        traceback.print_exc()
        msg = f"importing module {name!r} failed: {exc!r}"
        raise _TargetError(msg) from None


def _load(target: str) -> TaskManager:
    """Resolve ``module:attr`` to a TaskManager, or raise `_TargetError`."""
    match = _TARGET.match(target)
    if match is None:
        msg = f"target must look like 'module:attr' (e.g. 'myapp.main:manager'), got {target!r}"
        raise _TargetError(msg)
    module_name, attr_path = match["module"], match["attr"]
    obj = _import_module(module_name, target)
    parts = attr_path.split(".")
    for index, part in enumerate(parts):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            missing = ".".join(parts[: index + 1])
            msg = f"module {module_name!r} has no attribute {missing!r} (target {target!r})"
            raise _TargetError(msg) from None
    if isinstance(obj, TaskManager):
        return obj
    if not callable(obj):
        msg = f"{target!r} is neither a TaskManager nor a callable returning one, got {obj!r}"
        raise _TargetError(msg)
    try:
        result = obj()
    except Exception as exc:  # noqa: BLE001 - the user's code failed: report it, exit 2
        traceback.print_exc()
        msg = f"calling {target!r} failed: {exc!r}"
        raise _TargetError(msg) from None
    if not isinstance(result, TaskManager):
        msg = f"{target!r} returned {result!r}, expected a TaskManager"
        raise _TargetError(msg)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit status (see the module docstring).

    Args:
        argv: the arguments without the program name; None reads ``sys.argv[1:]``.

    Returns:
        0 when the manager stopped cleanly, 1 when it recorded errors, 2 for bad
        arguments or a target that could not be loaded.
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE

    if not args.no_patch:
        # First, before anything imports the user's code.
        from gevent import monkey

        monkey.patch_all()

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)

    try:
        manager = _load(args.target)
    except _TargetError as exc:
        print(f"greentask: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    return run(manager, stop_timeout=args.stop_timeout)


if __name__ == "__main__":
    sys.exit(main())
