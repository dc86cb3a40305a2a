# Does anything accept TCP at an address right now? The readiness and backoff loops ask this every
# 2-20 ms while a server boots, from the dev-server child and the connection child at once, so it must
# be cheap: a bare non-blocking connect costs ~27 µs of CPU against a closed local port, where
# trio.open_tcp_stream (name resolution, happy eyeballs, a nursery) costs ~110 µs. Under a loaded CPU
# those microseconds are taken from the booting server. Rule: trio sockets only, no Temporal.
from __future__ import annotations

import socket

import trio

__all__ = ["accepts"]


async def accepts(host: str, port: int) -> bool:
    """Whether a TCP connect to (host, port) is accepted (an IP address: no name is resolved); the
    connection is closed at once. Bound it with a Trio deadline (a full backlog never answers)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        await sock.connect((host, port))
    except OSError:
        return False
    finally:
        sock.close()
    return True
