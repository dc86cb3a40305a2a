# The status board: what the runtime reports about itself (Runtime.status(), GET /status, runtime.json),
# kept current by one event hook. Reads the connection cell, the worker statuses and the dev server's
# current info (its Web UI's port too); counts dev-server restarts and remembers the last error and the
# endpoint's URL.
# Rule: reading it never blocks and never does I/O; it writes nothing but its own counters.
from __future__ import annotations

import os
import time
from typing import Any

from .._core._config import RuntimeConfig
from .._core._events import (
    ChildExited,
    ChildRestartScheduled,
    ChildStarted,
    ConnectionState,
    Event,
    RestartLimitExceeded,
    ServerExited,
)
from .._core._names import RUNTIME_SUPERVISOR, ChildName
from ._cell import ConnectionCell
from ._serve_devserver import DevServer
from ._serve_outbox import Outbox
from ._serve_worker import WorkerStatus

__all__ = ["StatusBoard"]


class StatusBoard:
    """The runtime's status document, from the shared objects and the events."""

    def __init__(
        self,
        config: RuntimeConfig,
        cell: ConnectionCell,
        devserver: DevServer | None,
        workers: dict[str, WorkerStatus],
        outbox: Outbox | None = None,
    ) -> None:
        self.config = config
        self._connection = config.effective_connection()
        self._cell = cell
        self._devserver = devserver
        self._workers = workers
        self._outbox = outbox
        self.started_at = time.time()
        self.http_url: str | None = None  # the control endpoint, once it serves
        self._devserver_restarts = 0
        self._last_error: str | None = None

    def on_event(self, event: Event) -> None:
        """The hook: restarts of the dev server, the last error, the endpoint's URL."""
        if isinstance(event, ChildRestartScheduled) and event.supervisor == RUNTIME_SUPERVISOR:
            if event.name == ChildName.DEVSERVER:
                self._devserver_restarts += 1
        elif isinstance(event, ServerExited) and not event.reason.startswith("stopped"):
            self._last_error = f"dev server {event.reason}"
        elif isinstance(event, ChildExited) and event.error is not None and not event.stopped:
            self._last_error = f"{event.name}: {event.error}"
        elif isinstance(event, RestartLimitExceeded):
            self._last_error = str(event)
        elif (
            isinstance(event, ChildStarted) and event.name == ChildName.HTTP and isinstance(event.value, str)
        ):
            self.http_url = event.value

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot: connection, workers, dev server, endpoint, Web UI; ready = CONNECTED
        and every worker polling on the current epoch. `ui` is the dev server's Web UI while a server
        with one is ready (None without a UI, in external mode, and while no server is ready)."""
        now = time.time()
        workers = [w.snapshot() for w in self._workers.values()]
        dev_server: dict[str, Any] | None = None
        ui_port: int | None = None
        if self.config.dev_server is not None:
            server = self._devserver.info if self._devserver is not None else None
            ui_port = server.ports.get("ui") if server else None
            dev_server = {
                "pid": server.pid if server else None,
                "address": server.address if server else self.config.dev_server.address,
                "restarts": self._devserver_restarts,
                "adopted": server.adopted if server else False,
                "started_at": server.started_at if server else None,
                "uptime_s": round(now - server.started_at, 3) if server else None,
            }
        return {
            "running": True,
            "ready": self._cell.state is ConnectionState.CONNECTED
            and all(w["running"] and w["epoch"] == self._cell.epoch for w in workers),
            "state_dir": str(self.config.state_dir),
            "address": self._connection.address,
            "namespace": self._connection.namespace,
            "daemon": {
                "pid": os.getpid(),
                "started_at": self.started_at,
                "uptime_s": round(now - self.started_at, 3),
                "last_error": self._last_error,
            },
            "dev_server": dev_server,
            "connection": self._cell.snapshot(),
            "workers": workers,
            "http": None if self.http_url is None else {"url": self.http_url},
            "ui": None if ui_port is None else {"url": f"http://127.0.0.1:{ui_port}"},
            "outbox": None if self._outbox is None else self._outbox.snapshot(),
        }
