# The embedding facade: open_runtime / run and the Runtime an embedding program holds. Owns the
# fail-fast call path (calls in flight fail when the connection drops) and the root of the tree's
# lifetime: the trio-asyncio loop, the supervisor, the shutdown deadline. Must never: touch signals,
# argv, stdout or the process (that is the daemon's and the CLI's), or build the tree itself (_tree/_build
# does, as one table).
from __future__ import annotations

import contextlib
import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from ._boundary._aioloop import open_loop
from ._core._config import RuntimeConfig
from ._core._errors import ConfigError, TemporalUnavailable, first_leaf
from ._core._events import (
    ConnectionState,
    ConnectionStateChanged,
    Event,
    EventHook,
    FailFastRejected,
    RestartLimitExceeded,
)
from ._core._names import NO_ARG
from ._core._outbox import NewEntry, Submission
from ._tree._cell import Poke

if TYPE_CHECKING:
    from ._boundary._bridge import Bridge
    from ._boundary._launch import Launch
    from ._boundary._temporal import Client, WorkflowHandle
    from ._observe._logs import EventLog
    from ._tree._build import Tree
    from ._tree._serve_outbox import Outbox

__all__ = ["Runtime", "open_runtime", "open_runtime_spawned", "run"]

T = TypeVar("T")


