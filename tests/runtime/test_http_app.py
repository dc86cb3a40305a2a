"""The control endpoint's ASGI app, called directly (no sockets): routes, codes, methods, bodies."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stigmer_trio._tree._serve_http import ControlApp

READY = {"ready": True, "connection": {"state": "connected", "epoch": 1}, "workers": []}
NOT_READY = {
    "ready": False,
    "connection": {"state": "disconnected", "epoch": 1, "last_error": "UNAVAILABLE"},
    "workers": [],
}


async def call(app: ControlApp, path: str, method: str = "GET") -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    scope = {"type": "http", "path": path, "method": method, "headers": []}
    await app(scope, receive, send)
    start, body = sent
    assert ("http.response.start", "http.response.body") == (start["type"], body["type"])
    return start["status"], dict(start["headers"]), body["body"]


def make(status: dict[str, Any] = READY) -> ControlApp:
    return ControlApp(lambda: status, lambda: b"# metrics\n", "text/plain; version=0.0.4; charset=utf-8")


class TestControlApp:
    async def test_healthz(self) -> None:
        """/healthz: 200 ok while it answers at all."""
        assert (200, b"ok\n") == (await call(make(NOT_READY), "/healthz"))[::2]

    async def test_readyz_ready_and_not(self) -> None:
        """/readyz: 200 when ready, 503 with the reason when not."""
        assert (200, b"ready\n") == (await call(make(), "/readyz"))[::2]
        code, _, body = await call(make(NOT_READY), "/readyz")
        assert (503, b"connection disconnected: UNAVAILABLE\n") == (code, body)

    async def test_status_is_the_status_document(self) -> None:
        """/status: the status() document as JSON."""
        code, headers, body = await call(make(), "/status")
        assert (200, b"application/json", READY) == (code, headers[b"content-type"], json.loads(body))

    async def test_metrics_uses_the_exposition_content_type(self) -> None:
        """/metrics: the registry's exposition with Prometheus's content type."""
        code, headers, body = await call(make(), "/metrics")
        assert (200, b"# metrics\n") == (code, body)
        assert headers[b"content-type"].startswith(b"text/plain; version=0.0.4")

    @pytest.mark.parametrize("path", ["/", "/nope", "/healthz/", "/metrics.txt"])
    async def test_unknown_path_is_404(self, path: str) -> None:
        """Anything else: 404."""
        assert 404 == (await call(make(), path))[0]

    @pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
    async def test_other_methods_are_405_with_allow(self, method: str) -> None:
        """A known path with another method: 405 and Allow: GET, HEAD."""
        code, headers, _ = await call(make(), "/status", method)
        assert (405, b"GET, HEAD") == (code, headers[b"allow"])

    async def test_head_has_headers_but_no_body(self) -> None:
        """HEAD: the GET's headers (content-length included), an empty body."""
        code, headers, body = await call(make(), "/status", "HEAD")
        assert (200, b"") == (code, body)
        assert int(headers[b"content-length"]) == len(json.dumps(READY))

    async def test_lifespan_startup_and_shutdown(self) -> None:
        """The lifespan protocol completes both phases (hypercorn then runs with lifespan support)."""
        messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
        sent: list[str] = []

        async def receive() -> dict[str, Any]:
            return next(messages)

        async def send(message: Any) -> None:
            sent.append(message["type"])

        await make()({"type": "lifespan"}, receive, send)
        assert ["lifespan.startup.complete", "lifespan.shutdown.complete"] == sent
