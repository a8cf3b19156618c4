"""Server: run a gevent ``StreamServer`` / ``WSGIServer`` as a task.

``initialize`` binds the listening socket (so a busy port fails before any task
executes), ``execute`` accepts connections until cancelled and then drains in-flight
requests, ``cleanup`` closes the socket. Waiting for in-flight requests needs a pool:
with gevent's default spawn, ``BaseServer.stop`` does not wait for its handlers
(SPEC §8), so a server that spawns with the default gets its own `gevent.pool.Pool`.

Keep-alive (SPEC §15): a ``WSGIServer``'s handler class is wrapped in a subclass that
knows when the task stops accepting. Connections waiting for their next request are
then closed at once (their pending read is cancelled); a request in flight completes,
its response says ``Connection: close`` and the connection is closed after it (what
gunicorn's workers do once they are no longer alive). So only running requests hold
a shutdown.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import weakref
from typing import Any, ClassVar, TypeAlias

import gevent
import gevent.socket
from gevent.baseserver import BaseServer
from gevent.greenlet import Greenlet
from gevent.pool import Group, Pool
from gevent.pywsgi import WSGIHandler, WSGIServer

from ..context import Context, _check_seconds, _task_label, with_timeout, without_cancel
from ._common import graceful_timeout, greenlet_name, spawn_named

__all__ = ["Server"]

logger = logging.getLogger("greentask")

#: Any gevent server, whatever its handler's arguments.
AnyServer: TypeAlias = "BaseServer[*tuple[Any, ...]]"

#: Seconds (context clock) that killed handlers get to die before they are abandoned,
#: like the ``timeout=1`` of gevent's own ``BaseServer.stop``.
KILL_GRACE = 1.0

#: Real seconds a connection accepted just before the stop gets to send its first
#: request (it is usually on its way: a client writes right after connecting) before
#: it is closed like an idle keep-alive connection.
FIRST_REQUEST_GRACE = 0.5


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


def join_all(ctx: Context, greenlets: list[Any], timeout: float) -> bool:
    """Wait until every one of ``greenlets`` is dead, up to ``timeout`` seconds (ctx clock).

    ``ctx``'s own cancellation does not end the wait. Returns whether all are dead.
    """
    pending = [glet for glet in greenlets if not glet.dead]
    if not pending:
        return True
    timer_ctx, cancel = with_timeout(without_cancel(ctx), timeout)
    try:
        for glet in pending:
            if not glet.dead:
                gevent.wait([glet, timer_ctx], count=1)
            if timer_ctx.cancelled:
                break
    finally:
        cancel()
    return all(glet.dead for glet in pending)


def drain(
    ctx: Context,
    pool: Group,
    timeout: float,
    where: str,
    *,
    warn: bool = True,
    label: str | None = None,
) -> bool:
    """Wait until ``pool`` is empty, up to ``timeout`` seconds (ctx clock), then kill the rest.

    A pywsgi handler killed while the application runs swallows the ``GreenletExit``
    (it answers 500 instead), and may go on to read the next keep-alive request, so
    the survivors are killed once more before they are given up on.

    Args:
        ctx: the task's context (its clock measures the time).
        pool: the server's pool of handlers.
        timeout: seconds the handlers get before they are killed.
        where: the server's address, for the log lines.
        warn: log the kill at WARNING (with the number of requests killed).
        label: the task's label (``"web: task 'http'"``) for the log lines.

    Returns:
        True if every handler finished or died, False if some were abandoned.
    """
    if not len(pool):
        return True
    prefix = f"greentask: server on {where}" if label is None else f"greentask: {label}: server on {where}"
    joiner = spawn_named(ctx, "greentask server drain", pool.join)
    try:
        wait_any(ctx, [joiner], timeout)
        if joiner.dead:
            return True
        if warn:
            logger.warning(
                "%s: %d request(s) still running %ss after shutdown began; killing them",
                prefix,
                len(pool),
                round(timeout, 3),
            )
        for _ in range(2):
            for handler in list(pool):
                handler.kill(block=False)
            wait_any(ctx, [joiner], KILL_GRACE)
            if joiner.dead:
                return True
        logger.error("%s: %d request handler(s) refuse to die; abandoned", prefix, len(pool))
        return False
    finally:
        if not joiner.dead:
            joiner.kill(block=True)


def _has_data(sock: Any) -> bool:
    """Whether bytes are waiting on ``sock`` now (a request arriving); never blocks."""
    timeout = sock.gettimeout()
    try:
        sock.settimeout(0.0)
        return bool(sock.recv(1, socket.MSG_PEEK))  # b"": the client closed, nothing to serve
    except Exception:  # noqa: BLE001 - nothing yet (BlockingIOError), or no peeking on it (TLS)
        return False
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(timeout)


class _Closing:
    """One `Server` task's shutdown state, shared with its keep-alive aware handlers."""

    __slots__ = ("closing", "idle")

    def __init__(self) -> None:
        self.closing = False
        #: Handlers waiting for the next request line on their connection.
        self.idle: set[_KeepAliveHandler] = set()

    def begin(self) -> int:
        """Stop keep-alive: no handler reads another request; idle connections close now.

        A connection waiting for its next request has its pending read cancelled (the
        handler sees an error, ends and closes it), unless a request is already
        arriving on it: that one is served, with ``Connection: close``. A connection
        that has not sent its first request yet gets `FIRST_REQUEST_GRACE` (`await_first`).

        Returns:
            How many idle connections were closed.
        """
        self.closing = True
        closed = 0
        for handler in list(self.idle):
            sock = getattr(handler, "socket", None)
            if sock is None or _has_data(sock):
                continue
            if not handler._greentask_served:
                self.await_first(handler)
                continue
            if _shut_read(sock):
                closed += 1
        return closed

    def await_first(self, handler: _KeepAliveHandler) -> None:
        """Close ``handler``'s fresh connection after `FIRST_REQUEST_GRACE` unless its
        first request has begun to arrive by then (a hub timer: nothing to clean up)."""
        timer = gevent.get_hub().loop.timer(FIRST_REQUEST_GRACE)
        timer.start(self._first_request_late, handler, timer)

    def _first_request_late(self, handler: _KeepAliveHandler, timer: Any) -> None:
        timer.close()
        sock = getattr(handler, "socket", None)
        if handler in self.idle and sock is not None and not _has_data(sock):
            _shut_read(sock)


