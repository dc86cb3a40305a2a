# The runtime's names, shared by the layers that build, report and observe its tree: the children of the
# runtime supervisor, the demo worker's task queue, and the "no workflow argument" sentinel. Rule: pure
# (the CLI imports it); a name that two modules compare is defined here, never spelled twice.
from __future__ import annotations

import enum
from typing import Any

__all__ = [
    "DEMO_TASK_QUEUE",
    "NO_ARG",
    "RUNTIME_SUPERVISOR",
    "ChildName",
    "worker_child",
    "worker_task_queue",
]

RUNTIME_SUPERVISOR = "runtime"  # the name of the runtime's own Supervisor (in its events)
DEMO_TASK_QUEUE = "stigmer-trio-demo"  # the built-in demo worker's queue (RuntimeConfig.demo_worker)
_WORKER_PREFIX = "worker:"

# "No workflow argument given" (None is a valid argument): Runtime.start_workflow -> the bridge.
NO_ARG: Any = object()


class ChildName(enum.StrEnum):
    """The fixed children of the runtime supervisor (plus one `worker_child(task_queue)` per worker)."""

    DEVSERVER = "devserver"
    CONNECTION = "connection"
    OUTBOX = "outbox"
    HTTP = "http"


def worker_child(task_queue: str) -> str:
    """The child name of the worker of `task_queue`."""
    return f"{_WORKER_PREFIX}{task_queue}"


def worker_task_queue(child: str) -> str | None:
    """The task queue of a worker child's name; None if `child` is not a worker."""
    return child[len(_WORKER_PREFIX) :] if child.startswith(_WORKER_PREFIX) else None
