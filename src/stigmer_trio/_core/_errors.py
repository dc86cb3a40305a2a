# The exception hierarchy. Pure: no trio, no I/O, no imports at all (the CLI's hot paths import it).
# Every error the package raises on purpose is a StigmerError, so an embedding program can catch ours
# without catching everyone else's. RestartLimitExceeded, both an exception and an event record, lives
# with the event records (_events), which import this module and not the other way round.
from __future__ import annotations


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


class SubmissionConflict(StigmerError):
    """A submit reused a workflow id already queued or started with another type, queue or input."""


class OutboxFull(StigmerError):
    """A submit was refused at once: the outbox already holds `max_pending` pending entries."""


class SubmissionFailed(StigmerError):
    """A queued start failed for good (say, the namespace does not exist); the message says why."""


def first_leaf(error: BaseException) -> BaseException:
    """The first real exception inside (nested) exception groups (`error` itself if it is none)."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error
