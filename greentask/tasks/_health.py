"""HealthServer: HTTP liveness, readiness and status probes for a `TaskManager`."""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from gevent.pool import Pool
from gevent.pywsgi import LoggingLogAdapter, WSGIServer

from ..context import Context
from ..errors import TaskState, TaskStatus
from ..manager import TaskManager
from ._server import bind, drain, format_address

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

__all__ = ["HealthServer"]

logger = logging.getLogger("greentask")

_StartResponse = Callable[[str, list[tuple[str, str]]], Any]

_STATUS_LINES = {
    200: "200 OK",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    500: "500 Internal Server Error",
    503: "503 Service Unavailable",
}

_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json; charset=utf-8"


def _task_json(status: TaskStatus) -> dict[str, Any]:
    return {
        "name": status.name,
        "kind": status.kind,
        "task_type": status.task_type.value,
        "state": status.state.value,
        "error": None if status.error is None else repr(status.error),
        "started_at": status.started_at,
        "stopped_at": status.stopped_at,
        "restarts": status.restarts,
    }


def _load_metrics(manager: TaskManager, registry: Collector | None) -> Any:
    """The ``/metrics`` source, or None when prometheus-client is not installed."""
    try:
        metrics = importlib.import_module("greentask.metrics")
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] != "prometheus_client":
            raise
        logger.debug("greentask: health server: prometheus-client is not installed; /metrics answers 404")
        return None
    return metrics._exposition(manager, registry)


