# The one public door. Rule: this module only re-exports, lazily (module __getattr__), so that
# `import stigmer_trio` and the CLI's hot paths never import trio or temporalio.
from __future__ import annotations

import importlib

from ._version import __version__

TYPE_CHECKING = False  # not `from typing import`: typing costs ~8 ms on the CLI's hot paths
if TYPE_CHECKING:
    from typing import Any

    from ._config import ConnectionConfig, DevServerConfig, HttpConfig, RuntimeConfig, WorkerSpec
    from ._connection import ConnectionState
    from ._errors import (
        ConfigError,
        DevServerError,
        IdentityMismatch,
        PortInUse,
        RestartLimitExceeded,
        StateFileError,
        StigmerError,
        TemporalUnavailable,
        WorkflowAlreadyStarted,
    )
    from ._events import (
        ChildAbandoned,
        ChildExited,
        ChildRestartScheduled,
        ChildStarted,
        ConnectionStateChanged,
        Event,
        EventHook,
        FailFastRejected,
        HealthChecked,
        ServerExited,
        ServerReady,
        WorkerStateChanged,
    )
    from ._policy import RestartPolicy, RestartRecord
    from ._runtime import Runtime, open_runtime, run
    from ._supervisor import ChildSpec, ChildState, ChildStatus, Restart, Strategy, Supervisor

_EXPORTS: dict[str, str] = {
    "ConnectionConfig": "._config",
    "DevServerConfig": "._config",
    "HttpConfig": "._config",
    "FailFastRejected": "._events",
    "HealthChecked": "._events",
    "RuntimeConfig": "._config",
    "WorkerSpec": "._config",
    "ConnectionState": "._connection",
    "ConnectionStateChanged": "._events",
    "ServerExited": "._events",
    "ServerReady": "._events",
    "WorkerStateChanged": "._events",
    "DevServerError": "._errors",
    "PortInUse": "._errors",
    "Runtime": "._runtime",
    "open_runtime": "._runtime",
    "run": "._runtime",
    "ConfigError": "._errors",
    "IdentityMismatch": "._errors",
    "RestartLimitExceeded": "._errors",
    "StateFileError": "._errors",
    "StigmerError": "._errors",
    "TemporalUnavailable": "._errors",
    "WorkflowAlreadyStarted": "._errors",
    "ChildAbandoned": "._events",
    "ChildExited": "._events",
    "ChildRestartScheduled": "._events",
    "ChildStarted": "._events",
    "Event": "._events",
    "EventHook": "._events",
    "RestartPolicy": "._policy",
    "RestartRecord": "._policy",
    "ChildSpec": "._supervisor",
    "ChildState": "._supervisor",
    "ChildStatus": "._supervisor",
    "Restart": "._supervisor",
    "Strategy": "._supervisor",
    "Supervisor": "._supervisor",
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
    "PortInUse",
    "Restart",
    "RestartLimitExceeded",
    "RestartPolicy",
    "RestartRecord",
    "Runtime",
    "RuntimeConfig",
    "ServerExited",
    "ServerReady",
    "StateFileError",
    "StigmerError",
    "Strategy",
    "Supervisor",
    "TemporalUnavailable",
    "WorkerSpec",
    "WorkerStateChanged",
    "WorkflowAlreadyStarted",
    "__version__",
    "open_runtime",
    "run",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
