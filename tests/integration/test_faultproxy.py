"""stigmer_trio.testing.FaultProxy over real loopback sockets, with a Trio echo server upstream.

Real sockets: real clock (no autojump). Each wait is bounded; "nothing arrives" is a timed-out read.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import AsyncIterator

import pytest
import trio

from stigmer_trio import ConfigError
from stigmer_trio.testing import FaultProxy, open_fault_proxy

pytestmark = pytest.mark.integration

QUIET = 0.3  # seconds a read must stay empty to count as "swallowed"


class Echo:
    """An echo server on 127.0.0.1:0 that records how each of its connections ended."""

    def __init__(self) -> None:
        self.address = ""
        self.endings: list[str] = []  # "eof" (clean close) or "reset" (RST / broken)

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
            self.endings.append("eof")
        except trio.BrokenResourceError:
            self.endings.append("reset")


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    server = Echo()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
        server.address = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        yield server
        nursery.cancel_scope.cancel(reason="test over")


async def dial(address: str) -> trio.SocketStream:
    host, _, port = address.rpartition(":")
    with trio.fail_after(5):
        return await trio.open_tcp_stream(host, int(port))


async def roundtrip(stream: trio.SocketStream, data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data` and read until as many bytes came back (or the timeout: TooSlowError)."""
    await stream.send_all(data)
    got = b""
    with trio.fail_after(timeout):
        while len(got) < len(data):
            chunk = await stream.receive_some(65536)
            assert chunk, "closed mid-echo"
            got += chunk
    return got


async def silent(stream: trio.SocketStream, data: bytes) -> bool:
    """Send `data`; True if nothing at all comes back within QUIET seconds."""
    await stream.send_all(data)
    with trio.move_on_after(QUIET):
        await stream.receive_some(65536)
        return False
    return True


async def closed(stream: trio.SocketStream) -> str:
    """How the peer ended `stream`: 'eof', 'reset', or raises TooSlowError if it stays open 5 s."""
    with trio.fail_after(5):
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            return "reset"
    return "eof"


async def wait_for(predicate: object, seconds: float = 5.0) -> None:
    assert callable(predicate)
    with trio.fail_after(seconds):
        while not predicate():
            await trio.sleep(0.01)


class TestPassThrough:
    async def test_bytes_pass_both_ways(self, echo: Echo) -> None:
        """A healthy proxy is transparent: what is sent comes back."""
        async with open_fault_proxy(echo.address) as proxy:
            stream = await dial(proxy.address)
            assert b"hello" == await roundtrip(stream, b"hello")
            assert (1, 1) == (proxy.connections, proxy.accepted)
            await stream.aclose()

    async def test_a_megabyte_passes_intact(self, echo: Echo) -> None:
        """More than the bounded buffers hold at once: backpressure, no loss, no reordering."""
        payload = bytes(range(256)) * 4096
        async with open_fault_proxy(echo.address) as proxy:
            stream = await dial(proxy.address)
            got = bytearray()

            async def receive() -> None:
                while len(got) < len(payload):
                    got.extend(await stream.receive_some(65536))

            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(receive)
                    await stream.send_all(payload)
            assert payload == bytes(got)
            await stream.aclose()

    async def test_eof_is_forwarded(self, echo: Echo) -> None:
        """A client's half-close reaches the upstream, whose close reaches the client; the link ends."""
        async with open_fault_proxy(echo.address) as proxy:
            stream = await dial(proxy.address)
            await roundtrip(stream, b"x")
            await stream.send_eof()
            assert "eof" == await closed(stream)
            await wait_for(lambda: proxy.connections == 0)
            assert ["eof"] == echo.endings
            await stream.aclose()

    async def test_serve_with_nursery_start(self, echo: Echo) -> None:
        """nursery.start(proxy.serve) returns once it listens; cancelling it stops the listener."""
        proxy = FaultProxy(echo.address)
        async with trio.open_nursery() as nursery:
            assert proxy is await nursery.start(proxy.serve)
            stream = await dial(proxy.address)
            assert b"ok" == await roundtrip(stream, b"ok")
            await stream.aclose()
            nursery.cancel_scope.cancel(reason="test over")


class TestReset:
    async def test_reset_closes_current_connections_with_rst(self, echo: Echo) -> None:
        """reset(): the client and the upstream both see a connection reset, not a clean close."""
        async with open_fault_proxy(echo.address) as proxy:
            streams = [await dial(proxy.address) for _ in range(3)]
            for stream in streams:
                await roundtrip(stream, b"x")
            assert 3 == proxy.reset()
            assert ["reset"] * 3 == [await closed(stream) for stream in streams]
            await wait_for(lambda: len(echo.endings) == 3)
            assert ["reset"] * 3 == echo.endings
            assert (0, 3) == (proxy.connections, proxy.resets)
            for stream in streams:
                await stream.aclose()

    async def test_new_connections_pass_after_reset(self, echo: Echo) -> None:
        """reset() is once: a connection made afterwards works."""
        async with open_fault_proxy(echo.address) as proxy:
            old = await dial(proxy.address)
            await roundtrip(old, b"x")
            proxy.reset()
            new = await dial(proxy.address)
            assert b"again" == await roundtrip(new, b"again")
            assert (1, 2) == (proxy.connections, proxy.accepted)
            await old.aclose()
            await new.aclose()


