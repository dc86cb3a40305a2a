# The `http` child (HttpServer.serve): a loopback control endpoint (/healthz /readyz /status /metrics) served
# by hypercorn's Trio machinery with a small ASGI app. No HTTP parsing here: hypercorn (h11) does it, and
# bounds each connection (idle keep-alive and read timeouts, a cap on incomplete request heads), so a slow or
# broken client only ever costs its own connection task. Ours on top: HTTP/1.1 only (hypercorn's switch to
# HTTP/2 on a prior-knowledge preface or `Upgrade: h2c` is left out; another version gets 505); RequestGuard
# (a head over 8 KiB however it arrived: 431; a Host that does not name this endpoint: 421, so a
# DNS-rebinding page cannot read it); at most `max_connections` open connections (the rest wait in the
# kernel's listen backlog: no fd of ours); a write to a client that stops reading gives up after
# WRITE_TIMEOUT. Must never: block the trio loop in a handler, or let a connection's exception reach the
# supervision tree (hypercorn answers 500 and logs it; a broken connection ends alone).
from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import functools
import json
import logging
import re
import socket
import termios
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import Any, Protocol

import trio

from .._core._config import HttpConfig, is_loopback
from .._core._errors import StigmerError
from .._core._events import ConnectionState

__all__ = ["ControlApp", "HttpPortInUse", "HttpServer", "RequestGuard", "readiness", "split_host"]

logger = logging.getLogger("stigmer_trio.http")
server_logger = logging.getLogger("stigmer_trio.http.server")  # hypercorn's: its "Running on" is noise
server_logger.setLevel(logging.WARNING)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

ALLOWED = "GET, HEAD"
MAX_HEAD = 8 * 1024  # bytes of request line + headers
WRITE_TIMEOUT = 5.0  # seconds a response write may wait for a client that does not read
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


_PORT = re.compile(r"[0-9]{1,5}")


def split_host(value: str) -> tuple[str, int | None] | None:
    """A Host header or an allowed-host entry -> (host in lower case, port or None); None if malformed.

    'name', 'name:port', '1.2.3.4:port', '[v6]', '[v6]:port', or a bare IPv6 literal (no port).
    """
    value = value.strip().lower()
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port = rest[1:] if rest else None
    elif value.count(":") > 1:
        host, port = value, None
    else:
        host, colon, port = value.partition(":")
        port = port if colon else None
    if not host or (port is not None and not (_PORT.fullmatch(port) and int(port) <= 65535)):
        return None
    return host, None if port is None else int(port)


