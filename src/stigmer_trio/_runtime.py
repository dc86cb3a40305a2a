# The runtime: the supervision tree (trio-asyncio loop in the root, then the children) and the daemon
# that runs it for the CLI. Owns runtime.lock / runtime.json (one daemon per state dir) and the
# daemon's readiness report. Must never: touch argv or stdout (that is _cli's), or exit the interpreter
# normally after temporalio ran (the caller leaves with os._exit; see `daemon_main`).
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import psutil
import trio
import trio_asyncio

from ._config import RuntimeConfig, WorkerSpec
from ._connection import ConnectionCell, ConnectionState, serve_connection
from ._devserver import DevServer
from ._errors import ConfigError, RestartLimitExceeded, StigmerError, TemporalUnavailable
from ._events import (
    ChildExited,
    ChildRestartScheduled,
    ChildStarted,
    ConnectionStateChanged,
    Event,
    EventHook,
    FailFastRejected,
    ServerExited,
    ServerReady,
    WorkerStateChanged,
)
from ._hub import EventHub
from ._logs import EventLog, JsonFormatter, RotatingLog, RotatingStreamHandler
from ._policy import RestartPolicy
from ._statefiles import FileLock, PidRecord, ensure_state_dir, remove_pid_file, write_pid_file
from ._supervisor import ChildSpec, Strategy, Supervisor
from ._temporal_types import _NO_ARG
from ._worker import WorkerStatus, serve_worker

if TYPE_CHECKING:
    from temporalio.client import Client, WorkflowHandle

    from ._metrics import Metrics

__all__ = ["Runtime", "daemon_main", "open_runtime", "run"]

T = TypeVar("T")

logger = logging.getLogger("stigmer_trio")

RUNTIME_LOCK = "runtime.lock"
RUNTIME_RECORD = "runtime.json"
READY_WAIT = 30.0  # seconds the daemon waits for CONNECTED + workers before reporting "started"
# `restart` stops the daemon with this signal: like SIGTERM, but a healthy dev server is left running
# for the next daemon to adopt (no server downtime, no server restart).
HANDOVER_SIGNAL = signal.SIGUSR1


