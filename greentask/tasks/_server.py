"""Server: run a gevent ``StreamServer`` / ``WSGIServer`` as a task.

``initialize`` binds the listening socket (so a busy port fails before any task
executes), ``execute`` accepts connections until cancelled and then drains in-flight
requests, ``cleanup`` closes the socket. Waiting for in-flight requests needs a pool:
with gevent's default spawn, ``BaseServer.stop`` does not wait for its handlers
(SPEC §8), so a server that spawns with the default gets its own `gevent.pool.Pool`.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any, TypeAlias

import gevent
import gevent.socket
from gevent.baseserver import BaseServer
from gevent.greenlet import Greenlet
from gevent.pool import Group, Pool

from ..context import Context, _check_seconds, with_timeout, without_cancel

__all__ = ["Server"]

logger = logging.getLogger("greentask")

#: Any gevent server, whatever its handler's arguments.
AnyServer: TypeAlias = "BaseServer[*tuple[Any, ...]]"

#: Seconds (context clock) that killed handlers get to die before they are abandoned,
#: like the ``timeout=1`` of gevent's own ``BaseServer.stop``.
KILL_GRACE = 1.0


def format_address(address: object) -> str:
    """``host:port`` (``[host]:port`` for IPv6) for a socket address, else its repr."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        host = str(host) or "*"
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{port}"
    return repr(address)


def _close_unbound_sockets(exc: BaseException) -> None:
    """Close the socket gevent's ``_tcp_listener`` created but did not close when bind failed.

    Left to the garbage collector it would leak a file descriptor until then, and
    raise a ``ResourceWarning``.
    """
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_globals.get("__name__", "").startswith("gevent."):
            for value in frame.f_locals.values():
                if isinstance(value, gevent.socket.socket | socket.socket):
                    value.close()
        tb = tb.tb_next


def bind(server: AnyServer) -> tuple[str, int]:
    """Bind ``server``'s listening socket (idempotent) and return its ``(host, port)``.

    Raises:
        OSError: the address cannot be bound; the message names it, e.g.
            ``[Errno 98] cannot bind 127.0.0.1:8080: Address already in use``.
    """
    wanted = server.address
    try:
        server.init_socket()
    except OSError as exc:
        _close_unbound_sockets(exc)
        errno = exc.errno
        reason = os.strerror(errno) if isinstance(errno, int) and errno > 0 else str(exc)
        msg = f"cannot bind {format_address(wanted)}: {reason}"
        raise OSError(errno, msg) from exc
    address: Any = server.address
    if isinstance(address, tuple) and len(address) >= 2:
        return (str(address[0]), int(address[1]))
    return (str(address), 0)


def wait_any(ctx: Context, objects: list[Any], timeout: float | None) -> None:
    """Block until one of ``objects`` is ready or ``timeout`` seconds pass on ``ctx``'s clock.

    ``ctx``'s own cancellation does not end the wait (it is usually already cancelled
    when this is used to bound a shutdown).
    """
    if timeout is None:
        gevent.wait(objects, count=1)
        return
    timer_ctx, cancel = with_timeout(without_cancel(ctx), timeout)
    try:
        gevent.wait([*objects, timer_ctx], count=1)
    finally:
        cancel()


def drain(ctx: Context, pool: Group, timeout: float, where: str, *, warn: bool = True) -> bool:
    """Wait until ``pool`` is empty, up to ``timeout`` seconds (ctx clock), then kill the rest.

    A pywsgi handler killed while the application runs swallows the ``GreenletExit``
    (it answers 500 instead), and may go on to read the next keep-alive request, so
    the survivors are killed once more before they are given up on.

    Returns:
        True if every handler finished or died, False if some were abandoned.
    """
    if not len(pool):
        return True
    joiner = gevent.spawn(pool.join)
    try:
        wait_any(ctx, [joiner], timeout)
        if joiner.dead:
            return True
        if warn:
            logger.warning(
                "greentask: server on %s: %d request(s) still running %ss after shutdown began; killing them",
                where,
                len(pool),
                timeout,
            )
        for _ in range(2):
            for handler in list(pool):
                handler.kill(block=False)
            wait_any(ctx, [joiner], KILL_GRACE)
            if joiner.dead:
                return True
        logger.error("greentask: server on %s: %d request handler(s) refuse to die; abandoned", where, len(pool))
        return False
    finally:
        if not joiner.dead:
            joiner.kill(block=True)


