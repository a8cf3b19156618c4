"""Socket probes shared by the server and health-server tests (``pythonpath = ["tests"]``)."""

from __future__ import annotations

import errno
import socket

import gevent.socket


def can_connect(address: tuple[str, int]) -> bool:
    """Whether a TCP connection to ``address`` is accepted now (False if refused)."""
    try:
        sock = gevent.socket.create_connection(address, timeout=5)
    except ConnectionRefusedError:
        return False
    sock.close()
    return True


def can_bind(address: tuple[str, int]) -> bool:
    """Whether a server could bind ``address`` now (SO_REUSEADDR, as gevent's servers do)."""
    sock = gevent.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        return False
    finally:
        sock.close()
    return True
