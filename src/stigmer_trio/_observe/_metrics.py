# Prometheus metrics, fed by the event records through ONE hook (`Metrics.on_event`): no child calls a
# metric. Each runtime has its own CollectorRegistry (never prometheus-client's global one), so two
# runtimes in one process, or a test after a test, never share a counter. No trio, no I/O here.
from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .._core._events import (
    ChildRestartScheduled,
    ConnectionState,
    ConnectionStateChanged,
    Event,
    FailFastRejected,
    HealthChecked,
    OutboxCounted,
    RestartLimitExceeded,
    ServerExited,
    ServerReady,
    SubmissionRejected,
    SubmissionsQueued,
    SubmissionStarted,
    WorkerStateChanged,
)
from .._core._names import RUNTIME_SUPERVISOR, ChildName, worker_task_queue

__all__ = ["CONNECTION_STATES", "CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
CONNECTION_STATES = tuple(state.value for state in ConnectionState)

# Seconds. Crash -> ready is bounded below by the server's boot (~0.15 s here) and above by backoff.
_RECOVERY_BUCKETS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0)
_RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The runtime's metrics and the one event hook that updates them."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._clock = clock
        self._exited_at: float | None = None  # when the dev server last went away, until it is ready
        # The exposition, until the next change: every change comes through on_event (or add_*), so a
        # scrape between two events (most of them: health checks come once a second) costs a lookup
        # instead of ~0.3 ms of the runtime's thread.
        self._text: bytes | None = None
        r = self.registry
        self.devserver_up = Gauge(
            "stigmer_devserver_up", "1 while the supervised dev server answers health checks", registry=r
        )
        self.devserver_restarts = Counter(
            "stigmer_devserver_restarts", "Restarts of the dev server by the supervisor", registry=r
        )
        self.crash_to_ready = Histogram(
            "stigmer_devserver_crash_to_ready_seconds",
            "From the dev server's exit (or hang) to the next instance being ready",
            buckets=_RECOVERY_BUCKETS,
            registry=r,
        )
        self.connection_state = Gauge(
            "stigmer_connection_state", "1 for the connection's current state", ["state"], registry=r
        )
        self.reconnects = Counter(
            "stigmer_reconnects", "Successful reconnections after the first connection", registry=r
        )
        self.health_check = Histogram(
            "stigmer_health_check_seconds",
            "Duration of the connection monitor's health RPCs",
            buckets=_RPC_BUCKETS,
            registry=r,
        )
        self.health_failures = Counter(
            "stigmer_health_check_failures", "Failed health RPCs of the connection monitor", registry=r
        )
        self.worker_running = Gauge(
            "stigmer_worker_running", "1 while a Worker polls the task queue", ["task_queue"], registry=r
        )
        self.worker_restarts = Counter(
            "stigmer_worker_restarts",
            "Restarts of a worker child by the supervisor",
            ["task_queue"],
            registry=r,
        )
        self.failfast = Counter(
            "stigmer_failfast_rejections",
            "Calls refused without network I/O because Temporal was not CONNECTED",
            registry=r,
        )
        self.supervisor_restarts = Counter(
            "stigmer_supervisor_restarts",
            "Restarts scheduled by the runtime supervisor, per child",
            ["child"],
            registry=r,
        )
        self.restart_limit = Counter(
            "stigmer_restart_limit_exceeded",
            "Times a supervisor gave up because a child exceeded its restart limit",
            registry=r,
        )
        self.outbox_pending = Gauge(
            "stigmer_outbox_pending", "Queued starts waiting in the outbox (pending)", registry=r
        )
        self.outbox_oldest = Gauge(
            "stigmer_outbox_oldest_pending_seconds",
            "Age of the oldest pending queued start (0 without one)",
            registry=r,
        )
        self.outbox_started = Counter(
            "stigmer_outbox_started", "Queued starts the outbox's drain started", registry=r
        )
        self.outbox_failed = Counter(
            "stigmer_outbox_failed", "Queued starts the server refused for good (marked failed)", registry=r
        )
        self.outbox_deduplicated = Counter(
            "stigmer_outbox_deduplicated",
            "Submits of an id already queued or started, and drain attempts that found it already started",
            registry=r,
        )
        self.devserver_up.set(0)
        for state in CONNECTION_STATES:
            self.connection_state.labels(state=state).set(1 if state == ConnectionState.CONNECTING else 0)

    def add_worker(self, task_queue: str) -> None:
        """Make the worker's series exist (at 0) before its first event."""
        self._text = None
        self.worker_running.labels(task_queue=task_queue).set(0)
        self.worker_restarts.labels(task_queue=task_queue)

    def add_child(self, name: str) -> None:
        self._text = None
        self.supervisor_restarts.labels(child=name)

    def on_event(self, event: Event) -> None:
        """The hook: one event record in, the matching metrics updated."""
        self._text = None
        if isinstance(event, HealthChecked):
            self.health_check.observe(event.seconds)
            if not event.ok:
                self.health_failures.inc()
        elif isinstance(event, FailFastRejected):
            self.failfast.inc()
        elif isinstance(event, ConnectionStateChanged):
            for state in CONNECTION_STATES:
                self.connection_state.labels(state=state).set(1 if state == event.new else 0)
            connected = ConnectionState.CONNECTED
            if event.new is connected and event.old is not connected and event.epoch > 1:
                self.reconnects.inc()
        elif isinstance(event, WorkerStateChanged):
            self.worker_running.labels(task_queue=event.task_queue).set(1 if event.running else 0)
        elif isinstance(event, ServerReady):
            self.devserver_up.set(1)
            if self._exited_at is not None:
                self.crash_to_ready.observe(max(0.0, self._clock() - self._exited_at))
                self._exited_at = None
        elif isinstance(event, ServerExited):
            self.devserver_up.set(0)
            if self._exited_at is None:
                self._exited_at = self._clock()
        elif isinstance(event, ChildRestartScheduled) and event.supervisor == RUNTIME_SUPERVISOR:
            self.supervisor_restarts.labels(child=event.name).inc()
            task_queue = worker_task_queue(event.name)
            if event.name == ChildName.DEVSERVER:
                self.devserver_restarts.inc()
            elif task_queue is not None:
                self.worker_restarts.labels(task_queue=task_queue).inc()
        elif isinstance(event, RestartLimitExceeded):
            self.restart_limit.inc()
        elif isinstance(event, SubmissionStarted):
            self.outbox_started.inc()
            if event.deduplicated:
                self.outbox_deduplicated.inc()
        elif isinstance(event, SubmissionsQueued):
            self.outbox_deduplicated.inc(event.deduplicated)
        elif isinstance(event, SubmissionRejected):
            self.outbox_failed.inc()
        elif isinstance(event, OutboxCounted):
            self.outbox_pending.set(event.pending)
            self.outbox_oldest.set(event.oldest_pending_age_s or 0.0)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        if self._text is None:
            self._text = generate_latest(self.registry)
        return self._text
