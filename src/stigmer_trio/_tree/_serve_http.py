# The `http` child (HttpServer.serve): a loopback control endpoint (/healthz /readyz /status /metrics) served
# by hypercorn's Trio server with a small ASGI app. No HTTP parsing here: hypercorn (h11) does it, and bounds
# each connection (idle keep-alive and read timeouts, a cap on incomplete request heads), so a slow or broken
# client only ever costs its own connection task. Must never: block the trio loop in a handler, or let a
# handler's exception reach the supervision tree (hypercorn answers 500 and logs it).
from __future__ import annotations

import errno
import json
import logging
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio

from .._core._config import HttpConfig, is_loopback
from .._core._errors import StigmerError
from .._core._events import ConnectionState

__all__ = ["ControlApp", "HttpPortInUse", "HttpServer", "readiness"]

logger = logging.getLogger("stigmer_trio.http")
server_logger = logging.getLogger("stigmer_trio.http.server")  # hypercorn's: its "Running on" is noise
server_logger.setLevel(logging.WARNING)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

ALLOWED = "GET, HEAD"
JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"


class HttpPortInUse(StigmerError):
    """The control endpoint's address cannot be bound."""


def readiness(status: dict[str, Any]) -> tuple[bool, str]:
    """Ready = CONNECTED and every worker polling; else why not, in one line."""
    if status.get("ready"):
        return True, "ready"
    reasons = []
    connection = status.get("connection") or {}
    if connection.get("state") != ConnectionState.CONNECTED:
        why = f": {connection['last_error']}" if connection.get("last_error") else ""
        reasons.append(f"connection {connection.get('state')}{why}")
    for worker in status.get("workers") or []:
        if not worker.get("running"):
            reasons.append(f"worker {worker.get('task_queue')} not running")
        elif connection.get("epoch") != worker.get("epoch"):
            reasons.append(f"worker {worker.get('task_queue')} still on an old connection")
    return False, "; ".join(reasons) or "not ready"


class ControlApp:
    """The ASGI app: four read-only resources; GET and HEAD only."""

    def __init__(self, status: Callable[[], dict[str, Any]], metrics: Callable[[], bytes], content_type: str):
        self._status = status
        self._metrics = metrics
        self._metrics_type = content_type.encode()
        self._routes: dict[str, Callable[[], tuple[int, bytes, bytes]]] = {
            "/healthz": self.healthz,
            "/readyz": self.readyz,
            "/status": self.status,
            "/metrics": self.metrics,
        }

    def healthz(self) -> tuple[int, bytes, bytes]:
        return 200, TEXT, b"ok\n"  # answered at all = the supervision tree runs

    def readyz(self) -> tuple[int, bytes, bytes]:
        ready, why = readiness(self._status())
        return (200 if ready else 503), TEXT, f"{why}\n".encode()

    def status(self) -> tuple[int, bytes, bytes]:
        return 200, JSON, json.dumps(self._status()).encode()

    def metrics(self) -> tuple[int, bytes, bytes]:
        return 200, self._metrics_type, self._metrics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":  # websocket: refuse
            await send({"type": "websocket.close", "code": 1003})
            return
        route = self._routes.get(scope["path"])
        headers: list[tuple[bytes, bytes]] = [(b"cache-control", b"no-store")]
        if route is None:
            code, kind, body = 404, TEXT, b"not found: try /healthz /readyz /status /metrics\n"
        elif scope["method"] not in ("GET", "HEAD"):
            code, kind, body = 405, TEXT, b"method not allowed\n"
            headers.append((b"allow", ALLOWED.encode()))
        else:
            code, kind, body = route()
        headers += [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": code, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); HttpPortInUse naming the address if it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)  # 500 clients connecting at once must not overflow the accept queue
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        what = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
        raise HttpPortInUse(f"http endpoint {host}:{port} {what}") from None
    return sock


class HttpServer:
    """One endpoint across restarts of its child: the first lifetime uses the socket bound up front (so a
    busy port fails the start, not a later restart); later lifetimes bind the same port again."""

    def __init__(self, config: HttpConfig, app: ControlApp) -> None:
        """Binds now: a busy port raises HttpPortInUse here, before anything starts."""
        self.config = config
        self.app = app
        self._socket: socket.socket | None = bind_socket(config.host, config.port)
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://{config.bind.rsplit(':', 1)[0]}:{self.port}"
        if is_loopback(config.host):
            return
        logger.warning("the control endpoint listens on %s: it has no authentication", self.url)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """One lifetime: serve until cancelled; started(url) once accepting.

        hypercorn's own `serve` runs every connection in one nursery, so one connection's exception
        ends the whole server; measured here: a `HEAD x HTTP/1.0` followed by stray bytes raises
        BusyResourceError inside hypercorn's error response. So each connection runs hypercorn's
        TCPServer (its h11 protocol, timeouts and limits) inside a guard that ends only that connection.
        """
        from hypercorn.config import Config
        from hypercorn.trio.tcp_server import TCPServer
        from hypercorn.trio.worker_context import WorkerContext
        from hypercorn.typing import ConnectionState as HypercornState
        from hypercorn.utils import wrap_app

        sock, self._socket = self._socket, None
        if sock is None:
            sock = bind_socket(self.config.host, self.port)
        config = Config()
        config.accesslog = None
        config.errorlog = server_logger
        config.keep_alive_timeout = 5.0  # an idle (or slow-loris, header-less) connection is closed
        config.read_timeout = 10  # a connection that sends nothing at all for this long is dropped
        config.h11_max_incomplete_size = 8 * 1024  # request line + headers
        config.include_server_header = False
        app = wrap_app(self.app, config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
        context = WorkerContext(None)

        async def connection(stream: trio.SocketStream) -> None:
            try:
                await TCPServer(app, config, context, HypercornState({}), stream)  # type: ignore[arg-type]
            except* Exception as group:  # a broken client: its connection ends, the endpoint serves on
                logger.debug("http connection ended by %r", group.exceptions[0])

        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        try:
            async with trio.open_nursery() as handlers:
                await trio.serve_listeners(
                    connection,
                    [listener],
                    handler_nursery=handlers,
                    task_status=_Started(task_status, self.url),
                )
        finally:
            with trio.CancelScope(shield=True):
                await listener.aclose()


class _Started:
    """Adapts trio.serve_listeners' started(listeners) to our started(url)."""

    def __init__(self, task_status: trio.TaskStatus[str], url: str) -> None:
        self._task_status = task_status
        self._url = url

    def started(self, value: object = None) -> None:
        self._task_status.started(self._url)
