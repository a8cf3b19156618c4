"""Command line: ``python -m greentask [options] module:attr`` (also the ``greentask`` script).

Runs the `TaskManager` found at ``module:attr`` with `greentask.run`:

1. monkey-patches the standard library with ``gevent.monkey.patch_all()`` (unless
   ``--no-patch``), *before* the user's module is imported, so its sockets, locks and
   ``time.sleep`` cooperate with gevent;
2. configures logging (``logging.basicConfig`` at ``--log-level``);
3. imports ``module`` (the current directory is on ``sys.path``) and resolves ``attr``
   (dotted paths allowed) with `load_manager`: a `TaskManager`, or a callable
   returning one, called with no arguments;
4. returns what `greentask.run` returns (0 clean, 1 errors recorded), with
   ``--stop-timeout`` and ``--dump-signal`` given to it.

Every failure to produce a runnable manager (bad syntax, missing module or attribute,
the module or the factory raised, not a `TaskManager`, a manager that has already run)
ends with one line ``greentask: error: ...`` on stderr and exit code 2; the traceback
of the user's exception is printed before it only with ``--log-level DEBUG`` (SPEC §15).
Importing ``greentask`` (or this module) never monkey-patches anything; only `main`
does.

`load_manager` is shared with the gunicorn worker (`greentask.gunicorn`), which
resolves ``GREENTASK_MANAGER`` the same way.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import re
import signal
import sys
import traceback
from collections.abc import Sequence

from .manager import TaskManager
from .runner import run

__all__ = ["ManagerLoadError", "load_manager", "main"]

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
(remaining execute tasks are killed, cleanup still runs). With --dump-signal, that
signal logs every greenlet's stack and the task status, and the program goes on.
With NOTIFY_SOCKET set (systemd Type=notify), READY=1 and STOPPING=1 are sent."""

_EPILOG = """\
exit status:
  0  the manager stopped cleanly (a graceful stop on a signal is clean)
  1  an error was recorded (a forced stop included); the errors are logged
  2  bad arguments, or no runnable manager could be loaded: bad syntax, missing
     module or attribute, the module or factory raised (traceback with
     --log-level DEBUG), not a TaskManager nor a callable returning one, or a
     manager that has already run

example:
  python -m greentask --stop-timeout 10 --dump-signal USR1 myapp.main:build_manager"""


class ManagerLoadError(Exception):
    """A ``module:attr`` target could not be turned into a runnable `TaskManager`.

    ``str(exc)`` is the whole, one-line message (it names the target). When the
    user's own code raised (importing the module, calling the factory), that
    exception is ``__cause__``, with its traceback, for whoever wants to show it.
    """


def _import_module(name: str, target: str) -> object:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if name == missing or name.startswith(missing + "."):
            msg = f"no module named {missing!r} (target {target!r})"
            raise ManagerLoadError(msg) from None
        msg = f"importing module {name!r} failed: {_short_repr(exc)}"
        raise ManagerLoadError(msg) from exc
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # e.g. a Cancelled or GreenletExit: still one line
        msg = f"importing module {name!r} failed: {_short_repr(exc)}"
        raise ManagerLoadError(msg) from exc


