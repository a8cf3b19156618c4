"""Subprocess: run an OS process as a task, stop it with a signal, never leave it behind."""

from __future__ import annotations

import contextlib
import errno
import inspect
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from typing import Any, TypeAlias

import gevent
import gevent.subprocess

from ..context import Context, _check_seconds, _task_label, with_timeout, without_cancel
from ..errors import StopTimeout
from ._common import graceful_timeout, spawn_named
from ._server import KILL_GRACE, wait_any

__all__ = ["Subprocess"]

logger = logging.getLogger("greentask")

_Arg: TypeAlias = "str | bytes | os.PathLike[str] | os.PathLike[bytes]"

_POPEN_PARAMETERS = frozenset(inspect.signature(gevent.subprocess.Popen).parameters) - {"args", "self"}


def _check_args(args: object, shell: bool) -> Any:
    if isinstance(args, str | bytes | os.PathLike):
        if not os.fspath(args):
            msg = "args must not be empty"
            raise ValueError(msg)
        if isinstance(args, str | bytes) and not shell:
            msg = (
                f"a string command needs shell=True, got {args!r}: pass a list of arguments"
                f" (e.g. {os.fsdecode(args).split()!r}), or shell=True"
            )
            raise TypeError(msg)
        return args
    if not isinstance(args, Sequence):
        msg = f"args must be a string, a path or a sequence of them, got {args!r}"
        raise TypeError(msg)
    items = list(args)
    if not items:
        msg = "args must not be empty"
        raise ValueError(msg)
    for item in items:
        if not isinstance(item, str | bytes | os.PathLike):
            msg = f"args must hold strings, bytes or paths, got {item!r} in {args!r}"
            raise TypeError(msg)
    return items


def _check_signal(value: object) -> signal.Signals:
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"stop_signal must be a signal number (e.g. signal.SIGTERM), got {value!r}"
        raise TypeError(msg)
    if value not in signal.valid_signals():
        msg = f"stop_signal must be a valid signal number, got {value!r}"
        raise ValueError(msg)
    return signal.Signals(value)


def _check_program(args: Any, popen_kwargs: dict[str, Any]) -> None:
    """Fail at construction, naming it, when the program to run cannot be found.

    The program is ``executable=`` if given, else the first argument. A name without a
    directory is looked up on the ``PATH`` the child will get (``env``'s, else this
    process's), like ``Popen`` does; a path is resolved against ``cwd``. (A program
    that is found but cannot be run, say without execute permission, still fails at
    execute.)

    Raises:
        FileNotFoundError: the program does not exist.
    """
    if popen_kwargs.get("shell"):
        return  # the shell finds the program (or fails at execute)
    executable = popen_kwargs.get("executable")
    program = executable if executable is not None else args if isinstance(args, os.PathLike) else args[0]
    name = os.fsdecode(program)
    if os.path.dirname(name):
        cwd = popen_kwargs.get("cwd")
        path = os.path.join(os.fsdecode(cwd), name) if cwd is not None else name
        if os.path.exists(path):
            return
        if os.path.isabs(name):
            where = ""
        elif cwd is None:
            where = f" (relative to the current directory {os.getcwd()!r})"
        else:
            where = f" (relative to cwd {os.fsdecode(cwd)!r})"
        msg = f"program {name!r} not found{where}"
    else:
        env = popen_kwargs.get("env")
        search = os.pathsep.join(os.get_exec_path(env))
        if shutil.which(name, path=search) is not None:
            return
        msg = f"program {name!r} not found on PATH ({search!r})"
    error = FileNotFoundError(msg)
    error.errno = errno.ENOENT  # set apart, so that str() is the message alone
    raise error


def _read_all(pipe: Any, label: str) -> Any:
    """Body of a reader greenlet: everything until EOF (never raises into the hub)."""
    try:
        return pipe.read()
    except Exception as exc:  # noqa: BLE001 - a closed or broken pipe ends the capture
        logger.debug("greentask: %s: reading a subprocess pipe failed: %r", label, exc)
        return None


