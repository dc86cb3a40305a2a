# The runtime's supervision tree, built in one place: the shared objects (event hub, connection cell,
# status board, metrics, event log) and the children as ONE TABLE, with their restart policies and
# shutdown budgets. Rule: builds and binds (the endpoint's port, so a busy one fails before anything
# starts) but starts nothing; validates nothing (RuntimeConfig did); the only tree module that knows
# every child.
from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from .._core._config import DevServerConfig, RuntimeConfig, WorkerSpec
from .._core._events import EventHook
from .._core._layout import StateLayout
from .._core._names import RUNTIME_SUPERVISOR, ChildName, worker_child
from .._core._policy import RestartPolicy
from .._observe._logs import EventLog
from .._observe._metrics import CONTENT_TYPE, Metrics
from ._cell import ConnectionCell
from ._hub import EventHub
from ._serve_connection import serve_connection
from ._serve_devserver import DevServer
from ._serve_http import ControlApp, HttpServer
from ._serve_outbox import Outbox, serve_outbox
from ._serve_worker import WorkerStatus, serve_worker
from ._status import StatusBoard
from ._supervisor import ChildSpec, Strategy, Supervisor

if TYPE_CHECKING:
    from .._boundary._bridge import Bridge
    from .._boundary._launch import Launch

__all__ = ["HTTP_POLICY", "Tree", "build_tree"]

Serve = Callable[..., Awaitable[Any]]  # a child's one lifetime: serve(*, task_status)

# The endpoint's restarts: a handler bug must not take the endpoint down for good, nor spin.
HTTP_POLICY = RestartPolicy(max_restarts=10, window=60.0)
# The outbox's: a db that cannot be opened (another user's, not an outbox db) gives up after 5 tries,
# and with it the runtime (RestartLimitExceeded names the cause); a drain bug is retried with backoff.
OUTBOX_POLICY = RestartPolicy(max_restarts=5, window=60.0)

# Shutdown budgets: how long each child may take to stop once cancelled before the supervisor abandons
# it (ChildAbandoned); all of them together are bounded by RuntimeConfig.shutdown_timeout.
# - dev server: SIGTERM, stop_timeout for its exit, SIGKILL, up to stop_timeout again for that exit
#   (an adopted server's kill_timeout), plus 1 s to remove its pid file and say ServerExited.
# - connection: nothing to wait for (CLOSED is set in a finally); 2 s for a connect attempt in flight
#   to unwind through trio-asyncio.
# - worker: Worker.shutdown() gets graceful_shutdown_timeout + 1 s (the SDK's bookkeeping, see
#   _serve_worker._shutdown), plus 1 s for run()'s cancellation through trio-asyncio.
# - outbox: starts in flight are cancelled (sent again later with the same request id); a commit in
#   flight finishes (shielded: one fsync); 2 s.
# - http: closing the listener and cancelling the connection handlers; 2 s.
CONNECTION_STOP_BUDGET = 2.0
OUTBOX_STOP_BUDGET = 2.0
HTTP_STOP_BUDGET = 2.0
WORKER_SLACK = 2.0  # on top of graceful_shutdown_timeout


def devserver_stop_budget(config: DevServerConfig) -> float:
    return 2 * config.stop_timeout + 1.0


def worker_stop_budget(spec: WorkerSpec) -> float:
    return spec.graceful_shutdown_timeout + WORKER_SLACK


@attrs.frozen(eq=False)
class Tree:
    """The built tree: what the runtime facade, the endpoint and the daemon read. Nothing runs yet:
    `supervisor.serve` starts the children. `bridge` None: the real one, imported when first used."""

    config: RuntimeConfig
    hub: EventHub
    cell: ConnectionCell
    board: StatusBoard
    metrics: Metrics
    event_log: EventLog
    supervisor: Supervisor
    devserver: DevServer | None
    workers: dict[str, WorkerStatus]
    http: HttpServer | None
    outbox: Outbox | None
    bridge: Bridge | None

    def close(self) -> None:
        """Release what building took (the endpoint's bound socket, the outbox db); after the tree has
        stopped."""
        if self.http is not None:
            self.http.close()
        if self.outbox is not None:
            self.outbox.close()


def _worker_specs(config: RuntimeConfig) -> list[WorkerSpec]:
    specs = list(config.workers)
    if config.demo_worker:
        from .._boundary._demo import DEMO_TASK_QUEUE, StigmerDemo, greet

        specs.append(WorkerSpec(DEMO_TASK_QUEUE, workflows=[StigmerDemo], activities=[greet]))
    return specs