class Runtime:
    """The running stack, as an embedding program sees it (made by `open_runtime`, valid inside its
    block). Every method is trio-native and fail-fast: while the connection is not CONNECTED,
    client(), start_workflow, execute_workflow and run_asyncio raise TemporalUnavailable without any
    network I/O. Attributes: `config`, `supervisor` (the runtime's Supervisor: `snapshot()`), `metrics`
    (its `registry` is this runtime's own Prometheus CollectorRegistry), `http_url` (the control
    endpoint once it serves, else None), `started_at` (wall clock)."""

    def __init__(self, tree: Tree) -> None:
        self.config = tree.config
        self._tree = tree
        self._hub = tree.hub
        self._cell = tree.cell
        self._board = tree.board
        self._connection = tree.config.effective_connection()
        self.supervisor = tree.supervisor
        self._workers = tree.workers
        self.metrics = tree.metrics
        self._inflight: set[trio.CancelScope] = set()
        self._hub.add_hook(self._on_event)

    @property
    def http_url(self) -> str | None:
        return self._board.http_url

    @property
    def started_at(self) -> float:
        return self._board.started_at

    def _on_event(self, event: Event) -> None:
        """Calls in flight when the connection drops fail now, not when their own timeout runs out
        (the SDK retries UNAVAILABLE inside a call for up to request_timeout)."""
        if isinstance(event, ConnectionStateChanged) and event.new is ConnectionState.DISCONNECTED:
            for scope in list(self._inflight):
                scope.cancel(reason="connection lost")

    def _bridge(self) -> Bridge:
        """Temporal: the tree's (a test's fake), else the real one (imported now, not at start-up)."""
        from ._boundary._bridge import temporal_bridge

        return self._tree.bridge or temporal_bridge()

    def _client(self, operation: str) -> Client:
        """The connected client, or TemporalUnavailable at once (counted: a FailFastRejected event)."""
        try:
            return self._cell.client()
        except TemporalUnavailable:
            self._hub.emit(FailFastRejected(operation, self._cell.state.value))
            raise

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run one request: TemporalUnavailable if it meets a dead server or the connection drops."""
        with trio.CancelScope() as scope:
            self._inflight.add(scope)
            try:
                return await call()
            except TemporalUnavailable:
                self._cell.poke(Poke.PROBE)
                raise
            finally:
                self._inflight.discard(scope)
        raise TemporalUnavailable(
            f"the connection was lost during the call: {self._cell.last_error}", maybe_started=True
        )

    @property
    def state(self) -> ConnectionState:
        """The connection's state now (read without waiting)."""
        return self._cell.state

    def client(self) -> Client:
        """The connected temporalio Client (a new one on every reconnection: do not keep it); raises
        TemporalUnavailable at once, without I/O, when not CONNECTED."""
        return self._client("client")

    async def wait_connected(self) -> None:
        """Wait until CONNECTED, however long that takes (wrap in trio.fail_after as you like); raises
        TemporalUnavailable if the runtime closes first. Cancellation just stops the wait."""
        await self._cell.wait_connected()

    async def wait_ready(self, *, give_up_when_disconnected: bool = False) -> bool:
        """Wait until CONNECTED and every worker is polling (True); with `give_up_when_disconnected`,
        return False at the first failed connection attempt instead of waiting for Temporal. Raises
        nothing of its own; cancellation just stops the wait."""
        with self._hub.subscribe() as subscription:
            while not self.status()["ready"]:
                event = await subscription.receive()
                if (
                    give_up_when_disconnected
                    and isinstance(event, ConnectionStateChanged)
                    and event.new is ConnectionState.DISCONNECTED
                ):
                    return False
        return True

    def _eager(self, task_queue: str) -> bool:
        """Eager start only when a worker of ours polls that queue on the current connection."""
        worker = self._workers.get(task_queue)
        return worker is not None and worker.running and worker.epoch == self._cell.epoch

    async def start_workflow(
        self, workflow: Any, arg: Any = NO_ARG, *, id: str, task_queue: str, **kwargs: Any
    ) -> WorkflowHandle[Any, Any]:
        """Start a workflow: it was created, or this raised. `kwargs` go to temporalio's
        ``Client.start_workflow`` (``task_timeout`` defaults to ``ConnectionConfig.workflow_task_timeout``).

        Errors:

        - ``TemporalUnavailable`` with ``maybe_started=False``: refused at once, without any I/O (not
          CONNECTED). Nothing was sent; retrying is safe.
        - ``TemporalUnavailable`` with ``maybe_started=True``: the request was in flight when it met
          UNAVAILABLE, its ``request_timeout`` or a lost connection. The server may have created the
          workflow, so a retry must say what a duplicate means (measured with the dev server):

          * the default ``id_reuse_policy`` (ALLOW_DUPLICATE): if the first run already closed, a retry
            with the same id creates a SECOND run;
          * ``id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING``: a retry while the first run
            is running returns a handle to that run (also with eager start);
          * ``id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE``: a retry after any run with that
            id raises ``WorkflowAlreadyStarted`` whose ``run_id`` is the existing run's.

          For "exactly one run, whatever happened", retry with both policies: USE_EXISTING plus
          REJECT_DUPLICATE (then ``WorkflowAlreadyStarted.run_id`` names the run that closed).
        - ``WorkflowAlreadyStarted`` (``.workflow_id``, ``.workflow_type``, ``.run_id``): the id is
          taken under the policies given (by default: a run with this id is running).
        """
        client = self._client("start_workflow")  # fail fast first: nothing else before it
        temporal = self._bridge()
        timeout = self._connection.workflow_task_timeout
        if timeout is not None:
            kwargs.setdefault("task_timeout", timedelta(seconds=timeout))
        call = functools.partial(
            temporal.start_workflow,
            client,
            workflow,
            arg,
            id=id,
            task_queue=task_queue,
            timeout=self._connection.request_timeout,
            eager=self._eager(task_queue),
            **kwargs,
        )
        return await self._call(call)

    async def execute_workflow(
        self, workflow: Any, arg: Any = NO_ARG, *, id: str, task_queue: str, **kwargs: Any
    ) -> Any:
        """start_workflow (same errors and retry rules), then wait for its result; a failure while
        waiting raises TemporalUnavailable with ``maybe_started=True`` (the workflow was started)."""
        handle = await self.start_workflow(workflow, arg, id=id, task_queue=task_queue, **kwargs)
        temporal = self._bridge()
        try:
            return await temporal.workflow_result(handle)
        except TemporalUnavailable:
            self._cell.poke(Poke.PROBE)
            raise

    async def run_asyncio(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(client, *args)`` (an asyncio coroutine function) on the runtime's bridge.

        TemporalUnavailable at once when not CONNECTED, and when the connection drops during the call
        (the call is cancelled then); what `fn` raises passes through. Cancelling the caller cancels
        the asyncio task."""
        client = self._client("run_asyncio")
        temporal = self._bridge()
        return await self._call(functools.partial(temporal.run_asyncio, fn, client, *args))

    # --- the durable start queue (RuntimeConfig.outbox) --------------------------------------------------
    def _outbox(self) -> Outbox:
        if self._tree.outbox is None:
            raise ConfigError("outbox is off (RuntimeConfig.outbox is None): there is no start queue")
        return self._tree.outbox

    async def submit_workflow(
        self,
        workflow: Any,
        arg: Any = NO_ARG,
        *,
        args: Sequence[Any] = (),
        id: str,
        task_queue: str,
        **start_options: Any,
    ) -> Submission:
        """Queue a workflow start: returns once it is durably recorded (committed and fsynced in
        ``<state_dir>/outbox.db``), whether Temporal is up or not; the outbox child starts it when the
        connection is CONNECTED, exactly once, whatever dies when.

        `workflow`, `arg` / `args` and `start_options` as for temporalio's ``Client.start_workflow``.
        The arguments are encoded now with temporalio's default data converter (one that cannot be
        encoded raises here and nothing is stored) and sent later as they are. Queued starts take
        ``execution_timeout``, ``run_timeout``, ``task_timeout``, ``start_delay``, ``id_reuse_policy``,
        ``id_conflict_policy``, ``retry_policy``, ``cron_schedule`` and ``memo``; any other option, and
        ``TERMINATE_IF_RUNNING`` / ``TERMINATE_EXISTING`` (a start sent again would end the run it made),
        raise ValueError / TypeError naming it.

        `id` is the idempotency key: a submit of an id already queued or started (and not yet pruned:
        ``OutboxConfig.retain``) with the same type, task queue, arguments and options returns that
        entry and stores nothing; with different ones it raises SubmissionConflict. OutboxFull when
        ``max_pending`` entries are pending already. Never TemporalUnavailable."""
        outbox = self._outbox()
        if not isinstance(id, str) or not id:
            raise ValueError(f"id must be a non-empty workflow id, got {id!r}")
        if not isinstance(task_queue, str) or not task_queue:
            raise ValueError(f"task_queue must be a non-empty task queue name, got {task_queue!r}")
        if arg is not NO_ARG:
            if args:
                raise ValueError("pass one argument as `arg` or several as `args`, not both")
            args = (arg,)
        workflow_type, payloads, options = self._bridge().encode_submission(workflow, args, start_options)
        entry = NewEntry(id, workflow_type, task_queue, payloads, options, uuid.uuid4().hex)
        return await outbox.submit(entry)

    async def submission(self, id: str) -> Submission | None:
        """The queued start of workflow id `id` as it is now (None: never queued, dropped or pruned)."""
        return await self._outbox().get(id)

    async def wait_started(self, id: str) -> Submission:
        """Wait until the queued start of `id` is STARTED (returned, with its run id); SubmissionFailed
        when it is FAILED (the server refused it for good), or unknown / dropped from the queue.
        Cancellation just stops the wait."""
        return await self._outbox().wait_started(id)

    async def outbox_status(self) -> dict[str, Any]:
        """The outbox section of `status`, read fresh: ``pending``, ``failed``, ``started`` (not yet
        pruned) and ``oldest_pending_age_s`` (None without a pending entry)."""
        return await self._outbox().counts()

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot, the document of GET /status and `status --json`: connection, workers,
        dev server, endpoint; ready = CONNECTED and every worker polling on the current epoch."""
        return self._board.status()

    def _prepare_endpoint(self) -> None:
        """The daemon, once it said ready: load what the endpoint serves with (hypercorn, ~30 ms) now,
        off the start-up's critical path, rather than for its first client."""
        if self._tree.http is not None:
            self._tree.http.prepare()

    def _keep_server_running(self) -> None:
        """At the coming stop, leave a healthy dev server running (the daemon's `restart` handover)."""
        if self._tree.devserver is not None:
            self._tree.devserver.keep_running = True

    async def events(self) -> AsyncIterator[Event]:
        """Every event record from now on, until the caller stops iterating (or is cancelled); a reader
        that falls behind loses the oldest (1000 are kept), never the runtime."""
        with self._hub.subscribe() as subscription:
            async for event in subscription:
                yield event


