# systemd's notification protocol (sd_notify), for a daemon that systemd runs as a Type=notify service:
# READY=1, STATUS=..., WATCHDOG=1 and STOPPING=1 as newline-separated KEY=VALUE datagrams on the AF_UNIX
# socket named by $NOTIFY_SOCKET (a path, or an abstract name written with a leading '@'). Rule: a
# failure to send never reaches the caller (it is logged once); the watchdog pings come from a Trio task
# on the runtime's own loop, never from a thread, so a wedged loop stops them and systemd restarts us.
# Stdlib only at import (trio is imported inside the watchdog task).
from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, MutableMapping

from .._core._events import (
    ConnectionState,
    ConnectionStateChanged,
    Event,
    RestartLimitExceeded,
    ServerExited,
    ServerReady,
)

__all__ = [
    "SYSTEMD_ENV",
    "SystemdNotifier",
    "format_message",
    "notify_address",
    "status_for",
    "watchdog_interval",
]

logger = logging.getLogger("stigmer_trio.systemd")

# What systemd hands a notify service; taken out of the environment so no child of ours inherits it.
SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
MAX_STATUS = 1024  # characters of a STATUS= text (an error message can be long; systemctl shows a line)


def format_message(fields: Mapping[str, object]) -> bytes:
    """One notification datagram: ``KEY=VALUE`` lines in the given order. A value's line breaks and other
    control characters become spaces (a value is one line of the protocol); STATUS is cut to MAX_STATUS."""
    lines = []
    for key, value in fields.items():
        if not key or not all(c.isascii() and (c.isupper() or c.isdigit() or c == "_") for c in key):
            raise ValueError(f"not a notification key: {key!r}")
        text = "".join(c if c.isprintable() else " " for c in str(value))
        if key == "STATUS" and len(text) > MAX_STATUS:
            text = text[: MAX_STATUS - 3] + "..."
        lines.append(f"{key}={text}")
    return "\n".join(lines).encode("utf-8", "replace")


def notify_address(value: str) -> str | bytes | None:
    """The socket address $NOTIFY_SOCKET names: an absolute path, or an abstract name ('@' becomes the
    leading NUL byte). None for anything else (a relative path, another address family)."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode("utf-8", "surrogateescape")
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of $WATCHDOG_USEC, when it is a positive whole number and
    $WATCHDOG_PID is unset or is `pid` (the watchdog is meant for another process otherwise). None: no
    watchdog."""
    raw_usec = environ.get("WATCHDOG_USEC")
    if not raw_usec:
        return None
    raw_pid = environ.get("WATCHDOG_PID")
    if raw_pid:
        try:
            if int(raw_pid) != pid:
                return None
        except ValueError:
            return None
    try:
        usec = int(raw_usec)
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000 / 2


def status_for(event: Event) -> str | None:
    """The STATUS= text an event sets (None: the event changes nothing systemd shows)."""
    if isinstance(event, ServerExited):
        return f"dev server {event.address} (pid {event.pid}) gone, restarting: {event.reason}"
    if isinstance(event, ServerReady):
        return f"dev server ready at {event.address} (pid {event.pid}); connecting"
    if isinstance(event, ConnectionStateChanged):
        if event.new is ConnectionState.CONNECTED:
            return f"connected (epoch {event.epoch})"
        if event.new is ConnectionState.DISCONNECTED:
            return f"reconnecting: {event.reason}"
        if event.new is ConnectionState.CONNECTING:
            return "connecting"
        return None
    if isinstance(event, RestartLimitExceeded):
        return f"failed: {event}"
    return None


class SystemdNotifier:
    """Talks to the systemd that started this process (when $NOTIFY_SOCKET says one did).

    Every method is cheap and never raises: a datagram that cannot be sent (no listener, a full queue,
    a path too long) is dropped and the first such failure is logged. After `stopping()`, events no
    longer change the STATUS= text (the stop's own events would read as restarts).
    """

    def __init__(self, address: str | bytes, watchdog: float | None, pid: int) -> None:
        self.address = address
        self.watchdog = watchdog  # seconds between WATCHDOG=1 pings; None: no watchdog
        self.pid = pid
        self.is_stopping = False
        self._failed = False
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._socket.setblocking(False)  # on the Trio loop: a full queue drops the datagram, never waits

    @classmethod
    def from_environ(
        cls, environ: MutableMapping[str, str], pid: int | None = None
    ) -> SystemdNotifier | None:
        """The notifier systemd's variables in `environ` describe, or None (not under systemd, or an
        address we cannot use: logged). Takes the variables out of `environ` either way, so that no
        child process (the dev server, a worker's subprocess) inherits them."""
        pid = os.getpid() if pid is None else pid
        taken = {name: environ.pop(name) for name in SYSTEMD_ENV if name in environ}
        raw = taken.get("NOTIFY_SOCKET")
        if not raw:
            return None
        address = notify_address(raw)
        if address is None:
            logger.warning("NOTIFY_SOCKET=%r is neither an absolute path nor an '@' name: not notifying", raw)
            return None
        return cls(address, watchdog_interval(taken, pid), pid)

    def close(self) -> None:
        self._socket.close()

    def send(self, fields: Mapping[str, object]) -> bool:
        """Send one notification; False (the first failure logged) if it could not be sent."""
        try:
            self._socket.sendto(format_message(fields), self.address)
        except (OSError, ValueError) as exc:
            if not self._failed:
                self._failed = True
                logger.warning(
                    "cannot notify systemd at %r (%s); the daemon goes on, later failures are not logged",
                    self.address,
                    exc,
                )
            return False
        return True

    def status(self, text: str) -> bool:
        return self.send({"STATUS": text})

    def ready(self, status: str) -> bool:
        """READY=1 (with our pid as MAINPID: a no-op when systemd started us, the right pid when a
        wrapper did and NotifyAccess=all lets us say so) and the STATUS= text."""
        return self.send({"READY": 1, "MAINPID": self.pid, "STATUS": status})

    def stopping(self, status: str) -> bool:
        """STOPPING=1 and the STATUS= text: the shutdown has begun. systemd takes it as if it had sent
        SIGTERM: TimeoutStopSec bounds the rest, the watchdog no longer applies (its pings end here)."""
        if self.is_stopping:
            return True
        self.is_stopping = True
        return self.send({"STOPPING": 1, "STATUS": status})

    def on_event(self, event: Event) -> None:
        """The event hook: STATUS= follows the dev server and the connection."""
        if self.is_stopping:
            return
        text = status_for(event)
        if text is not None:
            self.status(text)

    async def serve_watchdog(self) -> None:
        """WATCHDOG=1 every `watchdog` seconds, from this Trio task, until cancelled (at once without a
        watchdog). A loop that stops running tasks stops the pings: systemd then restarts the daemon."""
        import trio

        if self.watchdog is None:
            return
        while True:
            self.send({"WATCHDOG": 1})
            await trio.sleep(self.watchdog)
