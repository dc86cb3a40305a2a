# The one public door. Rule: this module only re-exports, lazily (module __getattr__), so that
# `import stigmer_trio` and the CLI's hot paths never import trio or temporalio. Must never: import a
# module the interpreter has not loaded already (not even __future__): under `python -m stigmer_trio`
# this runs while the current directory is still first on sys.path (__main__ takes it out).
import importlib

from ._version import __version__

TYPE_CHECKING = False  # not `from typing import`: typing costs ~8 ms on the CLI's hot paths
if TYPE_CHECKING:
    from typing import Any

    from ._core._config import (
        ConnectionConfig,
        DevServerConfig,
        HttpConfig,
        OutboxConfig,
        RuntimeConfig,
        TlsConfig,
        WorkerSpec,
    )
    from ._core._errors import (
        ConfigError,
        DevServerError,
        IdentityMismatch,
        OutboxFull,
        PortInUse,
        StateFileError,
        StigmerError,
        SubmissionConflict,
        SubmissionFailed,
        TemporalUnavailable,
        WorkflowAlreadyStarted,
    )
    from ._core._events import (
        ChildAbandoned,
        ChildExited,
        ChildRestartScheduled,
        ChildStarted,
        ConnectionState,
        ConnectionStateChanged,
        Event,
        EventHook,
        FailFastRejected,
        HealthChecked,
        OutboxCounted,
        RestartLimitExceeded,
        RestartRecord,
        ServerExited,
        ServerListening,
        ServerReady,
        SubmissionDelayed,
        SubmissionRejected,
        SubmissionsQueued,
        SubmissionStarted,
        WorkerStateChanged,
    )
    from ._core._outbox import Submission, SubmissionState
    from ._core._policy import RestartPolicy
    from ._runtime import Runtime, open_runtime, run
    from ._tree._supervisor import ChildSpec, ChildState, ChildStatus, Restart, Strategy, Supervisor

_EXPORTS: dict[str, str] = {
    "ConnectionConfig": "._core._config",
    "DevServerConfig": "._core._config",
    "HttpConfig": "._core._config",
    "RuntimeConfig": "._core._config",
    "TlsConfig": "._core._config",
    "WorkerSpec": "._core._config",
    "ConfigError": "._core._errors",
    "DevServerError": "._core._errors",
    "IdentityMismatch": "._core._errors",
    "PortInUse": "._core._errors",
    "StateFileError": "._core._errors",
    "StigmerError": "._core._errors",
    "TemporalUnavailable": "._core._errors",
    "WorkflowAlreadyStarted": "._core._errors",
    "ChildAbandoned": "._core._events",
    "ChildExited": "._core._events",
    "ChildRestartScheduled": "._core._events",
    "ChildStarted": "._core._events",
    "ConnectionState": "._core._events",
    "ConnectionStateChanged": "._core._events",
    "Event": "._core._events",
    "EventHook": "._core._events",
    "FailFastRejected": "._core._events",
    "HealthChecked": "._core._events",
    "RestartLimitExceeded": "._core._events",
    "RestartRecord": "._core._events",
    "ServerExited": "._core._events",
    "ServerReady": "._core._events",
    "ServerListening": "._core._events",
    "WorkerStateChanged": "._core._events",
    "RestartPolicy": "._core._policy",
    "Runtime": "._runtime",
    "open_runtime": "._runtime",
    "run": "._runtime",
    "ChildSpec": "._tree._supervisor",
    "ChildState": "._tree._supervisor",
    "ChildStatus": "._tree._supervisor",
    "Restart": "._tree._supervisor",
    "Strategy": "._tree._supervisor",
    "Supervisor": "._tree._supervisor",
    "OutboxConfig": "._core._config",
    "OutboxFull": "._core._errors",
    "SubmissionConflict": "._core._errors",
    "SubmissionFailed": "._core._errors",
    "OutboxCounted": "._core._events",
    "SubmissionDelayed": "._core._events",
    "SubmissionRejected": "._core._events",
    "SubmissionStarted": "._core._events",
    "SubmissionsQueued": "._core._events",
    "Submission": "._core._outbox",
    "SubmissionState": "._core._outbox",
}

__all__ = [
    "ChildAbandoned",
    "ChildExited",
    "ChildRestartScheduled",
    "ChildSpec",
    "ChildStarted",
    "ChildState",
    "ChildStatus",
    "ConfigError",
    "ConnectionConfig",
    "ConnectionState",
    "ConnectionStateChanged",
    "DevServerConfig",
    "DevServerError",
    "Event",
    "EventHook",
    "FailFastRejected",
    "HealthChecked",
    "HttpConfig",
    "IdentityMismatch",
    "OutboxConfig",
    "OutboxCounted",
    "OutboxFull",
    "PortInUse",
    "Restart",
    "RestartLimitExceeded",
    "RestartPolicy",
    "RestartRecord",
    "Runtime",
    "RuntimeConfig",
    "ServerExited",
    "ServerListening",
    "ServerReady",
    "StateFileError",
    "StigmerError",
    "Strategy",
    "Submission",
    "SubmissionConflict",
    "SubmissionDelayed",
    "SubmissionFailed",
    "SubmissionRejected",
    "SubmissionStarted",
    "SubmissionState",
    "SubmissionsQueued",
    "Supervisor",
    "TemporalUnavailable",
    "TlsConfig",
    "WorkerSpec",
    "WorkerStateChanged",
    "WorkflowAlreadyStarted",
    "__version__",
    "open_runtime",
    "run",
]


def __getattr__(name: str) -> "Any":
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