def load_manager(target: str) -> TaskManager:
    """Resolve ``module:attr`` to a `TaskManager` that can still run.

    ``module`` is imported (as ``import_module`` does: ``sys.path`` applies), then
    ``attr`` (dotted paths allowed) is looked up in it. A `TaskManager` is returned as
    it is; a callable is called with no arguments and must return one (a factory: a
    fresh manager on every call, which is what a process that forks workers wants).

    Used by ``python -m greentask`` and by the gunicorn worker
    (``GREENTASK_MANAGER``), so both accept and refuse the same targets with the
    same messages.

    Args:
        target: ``"module:attr"``, e.g. ``"myapp.main:build_manager"``.

    Returns:
        The manager, in phase ``"new"``.

    Raises:
        ManagerLoadError: the target is malformed, the module or attribute is
            missing, importing the module or calling the factory raised (that
            exception is ``__cause__``), the result is not a `TaskManager`, or the
            manager has already run (or is running). The message is one line.
    """
    if not isinstance(target, str):
        msg = f"target must be a string 'module:attr', got {target!r}"
        raise ManagerLoadError(msg)
    match = _TARGET.match(target)
    if match is None:
        msg = f"target must look like 'module:attr' (e.g. 'myapp.main:manager'), got {target!r}"
        raise ManagerLoadError(msg)
    module_name, attr_path = match["module"], match["attr"]
    obj = _import_module(module_name, target)
    parts = attr_path.split(".")
    for index, part in enumerate(parts):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            missing = ".".join(parts[: index + 1])
            msg = f"module {module_name!r} has no attribute {missing!r} (target {target!r})"
            raise ManagerLoadError(msg) from None
    if isinstance(obj, TaskManager):
        manager = obj
    elif not callable(obj):
        msg = f"{target!r} is neither a TaskManager nor a callable returning one, got {_short_repr(obj)}"
        raise ManagerLoadError(msg)
    else:
        try:
            result = obj()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # e.g. a Cancelled or GreenletExit: still one line
            msg = f"calling {target!r} failed: {_short_repr(exc)}"
            raise ManagerLoadError(msg) from exc
        if not isinstance(result, TaskManager):
            msg = f"{target!r} returned {_short_repr(result)}, expected a TaskManager"
            raise ManagerLoadError(msg)
        manager = result
    if manager.phase != "new":
        msg = (
            f"{target!r} is a TaskManager that has already run (phase {manager.phase!r}); "
            "a manager runs once: name a factory that builds a fresh one"
        )
        raise ManagerLoadError(msg)
    return manager


def _short_repr(obj: object) -> str:
    """``repr(obj)`` on one line, or a placeholder when its ``__repr__`` raises."""
    try:
        text = repr(obj)
    except Exception:  # noqa: BLE001 - the user's object: never let its repr break the message
        return f"<{type(obj).__qualname__} object (repr failed)>"
    return " ".join(text.split())


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


def _signal(text: str) -> signal.Signals:
    """``SIGUSR1``, ``USR1`` (any case) or a number, as a catchable `signal.Signals`."""
    name = text.strip().upper()
    member: signal.Signals | None = None
    if name.isdigit():
        try:
            member = signal.Signals(int(name))
        except ValueError:
            member = None
    else:
        member = getattr(signal.Signals, name if name.startswith("SIG") else "SIG" + name, None)
    if member is None:
        msg = f"must be a signal name or number such as SIGUSR1, USR1 or {int(signal.SIGUSR1)}, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    if member in (signal.SIGKILL, signal.SIGSTOP):
        msg = f"{member.name} cannot be caught, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    if member in (signal.SIGINT, signal.SIGTERM):
        msg = f"{member.name} already stops the manager; pick another signal such as SIGUSR1, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return member


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
        "--dump-signal",
        metavar="SIG",
        type=_signal,
        default=None,
        help="on this signal (e.g. SIGUSR1, USR1 or a number), log every greenlet's stack and the "
        "task status at INFO, and keep running (default: none)",
    )
    parser.add_argument(
        "--log-level",
        metavar="L",
        type=str.upper,
        choices=_LEVELS,
        default="INFO",
        help=f"logging level, one of {', '.join(_LEVELS)} (case-insensitive; default: INFO); "
        "DEBUG also prints the traceback when loading the target fails",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit status (see the module docstring).

    Args:
        argv: the arguments without the program name; None reads ``sys.argv[1:]``.

    Returns:
        0 when the manager stopped cleanly, 1 when it recorded errors, 2 for bad
        arguments or a target that did not give a runnable manager.
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
        manager = load_manager(args.target)
    except ManagerLoadError as exc:
        if args.log_level == "DEBUG" and exc.__cause__ is not None:
            traceback.print_exception(exc.__cause__, file=sys.stderr)
        print(f"greentask: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    return run(manager, stop_timeout=args.stop_timeout, dump_signal=args.dump_signal)


if __name__ == "__main__":
    sys.exit(main())