class Subprocess:
    """Run an OS process (``gevent.subprocess.Popen``) as a task; stop it with a signal.

    ``initialize`` and ``cleanup`` do nothing; ``execute`` starts the process and
    waits for it:

    - exit code 0 before cancellation is a clean return (a STRICT task then stops
      the manager with `UnexpectedStop`, as for any task that returns early);
    - any other exit before cancellation raises ``subprocess.CalledProcessError``,
      which names the command and the exit code, or the signal that killed it
      (``returncode`` is then negative), and carries the captured output;
    - once its context is cancelled it sends ``stop_signal``; whatever the process
      exits with after that is a clean stop. If it is still alive ``stop_timeout``
      seconds later (context clock), it gets SIGKILL and ``execute`` raises
      `StopTimeout`.

    ``execute`` always reaps the child before it returns, also when it fails or is
    killed (the child is then SIGKILLed), so no zombie or orphan process is left. The
    process leads its own process group (``process_group=0`` is the default; pass
    ``start_new_session=True`` or ``process_group=...`` to choose otherwise): the
    signals go to the whole group, so its own children stop too, and whatever is
    left of the group once the process has exited is SIGKILLed. (A process that
    puts itself in another group or session on purpose, a daemon, is not followed.)
    If the context is already cancelled when ``execute`` starts, no process is
    started.

    Output: by default the child inherits this process's stdin, stdout and stderr.
    Pass ``stdout=subprocess.PIPE`` and/or ``stderr=subprocess.PIPE`` (or
    ``stderr=subprocess.STDOUT``) to capture: the task reads the pipes itself while
    the child runs (so it never blocks on a full pipe) and, once ``execute`` has
    returned or raised, `stdout` / `stderr` hold everything it wrote (``bytes``, or
    ``str`` with ``text=True``). Don't read ``process.stdout`` yourself then. To
    stream output while the child runs, pass a file, or the write end of your own
    ``os.pipe()``, and read the other end in a greenlet.

    Stop budget: inside a `TaskManager` with a ``stop_timeout``, the SIGKILL comes
    before the manager would kill the task (``ctx.stop_deadline``), by a margin of a
    tenth of the budget (at most 1 s); ``stop_timeout`` applies when it ends earlier.
    So with ``TaskManager(stop_timeout=10)`` and the default ``stop_timeout=10.0`` the
    child gets about 9 s after ``stop_signal``. If the task is killed all the same,
    the child is SIGKILLed and reaped before the task ends.

    Mistakes fail at construction: a string command without ``shell=True``
    (``TypeError``) and a program that cannot be found (``FileNotFoundError`` naming
    it; looked up on the child's ``PATH``, or against ``cwd`` for a relative path).

    Args:
        args: the command, as for ``subprocess.Popen``: a sequence of arguments (or a
            single path), or a string with ``shell=True``.
        stop_signal: sent to the process when the context is cancelled.
        stop_timeout: seconds (context clock) the process gets to exit after
            ``stop_signal`` before it is SIGKILLed (at most: see the stop budget).
        **popen_kwargs: passed to ``gevent.subprocess.Popen`` (``cwd``, ``env``,
            ``stdout``, ``start_new_session``...).

    Raises:
        TypeError: ``args`` is not a command (or is a string without ``shell=True``),
            ``stop_signal`` not an int, or an unknown Popen keyword is given.
        ValueError: ``args`` is empty, ``stop_signal`` is not a valid signal, or
            ``stop_timeout`` is negative.
        FileNotFoundError: the program cannot be found.

    Example::

        worker = gt.tasks.Subprocess([sys.executable, "-m", "worker"], stop_timeout=30)
        manager.add_task("worker", worker)
    """

    def __init__(
        self,
        args: _Arg | Sequence[_Arg],
        *,
        stop_signal: int = signal.SIGTERM,
        stop_timeout: float = 10.0,
        **popen_kwargs: Any,
    ) -> None:
        self._args = _check_args(args, bool(popen_kwargs.get("shell")))
        self._stop_signal = _check_signal(stop_signal)
        self._stop_timeout = _check_seconds("stop_timeout", stop_timeout)
        for name in popen_kwargs:
            if name not in _POPEN_PARAMETERS:
                msg = f"unexpected keyword argument {name!r}: popen_kwargs must be gevent.subprocess.Popen arguments"
                raise TypeError(msg)
        _check_program(self._args, popen_kwargs)
        if "start_new_session" not in popen_kwargs and "process_group" not in popen_kwargs:
            # Its own process group by default, so signals reach its children too and
            # none of them is left behind as an orphan (it keeps the terminal).
            popen_kwargs["process_group"] = 0
        self._popen_kwargs = popen_kwargs
        self._group = bool(popen_kwargs.get("start_new_session")) or popen_kwargs.get("process_group") == 0
        self._process: Any = None
        self._returncode: int | None = None
        #: Captured standard output of the last run (with ``stdout=PIPE``), else None.
        self.stdout: Any = None
        #: Captured standard error of the last run (with ``stderr=PIPE``), else None.
        self.stderr: Any = None

    @property
    def args(self) -> Any:
        """The command."""
        return self._args

    @property
    def pid(self) -> int | None:
        """The process id while ``execute`` runs the process, else None."""
        process = self._process
        return None if process is None else int(process.pid)

    @property
    def process(self) -> Any:
        """The running ``gevent.subprocess.Popen`` (None when no process runs).

        Useful to write to ``process.stdin`` (with ``stdin=PIPE``) or to send other
        signals; its pipes for captured output are read by the task itself.
        """
        return self._process

    @property
    def returncode(self) -> int | None:
        """The exit code of the last run (negative: killed by that signal), or None."""
        return self._returncode

    def initialize(self, ctx: Context) -> None:
        """Do nothing (the process starts in `execute`)."""

    def cleanup(self, ctx: Context) -> None:
        """Do nothing (`execute` never leaves the process behind)."""

    def execute(self, ctx: Context) -> None:
        """Start the process and wait for it; on cancellation stop it (see the class).

        Raises:
            subprocess.CalledProcessError: the process exited with a non-zero code (or
                was killed by a signal) before cancellation.
            StopTimeout: it was still alive ``stop_timeout`` seconds (or its stop
                budget) after ``stop_signal``; it was SIGKILLed.
            OSError: the process could not be started (e.g. no permission to run it).
            RuntimeError: this task is already running a process.
        """
        if self._process is not None:
            msg = f"subprocess task is already running pid {self.pid}; it runs one process at a time"
            raise RuntimeError(msg)
        if ctx.cancelled:
            return
        self.stdout = self.stderr = None
        self._returncode = None
        process: Any = gevent.subprocess.Popen(self._args, **self._popen_kwargs)
        self._process = process
        readers = {
            name: spawn_named(ctx, f"greentask Subprocess {name} reader", _read_all, pipe, _task_label(ctx))
            for name in ("stdout", "stderr")
            if (pipe := getattr(process, name)) is not None
        }
        try:
            # Wait for the process to exit, or for cancellation.
            gevent.wait([process.result, ctx], count=1)
            if process.returncode is None:
                # Cancelled: ask it to stop, give it its stop budget, then SIGKILL.
                timeout = graceful_timeout(ctx, self._stop_timeout, ctx.clock.now())
                self._signal(process, self._stop_signal)
                wait_any(ctx, [process.result], timeout)
                if process.returncode is None:
                    self._signal(process, signal.SIGKILL)
                    process.wait()
                    msg = (
                        f"command {self._args!r} (pid {process.pid}) did not exit within {round(timeout, 3)}s"
                        f" of {self._stop_signal.name}; killed with SIGKILL"
                    )
                    raise StopTimeout(msg)
            elif process.returncode != 0 and not ctx.cancelled:
                self._collect(ctx, process, readers)
                raise subprocess.CalledProcessError(process.returncode, self._args, self.stdout, self.stderr)
        finally:
            interrupted = self._reap(process)
            if self._group:  # no orphan: its children that outlived it go too
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
            self._returncode = process.returncode
            self._collect(ctx, process, readers)
            self._process = None
            if interrupted is not None:
                raise interrupted

    def _reap(self, process: Any) -> BaseException | None:
        """SIGKILL the child if it still runs and wait for it: no zombie, ever.

        A kill (or anything else) thrown into this greenlet meanwhile does not stop
        the reaping; the first one is returned, for the caller to raise afterwards.
        """
        interrupted: BaseException | None = None
        while True:
            if process.returncode is None:  # failed or killed while the child runs
                self._signal(process, signal.SIGKILL)
            try:
                process.wait()
            except BaseException as exc:  # noqa: BLE001 - re-raised by the caller once reaped
                if interrupted is None:
                    interrupted = exc
                continue
            return interrupted

    def _signal(self, process: Any, sig: signal.Signals) -> None:
        if process.returncode is not None:
            return
        try:
            if self._group:
                os.killpg(process.pid, sig)
            else:
                os.kill(process.pid, sig)
        except ProcessLookupError:  # it exited, and was reaped, just now
            pass

    def _collect(self, ctx: Context, process: Any, readers: dict[str, gevent.Greenlet[..., Any]]) -> None:
        """Finish reading the captured pipes, store what they held, close every pipe.

        EOF comes once the child has exited, unless its own children still hold the
        pipe: readers get `KILL_GRACE` seconds (context clock), then are stopped.
        """
        pending = [reader for reader in readers.values() if not reader.dead]
        if pending:
            timer_ctx, cancel = with_timeout(without_cancel(ctx), KILL_GRACE)
            try:
                for reader in pending:
                    gevent.wait([reader, timer_ctx], count=1)  # type: ignore[type-var]
                    if timer_ctx.cancelled:
                        break
            finally:
                cancel()
            unfinished = [reader for reader in pending if not reader.dead]
            if unfinished:
                logger.warning(
                    "greentask: %s: command %r exited but its output pipe is still open (held by its children?);"
                    " captured output is incomplete",
                    _task_label(ctx),
                    self._args,
                )
                gevent.killall(unfinished, block=True)
        for name, reader in readers.items():
            if reader.dead and reader.value is not None:
                setattr(self, name, reader.value)
        readers.clear()
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError, RuntimeError):  # a reader still parked in it
                    pipe.close()
