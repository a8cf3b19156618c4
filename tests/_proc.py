"""Proc: a real subprocess whose output a test reads line by line, with deadlines.

Shared by the CLI and the examples tests (``pythonpath = ["tests"]`` in pyproject).
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import threading
from pathlib import Path

import pytest

#: Seconds a test waits for a line or an exit before failing (generous: a loaded CI box).
DEADLINE = 20.0


class Proc:
    """A subprocess whose merged stdout/stderr is read line by line by a thread."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("NOTIFY_SOCKET", None)
        self.popen = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def output(self) -> str:
        return "\n".join(self.lines)

    def expect(self, pattern: str, timeout: float = DEADLINE, *, after: int = 0) -> re.Match[str]:
        """Return the first line (from index ``after``) matching ``pattern``, reading on as needed.

        Fails on end of output or after ``timeout`` seconds.
        """
        regex = re.compile(pattern)
        for line in self.lines[after:]:
            if (match := regex.search(line)) is not None:
                return match
        while True:
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                self.popen.kill()
                pytest.fail(f"no line matching {pattern!r} within {timeout}s; output:\n{self.output()}")
            if item is None:
                self._queue.put(None)
                pytest.fail(f"process ended before a line matched {pattern!r}; output:\n{self.output()}")
            self.lines.append(item)
            if (match := regex.search(item)) is not None:
                return match

    def finish(self, timeout: float = DEADLINE) -> int:
        """Wait for exit and for the end of the output; return the exit code."""
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            pytest.fail(f"process did not exit within {timeout}s; output:\n{self.output()}")
        self._reader.join(timeout)
        while (line := self._queue.get(timeout=timeout)) is not None:
            self.lines.append(line)
        assert self.popen.stdout is not None
        self.popen.stdout.close()
        return code

    def all(self, pattern: str) -> list[re.Match[str]]:
        return [m for line in self.lines if (m := re.search(pattern, line)) is not None]

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)
