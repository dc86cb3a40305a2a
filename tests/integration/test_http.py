"""The control endpoint over real loopback sockets: bad and slow clients never stop it serving.

The server (HttpServer: hypercorn's Trio worker + our ASGI app) runs in this trio run, on a free port;
clients are raw TCP streams, so malformed bytes reach the server exactly as sent. Real clock.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stigmer_trio._core._config import HttpConfig
from stigmer_trio._tree import _serve_http as serve_http
from stigmer_trio._tree._serve_http import ControlApp, HttpPortInUse, HttpServer

pytestmark = pytest.mark.integration

STATUS = {"ready": True, "connection": {"state": "connected", "epoch": 1}, "workers": []}


class Endpoint:
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.port = server.port
        self.requests = 0

    async def exchange(self, raw: bytes, timeout: float = 5.0) -> bytes:
        """Send `raw`, half-close, read until the server closes: everything it answered."""
        stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        async with stream:
            await stream.send_all(raw)
            await stream.send_eof()
            data = b""
            with trio.fail_after(timeout):
                while chunk := await stream.receive_some(65536):
                    data += chunk
        return data

    async def get(
        self, path: str, method: str = "GET", host: bytes = b"127.0.0.1", extra: bytes = b""
    ) -> tuple[int, bytes]:
        data = await self.exchange(
            method.encode()
            + b" "
            + path.encode()
            + b" HTTP/1.1\r\nHost: "
            + host
            + b"\r\nConnection: close\r\n"
            + extra
            + b"\r\n"
        )
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body

    async def concurrent_gets(self, path: str, clients: int) -> list[int]:
        """`clients` GETs of `path` at once, each on its own connection: their status codes."""
        codes: list[int] = []

        async def one() -> None:
            codes.append((await self.get(path))[0])

        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(one)
        return codes


@contextlib.asynccontextmanager
async def open_endpoint(config: HttpConfig, metrics: bytes = b"# HELP x\n" * 200) -> AsyncIterator[Endpoint]:
    app = ControlApp(lambda: STATUS, lambda: metrics, "text/plain; version=0.0.4")
    server = HttpServer(config, app)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve)
        assert f"http://127.0.0.1:{server.port}" == url
        yield Endpoint(server)
        nursery.cancel_scope.cancel(reason="test over")
    server.close()


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    async with open_endpoint(HttpConfig(port=0)) as endpoint:
        yield endpoint


class ThreadedEndpoint:
    """The endpoint in its own trio run on a thread, for synchronous tests (hypothesis drives examples
    itself, so its test cannot share a trio run with an async fixture)."""

    def __init__(self) -> None:
        self.port = 0
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            app = ControlApp(lambda: STATUS, lambda: b"x", "text/plain")
            server = HttpServer(HttpConfig(port=0), app)
            self.port = server.port
            self._token = trio.lowlevel.current_trio_token()
            try:
                with trio.CancelScope() as self._scope:
                    async with trio.open_nursery() as nursery:
                        await nursery.start(server.serve)
                        self._ready.set()
            finally:
                server.close()

        try:
            trio.run(main)
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()

    def __enter__(self) -> ThreadedEndpoint:
        self._thread.start()
        assert self._ready.wait(10), "the endpoint did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._scope is not None and self._token is not None:
            trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(10)

    def exchange(self, raw: bytes, timeout: float = 5.0) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return data

    def get(self, path: str) -> int:
        data = self.exchange(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        return int(data.split(b" ", 2)[1])


@pytest.fixture(scope="module")
def threaded_endpoint() -> Iterator[ThreadedEndpoint]:
    with ThreadedEndpoint() as endpoint:
        yield endpoint
    assert endpoint.error is None, repr(endpoint.error)


class TestServing:
    async def test_endpoints_over_tcp(self, endpoint: Endpoint) -> None:
        """The four resources answer over a real socket; unknown path 404, POST 405."""
        assert 200 == (await endpoint.get("/healthz"))[0]
        assert 200 == (await endpoint.get("/readyz"))[0]
        assert 200 == (await endpoint.get("/status"))[0]
        assert 200 == (await endpoint.get("/metrics"))[0]
        assert 404 == (await endpoint.get("/nope"))[0]
        assert 405 == (await endpoint.get("/status", "POST"))[0]

    async def test_a_busy_port_is_a_clear_error(self, endpoint: Endpoint) -> None:
        """Binding a port that is in use: HttpPortInUse naming the address, at construction."""
        with pytest.raises(HttpPortInUse, match=rf"127\.0\.0\.1:{endpoint.port} is in use"):
            HttpServer(HttpConfig(port=endpoint.port), ControlApp(dict, bytes, "text/plain"))

    def test_non_loopback_without_the_flag_is_refused_by_the_cli(self, tmp_path: Any) -> None:
        """`up --http 0.0.0.0:0`: exit 2, one line naming the host and the flag, nothing started."""
        result = subprocess.run(
            [sys.executable, "-m", "stigmer_trio", "up", "--state-dir", str(tmp_path), "--http", "0.0.0.0:0"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert 2 == result.returncode
        assert 1 == len(result.stderr.strip().splitlines()), result.stderr
        assert "'0.0.0.0'" in result.stderr
        assert "--http-allow-remote" in result.stderr
        assert not (tmp_path / "runtime.json").exists()


# Request heads a broken or hostile client might send: garbage, bad request lines, bad headers, huge
# heads, invalid bytes, wrong versions, bodies that do not match their length.
_token = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=40)
_request_line = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda m, p, v: f"{m} {p} {v}".encode("latin-1"),
        st.sampled_from(["GET", "POST", "HEAD", "BREW", "", "G ET", "get"]),
        st.one_of(st.sampled_from(["/healthz", "/status", "*", "", "//", "/%00", "http://x/y"]), _token),
        st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/9", "", "HTTP/1.1 extra"]),
    ),
)
_header = st.one_of(
    st.binary(max_size=100),
    st.builds(lambda k, v: f"{k}: {v}".encode("latin-1"), _token, _token),
    st.sampled_from(
        [
            b"Content-Length: -1",
            b"Content-Length: 99999999999999999999",
            b"Transfer-Encoding: chunked",
            b"Transfer-Encoding: gzip, chunked",
            b"Host: a\r\nHost: b",
            b"X: " + b"y" * 20_000,
            b" folded: header",
        ]
    ),
)
_request = st.builds(
    lambda line, headers, tail: line + b"\r\n" + b"\r\n".join(headers) + tail,
    _request_line,
    st.lists(_header, max_size=6),
    st.sampled_from([b"\r\n\r\n", b"\r\n", b"", b"\n\n", b"\r\n\r\n0\r\n", b"\r\n\r\nxyz"]),
)


class TestHostileClients:
    @settings(
        max_examples=80,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(raw=_request)
    def test_malformed_requests_leave_it_serving(
        self, threaded_endpoint: ThreadedEndpoint, raw: bytes
    ) -> None:
        """Whatever bytes arrive, the server answers or closes within 5 s, and keeps serving."""
        # The server may reset a connection that sent garbage: fine (a timeout is not).
        with contextlib.suppress(ConnectionResetError):
            threaded_endpoint.exchange(raw)
        assert 200 == threaded_endpoint.get("/healthz")
        assert threaded_endpoint.error is None

    @pytest.mark.slow
    async def test_slow_loris_does_not_block_others_and_is_cut_off(self, endpoint: Endpoint) -> None:
        """20 clients trickling a request head one byte per 0.2 s: others are served at once meanwhile;
        the trickling connections are closed by the server (keep-alive timeout), not kept forever."""
        closed_after: list[float] = []
        began = trio.current_time()

        async def loris() -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", endpoint.port)
            async with stream:
                head = b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000
                try:
                    for byte in head:
                        await stream.send_all(bytes([byte]))
                        await trio.sleep(0.2)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    closed_after.append(trio.current_time() - began)

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(loris)
            await trio.sleep(0.5)
            for _ in range(10):
                with trio.fail_after(1.0):
                    assert 200 == (await endpoint.get("/healthz"))[0]
                await trio.sleep(0.1)
            with trio.move_on_after(30):
                while len(closed_after) < 20:
                    await trio.sleep(0.1)
            nursery.cancel_scope.cancel(reason="test over")
        assert 20 == len(closed_after)
        assert max(closed_after) < 15.0
        assert 200 == (await endpoint.get("/healthz"))[0]

    async def test_500_concurrent_connections_are_all_served(self, endpoint: Endpoint) -> None:
        """500 clients at once, each GET /readyz: 500 answers of 200."""
        with trio.fail_after(60):
            assert [200] * 500 == await endpoint.concurrent_gets("/readyz", 500)
        assert 200 == (await endpoint.get("/healthz"))[0]

    async def test_clients_that_vanish_mid_response(self, endpoint: Endpoint) -> None:
        """100 clients reset the connection right after the request (RST, not FIN): still serving."""
        for _ in range(100):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.connect(("127.0.0.1", endpoint.port))
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            sock.close()  # RST while the server may be writing its answer
            await trio.sleep(0)
        # Let the server meet every reset (each is a few ms of work); then it must still answer.
        await trio.sleep(0.2)
        assert 200 == (await endpoint.get("/metrics"))[0]

    async def test_idle_connections_are_closed(self, endpoint: Endpoint) -> None:
        """A client that connects and sends nothing is dropped (keep-alive timeout, 5 s)."""
        stream = await trio.open_tcp_stream("127.0.0.1", endpoint.port)
        async with stream:
            with trio.fail_after(12):
                assert b"" == await stream.receive_some(1024)


# A client in another process: opens N connections to the port, says so, then holds them until stdin closes.
IDLE_CLIENTS = """
import socket, sys
held = [socket.create_connection(("127.0.0.1", int(sys.argv[1]))) for _ in range(int(sys.argv[2]))]
print("connected", flush=True)
sys.stdin.read()
"""


def sockets_open() -> int:
    """Sockets among this process's open fds (the endpoint's listener and accepted connections, ...)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


