"""The control endpoint's request rules (RequestGuard, split_host): pure logic, no sockets, no trio."""

from __future__ import annotations

import pytest

from stigmer_trio._tree._serve_http import MAX_HEAD, RequestGuard, split_host

MISDIRECTED = (421, b"misdirected request: this Host is not allowed (see --http-allow-host)\n")


class TestSplitHost:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("localhost", ("localhost", None)),
            ("LocalHost:8080", ("localhost", 8080)),
            ("127.0.0.1:9464", ("127.0.0.1", 9464)),
            ("[::1]", ("::1", None)),
            ("[::1]:9464", ("::1", 9464)),
            ("::1", ("::1", None)),
            (" pod.internal:80 ", ("pod.internal", 80)),
        ],
    )
    def test_forms(self, value: str, expected: tuple[str, int | None]) -> None:
        """Names, IPv4 and IPv6 literals, with and without a port; lower case."""
        assert expected == split_host(value)

    @pytest.mark.parametrize("value", ["", ":80", "a:", "a:x", "a:65536", "a:-1", "[::1", "[::1]x", "[::1]:"])
    def test_malformed(self, value: str) -> None:
        """No host, a port that is not 0-65535, an unclosed or trailing-garbage bracket: None."""
        assert split_host(value) is None


class TestRequestGuard:
    guard = RequestGuard(["probe.internal", "10.0.0.7:9464", "127.0.0.1:5000"])

    def refusal(self, host: bytes, server: tuple[str, int] | None = None) -> tuple[int, bytes] | None:
        return self.guard.refusal(b"GET", b"/status", [(b"Host", host)], server)

    @pytest.mark.parametrize(
        "host",
        [b"127.0.0.1", b"127.0.0.1:1", b"127.8.0.1:80", b"localhost", b"LOCALHOST:9", b"[::1]:7", b"::1"],
    )
    def test_loopback_names_any_port(self, host: bytes) -> None:
        """Loopback IP literals and `localhost`, any port: allowed."""
        assert self.refusal(host) is None

    @pytest.mark.parametrize(
        "host", [b"probe.internal", b"probe.internal:1", b"PROBE.internal:9464", b"10.0.0.7:9464"]
    )
    def test_allowed_entries(self, host: bytes) -> None:
        """An entry without a port allows any port; one with a port allows that port."""
        assert self.refusal(host) is None

    @pytest.mark.parametrize(
        "host",
        [
            b"evil.example",
            b"evil.example:5000",
            b"10.0.0.7",
            b"10.0.0.7:80",
            b"probe.internal.evil",
            b"",
            b"a b",
        ],
    )
    def test_anything_else_is_misdirected(self, host: bytes) -> None:
        """Other names, an allowed host on another port (no port = 80), garbage: 421."""
        assert MISDIRECTED == self.refusal(host)

    def test_the_address_the_connection_reached(self) -> None:
        """The local address of the connection (an IP literal of ours, e.g. a pod IP): allowed on its port."""
        assert self.refusal(b"10.1.2.3:9464", ("10.1.2.3", 9464)) is None
        assert MISDIRECTED == self.refusal(b"10.1.2.3:9465", ("10.1.2.3", 9464))

    def test_no_host_is_served(self) -> None:
        """An HTTP/1.0 request without Host (h11 requires one in 1.1) is no browser's: served."""
        assert self.guard.refusal(b"GET", b"/status", []) is None

    def test_every_host_header_must_be_allowed(self) -> None:
        """Two Host headers: each must name this endpoint."""
        headers = [(b"host", b"127.0.0.1"), (b"host", b"evil.example")]
        assert MISDIRECTED == self.guard.refusal(b"GET", b"/", headers)

    def test_head_size(self) -> None:
        """A head up to MAX_HEAD bytes passes; one byte more: 431 (counted as sent: line, names, values)."""
        line = len(b"GET /status HTTP/1.1\r\n") + len(b"Host: localhost\r\n") + len(b"X: \r\n") + len(b"\r\n")
        fits = [(b"Host", b"localhost"), (b"X", b"a" * (MAX_HEAD - line))]
        assert self.guard.refusal(b"GET", b"/status", fits) is None
        over = [(b"Host", b"localhost"), (b"X", b"a" * (MAX_HEAD - line + 1))]
        assert (431, b"request head too large\n") == self.guard.refusal(b"GET", b"/status", over)
