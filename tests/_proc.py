"""Proc: a real subprocess whose output a test reads line by line, with deadlines.

Shared by the CLI and the examples tests (``pythonpath = ["tests"]`` in pyproject).

No process outlives its test. Each Proc starts in a session (so a process group) of
its own, and its environment carries a marker variable unique to it, which every
descendant inherits: also one in a session of its own that is orphaned when its parent
dies (the supervisor example's children). `Proc.kill` SIGKILLs the group and every
live process that carries the marker or descends from the Proc, and reaps them. The
``kill_procs`` fixture (tests/conftest.py, autouse) calls `kill_all` after every test,
and a failing `Proc.expect` or `Proc.finish` kills before it fails.

While a Proc is tracked, the test process is a child subreaper (Linux): orphans of the
tree are re-parented to it rather than to init, so they can be reaped and leave no
zombie behind (init is not always a reaper, e.g. in a container). Finding descendants
reads /proc (Linux); elsewhere only the process group is killed.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import NoReturn

import pytest

#: Seconds a test waits for a line or an exit before failing (generous: a loaded CI box).
#: It bounds the whole wait of one `Proc.expect` or `Proc.finish` call, however many
#: lines arrive meanwhile.
DEADLINE = 20.0

#: Seconds `Proc.kill` keeps looking for new descendants to kill.
KILL_DEADLINE = 10.0

_MARKER_PREFIX = "GREENTASK_TEST_PROC_"
_PROC = Path("/proc")
_PR_SET_CHILD_SUBREAPER = 36

#: Every Proc started since the last `kill_all` (so, by the current test).
_live: list[Proc] = []
_subreaper = False


def _set_subreaper(on: bool) -> None:
    """Make this process a child subreaper, or no longer one (Linux; elsewhere a no-op)."""
    global _subreaper
    if on == _subreaper or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)
    _subreaper = on


def _stat(pid: int) -> tuple[str, int, int] | None:
    """State letter, parent pid and start time of ``pid`` (from /proc), or None if it is gone."""
    try:
        data = (_PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # "pid (comm) S ppid ...": comm may hold spaces and parentheses; it ends at the last ")".
    fields = data[data.rfind(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1]), int(fields[19])


def _environ(pid: int) -> list[bytes]:
    try:
        return (_PROC / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:  # gone, a zombie, or not ours
        return []


class Proc:
    """A subprocess whose merged stdout/stderr is read line by line by a thread.

    It leads its own session and process group; see the module docstring for how it
    and everything it starts are killed.
    """

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.args = list(args)
        self._marker = f"{_MARKER_PREFIX}{uuid.uuid4().hex}"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env[self._marker] = "1"
        env.pop("NOTIFY_SOCKET", None)
        _set_subreaper(True)
        self.popen = subprocess.Popen(
            self.args,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        _live.append(self)
        #: Descendants found before, pid to start time (kept: they may be orphaned since).
        self._seen: dict[int, int] = {}
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        try:
            for line in self.popen.stdout:
                self._queue.put(line.rstrip("\n"))
        except (OSError, ValueError):  # the pipe was closed under it (kill_all)
            pass
        self._queue.put(None)

    def output(self) -> str:
        return "\n".join(self.lines)

    def _next(self, deadline: float) -> str | None:
        """The next line, or None at the end of the output; raises queue.Empty at ``deadline``."""
        if self._eof:
            return None
        item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
        if item is None:
            self._eof = True
        else:
            self.lines.append(item)
        return item

    def _drain(self, deadline: float) -> bool:
        """Read the rest of the output until its end or ``deadline``; True at its end."""
        try:
            while self._next(deadline) is not None:
                pass
        except queue.Empty:
            return False
        return True

    def _fail(self, message: str) -> NoReturn:
        """Kill the process tree, collect what it wrote until then, and fail the test."""
        self.kill()
        self._drain(time.monotonic() + 5.0)
        pytest.fail(f"{message}; output:\n{self.output()}")

    def expect(self, pattern: str, timeout: float = DEADLINE, *, after: int = 0) -> re.Match[str]:
        """Return the first line (from index ``after``) matching ``pattern``, reading on as needed.

        Fails (after killing the process tree) at the end of the output, or when no
        line has matched ``timeout`` seconds after the call.
        """
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        for line in self.lines[after:]:
            if (match := regex.search(line)) is not None:
                return match
        while True:
            timed_out = False
            try:
                item = self._next(deadline)
            except queue.Empty:
                item, timed_out = None, True
            if timed_out:
                self._fail(f"no line matching {pattern!r} within {timeout}s")
            if item is None:
                self._fail(f"process ended before a line matched {pattern!r}")
            if (match := regex.search(item)) is not None:
                return match

    def finish(self, timeout: float = DEADLINE) -> int:
        """Wait for the exit and for the end of the output; return the exit code.

        Fails (after killing the process tree) if the process has not exited, or its
        output has not ended, ``timeout`` seconds after the call.
        """
        deadline = time.monotonic() + timeout
        try:
            code: int | None = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        if code is None:
            self._fail(f"process did not exit within {timeout}s")
        if not self._drain(deadline):
            held = sorted(self.descendants())
            self._fail(f"process exited with {code}, but its output was still open {timeout}s after (by {held}?)")
        self._close()
        return code

    def all(self, pattern: str) -> list[re.Match[str]]:
        return [m for line in self.lines if (m := re.search(pattern, line)) is not None]

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    # -- the process tree --------------------------------------------------------------

    def _tree(self) -> dict[int, tuple[str, int, int]]:
        """Its descendants, zombies included: pid to (state, parent pid, start time).

        Those that carry its marker or were found before, and those whose parent chain
        leads to one of them or to its own process. Empty without /proc.
        """
        if not _PROC.is_dir():
            return {}
        marker = f"{self._marker}=1".encode()
        procs: dict[int, tuple[str, int, int]] = {}
        found: set[int] = set()
        for entry in _PROC.iterdir():
            if not entry.name.isdigit() or (pid := int(entry.name)) in (self.popen.pid, os.getpid()):
                continue
            if (stat := _stat(pid)) is None:
                continue
            procs[pid] = stat
            if self._seen.get(pid) == stat[2] or marker in _environ(pid):
                found.add(pid)
        # Its own pid only until it is reaped (its children are orphans then, and the
        # pid may be reused).
        roots = found | ({self.popen.pid} if self.popen.returncode is None else set())
        for pid in procs:  # does its parent chain reach a root?
            chain: list[int] = []
            while pid in procs and pid not in roots and pid not in chain:
                chain.append(pid)
                pid = procs[pid][1]
            if pid in roots:
                found.update(chain)
        tree = {pid: procs[pid] for pid in found}
        self._seen.update((pid, stat[2]) for pid, stat in tree.items())
        return tree

    def descendants(self) -> set[int]:
        """The live processes it started, directly or not (not its own process)."""
        return {pid for pid, (state, _, _) in self._tree().items() if state != "Z"}

    def kill(self) -> None:
        """SIGKILL its process, its process group and all its descendants; reap them.

        Descendants are looked for again until none is alive (for `KILL_DEADLINE` at
        most), since one may start another meanwhile. Idempotent.
        """
        deadline = time.monotonic() + KILL_DEADLINE
        while True:
            tree = self._tree()
            alive = [pid for pid, (state, _, _) in tree.items() if state != "Z"]
            # Freeze first, then kill: a stopped process starts nothing new.
            for sig in (signal.SIGSTOP, signal.SIGKILL):
                if self.popen.poll() is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(self.popen.pid, sig)  # its own group, never pytest's
                for pid in alive:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, sig)
            if self.popen.poll() is None:  # it left its group? (a session leader cannot)
                self.popen.kill()
            self.popen.wait()
            _reap(tree)
            if not alive or time.monotonic() > deadline:
                break

    def _close(self) -> None:
        """Close the output pipe once the reader has seen its end (the writers are dead)."""
        stdout = self.popen.stdout
        assert stdout is not None
        self._reader.join(5.0)
        if not self._reader.is_alive():  # else a process we could not find holds it
            stdout.close()


def _reap(tree: dict[int, tuple[str, int, int]]) -> None:
    """Reap the killed processes of ``tree`` that are (or become) children of this process.

    Parents first: a process is re-parented to this one (the subreaper) once its parent
    has exited, and it is reaped then. Those that became another process's children
    are left to it.
    """

    def depth(pid: int) -> int:
        n = 0
        while (pid := tree[pid][1]) in tree and n < len(tree):
            n += 1
        return n

    pending = sorted(tree, key=depth)
    progress = True
    while pending and progress:
        progress = False
        for pid in list(pending):
            stat = _stat(pid)
            if stat is not None and stat[2] != tree[pid][2]:
                stat = None  # the pid is some other process's now: this one is gone
            if stat is not None and stat[1] != os.getpid():
                continue  # not ours (yet)
            if stat is not None:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)  # it got SIGKILL: it is ending
            pending.remove(pid)
            progress = True


def kill_all() -> list[tuple[list[str], set[int]]]:
    """Kill every Proc started since the last call (see `Proc.kill`), close its pipe.

    Returns, for each Proc that had exited by itself, its command and its descendants
    that were still alive: processes the program under test left behind.
    """
    leaked: list[tuple[list[str], set[int]]] = []
    for proc in _live:
        if proc.popen.poll() is not None and (left := proc.descendants()):
            leaked.append((proc.args, left))
        proc.kill()
        proc._close()
    _live.clear()
    _set_subreaper(False)
    return leaked


atexit.register(kill_all)  # the last resort; the fixture kills them after each test
