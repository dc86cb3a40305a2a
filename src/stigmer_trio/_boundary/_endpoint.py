# A client of the daemon's control endpoint for the CLI: GET one JSON document over a plain socket.
# Rule: stdlib only, and not even http.client or urllib (they import ssl and email: ~15 ms of a ~60 ms
# `status`); never raises for a missing, slow or broken endpoint (None: the caller falls back).
from __future__ import annotations

import json
import socket

TYPE_CHECKING = False  # typing is not imported at run time: the CLI's hot paths stay lean
if TYPE_CHECKING:
    from typing import Any

__all__ = ["get_json"]


def get_json(url: str, path: str, timeout: float = 1.0) -> dict[str, Any] | None:
    """GET `path` from the endpoint at `url` (``http://HOST:PORT``); the JSON object of a 200 answer,
    else None (no endpoint, no answer within `timeout`, not 200, cut short, not a JSON object).

    HTTP/1.0: the answer is one body with a Content-Length, then the server closes.
    """
    if not url.startswith("http://"):
        return None
    address = url[len("http://") :]
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())  # Host: as in the URL
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        if lines[0].split(b" ")[1:2] != [b"200"]:
            return None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length" and int(value) != len(body):
                return None  # cut short
        document = json.loads(body)
    except (OSError, ValueError, IndexError):
        return None
    return document if isinstance(document, dict) else None
