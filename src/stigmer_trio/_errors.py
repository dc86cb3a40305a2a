# The exception hierarchy. Pure: no trio, no I/O. Every error the package raises on purpose is a
# StigmerError, so an embedding program can catch ours without catching everyone else's.
from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time: the CLI's hot paths stay lean

if TYPE_CHECKING:
    from ._policy import RestartRecord


class StigmerError(Exception):
    """Base class of every error stigmer_trio raises on purpose."""


class ConfigError(StigmerError, ValueError):
    """A configuration value is invalid; the message names the field and the value."""


class TemporalUnavailable(StigmerError):
    """Temporal cannot be reached right now; raised at once instead of waiting.

    `maybe_started` tells a retry what it risks: False when the call was refused without any I/O (the
    connection was not CONNECTED), True when a start request was in flight (it met UNAVAILABLE or its
    timeout, or the connection dropped during the call): the server may have created the workflow.
    """

    def __init__(self, *args: object, maybe_started: bool = False) -> None:
        super().__init__(*args)
        self.maybe_started = maybe_started


class WorkflowAlreadyStarted(StigmerError):
    """A start was refused: a workflow with this id is running (or, under REJECT_DUPLICATE, has run).

    temporalio's WorkflowAlreadyStartedError at our boundary; `run_id` is the existing run's.
    """

    def __init__(self, workflow_id: str, workflow_type: str, run_id: str | None = None) -> None:
        super().__init__(workflow_id, workflow_type, run_id)
        self.workflow_id = workflow_id
        self.workflow_type = workflow_type
        self.run_id = run_id

    def __str__(self) -> str:
        run = f" (run {self.run_id})" if self.run_id else ""
        return f"workflow {self.workflow_id!r} of type {self.workflow_type!r} was already started{run}"


class StateFileError(StigmerError):
    """A lock or pid file cannot be used safely (a planted symlink, not a regular file, ...)."""


class IdentityMismatch(StigmerError):
    """Refused to touch a process whose identity (pid + create time + cmdline) is not proven ours."""


class ProcessStopTimeout(StigmerError, TimeoutError):
    """A process group was sent SIGKILL but its leader still had not exited after `kill_timeout`."""


class DevServerError(StigmerError):
    """One lifetime of the dev server failed: it would not start, exited, hung or cannot be owned."""


class PortInUse(DevServerError):
    """The dev server's port is held by a process that is not our dev server."""


class RestartLimitExceeded(StigmerError):
    """A supervisor gave up: more than `max_restarts` restarts within `window` seconds.

    It is both the exception a supervisor raises to its parent (with the child's last exception as
    ``__cause__``) and the event record it emits just before. A plain class rather than attrs: this
    module is imported by the CLI's hot paths, which stay stdlib only.
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
