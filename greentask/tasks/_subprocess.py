"""Subprocess: run an OS process as a task, stop it with a signal, never leave it behind."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import signal
import subprocess
from collections.abc import Sequence
from typing import Any, TypeAlias

import gevent
import gevent.subprocess

from ..context import Context, _check_seconds, with_timeout, without_cancel
from ..errors import StopTimeout
from ._server import KILL_GRACE, wait_any

__all__ = ["Subprocess"]

logger = logging.getLogger("greentask")

_Arg: TypeAlias = "str | bytes | os.PathLike[str] | os.PathLike[bytes]"

_POPEN_PARAMETERS = frozenset(inspect.signature(gevent.subprocess.Popen).parameters) - {"args", "self"}


def _check_args(args: object) -> Any:
    if isinstance(args, str | bytes | os.PathLike):
        if not os.fspath(args):
            msg = "args must not be empty"
            raise ValueError(msg)
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


def _read_all(pipe: Any) -> Any:
    """Body of a reader greenlet: everything until EOF (never raises into the hub)."""
    try:
        return pipe.read()
    except Exception as exc:  # noqa: BLE001 - a closed or broken pipe ends the capture
        logger.debug("greentask: reading a subprocess pipe failed: %r", exc)
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

    Args:
        args: the command, as for ``subprocess.Popen`` (a sequence of arguments, or a
            string with ``shell=True``).
        stop_signal: sent to the process when the context is cancelled.
        stop_timeout: seconds (context clock) the process gets to exit after
            ``stop_signal`` before it is SIGKILLed.
        **popen_kwargs: passed to ``gevent.subprocess.Popen`` (``cwd``, ``env``,
            ``stdout``, ``start_new_session``...).

    Raises:
        TypeError: ``args`` is not a command, ``stop_signal`` not an int, or an
            unknown Popen keyword is given.
        ValueError: ``args`` is empty, ``stop_signal`` is not a valid signal, or
            ``stop_timeout`` is negative.

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
        self._args = _check_args(args)
        self._stop_signal = _check_signal(stop_signal)
        self._stop_timeout = _check_seconds("stop_timeout", stop_timeout)
        for name in popen_kwargs:
            if name not in _POPEN_PARAMETERS:
                msg = f"unexpected keyword argument {name!r}: popen_kwargs must be gevent.subprocess.Popen arguments"
                raise TypeError(msg)
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
            StopTimeout: it was still alive ``stop_timeout`` seconds after
                ``stop_signal``; it was SIGKILLed.
            OSError: the process could not be started (e.g. command not found).
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
            name: gevent.spawn(_read_all, pipe)
            for name in ("stdout", "stderr")
            if (pipe := getattr(process, name)) is not None
        }
        try:
            # Wait for the process to exit, or for cancellation.
            gevent.wait([process.result, ctx], count=1)
            if process.returncode is None:
                # Cancelled: ask it to stop, give it stop_timeout, then SIGKILL.
                self._signal(process, self._stop_signal)
                wait_any(ctx, [process.result], self._stop_timeout)
                if process.returncode is None:
                    self._signal(process, signal.SIGKILL)
                    process.wait()
                    msg = (
                        f"command {self._args!r} (pid {process.pid}) did not exit within {self._stop_timeout}s"
                        f" of {self._stop_signal.name}; killed with SIGKILL"
                    )
                    raise StopTimeout(msg)
            elif process.returncode != 0 and not ctx.cancelled:
                self._collect(ctx, process, readers)
                raise subprocess.CalledProcessError(process.returncode, self._args, self.stdout, self.stderr)
        finally:
            if process.returncode is None:  # failed or killed while the child runs
                self._signal(process, signal.SIGKILL)
            process.wait()  # reap: no zombie
            if self._group:  # no orphan: its children that outlived it go too
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
            self._returncode = process.returncode
            self._collect(ctx, process, readers)
            self._process = None

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
                    "greentask: command %r exited but its output pipe is still open (held by its children?);"
                    " captured output is incomplete",
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