@contextlib.asynccontextmanager
async def open_runtime(config: RuntimeConfig, *, hooks: Sequence[EventHook] = ()) -> AsyncIterator[Runtime]:
    """Run the supervision tree; yields once every child has started (not necessarily connected).

    `hooks` get every event record, synchronously, after logging and metrics (an exception in a hook
    is logged, never raised). Entering raises HttpPortInUse if the endpoint's address is taken, and
    whatever a child raises while starting (DevServerError, PortInUse, ...) once its restart limit is
    spent, as RestartLimitExceeded.

    Leaving the block (normally, by an exception, or by cancellation) is the graceful shutdown: the
    children are cancelled and stopped in reverse start order (the endpoint, the workers, the
    connection, the dev server), each within its own budget and all of them within
    ``config.shutdown_timeout`` seconds (15 by default), so leaving takes at most that long plus
    closing the asyncio bridge. A child still stopping at that deadline is abandoned
    (ChildAbandoned): its shielded cleanup (say, the dev server's SIGTERM -> SIGKILL) finishes in the
    background, and `trio.run` waits for it before it returns.

    When the tree gives up (a child exceeded its restart limit), RestartLimitExceeded comes out of this
    block as itself, not wrapped in the exception groups of the nurseries it passed through.
    """
    async with open_runtime_spawned(config, hooks, None) as runtime:
        yield runtime