def build_tree(
    config: RuntimeConfig,
    hooks: Sequence[EventHook] = (),
    *,
    bridge: Bridge | None = None,
    spawned: Launch | None = None,
) -> Tree:
    """The runtime's tree for `config`, not started. Raises HttpPortInUse when the endpoint's address
    cannot be bound. `bridge`: Temporal for the connection and the workers (default: the real one; a
    test passes a fake). `spawned`: a dev server already spawned for the dev-server child's first
    lifetime (see DevServer)."""
    connection = config.effective_connection()
    metrics = Metrics()
    event_log = EventLog()
    # Hooks run in this order: logging, metrics, the caller's, then the cell and the status board.
    hub = EventHub((event_log, metrics.on_event, *hooks))
    # Following the dev server (if any) from the first event on: its first ServerReady comes before the
    # connection child starts.
    follow = config.dev_server is not None and connection.address == config.dev_server.address
    registered = frozenset(config.dev_server.namespaces) if follow and config.dev_server else frozenset()
    cell = ConnectionCell(emit=hub.emit, follow_server=follow, registered=registered)
    hub.add_hook(cell.on_event)
    devserver = None
    if config.dev_server is not None:
        devserver = DevServer(
            config.dev_server, config.state_dir, on_event=hub.emit, spawned=spawned, bridge=bridge
        )
    specs = _worker_specs(config)
    workers = {spec.task_queue: WorkerStatus(spec.task_queue) for spec in specs}
    outbox = None
    if config.outbox is not None:
        outbox = Outbox(config.outbox, StateLayout(config.state_dir).outbox, hub.emit)
        hub.add_hook(outbox.on_event)
    board = StatusBoard(config, cell, devserver, workers, outbox)
    hub.add_hook(board.on_event)
    http = None
    if config.http is not None:
        http = HttpServer(config.http, ControlApp(board.status, metrics.exposition, CONTENT_TYPE))

    # THE TREE, in start order; it stops in reverse: http, outbox, workers, connection, dev server, so each
    # Worker's shutdown (ShutdownWorker: its sticky queue released) runs while the server is still up
    # (tests/runtime/test_runtime_starts.py::TestGracefulStop). Policy None: the supervisor's own (the
    # connection never fails on its own: it reconnects forever inside).
    def child(name: str, serve: Serve, policy: RestartPolicy | None, budget: float) -> ChildSpec:
        return ChildSpec(name, serve, policy=policy, shutdown_timeout=budget)

    def work(spec: WorkerSpec) -> Serve:
        return functools.partial(serve_worker, spec, cell, workers[spec.task_queue], hub.emit, bridge=bridge)

    dev = config.dev_server
    connect = functools.partial(serve_connection, connection, cell, hub, bridge=bridge)
    drain: Serve | None = None
    if outbox is not None:
        drain = functools.partial(serve_outbox, outbox, connection, cell, hub.emit, bridge=bridge)
    children = [
        #     name                          serve            policy         shutdown budget
        *([child(ChildName.DEVSERVER,       devserver.serve, dev.policy,    devserver_stop_budget(dev))]
          if devserver is not None and dev is not None else []),
        child(ChildName.CONNECTION,         connect,         None,          CONNECTION_STOP_BUDGET),
        *(child(worker_child(s.task_queue), work(s),         s.policy,      worker_stop_budget(s))
          for s in specs),
        *([child(ChildName.OUTBOX,          drain,           OUTBOX_POLICY, OUTBOX_STOP_BUDGET)]
          if drain is not None else []),
        *([child(ChildName.HTTP,            http.serve,      HTTP_POLICY,   HTTP_STOP_BUDGET)]
          if http else []),
    ]  # fmt: skip

    for task_queue in workers:
        metrics.add_worker(task_queue)
    for spec in children:
        metrics.add_child(spec.name)
    # ONE_FOR_ONE: a dev-server restart must not tear down the connection and the workers; they follow
    # it through events (ServerExited / ServerReady) and connection epochs instead.
    supervisor = Supervisor(
        children,
        strategy=Strategy.ONE_FOR_ONE,
        policy=config.policy,
        name=RUNTIME_SUPERVISOR,
        on_event=hub.emit,
        shutdown_timeout=config.shutdown_timeout,
    )
    return Tree(
        config, hub, cell, board, metrics, event_log, supervisor, devserver, workers, http, outbox, bridge
    )
