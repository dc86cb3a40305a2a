# Event records: frozen, pure data. Every part of the runtime reports what happened by handing one of
# these to an event hook; logging, metrics, Runtime.events() and the benchmarks all consume the same
# records, so nobody ever parses a log line. Also the values the records carry: ConnectionState and
# RestartRecord, and RestartLimitExceeded (an exception that is also a record). No trio, no I/O here.
from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TypeAlias

import attrs

from ._errors import StigmerError

__all__ = [
    "ChildAbandoned",
    "ChildExited",
    "ChildRestartScheduled",
    "ChildStarted",
    "ConnectionState",
    "ConnectionStateChanged",
    "Event",
    "EventHook",
    "FailFastRejected",
    "HealthChecked",
    "OutboxCounted",
    "RestartLimitExceeded",
    "RestartRecord",
    "ServerExited",
    "ServerListening",
    "ServerReady",
    "SubmissionDelayed",
    "SubmissionRejected",
    "SubmissionStarted",
    "SubmissionsQueued",
    "WorkerStateChanged",
]


class ConnectionState(str, enum.Enum):  # noqa: UP042 -- str() and format() stay "ConnectionState.X"
    """The Temporal connection's state. A str subclass: a state equals its value (``== "connected"``)."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    CLOSED = "closed"


@attrs.frozen
class RestartRecord:
    """One restart decision: which child, at what time, which attempt, after what delay."""

    child: str
    at: float
    attempt: int
    delay: float


class RestartLimitExceeded(StigmerError):
    """A supervisor gave up: more than `max_restarts` restarts within `window` seconds.

    It is both the exception a supervisor raises to its parent (with the child's last exception as
    ``__cause__``) and the event record it emits just before. A plain class rather than attrs: an
    exception's constructor and pickling do not mix with attrs' frozen slots.
    """

    __slots__ = ("child", "error", "history", "restarts", "supervisor", "window")

    def __init__(
        self,
        *,
        supervisor: str,
        child: str,
        restarts: int,
        window: float | None,
        history: tuple[RestartRecord, ...] = (),
        error: BaseException | None = None,
    ) -> None:
        super().__init__(supervisor, child, restarts)
        self.supervisor = supervisor
        self.child = child
        self.restarts = restarts
        self.window = window
        self.history = history
        self.error = error

    def __repr__(self) -> str:
        return (
            f"RestartLimitExceeded(supervisor={self.supervisor!r}, child={self.child!r}, "
            f"restarts={self.restarts!r}, window={self.window!r}, error={self.error!r})"
        )

    def __str__(self) -> str:
        why = f"{type(self.error).__name__}: {self.error}" if self.error is not None else "it returned"
        within = f" within {self.window:g} s" if self.window is not None else ""
        return (
            f"supervisor {self.supervisor!r} gave up on child {self.child!r} after "
            f"{self.restarts} restarts{within}; last exit: {why}"
        )


@attrs.frozen
class ChildStarted:
    """A supervised child called ``task_status.started()``: it is running."""

    name: str
    supervisor: str
    restarts: int
    value: object = None


@attrs.frozen
class ChildExited:
    """A supervised child ended.

    `error` is what it raised (None when it returned); `ran_for` is seconds since it was spawned;
    `stopped` is True when the supervisor stopped it (shutdown or a sibling's restart), not on its own.
    """

    name: str
    supervisor: str
    error: BaseException | None
    ran_for: float
    stopped: bool = False


@attrs.frozen
class ChildRestartScheduled:
    """A child will be started again after `delay` seconds.

    `cause` names the child whose exit led to this restart (itself under ONE_FOR_ONE; the failed
    sibling under ONE_FOR_ALL and REST_FOR_ONE); `attempt` is the cause's attempt number.
    """

    name: str
    supervisor: str
    attempt: int
    delay: float
    cause: str


@attrs.frozen
class ChildAbandoned:
    """A child did not finish within its `shutdown_timeout` after being cancelled; nobody waits for it."""

    name: str
    supervisor: str
    shutdown_timeout: float


@attrs.frozen
class ServerListening:
    """A dev server we spawned accepts TCP on its port and boots its services; ServerReady or
    ServerExited follows. The connection child connects to it meanwhile (counted only once ready)."""

    address: str
    pid: int


@attrs.frozen
class ServerReady:
    """The dev server answers health checks on its own listener (spawned: it registered every configured
    namespace before it serves; adopted alive: each was described)."""

    address: str
    pid: int
    adopted: bool
    ready_after: float  # seconds from spawn (or adoption attempt) to ready


@attrs.frozen
class ServerExited:
    """The dev server is gone or is being replaced. `returncode` None: not our child, or still alive."""

    address: str
    pid: int
    returncode: int | None
    reason: str


@attrs.frozen
class ConnectionStateChanged:
    """The Temporal connection moved from `old` to `new` (ConnectionStates; a plain string value is
    converted, and a state equals its value: ``event.new == "connected"``)."""

    old: ConnectionState = attrs.field(converter=ConnectionState)
    new: ConnectionState = attrs.field(converter=ConnectionState)
    reason: str
    epoch: int


@attrs.frozen
class WorkerStateChanged:
    """A worker of `task_queue` started polling (running=True) or stopped, on connection `epoch`."""

    task_queue: str
    running: bool
    epoch: int
    reason: str


@attrs.frozen
class HealthChecked:
    """One health RPC of the connection monitor: `ok` or `error`, and how long it took (seconds)."""

    address: str
    ok: bool
    seconds: float
    error: str | None = None


@attrs.frozen
class FailFastRejected:
    """A call was refused without network I/O because the connection was `state`, not CONNECTED."""

    operation: str
    state: str


@attrs.frozen
class SubmissionsQueued:
    """One commit of the outbox: `created` new entries stored, `deduplicated` submits that found the same
    start already queued or started (nothing stored for those)."""

    created: int
    deduplicated: int


@attrs.frozen
class SubmissionStarted:
    """The outbox's drain started queued entry `id` (run `run_id`) after `attempts` attempts;
    `deduplicated`: the server said a workflow with that id was already started (by another request)."""

    id: str
    run_id: str | None
    attempts: int
    deduplicated: bool = False


@attrs.frozen
class SubmissionDelayed:
    """A start attempt of queued entry `id` failed in a way worth retrying: it stays pending and is tried
    again in `delay` seconds (or when the connection is back)."""

    id: str
    attempts: int
    error: str
    delay: float


@attrs.frozen
class SubmissionRejected:
    """The server refused queued entry `id` for good: it is FAILED (`queue retry` sends it again)."""

    id: str
    attempts: int
    error: str


@attrs.frozen
class OutboxCounted:
    """The outbox's size now: pending and failed entries, the age of the oldest pending one (or None)."""

    pending: int
    failed: int
    oldest_pending_age_s: float | None


Event: TypeAlias = (
    ChildStarted | ChildExited | ChildRestartScheduled | ChildAbandoned | RestartLimitExceeded
    | ServerListening | ServerReady | ServerExited | ConnectionStateChanged | WorkerStateChanged
    | HealthChecked | FailFastRejected | SubmissionsQueued | SubmissionStarted | SubmissionDelayed
    | SubmissionRejected | OutboxCounted
)  # fmt: skip
EventHook: TypeAlias = Callable[[Event], None]
