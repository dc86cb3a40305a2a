# A fault-injecting TCP proxy for tests: forwards loopback connections to one upstream and, on command,
# resets them (RST), blackholes them (bytes accepted and swallowed both ways), or delays every chunk.
# Owns its listener and every proxied socket pair; cancelling serve() closes all of them (open_fault_proxy
# is its `open_*` form; stigmer_trio.testing exports both, lazily). Must never:
# bind anything but loopback, buffer without bound (a few chunks per direction, then backpressure),
# poll (every task waits on a socket, a channel or a deadline), or let one connection's error reach
# another connection or the listener.
from __future__ import annotations

import contextlib
import math
import socket
import struct
from collections.abc import AsyncIterator

import trio

from ._core._config import is_loopback
from ._core._errors import ConfigError

__all__ = ["FaultProxy", "open_fault_proxy"]

_CHUNK = 64 * 1024  # bytes read at a time, per direction
_QUEUED_CHUNKS = 8  # chunks in flight per direction (the delay line); then the reader waits
_UPSTREAM_CONNECT_TIMEOUT = 5.0
_LINGER_ZERO = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, not FIN

_Stream = trio.SocketStream


def _split(field: str, value: object) -> tuple[str, int]:
    """'host:port' (IPv6 in brackets) -> (host, port), or ConfigError naming the field and value."""
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        host = host.strip("[]")
        if sep and host and port.isdigit() and int(port) <= 65535:
            return host, int(port)
    raise ConfigError(f"{field} must be HOST:PORT, got {value!r}")


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _abort(stream: _Stream | None) -> None:
    """Make the coming close() of `stream` an RST (SO_LINGER 0); a socket already gone is fine."""
    if stream is None:
        return
    with contextlib.suppress(OSError, trio.ClosedResourceError):
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)


class _Link:
    """One proxied connection: the client's socket, the upstream's (once connected), its cancel scope."""

    def __init__(self, client: _Stream) -> None:
        self.client = client
        self.upstream: _Stream | None = None
        self.scope = trio.CancelScope()
        self.lost = False  # bytes (or an EOF) were swallowed by a blackhole: the stream is corrupt

    def close(self, reason: str) -> None:
        """Hard-close both sides (RST): the handler's cleanup closes the sockets once cancelled."""
        _abort(self.client)
        _abort(self.upstream)
        self.scope.cancel(reason=reason)