@contextlib.asynccontextmanager
async def open_runtime_spawned(
    config: RuntimeConfig, hooks: Sequence[EventHook], spawned: Launch | None
) -> AsyncIterator[Runtime]:
    """open_runtime whose dev-server child serves `spawned` first: a server the daemon spawned before
    its heavy imports (see DevServer)."""
    try:
        async with _open_runtime(config, hooks, spawned=spawned) as runtime:
            yield runtime
    except BaseExceptionGroup as group:
        leaf = first_leaf(group)
        if isinstance(leaf, RestartLimitExceeded) and _leaf_count(group) == 1:
            raise leaf  # noqa: B904 -- the group is kept as its __context__
        raise


def _leaf_count(error: BaseException) -> int:
    if isinstance(error, BaseExceptionGroup):
        return sum(_leaf_count(inner) for inner in error.exceptions)
    return 1


@contextlib.asynccontextmanager
async def _open_runtime(
    config: RuntimeConfig,
    hooks: Sequence[EventHook],
    bridge: Bridge | None = None,
    *,
    spawned: Launch | None = None,
) -> AsyncIterator[Runtime]:
    """open_runtime without unwrapping RestartLimitExceeded; `bridge` (a test's fake) for Temporal."""
    from ._tree._build import build_tree  # not at import: metrics and the children's imports

    # Binds the endpoint: a busy port fails here, before anything starts.
    tree = build_tree(config, hooks, bridge=bridge, spawned=spawned)
    try:
        async with open_loop(), trio.open_nursery() as nursery:
            nursery.start_soon(_flush_log, tree.event_log)
            # The shutdown deadline is the supervisor's: leaving cancels it and it stops the children
            # within config.shutdown_timeout (Supervisor(shutdown_timeout=...), set by build_tree).
            await nursery.start(tree.supervisor.serve)
            try:
                yield Runtime(tree)
            finally:
                nursery.cancel_scope.cancel(reason="runtime closing")
    finally:
        tree.event_log.flush(force=True)
        tree.close()


async def _flush_log(event_log: EventLog) -> None:
    """Aggregated repeats get their summary line within a second of their window closing."""
    while True:
        await trio.sleep(1.0)
        event_log.flush()


def run(config: RuntimeConfig, *, hooks: Sequence[EventHook] = ()) -> None:
    """The blocking form: run the runtime in a new Trio run until cancelled (Ctrl-C: KeyboardInterrupt
    propagates after the graceful shutdown of `open_runtime`). Raises what `open_runtime` raises.
    Installs no signal handlers: a program that wants SIGTERM to stop it handles that itself."""

    async def main() -> None:
        async with open_runtime(config, hooks=hooks):
            await trio.sleep_forever()

    trio.run(main)
