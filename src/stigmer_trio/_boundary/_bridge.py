# The bridge as the tree sees it: every call the dev-server, connection and worker children and the runtime
# facade make into Temporal, as one Protocol, and `temporal_bridge()`, the real one (the _temporal module,
# imported when first asked for: the dev server boots meanwhile). The tree is handed a Bridge instead of
# importing _temporal, so a test gives it a fake (tests/runtime/fakes.py) and nothing monkeypatches module
# attributes. Rule: no temporalio import here (its types only for the type checker).
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._core._config import WorkerSpec
    from .._core._outbox import NewEntry
    from ._temporal import Client, Worker, WorkflowHandle
    from ._tls import TlsMaterial

__all__ = ["Bridge", "temporal_bridge"]

T = TypeVar("T")


class Bridge(Protocol):
    """What the runtime needs from Temporal; the _temporal module is the real one (a module satisfies a
    Protocol). Every call raises TemporalUnavailable when Temporal does not answer (in time)."""

    async def connect(
        self,
        address: str,
        namespace: str,
        *,
        timeout: float,
        tls: bool | TlsMaterial | None = None,  # None: on exactly when an api_key is given
        api_key: str | None = None,
    ) -> Client: ...

    async def describe_namespace(self, client: Client, namespace: str, *, timeout: float) -> None: ...

    async def check_health(self, client: Client, *, timeout: float) -> None: ...

    async def probe(self, client: Client, namespaces: tuple[str, ...], *, timeout: float) -> None: ...

    async def tcp_accepts(self, address: str) -> bool: ...

    def make_worker(
        self, client: Client, spec: WorkerSpec, on_fatal_error: Callable[[BaseException], Awaitable[None]]
    ) -> Worker: ...

    async def run_worker(self, worker: Worker) -> None: ...

    async def shutdown_worker(self, worker: Worker) -> None: ...

    async def start_workflow(
        self,
        client: Client,
        workflow: Any,
        arg: Any,
        *,
        id: str,
        task_queue: str,
        timeout: float,
        eager: bool,
        **kwargs: Any,
    ) -> WorkflowHandle[Any, Any]: ...

    def encode_submission(
        self, workflow: Any, args: Sequence[Any], options: dict[str, Any]
    ) -> tuple[str, bytes, str]: ...

    async def start_queued(
        self,
        client: Client,
        namespace: str,
        entry: NewEntry,
        *,
        timeout: float,
        task_timeout: float | None = None,
    ) -> str: ...

    async def workflow_result(self, handle: WorkflowHandle[Any, Any]) -> Any: ...

    async def run_asyncio(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T: ...


def temporal_bridge() -> Bridge:
    """The real bridge: temporalio through trio-asyncio (imports temporalio on first use)."""
    from . import _temporal

    return _temporal
