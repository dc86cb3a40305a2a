# The one public door. Rule: this module only re-exports, lazily (module __getattr__), so that
# `import stigmer_trio` and the CLI's hot paths never import trio or temporalio.
from __future__ import annotations

import importlib

from ._version import __version__

TYPE_CHECKING = False  # not `from typing import`: typing costs ~8 ms on the CLI's hot paths
if TYPE_CHECKING:
    from typing import Any

    from ._core._config import ConnectionConfig, DevServerConfig, HttpConfig, RuntimeConfig, WorkerSpec
    from ._core._errors import (
        ConfigError,
        DevServerError,
        IdentityMismatch,
        PortInUse,
        StateFileError,
        StigmerError,
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
        RestartLimitExceeded,
        RestartRecord,
        ServerExited,
        ServerReady,
        WorkerStateChanged,
    )
    from ._core._policy import RestartPolicy
    from ._runtime import Runtime, open_runtime, run
    from ._tree._supervisor import ChildSpec, ChildState, ChildStatus, Restart, Strategy, Supervisor

_EXPORTS: dict[str, str] = {
    "ConnectionConfig": "._core._config",
    "DevServerConfig": "._core._config",
    "HttpConfig": "._core._config",
    "RuntimeConfig": "._core._config",
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