class Server:
    """Run a gevent server (``StreamServer``, ``WSGIServer``, any ``BaseServer``) as a task.

    - ``initialize`` binds the listening socket. A busy port fails here, before any
      task executes, with an ``OSError`` naming the address
      (``cannot bind 127.0.0.1:8080: Address already in use``).
    - ``execute`` accepts connections until its context is cancelled. It then stops
      accepting (the listening socket is closed, so new clients are refused at once)
      and waits for the requests in flight, up to ``stop_timeout`` seconds on the
      context clock; the handlers still running then are killed (logged at WARNING;
      ``execute`` still returns cleanly, as gevent's ``BaseServer.stop`` does).
      If the server is closed by someone else before cancellation, ``execute`` drains
      the same way and raises ``RuntimeError``.
    - ``cleanup`` closes the socket if it is still open, so the port can be bound
      again (also when ``execute`` never ran because a later task failed to
      initialize). The task can be initialized again after cleanup (for
      `greentask.tasks.Interruptible`).

    A server that spawns handlers with gevent's default (no ``spawn=`` argument) is
    given an unbounded `gevent.pool.Pool`, because ``server.stop()`` cannot wait for
    greenlets it does not track. A server created with its own pool (``spawn=Pool(100)``
    or ``spawn=100``) keeps it. With ``spawn=None`` (handlers run in the hub) or a
    custom spawn function, in-flight requests cannot be tracked and are not waited for.

    Args:
        server: the gevent server, not started. Create it with the address to bind
            (``("127.0.0.1", 0)`` picks a free port; see `address`).
        stop_timeout: seconds (context clock) that in-flight requests get after
            cancellation; None uses the server's own ``stop_timeout`` attribute
            (gevent's default: 1 second).

    Raises:
        TypeError: ``server`` is not a ``gevent.baseserver.BaseServer`` or
            ``stop_timeout`` is not a number.
        ValueError: ``stop_timeout`` is negative or NaN.

    Note:
        HTTP keep-alive connections count as in flight while their handler waits for
        the next request, so an idle keep-alive client delays shutdown by up to
        ``stop_timeout``, as with ``WSGIServer.stop``.

    Example::

        from gevent.pywsgi import WSGIServer

        http = gt.tasks.Server(WSGIServer(("0.0.0.0", 8080), app), stop_timeout=10)
        manager.add_task("http", http)
    """

    def __init__(self, server: AnyServer, *, stop_timeout: float | None = None) -> None:
        if not isinstance(server, BaseServer):
            msg = f"server must be a gevent server (gevent.baseserver.BaseServer), got {server!r}"
            raise TypeError(msg)
        self._server = server
        self._stop_timeout = None if stop_timeout is None else _check_seconds("stop_timeout", stop_timeout)
        # BaseServer.close() forgets a handle given to the constructor; keep it to rebind.
        self._handle: Any = server.__dict__.get("handle")
        self._pool: Pool | None = None
        self._address: tuple[str, int] | None = None

    @property
    def server(self) -> AnyServer:
        """The wrapped gevent server."""
        return self._server

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``, known once `initialize` has run (useful with port 0).

        Raises:
            RuntimeError: the server has not been bound yet.
        """
        if self._address is None:
            msg = "server is not bound yet; its address is known after initialize()"
            raise RuntimeError(msg)
        return self._address

    @property
    def stop_timeout(self) -> float:
        """Seconds in-flight requests get after cancellation before they are killed."""
        if self._stop_timeout is not None:
            return self._stop_timeout
        return float(self._server.stop_timeout)

    def initialize(self, ctx: Context) -> None:
        """Bind the listening socket (not accepting yet).

        Raises:
            OSError: the address cannot be bound (the message names it).
        """
        self._prepare()
        self._address = bind(self._server)

    def execute(self, ctx: Context) -> None:
        """Accept connections until ``ctx`` is cancelled, then drain in-flight requests.

        Raises:
            RuntimeError: the server was closed by someone else before cancellation.
            OSError: the socket could not be bound (only if `initialize` was skipped).
        """
        server = self._server
        if ctx.cancelled:
            return
        if server.closed:  # initialize was skipped (or cleanup ran): bind now
            self.initialize(ctx)
        drained = False
        try:
            server.start()
            stopped: Any = getattr(server, "_stop_event", None)
            gevent.wait([ctx] if stopped is None else [ctx, stopped], count=1)
            cancelled = ctx.cancelled
            # Stop accepting: close the listener, so new clients are refused at once.
            server.close()
            self._drain(ctx)
            drained = True
        finally:
            if not drained:  # killed, or start() failed: leave nothing behind
                if not server.closed:
                    server.close()
                if server.pool is not None:
                    server.pool.kill(block=False)
        if not cancelled:
            msg = f"server on {format_address(self._address)} was closed before its context was cancelled"
            raise RuntimeError(msg)

    def cleanup(self, ctx: Context) -> None:
        """Close the listening socket, if still open, so the port can be bound again."""
        server = self._server
        if not server.closed:
            server.close()

    def _prepare(self) -> None:
        """(Re)install the pool and handle that ``BaseServer.close`` drops."""
        server = self._server
        if server.closed and self._handle is not None and "handle" not in server.__dict__:
            server.set_handle(self._handle)
        pool = server.pool
        if pool is None and getattr(server, "_spawn", None) == Greenlet.spawn:
            if self._pool is None:
                self._pool = Pool()
            pool = self._pool
        if pool is not None and getattr(server, "_spawn", None) != pool.spawn:
            server.set_spawn(pool)

    def _drain(self, ctx: Context) -> None:
        """Wait for in-flight handlers up to `stop_timeout` (ctx clock), then kill them."""
        pool = self._server.pool
        if pool is not None:
            drain(ctx, pool, self.stop_timeout, format_address(self._address))