def responses(data: bytes) -> list[bytes]:
    """The status lines of every response in `data` (HTTP/1.1 only: an HTTP/2 frame is not one)."""
    return [line for line in data.split(b"\r\n") if line.startswith(b"HTTP/")]


class TestProtocol:
    async def test_http2_prior_knowledge_is_not_served(self, endpoint: Endpoint) -> None:
        """The HTTP/2 preface and a SETTINGS frame: one HTTP/1.1 505, then the connection closes."""
        settings_frame = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        data = await endpoint.exchange(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings_frame)
        assert data.startswith(b"HTTP/1.1 505 ")
        assert [b"HTTP/1.1 505 "] == responses(data)

    async def test_h2c_upgrade_is_not_honoured(self, endpoint: Endpoint) -> None:
        """`Upgrade: h2c` without a body: no 101, the GET is answered over HTTP/1.1."""
        data = await endpoint.exchange(
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade, HTTP2-Settings, close\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        )
        assert [b"HTTP/1.1 200 "] == responses(data)
        assert data.endswith(b"\r\n\r\nok\n")

    @pytest.mark.parametrize("split", [None, 7 * 1024], ids=["one-write", "7KiB-then-the-rest"])
    async def test_a_60_kib_head_gets_431_and_nothing_more(
        self, endpoint: Endpoint, split: int | None
    ) -> None:
        """A complete 60 KiB head (one write, or completed by a second): 431, then the server closes."""
        head = b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 60 * 1024 + b"\r\n\r\n"
        stream = await trio.open_tcp_stream("127.0.0.1", endpoint.port)
        async with stream:
            if split is not None:
                await stream.send_all(head[:split])
                await trio.sleep(0.1)  # the server has read the first part
                head = head[split:]
            await stream.send_all(head + b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            data = b""
            with trio.fail_after(5):
                while chunk := await stream.receive_some(65536):
                    data += chunk
        assert [b"HTTP/1.1 431 "] == responses(data)
        assert b'"ready"' not in data

    async def test_a_head_just_under_the_cap_is_served(self, endpoint: Endpoint) -> None:
        """A 7.5 KiB head is an ordinary request."""
        status, _ = await endpoint.get("/healthz", extra=b"X-Pad: " + b"a" * 7600 + b"\r\n")
        assert 200 == status


class TestHost:
    @pytest.mark.parametrize(
        "host",
        ["127.0.0.1:{port}", "127.0.0.1", "127.9.9.9:1", "localhost", "LocalHost:{port}", "[::1]:{port}",
         "::1", "probe.internal:5", "10.0.0.7:9464"],
    )  # fmt: skip
    async def test_loopback_own_and_allowed_hosts_are_served(self, host: str) -> None:
        """Loopback literals and `localhost` (any port), and the allowed hosts: 200."""
        config = HttpConfig(port=0, allow_hosts=("probe.internal", "10.0.0.7:9464"))
        async with open_endpoint(config) as endpoint:
            status, _ = await endpoint.get("/status", host=host.format(port=endpoint.port).encode())
        assert 200 == status

    @pytest.mark.parametrize(
        "host", ["evil.example", "evil.example:{port}", "10.0.0.7:80", "10.0.0.7", "a b", ""]
    )
    async def test_other_hosts_get_421(self, host: str) -> None:
        """Any other Host (a DNS-rebinding page's name, an allowed host on another port): 421, no status."""
        config = HttpConfig(port=0, allow_hosts=("probe.internal", "10.0.0.7:9464"))
        async with open_endpoint(config) as endpoint:
            status, body = await endpoint.get("/status", host=host.format(port=endpoint.port).encode())
        assert (421, b"misdirected request: this Host is not allowed (see --http-allow-host)\n") == (
            status,
            body,
        )

    async def test_the_cli_client_is_served(self, endpoint: Endpoint) -> None:
        """The CLI's own client (HTTP/1.0, Host = the URL's host) gets the status document."""
        from stigmer_trio._boundary._endpoint import get_json

        assert STATUS == await trio.to_thread.run_sync(get_json, endpoint.server.url, "/status")


class TestStuckClients:
    async def test_a_client_that_never_reads_cannot_hold_the_endpoint(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A client pipelining requests without reading: others are served meanwhile, its connection is
        closed after WRITE_TIMEOUT, and the endpoint then stops at once (before: a shielded write held its
        connection and the endpoint's shutdown forever)."""
        monkeypatch.setattr(serve_http, "WRITE_TIMEOUT", 0.5)
        with trio.fail_after(20):
            async with open_endpoint(HttpConfig(port=0), metrics=b"x" * 100_000) as endpoint:
                sock = trio.socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                await sock.connect(("127.0.0.1", endpoint.port))
                # 200 responses of 100 kB, far more than the socket buffers hold: the server's write blocks.
                await sock.send(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 200)
                await trio.sleep(0.2)
                assert 200 == (await endpoint.get("/healthz"))[0]
                await trio.sleep(1.0)  # past WRITE_TIMEOUT: the stuck connection is closed
                stopping = trio.current_time()
            stopped_in = trio.current_time() - stopping
            sock.close()
        assert 0.5 > stopped_in


class TestConnectionCap:
    async def test_idle_connections_beyond_the_cap_cost_no_fds(self) -> None:
        """max_connections=4: 20 idle connections from another process never hold more than 4 sockets here,
        and a real request is still answered at once (an idle connection is closed to make room)."""
        async with open_endpoint(HttpConfig(port=0, max_connections=4)) as endpoint:
            baseline = sockets_open()
            command = [sys.executable, "-c", IDLE_CLIENTS, str(endpoint.port), "20"]
            clients = await trio.lowlevel.open_process(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            try:
                assert clients.stdout is not None
                with trio.fail_after(10):
                    assert b"connected\n" == await clients.stdout.receive_some(64)
                peak = 0
                for _ in range(20):  # 1 s: the endpoint accepts what it will meanwhile
                    peak = max(peak, sockets_open() - baseline)
                    await trio.sleep(0.05)
                began = trio.current_time()
                with trio.fail_after(2):
                    assert 200 == (await endpoint.get("/healthz"))[0]
                served_in = trio.current_time() - began
            finally:
                clients.kill()
                await clients.wait()
        assert 4 >= peak
        assert 1.0 > served_in

    async def test_a_request_already_sent_is_not_closed_for_a_newcomer(self) -> None:
        """max_connections=1, 30 clients at once, each sending its request with the connect: all 30 get 200
        (the cap closes only connections still waiting for their request)."""
        async with open_endpoint(HttpConfig(port=0, max_connections=1)) as endpoint:
            with trio.fail_after(20):
                assert [200] * 30 == await endpoint.concurrent_gets("/status", 30)


def test_allow_remote_prints_a_warning(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """`--http 0.0.0.0:0 --http-allow-remote`: accepted, with a warning that names the host (no bind here)."""
    from stigmer_trio._cli._main import build_parser
    from stigmer_trio._cli._settings import Settings, full_config

    args = build_parser().parse_args(
        ["up", "--state-dir", str(tmp_path), "--http", "0.0.0.0:0", "--http-allow-remote"]
    )
    config = full_config(Settings.gather(args, {}, {}, tmp_path))
    assert HttpConfig(host="0.0.0.0", port=0, allow_remote=True) == config.http
    warning = capsys.readouterr().err
    assert "warning" in warning
    assert "0.0.0.0" in warning
    assert "no authentication" in warning