class Runtime:
    """The running stack, as an embedding program sees it. Every method is trio-native and fail-fast:
    while the connection is not CONNECTED, client(), start_workflow, execute_workflow and run_asyncio
    raise TemporalUnavailable without any network I/O."""

    def __init__(
        self,
        config: RuntimeConfig,
        hub: EventHub,
        cell: ConnectionCell,
        supervisor: Supervisor,
        devserver: DevServer | None,
        workers: dict[str, WorkerStatus],
        metrics: Metrics,
    ) -> None:
        self.config = config
        self._hub = hub
        self._cell = cell
        self._connection = config.effective_connection()
        self.supervisor = supervisor
        self._devserver = devserver
        self._workers = workers
        self.metrics = metrics  # its `registry` is this runtime's own Prometheus CollectorRegistry
        self.http_url: str | None = None  # the control endpoint, once it serves
        self.started_at = time.time()
        self._devserver_restarts = 0
        self._last_error: str | None = None
        self._inflight: set[trio.CancelScope] = set()
        hub.add_hook(self._on_event)

    def _on_event(self, event: Event) -> None:
        """Calls in flight when the connection drops fail now, not when their own timeout runs out
        (the SDK retries UNAVAILABLE inside a call for up to request_timeout)."""
        if isinstance(event, ConnectionStateChanged) and event.new == ConnectionState.DISCONNECTED.value:
            for scope in list(self._inflight):
                scope.cancel(reason="connection lost")
        elif isinstance(event, ChildRestartScheduled) and event.supervisor == "runtime":
            if event.name == "devserver":
                self._devserver_restarts += 1
        elif isinstance(event, ServerExited) and not event.reason.startswith("stopped"):
            self._last_error = f"dev server {event.reason}"
        elif isinstance(event, ChildExited) and event.error is not None and not event.stopped:
            self._last_error = f"{event.name}: {event.error}"
        elif isinstance(event, RestartLimitExceeded):
            self._last_error = str(event)
        elif isinstance(event, ChildStarted) and event.name == "http" and isinstance(event.value, str):
            self.http_url = event.value

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
                self._cell.poke("probe")
                raise
            finally:
                self._inflight.discard(scope)
        raise TemporalUnavailable(
            f"the connection was lost during the call: {self._cell.last_error}", maybe_started=True
        )

    @property
    def state(self) -> ConnectionState:
        return self._cell.state

    def client(self) -> Client:
        """The connected temporalio Client; TemporalUnavailable at once when not CONNECTED."""
        return self._client("client")

    async def wait_connected(self) -> None:
        """Wait until CONNECTED (wrap in trio.fail_after as you like)."""
        await self._cell.wait_connected()

    async def wait_ready(self, *, give_up_when_disconnected: bool = False) -> bool:
        """Wait until CONNECTED and every worker is polling (True); with `give_up_when_disconnected`,
        return False at the first failed connection attempt instead of waiting for Temporal."""
        with self._hub.subscribe() as subscription:
            while not self.status()["ready"]:
                event = await subscription.receive()
                if (
                    give_up_when_disconnected
                    and isinstance(event, ConnectionStateChanged)
                    and event.new == ConnectionState.DISCONNECTED.value
                ):
                    return False
        return True

    def _eager(self, task_queue: str) -> bool:
        """Eager start only when a worker of ours polls that queue on the current connection."""
        worker = self._workers.get(task_queue)
        return worker is not None and worker.running and worker.epoch == self._cell.epoch

    async def start_workflow(
        self, workflow: Any, arg: Any = _NO_ARG, *, id: str, task_queue: str, **kwargs: Any
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
        from . import _temporal

        client = self._client("start_workflow")
        timeout = self._connection.workflow_task_timeout
        if timeout is not None:
            kwargs.setdefault("task_timeout", timedelta(seconds=timeout))
        call = functools.partial(
            _temporal.start_workflow,
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
        self, workflow: Any, arg: Any = _NO_ARG, *, id: str, task_queue: str, **kwargs: Any
    ) -> Any:
        """start_workflow (same errors and retry rules), then wait for its result; a failure while
        waiting raises TemporalUnavailable with ``maybe_started=True`` (the workflow was started)."""
        from . import _temporal

        handle = await self.start_workflow(workflow, arg, id=id, task_queue=task_queue, **kwargs)
        try:
            return await _temporal.workflow_result(handle)
        except TemporalUnavailable:
            self._cell.poke("probe")
            raise

    async def run_asyncio(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(client, *args)`` (an asyncio coroutine function) on the runtime's bridge."""
        from . import _temporal

        client = self._client("run_asyncio")
        return await self._call(functools.partial(_temporal.run_asyncio, fn, client, *args))

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot, the document of GET /status and `status --json`: connection, workers,
        dev server, endpoint; ready = CONNECTED and every worker polling on the current epoch."""
        now = time.time()
        workers = [w.snapshot() for w in self._workers.values()]
        dev_server: dict[str, Any] | None = None
        if self.config.dev_server is not None:
            server = self._devserver.info if self._devserver is not None else None
            dev_server = {
                "pid": server.pid if server else None,
                "address": server.address if server else self.config.dev_server.address,
                "restarts": self._devserver_restarts,
                "adopted": server.adopted if server else False,
                "started_at": server.started_at if server else None,
                "uptime_s": round(now - server.started_at, 3) if server else None,
            }
        return {
            "running": True,
            "ready": self._cell.state is ConnectionState.CONNECTED
            and all(w["running"] and w["epoch"] == self._cell.epoch for w in workers),
            "state_dir": str(self.config.state_dir),
            "address": self._connection.address,
            "namespace": self._connection.namespace,
            "daemon": {
                "pid": os.getpid(),
                "started_at": self.started_at,
                "uptime_s": round(now - self.started_at, 3),
                "last_error": self._last_error,
            },
            "dev_server": dev_server,
            "connection": self._cell.snapshot(),
            "workers": workers,
            "http": None if self.http_url is None else {"url": self.http_url},
        }

    def _keep_server_running(self) -> None:
        """At the coming stop, leave a healthy dev server running (the daemon's `restart` handover)."""
        if self._devserver is not None:
            self._devserver.keep_running = True

    async def events(self) -> AsyncIterator[Event]:
        """Every event record from now on (a reader that falls behind loses the oldest, counted)."""
        with self._hub.subscribe() as subscription:
            async for event in subscription:
                yield event


@contextlib.asynccontextmanager
async def open_runtime(config: RuntimeConfig, *, hooks: Sequence[EventHook] = ()) -> AsyncIterator[Runtime]:
    """Run the supervision tree; yields once every child has started (not necessarily connected).

    When the tree gives up (a child exceeded its restart limit), RestartLimitExceeded comes out of this
    block as itself, not wrapped in the exception groups of the nurseries it passed through.
    """
    try:
        async with _open_runtime(config, hooks) as runtime:
            yield runtime
    except BaseExceptionGroup as group:
        leaf = _first_leaf(group)
        if isinstance(leaf, RestartLimitExceeded) and _leaf_count(group) == 1:
            raise leaf  # noqa: B904 -- the group is kept as its __context__
        raise


def _leaf_count(error: BaseException) -> int:
    if isinstance(error, BaseExceptionGroup):
        return sum(_leaf_count(inner) for inner in error.exceptions)
    return 1


@contextlib.asynccontextmanager
async def _open_runtime(config: RuntimeConfig, hooks: Sequence[EventHook]) -> AsyncIterator[Runtime]:
    from ._metrics import Metrics

    connection = config.effective_connection()
    metrics = Metrics()
    event_log = EventLog()
    http = None
    if config.http is not None:
        from ._http import HttpServer

        http = HttpServer(config.http)  # binds now: a busy port fails here, before anything starts
    try:
        async with trio_asyncio.open_loop():
            # Hooks run in this order: logging, metrics, then the caller's (which may read status()).
            hub = EventHub((event_log, metrics.on_event, *hooks))
            # Following the dev server (if any) from the first event on: its first ServerReady comes
            # before the connection child starts.
            follow = config.dev_server is not None and connection.address == config.dev_server.address
            cell = ConnectionCell(emit=hub.emit, follow_server=follow)
            hub.add_hook(cell.on_event)
            children = []
            devserver = None
            if config.dev_server is not None:
                devserver = DevServer(config.dev_server, config.state_dir, on_event=hub.emit)
                children.append(
                    ChildSpec(
                        "devserver",
                        devserver.run,
                        policy=config.dev_server.policy,
                        shutdown_timeout=2 * config.dev_server.stop_timeout + 1.0,
                    )
                )
            children.append(
                ChildSpec(
                    "connection",
                    functools.partial(serve_connection, connection, cell, hub),
                    shutdown_timeout=2.0,
                )
            )
            workers: dict[str, WorkerStatus] = {}
            specs = list(config.workers)
            if config.demo_worker:
                from ._demo import DEMO_TASK_QUEUE, StigmerDemo, greet

                specs.append(WorkerSpec(DEMO_TASK_QUEUE, workflows=[StigmerDemo], activities=[greet]))
            for spec in specs:
                if spec.task_queue in workers:
                    raise ConfigError(f"workers: two WorkerSpecs for task queue {spec.task_queue!r}")
                status = workers[spec.task_queue] = WorkerStatus(spec.task_queue)
                metrics.add_worker(spec.task_queue)
                children.append(
                    ChildSpec(
                        f"worker:{spec.task_queue}",
                        functools.partial(serve_worker, spec, cell, status, hub.emit),
                        policy=spec.policy,
                        shutdown_timeout=spec.graceful_shutdown_timeout + 2.0,
                    )
                )
            if http is not None:
                children.append(ChildSpec("http", http.serve, policy=HTTP_POLICY, shutdown_timeout=2.0))
            for child in children:
                metrics.add_child(child.name)
            # ONE_FOR_ONE: a dev-server restart must not tear down the connection and the workers; they
            # follow it through events (ServerExited / ServerReady) and connection epochs instead.
            # The order above matters at a stop (reverse start order): http, workers, connection, dev
            # server; each Worker's shutdown (ShutdownWorker: its sticky queue released) runs while the
            # server is still up (tests/runtime/test_runtime_starts.py::TestGracefulStop).
            supervisor = Supervisor(
                children,
                strategy=Strategy.ONE_FOR_ONE,
                policy=config.policy,
                name="runtime",
                on_event=hub.emit,
            )
            runtime = Runtime(config, hub, cell, supervisor, devserver, workers, metrics)
            if http is not None:
                from ._http import ControlApp
                from ._metrics import CONTENT_TYPE

                http.app = ControlApp(runtime.status, metrics.exposition, CONTENT_TYPE)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_flush_log, event_log)
                await nursery.start(supervisor.serve)
                try:
                    yield runtime
                finally:
                    nursery.cancel_scope.cancel(reason="runtime closing")
    finally:
        event_log.flush(force=True)
        if http is not None:
            http.close()


HTTP_POLICY = RestartPolicy(max_restarts=10, window=60.0)


async def _flush_log(event_log: EventLog) -> None:
    """Aggregated repeats get their summary line within a second of their window closing."""
    while True:
        await trio.sleep(1.0)
        event_log.flush()


def run(config: RuntimeConfig, *, hooks: Sequence[EventHook] = ()) -> None:
    """The blocking form: run the runtime until cancelled (Ctrl-C)."""

    async def main() -> None:
        async with open_runtime(config, hooks=hooks):
            await trio.sleep_forever()

    trio.run(main)


class _StatusFile:
    """Keeps runtime.json current, atomically: the daemon's identity plus its last status() document
    (what `status` reports when the endpoint does not answer)."""

    def __init__(self, config: RuntimeConfig, clock: Callable[[], float] = time.time) -> None:
        self.path = config.state_dir / RUNTIME_RECORD
        self.config = config
        self.clock = clock
        me = psutil.Process()
        self.identity = (os.getpid(), me.create_time(), tuple(me.cmdline()))
        self.started_at = clock()
        self.last_error: str | None = None
        self.runtime: Runtime | None = None

    def write(self) -> None:
        pid, create_time, cmdline = self.identity
        live = self.runtime.status() if self.runtime is not None else None
        if live is not None and self.last_error is not None:
            live["daemon"]["last_error"] = self.last_error
        extra = {
            "state_dir": str(self.config.state_dir),
            "ready": bool(live and live["ready"]),
            "address": live["address"] if live else None,
            "namespace": live["namespace"] if live else None,
            "workers": live["workers"] if live else [],
            "status": live,
        }
        write_pid_file(self.path, PidRecord(pid, create_time, cmdline, self.started_at, extra))

    def on_event(self, event: Event) -> None:
        if isinstance(event, ChildStarted | ChildExited) and event.name not in ("http", "devserver"):
            return
        if isinstance(
            event,
            ServerReady
            | ServerExited
            | ChildRestartScheduled
            | ConnectionStateChanged
            | WorkerStateChanged
            | ChildStarted
            | ChildExited
            | RestartLimitExceeded,
        ):
            self.write()


Notify = Callable[[dict[str, Any]], None]


def _first_leaf(error: BaseException) -> BaseException:
    """The first real exception inside (nested) exception groups."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


async def _daemon(config: RuntimeConfig, status: _StatusFile, notify: Notify) -> int:
    began = trio.current_time()
    failure: BaseException | None = None

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, HANDOVER_SIGNAL) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    if signum == HANDOVER_SIGNAL and status.runtime is not None:
                        # `restart`: stop, but leave a healthy dev server running for the next daemon to
                        # adopt (its workers still shut down first, while the server is up).
                        status.runtime._keep_server_running()
                        logger.info("received %s: stopping, leaving the dev server running", signum)
                    else:
                        logger.info("received %s: stopping", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel(reason=f"signal {signum}")
                    return

            async def run_tree() -> None:
                nonlocal failure
                try:
                    async with open_runtime(config, hooks=(status.on_event,)) as runtime:
                        status.runtime = runtime
                        status.write()
                        with trio.move_on_after(READY_WAIT):
                            await runtime.wait_ready(give_up_when_disconnected=True)
                        elapsed = trio.current_time() - began
                        ready = runtime.status()["ready"]
                        logger.info("%s after %.3f s", "ready" if ready else "started, not ready", elapsed)
                        notify(
                            {
                                "event": "ready" if ready else "started",
                                "pid": os.getpid(),
                                "address": runtime.status()["address"],
                                "http": runtime.http_url,
                                "elapsed": elapsed,
                            }
                        )
                        _freeze_startup_objects()
                        await trio.sleep_forever()
                except* StigmerError as group:
                    failure = _first_leaf(group)
                nursery.cancel_scope.cancel(reason="supervision tree ended")

            nursery.start_soon(stop_on_signal)
            nursery.start_soon(run_tree)
    if failure is not None:
        status.last_error = str(failure)
        if not isinstance(failure, RestartLimitExceeded):  # that one was logged as an event already
            logger.error("%s", failure)
        with contextlib.suppress(Exception):
            status.write()
        notify({"event": "error", "message": str(failure)})
        return 1
    return 0


def _freeze_startup_objects() -> None:
    """The daemon owns its process: move everything start-up built (temporalio's object graph, the
    modules) out of the collector's way. Measured (benchmarks/http_endpoint.py): full collections went
    from ~27 ms to ~2.5 ms, and they are what a workflow's p99 feels."""
    import gc

    gc.collect()
    gc.freeze()


def daemon_main(config: RuntimeConfig, notify: Notify) -> int:
    """Run the daemon in this process until stopped; returns the exit code.

    One daemon per state dir (runtime.lock). `notify` receives one dict: ready / error / already-running.
    The caller must leave with os._exit(code): temporalio can crash the interpreter at exit.
    """
    ensure_state_dir(config.state_dir)
    lock = FileLock(config.state_dir / RUNTIME_LOCK)
    if not lock.acquire():
        lock.release()
        notify({"event": "already-running"})
        return 0
    status = _StatusFile(config)
    try:
        status.write()
        return trio.run(_daemon, config, status, notify)
    except KeyboardInterrupt:
        return 130
    finally:
        remove_pid_file(status.path)
        lock.release()


# Loggers of other libraries the daemon's log takes in, at this level: temporalio's Python loggers and
# "temporalio.core", where _temporal.sdk_runtime forwards sdk-core's own logs. Without a handler of
# ours their warnings reached daemon.log as bare lines through logging.lastResort (no time, no level).
# WARNING: the level lastResort showed; their INFO lines (each Worker shutdown) would be noise.
FOREIGN_LOGGERS = {"temporalio": logging.WARNING}


class _TextFormatter(logging.Formatter):
    """``time LEVEL message``; a record of another library's logger also names its logger."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s")
        self._foreign = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if record.name == "stigmer_trio" or record.name.startswith("stigmer_trio."):
            return super().format(record)
        return self._foreign.format(record)


def configure_logging(
    stream: Any = None, *, log_format: str = "text", log_file: RotatingLog | None = None
) -> None:
    """The daemon's logging: one handler, text or JSON lines, on the "stigmer_trio" logger and on
    temporalio's (FOREIGN_LOGGERS); with `log_file` (the detached daemon's stderr is that file) it is
    kept under its size bound."""
    handler = RotatingStreamHandler(log_file, stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else _TextFormatter())
    levels = {"stigmer_trio": logging.INFO, **FOREIGN_LOGGERS}
    for name, level in levels.items():
        root = logging.getLogger(name)
        root.handlers[:] = [handler]
        root.setLevel(level)
        root.propagate = False


def write_notification(fd: int) -> Notify:
    """A Notify that writes one JSON line to `fd` (the `up --detach` parent reads it), then closes it."""
    sent = False

    def notify(message: dict[str, Any]) -> None:
        nonlocal sent
        if sent:
            return
        sent = True
        try:
            os.write(fd, (json.dumps(message) + "\n").encode())
        except OSError:
            pass
        finally:
            os.close(fd)

    return notify
