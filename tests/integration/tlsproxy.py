"""A TLS-terminating proxy for the tests (Trio, loopback only): TLS with ALPN "h2" (gRPC needs it) on
127.0.0.1, a free port, plain bytes to the upstream dev server. Its SSLContext can be swapped (a rotated
server certificate, another client CA) and its live connections cut (`reset`), so the client must open
new ones: the next handshake uses the new context. Every failed handshake is recorded with its reason.
Certificates come from trustme (test CAs)."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import trio
import trustme


def server_context(ca: trustme.CA, names: tuple[str, ...], client_ca: trustme.CA | None) -> ssl.SSLContext:
    """A server context: a certificate for `names` issued by `ca`; with `client_ca`, mTLS (a client
    certificate issued by it is required)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.set_alpn_protocols(["h2"])
    ca.issue_cert(*names).configure_cert(context)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        client_ca.configure_trust(context)
    return context


def write_client_files(
    ca: trustme.CA, directory: Path, *, client: trustme.CA | None = None
) -> dict[str, Path]:
    """ca.pem (the CA to verify the server with) and, with `client`, client.pem / client.key (a client
    certificate it issued; the key 0600). Replaces the files in place (a rotation)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {"ca_file": directory / "ca.pem"}
    ca.cert_pem.write_to_path(str(files["ca_file"]))
    if client is not None:
        issued = client.issue_cert("stigmer-client")
        files["cert_file"] = directory / "client.pem"
        files["key_file"] = directory / "client.key"
        issued.cert_chain_pems[0].write_to_path(str(files["cert_file"]))
        files["key_file"].touch(mode=0o600)
        files["key_file"].chmod(0o600)
        issued.private_key_pem.write_to_path(str(files["key_file"]))
    return files


class TlsProxy:
    def __init__(self, upstream_port: int, context: ssl.SSLContext, port: int) -> None:
        self.upstream_port = upstream_port
        self.context = context  # swap it: new connections use the new one
        self.address = f"127.0.0.1:{port}"
        self.handshakes = 0
        self.failures: list[str] = []  # why each failed handshake failed
        self.alpn: list[str | None] = []
        self._scopes: set[trio.CancelScope] = set()

    def reset(self) -> int:
        """Cut every live connection; how many were cut."""
        scopes = list(self._scopes)
        for scope in scopes:
            scope.cancel(reason="proxy reset")
        return len(scopes)

    async def handle(self, stream: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                await self._relay(stream)
            finally:
                self._scopes.discard(scope)
                await trio.aclose_forcefully(stream)

    async def _relay(self, stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, self.context, server_side=True)
        try:
            with trio.fail_after(5):
                await tls.do_handshake()
        except (trio.BrokenResourceError, trio.TooSlowError) as exc:
            self.failures.append(str(exc.__cause__ or exc))
            return
        self.handshakes += 1
        self.alpn.append(tls.selected_alpn_protocol())
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.upstream_port)
        except OSError as exc:  # the server is not (yet) listening: drop this client, as a terminator does
            self.failures.append(f"upstream: {exc}")
            return
        async with upstream, trio.open_nursery() as nursery:

            async def pump(source: trio.abc.ReceiveStream, sink: trio.abc.SendStream) -> None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    while data := await source.receive_some(65536):
                        await sink.send_all(data)
                nursery.cancel_scope.cancel(reason="one side closed")

            nursery.start_soon(pump, tls, upstream)
            nursery.start_soon(pump, upstream, tls)


@contextlib.asynccontextmanager
async def open_tls_proxy(upstream_port: int, context: ssl.SSLContext) -> AsyncIterator[TlsProxy]:
    """A TlsProxy listening on 127.0.0.1 (a free port) until the block ends."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    proxy = TlsProxy(upstream_port, context, port)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, proxy.handle, listeners)
        yield proxy
        proxy.reset()
        nursery.cancel_scope.cancel(reason="proxy closed")
