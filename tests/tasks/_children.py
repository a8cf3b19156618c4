"""Child processes for the Subprocess and ForceStop tests: scripts, a pipe, a reap check."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
from gevent.fileobject import FileObjectPosix


def python(code: str) -> list[str]:
    """``[sys.executable, "-c", code]`` (dedented)."""
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

    def __enter__(self) -> Pipe:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


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