class FaultProxy:
    """A TCP proxy from a loopback `listen` address to `upstream`, with faults switched on and off.

    Start it with ``nursery.start(proxy.serve)`` (or ``open_fault_proxy``); `address` is where clients
    connect. The fault switches are synchronous and act at once on current and new connections.
    """

    def __init__(self, upstream: str, *, listen: str = "127.0.0.1:0") -> None:
        self.upstream = upstream
        self._upstream = _split("upstream", upstream)
        self._listen = _split("listen", listen)
        if not is_loopback(self._listen[0]):
            raise ConfigError(
                f"listen must be a loopback address (127.0.0.1, ::1, localhost), got {listen!r}"
            )
        self._address: str | None = None
        self._links: set[_Link] = set()
        self._blackholed = False
        self._delay = 0.0
        self.accepted = 0  # connections accepted, ever
        self.resets = 0  # connections closed by reset()

    # --- state -----------------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """'HOST:PORT' to point a client at; RuntimeError before serve() listens."""
        if self._address is None:
            raise RuntimeError("the fault proxy is not listening (start serve() first)")
        return self._address

    @property
    def connections(self) -> int:
        """Proxied connections alive right now."""
        return len(self._links)

    @property
    def blackholed(self) -> bool:
        return self._blackholed

    @property
    def delay(self) -> float:
        """Seconds added to every forwarded chunk (0 when healthy)."""
        return self._delay

    # --- faults ----------------------------------------------------------------------------------------
    def reset(self) -> int:
        """Close every current connection with an RST on both sides; new connections pass. How many."""
        links = list(self._links)
        for link in links:
            link.close("fault proxy: reset()")
        self.resets += len(links)
        return len(links)

    def blackhole(self) -> None:
        """From now on swallow every byte, both ways, on current and new connections (until heal())."""
        self._blackholed = True

    def latency(self, seconds: float) -> None:
        """Deliver every chunk read from now on `seconds` later (until heal())."""
        if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds >= 0):
            raise ConfigError(f"latency must be a number of seconds >= 0, got {seconds!r}")
        self._delay = float(seconds)

    def heal(self) -> None:
        """Back to normal. Connections that lost bytes in a blackhole are closed (RST): they are corrupt."""
        self._blackholed = False
        self._delay = 0.0
        for link in list(self._links):
            if link.lost:
                link.close("fault proxy: heal() of a connection that lost bytes")

    # --- serving ---------------------------------------------------------------------------------------
    async def serve(self, *, task_status: trio.TaskStatus[FaultProxy] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept and proxy until cancelled; started() once listening. Cancellation closes everything."""
        host, port = self._listen
        listeners = await trio.open_tcp_listeners(port, host=host)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._handle, listeners)
                name = listeners[0].socket.getsockname()
                self._address = _join(name[0], name[1])
                task_status.started(self)
        finally:
            self._address = None
            for listener in listeners:  # serve_listeners closes them too, unless start() never ran it
                await trio.aclose_forcefully(listener)

    async def _handle(self, client: _Stream) -> None:
        """One connection: connect upstream, pump both ways until both ends close or a fault/error."""
        self.accepted += 1
        link = _Link(client)
        self._links.add(link)
        try:
            with link.scope:
                host, port = self._upstream
                try:
                    with trio.fail_after(_UPSTREAM_CONNECT_TIMEOUT):
                        link.upstream = await trio.open_tcp_stream(host, port)
                except (OSError, trio.TooSlowError):
                    link.close("fault proxy: upstream unreachable")
                    return
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pipe, link, client, link.upstream)
                    nursery.start_soon(self._pipe, link, link.upstream, client)
        finally:
            self._links.discard(link)
            if link.upstream is not None:
                await trio.aclose_forcefully(link.upstream)
            await trio.aclose_forcefully(client)  # serve_listeners would too; RST if close() set linger

    async def _pipe(self, link: _Link, source: _Stream, sink: _Stream) -> None:
        """One direction: a reader and a writer joined by a bounded delay line of (due time, chunk)."""
        send, receive = trio.open_memory_channel[tuple[float, bytes]](_QUEUED_CHUNKS)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read, source, send)
                await self._write(link, sink, receive)
        except* (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            link.close("fault proxy: a peer broke the connection")  # pass the abort on to the other peer

    async def _read(self, source: _Stream, send: trio.MemorySendChannel[tuple[float, bytes]]) -> None:
        async with send:
            while True:
                data = await source.receive_some(_CHUNK)
                await send.send((trio.current_time() + self._delay, data))
                if not data:  # EOF, queued behind the data like any chunk
                    return

    async def _write(
        self, link: _Link, sink: _Stream, receive: trio.MemoryReceiveChannel[tuple[float, bytes]]
    ) -> None:
        async with receive:
            async for due, data in receive:
                await trio.sleep_until(due)
                if self._blackholed:
                    link.lost = True  # swallowed, EOF included: this stream can never be whole again
                elif data:
                    await sink.send_all(data)
                else:
                    await sink.send_eof()
                    return


@contextlib.asynccontextmanager
async def open_fault_proxy(upstream: str, *, listen: str = "127.0.0.1:0") -> AsyncIterator[FaultProxy]:
    """A FaultProxy to `upstream`, listening (on loopback) for the duration of the block."""
    proxy = FaultProxy(upstream, listen=listen)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel(reason="fault proxy closing")