class TestBlackhole:
    async def test_current_connection_swallows(self, echo: Echo) -> None:
        """blackhole(): a live connection stays open but nothing comes back."""
        async with open_fault_proxy(echo.address) as proxy:
            stream = await dial(proxy.address)
            await roundtrip(stream, b"x")
            proxy.blackhole()
            assert await silent(stream, b"lost")
            assert 1 == proxy.connections
            await stream.aclose()

    async def test_new_connection_is_accepted_and_swallows(self, echo: Echo) -> None:
        """A connection made during the blackhole is accepted, and swallows too."""
        async with open_fault_proxy(echo.address) as proxy:
            proxy.blackhole()
            stream = await dial(proxy.address)
            assert await silent(stream, b"lost")
            assert 1 == proxy.accepted
            await stream.aclose()

    async def test_heal_closes_connections_that_lost_bytes(self, echo: Echo) -> None:
        """heal(): connections whose bytes were swallowed are reset (their stream is corrupt)."""
        async with open_fault_proxy(echo.address) as proxy:
            before = await dial(proxy.address)
            await roundtrip(before, b"x")
            proxy.blackhole()
            during = await dial(proxy.address)
            assert await silent(before, b"lost")
            assert await silent(during, b"lost")
            proxy.heal()
            assert ["reset", "reset"] == [await closed(before), await closed(during)]
            await before.aclose()
            await during.aclose()

    async def test_connection_that_lost_nothing_survives_heal(self, echo: Echo) -> None:
        """A connection idle through the blackhole is whole: it stays open and works after heal()."""
        async with open_fault_proxy(echo.address) as proxy:
            idle = await dial(proxy.address)
            await roundtrip(idle, b"x")
            proxy.blackhole()
            await trio.sleep(QUIET)
            proxy.heal()
            assert b"still here" == await roundtrip(idle, b"still here")
            await idle.aclose()

    async def test_new_connections_pass_after_heal(self, echo: Echo) -> None:
        """After heal() a new connection is proxied normally."""
        async with open_fault_proxy(echo.address) as proxy:
            proxy.blackhole()
            lost = await dial(proxy.address)
            assert await silent(lost, b"lost")
            proxy.heal()
            fresh = await dial(proxy.address)
            assert b"back" == await roundtrip(fresh, b"back")
            await lost.aclose()
            await fresh.aclose()


class TestLatency:
    async def test_latency_delays_each_direction(self, echo: Echo) -> None:
        """latency(0.2): an echo crosses the proxy twice, so its round trip takes >= 0.4 s."""
        async with open_fault_proxy(echo.address) as proxy:
            stream = await dial(proxy.address)
            await roundtrip(stream, b"warm")
            proxy.latency(0.2)
            began = time.perf_counter()
            assert b"slow" == await roundtrip(stream, b"slow")
            slow = time.perf_counter() - began
            proxy.heal()
            began = time.perf_counter()
            await roundtrip(stream, b"fast")
            fast = time.perf_counter() - began
            await stream.aclose()
        assert 0.4 <= slow < 1.4
        assert fast < 0.1

    async def test_latency_keeps_throughput(self, echo: Echo) -> None:
        """It is a delay line, not a per-chunk sleep: ten pipelined messages take ~one delay, not ten."""
        async with open_fault_proxy(echo.address) as proxy:
            stream = await dial(proxy.address)
            proxy.latency(0.2)
            began = time.perf_counter()
            for _ in range(10):
                await stream.send_all(b"m" * 100)
                await trio.sleep(0.01)
            got = 0
            with trio.fail_after(5):
                while got < 1000:
                    got += len(await stream.receive_some(65536))
            elapsed = time.perf_counter() - began
            await stream.aclose()
        assert 0.4 <= elapsed < 1.5

    def test_negative_latency_is_refused(self) -> None:
        """latency(-1) is a ConfigError naming the value."""
        with pytest.raises(ConfigError, match=r"latency must be .* got -1"):
            FaultProxy("127.0.0.1:1").latency(-1)


class TestLifecycle:
    async def test_cancellation_leaves_no_listener_and_no_connection(self, echo: Echo) -> None:
        """Leaving open_fault_proxy closes the listener and every proxied connection, both sides."""
        async with open_fault_proxy(echo.address) as proxy:
            address = proxy.address
            stream = await dial(address)
            await roundtrip(stream, b"x")
        assert await closed(stream) in ("eof", "reset")
        await wait_for(lambda: len(echo.endings) == 1)
        host, _, port = address.rpartition(":")
        with trio.socket.socket() as sock, pytest.raises(ConnectionRefusedError):
            await sock.connect((host, int(port)))
        with pytest.raises(RuntimeError, match="not listening"):
            proxy.address  # noqa: B018
        assert 0 == proxy.connections
        await stream.aclose()

    async def test_unreachable_upstream_closes_the_client(self) -> None:
        """Upstream refuses: the accepted client connection is closed, the proxy keeps serving."""
        with trio.socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
            await sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        async with open_fault_proxy(f"127.0.0.1:{port}") as proxy:
            for _ in range(2):
                stream = await dial(proxy.address)
                assert await closed(stream) in ("eof", "reset")
                await stream.aclose()
            assert (2, 0) == (proxy.accepted, proxy.connections)

    @pytest.mark.parametrize("listen", ["0.0.0.0:0", "10.1.2.3:7233", "example.com:0"])
    def test_non_loopback_listen_is_refused(self, listen: str) -> None:
        """Only loopback: anything else is a ConfigError naming the field and the value."""
        with pytest.raises(
            ConfigError, match=rf"listen must be a loopback address .* got '{re.escape(listen)}'"
        ):
            FaultProxy("127.0.0.1:7233", listen=listen)

    @pytest.mark.parametrize("upstream", ["7233", "host:", "host:99999", ""])
    def test_malformed_upstream_is_refused(self, upstream: str) -> None:
        """upstream must be HOST:PORT: the ConfigError names the field and the value."""
        with pytest.raises(ConfigError, match=f"upstream must be HOST:PORT, got '{re.escape(upstream)}'"):
            FaultProxy(upstream)
