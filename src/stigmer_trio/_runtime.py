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
from typing import TYPE_CHECKING, Any, TypeVar

import psutil
import trio
import trio_asyncio

from ._config import RuntimeConfig, WorkerSpec
from ._connection import ConnectionCell, ConnectionState, serve_connection
from ._devserver import DevServer
from ._errors import ConfigError, RestartLimitExceeded, StigmerError, TemporalUnavailable
from ._events import (
    ChildAbandoned,
    ChildExited,
    ChildRestartScheduled,
    ChildStarted,
    ConnectionStateChanged,
    Event,
    EventHook,
    ServerExited,
    ServerReady,
    WorkerStateChanged,
)
from ._hub import EventHub
from ._statefiles import FileLock, PidRecord, ensure_state_dir, remove_pid_file, write_pid_file
from ._supervisor import ChildSpec, Strategy, Supervisor
from ._temporal_types import _NO_ARG
from ._worker import WorkerStatus, serve_worker

if TYPE_CHECKING:
    from temporalio.client import Client, WorkflowHandle

__all__ = ["Runtime", "daemon_main", "open_runtime", "run"]

T = TypeVar("T")

logger = logging.getLogger("stigmer_trio")

RUNTIME_LOCK = "runtime.lock"
RUNTIME_RECORD = "runtime.json"
READY_WAIT = 30.0  # seconds the daemon waits for CONNECTED + workers before reporting "started"


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
    ) -> None:
        self.config = config
        self._hub = hub
        self._cell = cell
        self._connection = config.effective_connection()
        self.supervisor = supervisor
        self._devserver = devserver
        self._workers = workers
        self._inflight: set[trio.CancelScope] = set()
        hub.add_hook(self._on_event)

    def _on_event(self, event: Event) -> None:
        """Calls in flight when the connection drops fail now, not when their own timeout runs out
        (the SDK retries UNAVAILABLE inside a call for up to request_timeout)."""
        if isinstance(event, ConnectionStateChanged) and event.new == ConnectionState.DISCONNECTED.value:
            for scope in list(self._inflight):
                scope.cancel(reason="connection lost")

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
        raise TemporalUnavailable(f"the connection was lost during the call: {self._cell.last_error}")

    @property
    def state(self) -> ConnectionState:
        return self._cell.state

    def client(self) -> Client:
        """The connected temporalio Client; TemporalUnavailable at once when not CONNECTED."""
        return self._cell.client()

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
        """Start a workflow; it was created, or this raised (TemporalUnavailable when Temporal is down)."""
        from . import _temporal

        client = self._cell.client()
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
        """start_workflow, then wait for its result."""
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

        client = self._cell.client()
        return await self._call(functools.partial(_temporal.run_asyncio, fn, client, *args))

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot: connection, workers, dev server; ready = CONNECTED and every worker
        polling on the current connection epoch."""
        workers = [w.snapshot() for w in self._workers.values()]
        server = self._devserver.info if self._devserver is not None else None
        return {
            "ready": self._cell.state is ConnectionState.CONNECTED
            and all(w["running"] and w["epoch"] == self._cell.epoch for w in workers),
            "address": self._connection.address,
            "namespace": self._connection.namespace,
            "connection": self._cell.snapshot(),
            "workers": workers,
            "dev_server": None
            if server is None
            else {
                "pid": server.pid,
                "address": server.address,
                "adopted": server.adopted,
                "started_at": server.started_at,
            },
        }

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
    connection = config.effective_connection()
    async with trio_asyncio.open_loop():
        hub = EventHub(tuple(hooks))
        cell = ConnectionCell(emit=hub.emit)
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
                "connection", functools.partial(serve_connection, connection, cell, hub), shutdown_timeout=2.0
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
            children.append(
                ChildSpec(
                    f"worker:{spec.task_queue}",
                    functools.partial(serve_worker, spec, cell, status, hub.emit),
                    policy=spec.policy,
                    shutdown_timeout=spec.graceful_shutdown_timeout + 2.0,
                )
            )
        # ONE_FOR_ONE: a dev-server restart must not tear down the connection and the workers; they
        # follow it through events (ServerExited / ServerReady) and connection epochs instead.
        supervisor = Supervisor(
            children, strategy=Strategy.ONE_FOR_ONE, policy=config.policy, name="runtime", on_event=hub.emit
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.serve)
            runtime = Runtime(config, hub, cell, supervisor, devserver, workers)
            try:
                yield runtime
            finally:
                nursery.cancel_scope.cancel(reason="runtime closing")


def run(config: RuntimeConfig, *, hooks: Sequence[EventHook] = ()) -> None:
    """The blocking form: run the runtime until cancelled (Ctrl-C)."""

    async def main() -> None:
        async with open_runtime(config, hooks=hooks):
            await trio.sleep_forever()

    trio.run(main)


class _StatusFile:
    """Keeps runtime.json (the daemon's identity plus what `status` reports) current, atomically."""

    def __init__(self, config: RuntimeConfig, clock: Callable[[], float] = time.time) -> None:
        self.path = config.state_dir / RUNTIME_RECORD
        self.config = config
        self.clock = clock
        me = psutil.Process()
        self.identity = (os.getpid(), me.create_time(), tuple(me.cmdline()))
        self.started_at = clock()
        self.ready = False
        self.dev_server: dict[str, Any] | None = None
        self.restarts = 0
        self.last_error: str | None = None
        self.runtime: Runtime | None = None

    def write(self) -> None:
        pid, create_time, cmdline = self.identity
        live = self.runtime.status() if self.runtime is not None else None
        extra = {
            "state_dir": str(self.config.state_dir),
            "ready": bool(live and live["ready"]) and (self.config.dev_server is None or self.ready),
            "address": live["address"] if live else None,
            "namespace": live["namespace"] if live else None,
            "dev_server": self.dev_server,
            "connection": live["connection"] if live else None,
            "workers": live["workers"] if live else [],
            "last_error": self.last_error,
        }
        write_pid_file(self.path, PidRecord(pid, create_time, cmdline, self.started_at, extra))

    def on_event(self, event: Event) -> None:
        if isinstance(event, ServerReady):
            self.ready = True
            self.dev_server = {
                "pid": event.pid,
                "address": event.address,
                "adopted": event.adopted,
                "restarts": self.restarts,
                "started_at": self.clock(),
            }
        elif isinstance(event, ServerExited):
            self.ready = False
            self.last_error = f"dev server {event.reason}"
            if self.dev_server is not None:
                self.dev_server = {**self.dev_server, "pid": None}
        elif isinstance(event, ChildRestartScheduled) and event.name == "devserver":
            self.restarts += 1
            if self.dev_server is not None:
                self.dev_server = {**self.dev_server, "restarts": self.restarts}
        elif not isinstance(event, ConnectionStateChanged | WorkerStateChanged):
            return
        self.write()


def _log_event(event: Event) -> None:
    if isinstance(event, ServerReady):
        how = "adopted" if event.adopted else "started"
        logger.info(
            "dev server %s at %s (pid %d), ready after %.3f s",
            how,
            event.address,
            event.pid,
            event.ready_after,
        )
    elif isinstance(event, ServerExited):
        logger.warning("dev server pid %d at %s: %s", event.pid, event.address, event.reason)
    elif isinstance(event, ChildExited) and event.error is not None and not event.stopped:
        logger.warning("child %s failed after %.3f s: %s", event.name, event.ran_for, event.error)
    elif isinstance(event, ChildRestartScheduled):
        logger.info("restarting %s in %.3f s (attempt %d)", event.name, event.delay, event.attempt)
    elif isinstance(event, ChildAbandoned):
        logger.error("child %s ignored cancellation for %g s: abandoned", event.name, event.shutdown_timeout)
    elif isinstance(event, RestartLimitExceeded):
        logger.error("%s", event)
    elif isinstance(event, ChildStarted | ChildExited):
        logger.debug("%r", event)


Notify = Callable[[dict[str, Any]], None]


def _first_leaf(error: BaseException) -> BaseException:
    """The first real exception inside (nested) exception groups."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


async def _daemon(config: RuntimeConfig, status: _StatusFile, notify: Notify) -> int:
    began = trio.current_time()
    failure: BaseException | None = None

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    logger.info("received %s: stopping", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel(reason=f"signal {signum}")
                    return

            async def run_tree() -> None:
                nonlocal failure
                try:
                    async with open_runtime(config, hooks=(_log_event, status.on_event)) as runtime:
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
                                "elapsed": elapsed,
                            }
                        )
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
        notify({"event": "error", "message": str(failure)})
        return 1
    return 0


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


def configure_logging(stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("stigmer_trio")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
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