class HealthServer:
    """Serve ``/livez``, ``/readyz``, ``/status`` and ``/metrics`` over HTTP for a `TaskManager`.

    Add it as the manager's first task: it starts answering in its own
    ``initialize`` (so probes work while later tasks initialize) and stops in its
    ``cleanup`` (so they work until the other tasks are cleaned up, in reverse
    order). ``execute`` just waits for cancellation.

    ``GET`` (and ``HEAD``) of:

    - ``/livez``: 200 while the manager has not finished (``manager.phase`` is not
      "done"), else 503.
    - ``/readyz``: 200 only while the manager is in its execute phase, has not been
      cancelled, and every task added with ``add_task`` is RUNNING, the tasks of
      nested managers included (their rows in ``status()``, with path names such as
      ``"pipeline/db"``); else 503, with the reason in the body (``not ready: task
      'db' is restarting``, ``... is stopping``). Execute tasks (``add_execute_task``)
      come and go and do not count.
    - ``/status``: 200 with the JSON ``{"manager": {"phase": ..., "stop_reason": str
      or null}, "tasks": [{"name", "kind", "task_type", "state", "error",
      "started_at", "stopped_at", "restarts"}, ...]}`` built from
      ``manager.status()`` (the whole tree, depth first): enums as their values,
      ``error`` as the exception's repr or null (the latest failure of a restarted
      task), times on the manager's context clock.
    - ``/metrics``: the Prometheus text format (``CONTENT_TYPE_LATEST`` of
      prometheus-client) when ``prometheus-client`` is installed, else 404. It holds
      the content of ``registry`` (prometheus-client's default ``REGISTRY`` when
      None, so your own metrics and the process collector are there) followed by
      the families of `greentask.metrics.ManagerCollector` for ``manager``, from a
      collector of the server's own that is registered nowhere: nothing is added to
      the default registry, and a family the registry already has (your own
      ``ManagerCollector``) is not exported twice.

    Other paths get 404, other methods 405. Bodies are not cached
    (``Cache-Control: no-store``). Requests are logged to the ``greentask`` logger
    at DEBUG, errors at ERROR; the server uses its own greenlet pool.

    Args:
        manager: the manager to report on.
        host: the address to listen on.
        port: the port; 0 picks a free one (see `address`).
        registry: what ``/metrics`` exports besides the manager's families; None:
            prometheus-client's default ``REGISTRY``.

    Raises:
        TypeError: ``manager`` is not a `TaskManager`, ``host`` not a string,
            ``port`` not an int, or ``registry`` has no ``collect()``.
        ValueError: ``host`` is empty or ``port`` is outside 0-65535.

    Example::

        manager = gt.TaskManager()
        manager.add_task("health", gt.tasks.HealthServer(manager, host="0.0.0.0", port=8081))
        manager.add_task("db", Database())
        sys.exit(gt.run(manager))
    """

    def __init__(
        self, manager: TaskManager, host: str = "127.0.0.1", port: int = 8081, *, registry: Collector | None = None
    ) -> None:
        if not isinstance(manager, TaskManager):
            msg = f"manager must be a greentask TaskManager, got {manager!r}"
            raise TypeError(msg)
        if not isinstance(host, str):
            msg = f"host must be a string, got {host!r}"
            raise TypeError(msg)
        if not host:
            msg = "host must be a non-empty string, got ''"
            raise ValueError(msg)
        if isinstance(port, bool) or not isinstance(port, int):
            msg = f"port must be an int, got {port!r}"
            raise TypeError(msg)
        if not 0 <= port <= 65535:
            msg = f"port must be between 0 and 65535, got {port!r}"
            raise ValueError(msg)
        if registry is not None and not callable(getattr(registry, "collect", None)):
            msg = f"registry must be a prometheus_client CollectorRegistry or None, got {registry!r}"
            raise TypeError(msg)
        self._manager = manager
        self._registry = registry
        self._metrics: Any = None  # the /metrics source, set up in initialize
        self._host = host
        self._port = port
        self._server: WSGIServer | None = None
        self._pool: Pool | None = None
        self._address: tuple[str, int] | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``, known once `initialize` has run (useful with port 0).

        Raises:
            RuntimeError: the server has not been bound yet.
        """
        if self._address is None:
            msg = "health server is not bound yet; its address is known after initialize()"
            raise RuntimeError(msg)
        return self._address

    def initialize(self, ctx: Context) -> None:
        """Bind and start answering probes.

        Raises:
            OSError: the address cannot be bound (the message names it).
        """
        if self._server is not None:
            self._stop(ctx)
        if self._metrics is None:
            self._metrics = _load_metrics(self._manager, self._registry)
        pool = Pool()
        server = WSGIServer(
            (self._host, self._port),
            self._app,
            spawn=pool,
            log=LoggingLogAdapter(logger, logging.DEBUG),
            error_log=LoggingLogAdapter(logger, logging.ERROR),
            environ={"SERVER_NAME": self._host},  # skip the reverse DNS lookup of getfqdn()
        )
        self._address = bind(server)
        server.start()
        self._server, self._pool = server, pool
        logger.debug("greentask: health server listening on %s", format_address(self._address))

    def execute(self, ctx: Context) -> None:
        """Wait for cancellation (the server answers from `initialize` to `cleanup`)."""
        ctx.wait()

    def cleanup(self, ctx: Context) -> None:
        """Stop answering: close the socket (the port is released) and end open connections."""
        self._stop(ctx)

    def _stop(self, ctx: Context) -> None:
        server, pool = self._server, self._pool
        self._server = self._pool = None
        if server is not None and not server.closed:
            server.close()
        if pool is not None:
            # Probes answer at once; what is left are idle keep-alive connections.
            drain(ctx, pool, 0.0, format_address(self._address), warn=False)

    # -- the WSGI application ----------------------------------------------------

    def _app(self, environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        content_type = _TEXT
        body: str | bytes
        if method not in ("GET", "HEAD"):
            code, body = 405, "method not allowed: use GET or HEAD\n"
        elif path == "/livez":
            code, body = self._livez()
        elif path == "/readyz":
            code, body = self._readyz()
        elif path == "/status":
            code, body, content_type = 200, json.dumps(self._status_json()) + "\n", _JSON
        elif path == "/metrics":
            code, body, content_type = self._metrics_text()
        else:
            code, body = 404, f"not found: {path}; try /livez, /readyz, /status or /metrics\n"
        data = body if isinstance(body, bytes) else body.encode("utf-8")
        headers = [
            ("Content-Type", content_type),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
        ]
        if code == 405:
            headers.append(("Allow", "GET, HEAD"))
        start_response(_STATUS_LINES[code], headers)
        return [b""] if method == "HEAD" else [data]

    def _livez(self) -> tuple[int, str]:
        phase = self._manager.phase
        if phase == "done":
            return 503, "not alive: the task manager has finished\n"
        return 200, f"ok: {phase}\n"

    def _readyz(self) -> tuple[int, str]:
        manager = self._manager
        phase = manager.phase
        if phase != "executing" or manager.stop_reason is not None:
            reason = f"shutting down: {manager._stop_description()}" if manager.stop_reason is not None else phase
            return 503, f"not ready: {reason}\n"
        waiting = [
            f"{status.name!r} is {status.state.value}"
            for status in manager.status()
            if status.kind == "task" and status.state is not TaskState.RUNNING
        ]
        if waiting:
            return 503, f"not ready: task {', task '.join(waiting)}\n"
        return 200, "ready\n"

    def _metrics_text(self) -> tuple[int, str | bytes, str]:
        if self._metrics is None:
            return 404, "not found: /metrics needs prometheus-client (pip install 'greentask[metrics]')\n", _TEXT
        try:
            data, content_type = self._metrics.render()
        except Exception:
            logger.exception("%s: health server: collecting /metrics failed", self._manager.name)
            return 500, "collecting metrics failed; see the log\n", _TEXT
        return 200, data, content_type

    def _status_json(self) -> dict[str, Any]:
        """The ``/status`` document (see the class docstring)."""
        manager = self._manager
        reason = manager.stop_reason
        return {
            "manager": {"phase": manager.phase, "stop_reason": None if reason is None else str(reason)},
            "tasks": [_task_json(status) for status in manager.status()],
        }