class RequestGuard:
    """What a request must pass before the app sees it; a refused one is answered and its connection
    closed by the connection's protocol (no app task runs for it: nothing else writes to the connection).

    - A head (request line + headers) over MAX_HEAD bytes: 431. h11 bounds a head only while it is
      incomplete; one that arrives complete in a single read is measured here.
    - A Host that names neither a loopback address, `localhost`, the endpoint's own address nor an
      `allowed` entry (an entry without a port allows any port): 421. A page served from a rebound DNS
      name reaches us with that name as its Host, so it cannot read /status. No Host at all (HTTP/1.0;
      h11 requires one in HTTP/1.1) is no browser's request, and is served.
    """

    def __init__(self, allowed: Iterable[str]) -> None:
        self.allowed = {split_host(entry) for entry in allowed} - {None}

    def host_allowed(self, value: bytes, server: tuple[str, int] | None = None) -> bool:
        """`value` (a Host header) names this endpoint; `server`: the address the connection reached (an IP
        literal of ours, never a rebound name)."""
        split = split_host(value.decode("latin-1"))
        if split is None:
            return False
        host, port = split
        if is_loopback(host) or (host, None) in self.allowed:
            return True
        port = 80 if port is None else port
        return (host, port) in self.allowed or (
            server is not None and (host, port) == (server[0].lower(), server[1])
        )

    def refusal(
        self,
        method: bytes,
        target: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        server: tuple[str, int] | None = None,
    ) -> tuple[int, bytes] | None:
        """(status, body) for a request refused before the app, else None."""
        headers = list(headers)
        size = len(method) + len(target) + len(b"  HTTP/1.1\r\n\r\n")
        if size + sum(len(name) + len(value) + len(b": \r\n") for name, value in headers) > MAX_HEAD:
            return 431, b"request head too large\n"
        for name, value in headers:
            if name.lower() == b"host" and not self.host_allowed(value, server):
                return 421, b"misdirected request: this Host is not allowed (see --http-allow-host)\n"
        return None


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
        self.guard = RequestGuard((*config.allow_hosts, f"{config.bind.rsplit(':', 1)[0]}:{self.port}"))
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
        TCPServer (its h11 protocol, timeouts and limits) inside a guard that ends only that connection,
        and our own accept loop takes a connection only when one of `max_connections` slots is free.
        """
        sock, self._socket = self._socket, None
        if sock is None:
            sock = bind_socket(self.config.host, self.port)
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        try:
            task_status.started(self.url)  # listening since the bind: connections queue meanwhile
            # hypercorn (h11, h2, wsproto: ~30 ms of imports) is loaded for the first client or by
            # prepare() (the daemon calls it once it said ready), not before: at start-up it would
            # delay the connection and the workers, who share this thread.
            await trio.lowlevel.wait_readable(listener.socket)
            connection, slots = self._connection_handler()
            async with trio.open_nursery() as handlers:
                handlers.start_soon(accept, listener, slots, connection, handlers)
        finally:
            with trio.CancelScope(shield=True):
                await listener.aclose()

    def prepare(self) -> None:
        """Load hypercorn now (~30 ms once per process; a lifetime's own handler is then cheap)."""
        self._connection_handler()

    def _connection_handler(self) -> tuple[Callable[[trio.SocketStream], Awaitable[None]], Slots]:
        """What serves one accepted connection (hypercorn's h11 protocol under our guard), and the slots
        that cap them."""
        from hypercorn.config import Config
        from hypercorn.trio.worker_context import WorkerContext
        from hypercorn.typing import ConnectionState as HypercornState
        from hypercorn.utils import wrap_app

        config = Config()
        config.accesslog = None
        config.errorlog = server_logger
        config.keep_alive_timeout = 5.0  # an idle (or slow-loris, header-less) connection is closed
        config.read_timeout = 10  # a connection that sends nothing at all for this long is dropped
        config.h11_max_incomplete_size = MAX_HEAD  # a head arriving in pieces; RequestGuard: in one piece
        config.include_server_header = False
        app = wrap_app(self.app, config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
        context = WorkerContext(None)
        slots = Slots(self.config.max_connections)
        connection_class = _http11_connection()

        async def connection(stream: trio.SocketStream) -> None:
            server = connection_class(app, config, context, HypercornState({}), stream)
            server.slots = slots
            server.guard = self.guard
            try:
                with slots.hold(server):
                    await server
            except* Exception as group:  # a broken client: its connection ends, the endpoint serves on
                logger.debug("http connection ended by %r", group.exceptions[0])
            finally:
                stream.socket.close()  # hypercorn's own close may have been cut short by a cancel

        return connection, slots


async def accept(
    listener: trio.SocketListener,
    slots: Slots,
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    handlers: trio.Nursery,
) -> None:
    """Accept while a slot is free (trio.serve_listeners' loop, with the cap): a client beyond the cap
    stays in the listen backlog, costing no fd here, until a connection ends or an idle one is closed
    to make room for it."""
    while True:
        await trio.lowlevel.wait_readable(listener.socket)  # someone is waiting to be accepted
        await slots.take()
        try:
            stream = await listener.accept()
        except OSError as exc:
            slots.give_back()
            if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS):
                raise
            logger.error("http accept failed: %s; retrying in 0.1 s", exc.strerror)
            await trio.sleep(0.1)
            continue
        except BaseException:
            slots.give_back()
            raise
        handlers.start_soon(handler, stream)


class _Connection(Protocol):
    def waiting(self) -> bool:
        """Waiting for a request that has not arrived: idle in hypercorn's terms (no request being served,
        perhaps part of a head buffered) and no unread bytes in the kernel's receive buffer."""
        ...


class Slots:
    """At most `limit` connections at once. When every slot is taken and another client waits to be
    accepted, the oldest connection that is itself only waiting (see _Connection.waiting) is closed for it:
    so a real request is served at once even while idle or trickling connections hold every slot, and the
    fd count stays bounded. A connection whose request has arrived is never the one closed. A keep-alive
    client whose idle connection is closed reconnects, as after any idle timeout."""

    RECHECK = 0.1  # seconds: while full, how often to look again for a connection to close

    def __init__(self, limit: int) -> None:
        self.free = limit
        self.live: dict[_Connection, trio.CancelScope] = {}  # oldest first
        self._changed = trio.Event()

    def changed(self) -> None:
        """A slot was freed or a connection became idle: the accept loop looks again."""
        self._changed.set()

    async def take(self) -> None:
        """A free slot; while there is none, close the oldest waiting connection (one at a time)."""
        while self.free == 0:
            if not any(scope.cancel_called for scope in self.live.values()):  # none already on its way out
                for live, scope in self.live.items():
                    if live.waiting():
                        scope.cancel(reason="the connection cap is reached and another client waits")
                        break
            self._changed = trio.Event()
            with trio.move_on_after(self.RECHECK):
                await self._changed.wait()
        self.free -= 1

    def give_back(self) -> None:
        self.free += 1
        self.changed()

    @contextlib.contextmanager
    def hold(self, live: _Connection) -> Iterator[None]:
        """The slot `take` reserved, held by `live` until it ends (or is closed to make room)."""
        with trio.CancelScope() as scope:
            self.live[live] = scope
            try:
                yield
            finally:
                del self.live[live]
                self.give_back()


class Refused(Exception):
    """A request refused before the app (answered): its connection ends."""


def unread(sock: trio.socket.SocketType) -> int:
    """Bytes in `sock`'s receive buffer (FIONREAD); -1 once it is closed."""
    if sock.fileno() == -1:
        return -1
    count = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, count, True)
    except OSError:
        return -1
    return count[0]


