# Event records: frozen, pure data. Every part of the runtime reports what happened by handing one of
# these to an event hook; logging, metrics, Runtime.events() and the benchmarks all consume the same
# records, so nobody ever parses a log line. No trio, no I/O here.
from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import attrs

from ._errors import RestartLimitExceeded

__all__ = [
    "ChildAbandoned",
    "ChildExited",
    "ChildRestartScheduled",
    "ChildStarted",
    "ConnectionStateChanged",
    "Event",
    "EventHook",
    "FailFastRejected",
    "HealthChecked",
    "ServerExited",
    "ServerReady",
    "WorkerStateChanged",
]


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
class ServerReady:
    """The dev server answers health checks and knows every namespace (spawned, or adopted alive)."""

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
    """The Temporal connection moved from `old` to `new` (ConnectionState values as strings)."""

    old: str
    new: str
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


Event: TypeAlias = (
    ChildStarted | ChildExited | ChildRestartScheduled | ChildAbandoned | RestartLimitExceeded
    | ServerReady | ServerExited | ConnectionStateChanged | WorkerStateChanged | HealthChecked
    | FailFastRejected
)  # fmt: skip
EventHook: TypeAlias = Callable[[Event], None]