def _shut_read(sock: Any) -> bool:
    """End the read a handler waits in (gevent cancels it); False if the socket is gone."""
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        return False
    return True


class _KeepAliveHandler(WSGIHandler):
    """Mixed into a ``WSGIServer``'s handler class: no keep-alive once the task stops.

    ``close_connection`` reads true once the task stops accepting, so a request in
    flight ends its connection after its response, which then says ``Connection:
    close``; the handler registers itself as idle while it waits for a request line,
    so that `_Closing.begin` can close it.
    """

    _greentask_closing: ClassVar[_Closing]
    _greentask_base: ClassVar[type[WSGIHandler]]
    _greentask_close = False
    _greentask_served = False  # a request was read on this connection: later waits are keep-alive

    @property
    def close_connection(self) -> bool:
        return self._greentask_close or self._greentask_closing.closing

    @close_connection.setter
    def close_connection(self, value: bool) -> None:
        self._greentask_close = value

    def read_requestline(self) -> str:
        closing = self._greentask_closing
        if closing.closing and not _has_data(self.socket):
            if self._greentask_served:
                return ""  # keep-alive, and no next request came: close it
            closing.await_first(self)  # accepted as the stop began: its request may be on its way
        closing.idle.add(self)
        try:
            line: str = super().read_requestline()
        finally:
            closing.idle.discard(self)
        if closing.closing and not line.endswith("\n"):
            return ""  # cut short by the stop: not a request
        self._greentask_served = True
        return line

    def finalize_headers(self) -> None:
        super().finalize_headers()
        headers: Any = self.response_headers  # (bytes, bytes) pairs by now
        if self._greentask_closing.closing and not self.connection_upgraded and headers is not None:
            headers[:] = [(name, value) for name, value in headers if name.lower() != b"connection"]
            headers.append((b"Connection", b"close"))


def _keepalive_handler(base: type[WSGIHandler], closing: _Closing) -> type[_KeepAliveHandler]:
    """A subclass of ``base`` with `_KeepAliveHandler`'s behaviour, bound to ``closing``."""
    namespace = {
        "_greentask_closing": closing,
        "_greentask_base": base,
        "__module__": base.__module__,
        "__qualname__": base.__qualname__,
    }
    return type(base.__name__, (_KeepAliveHandler, base), namespace)


def _named_spawn(spawn: Any, name: str) -> Any:
    """``spawn`` (a pool's), naming each handler greenlet ``name``."""

    def spawn_handler(*args: Any) -> Any:
        glet = spawn(*args)
        glet.name = name
        return glet

    return spawn_handler