@functools.cache
def _http11_connection() -> type[Any]:
    """hypercorn's TCPServer for one plain TCP connection, HTTP/1.1 only, telling Slots when it is idle.

    hypercorn's ProtocolWrapper switches a connection to HTTP/2 when its h11 protocol meets a `PRI *
    HTTP/2.0` preface or a body-less `Upgrade: h2c` request: with h2's own 64 KiB header limit and none
    of ours. Here the connection runs an h11 protocol that never switches: an h2c upgrade request is
    answered as the HTTP/1.1 request it is, and the preface (to h11, a `PRI *` request of version 2.0)
    gets 505 and the connection is closed. hypercorn is imported on first use: a runtime without an
    endpoint never loads it.
    """
    import h11
    from hypercorn.events import Closed, Event, RawData, Updated
    from hypercorn.protocol.h11 import H11Protocol
    from hypercorn.trio.task_group import TaskGroup
    from hypercorn.trio.tcp_server import TCPServer
    from hypercorn.typing import ConnectionState as HypercornState
    from hypercorn.utils import parse_socket_addr

    class Http11Only(H11Protocol):
        guard: RequestGuard

        async def _check_protocol(self, event: h11.Request) -> None:
            """Never an upgrade to HTTP/2. Refused here, before an app task exists (so nothing else can be
            writing to the connection), answered, and the connection closed: a version other than 1.0 and
            1.1 (the HTTP/2 preface) with 505; what RequestGuard refuses with its answer."""
            if event.http_version not in (b"1.0", b"1.1"):
                code, body = 505, b"only HTTP/1.0 and 1.1 are served\n"
            else:
                refusal = self.guard.refusal(
                    event.method, event.target, event.headers.raw_items(), self.server
                )
                if refusal is None:
                    return
                code, body = refusal
            headers = [
                (b"cache-control", b"no-store"),
                (b"connection", b"close"),
                (b"content-type", TEXT),
                (b"content-length", str(len(body)).encode()),
            ]
            await self._send_h11_event(h11.Response(status_code=code, headers=headers))
            if event.method != b"HEAD":
                await self._send_h11_event(h11.Data(data=body))
            await self._send_h11_event(h11.EndOfMessage())
            await self.send(Closed())
            raise Refused(code)

    class Http11Connection(TCPServer):
        idle = True  # hypercorn's state: waiting for a request (its keep-alive timer runs)
        slots: Slots
        guard: RequestGuard

        async def run(self) -> None:
            """TCPServer.run for a plain (non-TLS) stream, with Http11Only in place of ProtocolWrapper."""
            sock = self.stream.socket
            try:
                client = parse_socket_addr(sock.family, sock.getpeername())
                server = parse_socket_addr(sock.family, sock.getsockname())
                async with TaskGroup() as task_group:
                    self._task_group = task_group
                    protocol = Http11Only(
                        self.app,
                        self.config,
                        self.context,
                        task_group,
                        HypercornState(self.state),
                        False,
                        client,
                        server,
                        self.protocol_send,
                    )
                    protocol.guard = self.guard
                    self.protocol = protocol  # type: ignore[assignment]
                    await self.protocol.initiate()
                    await self.idle_task.restart(self._task_group, self._idle_timeout)
                    await self._read_data()
            except OSError:
                pass
            finally:
                await self._close()

        def waiting(self) -> bool:
            return self.idle and unread(self.stream.socket) == 0

        async def protocol_send(self, event: Event) -> None:
            if isinstance(event, RawData):
                await self._send_bounded(event.data)
                return
            if isinstance(event, Updated):
                self.idle = event.idle
                if event.idle:
                    self.slots.changed()
            await super().protocol_send(event)

        async def _send_bounded(self, data: bytes) -> None:
            """hypercorn's write, shielded as there (a response is not cut when its app task is cancelled,
            e.g. after the client's half-close), but for WRITE_TIMEOUT at most: a client that pipelines
            requests and never reads held the write, its connection and any shutdown forever (measured:
            cancelling the endpoint never returned). Past that, its connection is closed."""
            async with self.send_lock:
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + WRITE_TIMEOUT
                    try:
                        await self.stream.send_all(data)
                        return
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                if scope.cancelled_caught:
                    logger.debug("http client did not read for %s s: connection closed", WRITE_TIMEOUT)
                    self.stream.socket.close()  # its reader sees ClosedResourceError
            await self.protocol.handle(Closed())

    return Http11Connection
