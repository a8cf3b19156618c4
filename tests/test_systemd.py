"""gt.run under a systemd-like supervisor: a real subprocess, a real NOTIFY_SOCKET, real signals.

The test plays systemd's part: it binds an ``AF_UNIX`` datagram socket, starts a program
whose ``main`` is ``sys.exit(gt.run(manager, dump_signal=SIGUSR2))`` with
``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` set, reads what the program sends, and sends it
signals. The program puts markers (``X-...``) into the same socket around what it does,
so the order of the datagrams proves when the watchdog pinged and when it did not.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _proc import Proc

#: WATCHDOG_USEC given to the program: a ping every 50 ms.
WATCHDOG_USEC = 100_000

PROGRAM = textwrap.dedent(
    """
    import logging, os, signal, socket, sys

    from gevent import monkey

    monkey.patch_all()

    import gevent
    import greentask as gt

    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(message)s")
    # Proc drops NOTIFY_SOCKET from the environment; the test hands it over under another name.
    os.environ["NOTIFY_SOCKET"] = os.environ["GT_TEST_NOTIFY_SOCKET"]
    INTERVAL = int(os.environ["WATCHDOG_USEC"]) / 2_000_000
    blocking_sleep = monkey.get_original("time", "sleep")


    def mark(text):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(text.encode(), os.environ["NOTIFY_SOCKET"])


    class Worker:
        def initialize(self, ctx):
            self.watch = gevent.signal_handler(signal.SIGUSR1, self.block_the_hub)

        def block_the_hub(self):
            mark("X-BLOCK-BEGIN")
            blocking_sleep(5 * INTERVAL)  # never yields: the hub cannot run anything
            mark("X-BLOCK-END")

        def execute(self, ctx):
            ctx.wait()
            gevent.sleep(5 * INTERVAL)  # a slow shutdown, the hub running
            mark("X-EXECUTE-RETURNED")

        def cleanup(self, ctx):
            self.watch.cancel()


    class Db:
        def initialize(self, ctx):
            pass

        def execute(self, ctx):
            ctx.wait()

        def cleanup(self, ctx):
            pass


    manager = gt.TaskManager(name="svc")
    manager.add_task("db", Db())
    manager.add_task("worker", Worker())
    sys.exit(gt.run(manager, dump_signal=signal.SIGUSR2))
    """
)


class Supervisor:
    """The receiving end of NOTIFY_SOCKET, as systemd would hold it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received: list[bytes] = []

    def read_until(self, predicate: Callable[[list[bytes]], bool]) -> None:
        """Read datagrams until ``predicate(received)`` holds; fail after 20 s without one."""
        while not predicate(self.received):
            try:
                self.received.append(self.sock.recv(4096))
            except TimeoutError:
                pytest.fail(f"no datagram for 20 s; received so far: {self.received!r}")

    def rest(self) -> None:
        """Read what is left once the program has exited."""
        self.sock.settimeout(0)
        while True:
            try:
                self.received.append(self.sock.recv(4096))
            except BlockingIOError:
                return


@pytest.fixture
def supervisor(monkeypatch: pytest.MonkeyPatch) -> Iterator[Supervisor]:
    directory = tempfile.mkdtemp(prefix="gt-systemd-", dir="/tmp")  # short: sun_path limit
    path = Path(directory) / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(20)
    monkeypatch.setenv("GT_TEST_NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    try:
        yield Supervisor(sock)
    finally:
        sock.close()
        path.unlink()
        os.rmdir(directory)


def _after(received: list[bytes], marker: bytes) -> list[bytes]:
    return received[received.index(marker) + 1 :] if marker in received else []


def test_a_service_under_systemd_notify_and_watchdog(supervisor: Supervisor, tmp_path: Path) -> None:
    program = tmp_path / "service.py"
    program.write_text(PROGRAM)
    proc = Proc([sys.executable, str(program)], cwd=tmp_path)

    # Start-up: STATUS while initializing, then READY with the count; pings meanwhile.
    supervisor.read_until(lambda received: any(d.startswith(b"READY=1") for d in received))
    proc.expect(r"^INFO svc: running 2 tasks$")
    supervisor.read_until(
        lambda received: _after(received, b"READY=1\nSTATUS=running 2 tasks").count(b"WATCHDOG=1") >= 2
    )

    # The dump signal: the status tree and the greenlets, and the service keeps running.
    proc.signal(signal.SIGUSR2)
    proc.expect(r"^INFO svc: SIGUSR2: status tree:$")
    proc.expect(r"^manager 'svc': executing$")
    proc.expect(r"^  worker: task strict, running$")
    proc.expect(r"^INFO svc: SIGUSR2: threads and greenlets:$")

    # A blocked hub: no ping until it runs again.
    proc.signal(signal.SIGUSR1)
    supervisor.read_until(lambda received: b"WATCHDOG=1" in _after(received, b"X-BLOCK-END"))

    # SIGTERM: STOPPING with the reason, no ping during the (slow) shutdown.
    proc.signal(signal.SIGTERM)
    assert proc.finish() == 0
    supervisor.rest()
    proc.expect(r"^INFO svc: stopped cleanly; exit code 0$")

    received = supervisor.received
    during_block = received[received.index(b"X-BLOCK-BEGIN") + 1 : received.index(b"X-BLOCK-END")]
    assert during_block == []
    assert received.index(b"X-BLOCK-BEGIN") > received.index(b"READY=1\nSTATUS=running 2 tasks")
    stopping = next(d for d in received if d.startswith(b"STOPPING=1\n"))
    assert stopping == b"STOPPING=1\nSTATUS=stopping: stop() called: SignalReceived('received SIGTERM')"
    assert b"WATCHDOG=1" not in _after(received, stopping)
    assert [d for d in received if d != b"WATCHDOG=1"] == [
        b"STATUS=initializing 1/2: db",
        b"STATUS=initializing 2/2: worker",
        b"READY=1\nSTATUS=running 2 tasks",
        b"X-BLOCK-BEGIN",
        b"X-BLOCK-END",
        stopping,
        b"X-EXECUTE-RETURNED",
        b"STATUS=cleaning up worker",
        b"STATUS=cleaning up db",
    ]