#: Which `Server` task runs each gevent server (one server cannot serve two tasks).
_OWNERS: weakref.WeakKeyDictionary[Any, weakref.ref[Server]] = weakref.WeakKeyDictionary()


class Server:
    """Run a gevent server (``StreamServer``, ``WSGIServer``, any ``BaseServer``) as a task.

    - ``initialize`` binds the listening socket. A busy port fails here, before any
      task executes, with an ``OSError`` naming the address
      (``cannot bind 127.0.0.1:8080: Address already in use``).
    - ``execute`` accepts connections until its context is cancelled. It then stops
      accepting (the listening socket is closed, so new clients are refused at once)
      and waits for the requests in flight; the handlers still running at the end
      are killed and counted in a WARNING (``execute`` still returns cleanly, as
      gevent's ``BaseServer.stop`` does). If the server is closed by someone else
      before cancellation, ``execute`` drains the same way and raises ``RuntimeError``.
    - ``cleanup`` closes the socket if it is still open, so the port can be bound
      again (also when ``execute`` never ran because a later task failed to
      initialize). The task can be initialized again after cleanup (for
      `greentask.tasks.Interruptible`).

    How long requests in flight get (the stop budget, SPEC §15): in a `TaskManager`
    with a ``stop_timeout``, the task knows when the manager would kill it
    (``ctx.stop_deadline``) and finishes draining a margin before that (a tenth of the
    budget, at most 1 s): with ``TaskManager(stop_timeout=10)`` requests get about 9 s,
    and the stop is clean. A smaller ``stop_timeout`` of this task (or one set on the
    server object) applies instead. Without a manager deadline, ``stop_timeout``
    applies, else the server's own (gevent's default: 1 second).

    HTTP keep-alive (``WSGIServer`` with a ``pywsgi.WSGIHandler`` handler class, the
    default): once the task stops accepting, connections waiting for their next
    request are closed at once; a request in flight completes, its response says
    ``Connection: close`` and its connection is then closed. A connection accepted
    just before the stop that has not sent its first request yet gets
    `FIRST_REQUEST_GRACE` (0.5 s) for it (a client writes right after connecting, so
    it is usually on its way), then is closed too. So idle keep-alive clients never
    hold a shutdown, and no request that has arrived is dropped. (The
    server's ``handler_class`` is replaced by a subclass of it that does this.) With a
    ``StreamServer``, an open connection counts as in flight until its handler returns.

    Handlers run in a `gevent.pool.Pool`, named for the task (``Greenlet.name``). A
    server that spawns with gevent's default (no ``spawn=`` argument) is given an
    unbounded pool, because ``server.stop()`` cannot wait for greenlets it does not
    track. A server created with its own pool (``spawn=Pool(100)`` or ``spawn=100``)
    keeps it. With ``spawn=None`` (handlers run in the hub) or a custom spawn
    function, in-flight requests cannot be tracked and are not waited for. If the
    task is killed (the manager's ``stop_timeout`` ran out), it kills its handlers and
    waits for them to die before it ends.

    Args:
        server: the gevent server, not started, and not given to another `Server`.
            Create it with the address to bind (``("127.0.0.1", 0)`` picks a free
            port; see `address`).
        stop_timeout: seconds (context clock) that in-flight requests get after
            cancellation, at most (see above); None: the manager's budget, else the
            server's own ``stop_timeout``.

    Raises:
        TypeError: ``server`` is not a ``gevent.baseserver.BaseServer`` or
            ``stop_timeout`` is not a number.
        ValueError: ``stop_timeout`` is negative or NaN, or ``server`` already
            belongs to another `Server` task.

    Example::

        from gevent.pywsgi import WSGIServer

        http = gt.tasks.Server(WSGIServer(("0.0.0.0", 8080), app))
        manager = gt.TaskManager(stop_timeout=30)   # requests get about 29 s to finish
        manager.add_task("http", http)
    """

    def __init__(self, server: AnyServer, *, stop_timeout: float | None = None) -> None:
        if not isinstance(server, BaseServer):
            msg = f"server must be a gevent server (gevent.baseserver.BaseServer), got {server!r}"
            raise TypeError(msg)
        self._stop_timeout = None if stop_timeout is None else _check_seconds("stop_timeout", stop_timeout)
        owner = _OWNERS.get(server)
        if owner is not None and owner() is not None:
            msg = (
                f"the gevent server {server!r} already belongs to another Server task:"
                " give each Server task its own server"
            )
            raise ValueError(msg)
        _OWNERS[server] = weakref.ref(self)
        self._server = server
        # BaseServer.close() forgets a handle given to the constructor; keep it to rebind.
        self._handle: Any = server.__dict__.get("handle")
        self._pool: Pool | None = None
        self._address: tuple[str, int] | None = None
        self._closing = _Closing()
        self._handler_class: type[_KeepAliveHandler] | None = None

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
        """Seconds in-flight requests get after cancellation when no manager deadline is
        nearer: this task's ``stop_timeout``, else the server's."""
        if self._stop_timeout is not None:
            return self._stop_timeout
        return float(self._server.stop_timeout)

    def initialize(self, ctx: Context) -> None:
        """Bind the listening socket (not accepting yet).

        Raises:
            OSError: the address cannot be bound (the message names it).
        """
        self._prepare(ctx)
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
        else:
            self._prepare(ctx)
        closing = self._closing
        closing.closing = False
        drained = False
        try:
            server.start()
            stopped: Any = getattr(server, "_stop_event", None)
            gevent.wait([ctx] if stopped is None else [ctx, stopped], count=1)
            cancelled = ctx.cancelled
            now = ctx.clock.now()
            # Stop accepting: close the listener, so new clients are refused at once,
            # and the keep-alive connections that wait for a next request.
            server.close()
            idle = closing.begin()
            if idle:
                logger.debug("greentask: %s: closed %d idle keep-alive connection(s)", _task_label(ctx), idle)
            self._drain(ctx, now)
            drained = True
        finally:
            if not drained:  # killed, or start() failed: leave nothing behind
                self._kill_handlers(ctx)
        if not cancelled:
            msg = f"server on {format_address(self._address)} was closed before its context was cancelled"
            raise RuntimeError(msg)

    def cleanup(self, ctx: Context) -> None:
        """Close the listening socket, if still open, so the port can be bound again.

        The server gets its own handler class back (`initialize` installs the
        keep-alive aware one again).
        """
        server = self._server
        if not server.closed:
            server.close()
        handler_class = self._handler_class
        if handler_class is not None and isinstance(server, WSGIServer) and server.handler_class is handler_class:
            server.handler_class = handler_class._greentask_base

    def _own_stop_timeout(self) -> float | None:
        """This task's stop timeout, else one set on the server object, else None."""
        if self._stop_timeout is not None:
            return self._stop_timeout
        own = vars(self._server).get("stop_timeout")
        return None if own is None else float(own)

    def _prepare(self, ctx: Context) -> None:
        """(Re)install the handle and the pool that ``BaseServer.close`` drops; name the
        handlers; make the handler class keep-alive aware."""
        server = self._server
        if server.closed and self._handle is not None and "handle" not in server.__dict__:
            server.set_handle(self._handle)
        pool = server.pool
        if pool is None and getattr(server, "_spawn", None) == Greenlet.spawn:
            if self._pool is None:
                self._pool = Pool()
            pool = self._pool
        if pool is not None:
            if "_spawn" not in server.__dict__ or server.pool is not pool:
                server.set_spawn(pool)
            server.__dict__["_spawn"] = _named_spawn(pool.spawn, greenlet_name(ctx, "greentask server handler"))
        if isinstance(server, WSGIServer):
            current = server.handler_class
            if current is self._handler_class or not (isinstance(current, type) and issubclass(current, WSGIHandler)):
                return
            base = current._greentask_base if issubclass(current, _KeepAliveHandler) else current
            if self._handler_class is None or self._handler_class._greentask_base is not base:
                self._handler_class = _keepalive_handler(base, self._closing)
            server.handler_class = self._handler_class

    def _drain(self, ctx: Context, now: float) -> None:
        """Wait for in-flight handlers up to the stop budget (ctx clock), then kill them."""
        pool = self._server.pool
        if pool is None:
            return
        timeout = graceful_timeout(ctx, self._own_stop_timeout(), now)
        if timeout is None:
            timeout = self.stop_timeout
        drain(ctx, pool, timeout, format_address(self._address), label=_task_label(ctx))

    def _kill_handlers(self, ctx: Context) -> None:
        """Close the listener and kill every handler; wait (a while) for them to die."""
        server = self._server
        self._closing.closing = True
        if not server.closed:
            server.close()
        pool = server.pool
        if pool is None or not len(pool):
            return
        handlers = list(pool)
        for handler in handlers:
            handler.kill(block=False)
        if not join_all(ctx, handlers, KILL_GRACE):
            logger.error(
                "greentask: %s: server on %s: %d request handler(s) refuse to die; abandoned",
                _task_label(ctx),
                format_address(self._address),
                sum(1 for handler in handlers if not handler.dead),
            )
