# The worker child, one per WorkerSpec: a temporalio Worker bound to the current connection.
# Owns the Worker's lifetime: built when CONNECTED, replaced at once on a new connection epoch (after
# an outage the SDK's own pollers back off up to 10 s; a fresh Worker polls now), and every shutdown is
# bounded (graceful_shutdown_timeout, then cancel: against a hung server the SDK waits 30 s). Must
# never: loop on its own failures (Worker.run() raising or on_fatal_error ends this lifetime; the
# Supervisor restarts it by policy), or leave a Worker running after it returns.
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import trio

from .._core._config import WorkerSpec
from .._core._errors import StigmerError
from .._core._events import ConnectionState, EventHook, WorkerStateChanged
from ._cell import ConnectionCell

if TYPE_CHECKING:
    from .._boundary._bridge import Bridge
    from .._boundary._temporal import Worker

__all__ = ["WorkerFailed", "WorkerStatus", "serve_worker"]

_RUN_UNWIND = 1.0  # seconds a stopping (not replaced) Worker's cancelled run() gets to unwind


class WorkerFailed(StigmerError):
    """A Worker stopped on its own (Worker.run() raised or returned, or a fatal error was reported)."""


class WorkerStatus:
    """What `status` reports for one worker; written by its child only."""

    def __init__(self, task_queue: str) -> None:
        self.task_queue = task_queue
        self.running = False
        self.restarts = 0  # lifetimes started after the first (the Supervisor restarted it)
        self.epoch = 0
        self.lifetimes = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "task_queue": self.task_queue,
            "running": self.running,
            "restarts": self.restarts,
            "epoch": self.epoch,
        }


async def serve_worker(
    spec: WorkerSpec,
    cell: ConnectionCell,
    status: WorkerStatus,
    emit: EventHook,
    *,
    bridge: Bridge | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """One lifetime: a Worker per connection epoch until the Worker itself fails (raise) or cancel.
    `bridge`: Temporal (default: the real one, imported at the first epoch)."""
    status.lifetimes += 1
    status.restarts = status.lifetimes - 1
    task_status.started()  # like the connection: running does not wait for Temporal
    # A replaced Worker's run() is cancelled here, in the background (through trio-asyncio, ~5 ms),
    # while the next epoch's Worker is already built and polling.
    error: Exception | None = None
    async with trio.open_nursery() as retiring:
        try:
            while True:
                client, epoch = await cell.wait_connected()
                await _one_epoch(bridge, spec, cell, status, emit, client, epoch, retiring)
        except Exception as exc:  # WorkerFailed: raised as itself once the retiring runs are done
            error = exc
    if error is not None:
        raise error


async def _one_epoch(
    bridge: Bridge | None,
    spec: WorkerSpec,
    cell: ConnectionCell,
    status: WorkerStatus,
    emit: EventHook,
    client: Any,
    epoch: int,
    retiring: trio.Nursery,
) -> None:
    """Run one Worker until the connection epoch changes (return, its run() still being cancelled in
    `retiring`) or the Worker fails (raise)."""
    from .._boundary._bridge import temporal_bridge

    temporal = bridge or temporal_bridge()

    failure: BaseException | None = None
    stopping = False
    replaced = False
    ended = trio.Event()  # run() returned or raised
    run_scope = trio.CancelScope()

    async def on_fatal_error(error: BaseException) -> None:  # called on the asyncio side
        nonlocal failure
        failure = error
        ended.set()

    try:
        worker = temporal.make_worker(client, spec, on_fatal_error)
    except Exception as exc:
        emit(WorkerStateChanged(spec.task_queue, False, epoch, f"failed: {exc}"))
        raise WorkerFailed(f"the worker of task queue {spec.task_queue!r} cannot be built: {exc}") from exc

    async def run() -> None:
        nonlocal failure
        try:
            with run_scope:
                await temporal.run_worker(worker)
                if not stopping:
                    failure = failure or WorkerFailed(f"the worker of {spec.task_queue!r} returned")
        except Exception as exc:
            if not stopping:
                failure = exc
        finally:
            ended.set()

    retiring.start_soon(run)
    status.running, status.epoch = True, epoch
    emit(WorkerStateChanged(spec.task_queue, True, epoch, "polling"))
    try:
        async with trio.open_nursery() as watchers:

            async def watch_epoch() -> None:
                nonlocal replaced
                await cell.wait_until(lambda c: _superseded(c, epoch))
                replaced = cell.state is not ConnectionState.CLOSED
                watchers.cancel_scope.cancel(reason="new connection epoch")

            async def watch_run() -> None:
                await ended.wait()
                watchers.cancel_scope.cancel(reason="worker ended")

            watchers.start_soon(watch_epoch)
            watchers.start_soon(watch_run)
    finally:
        status.running = False
        stopping = True
        # Stopping or failing: give Worker.shutdown() its bounded chance. It also sends ShutdownWorker,
        # which releases this Worker's sticky queue: the next task of a workflow it cached goes to
        # another worker at once (measured 3-7 ms, tests/integration/test_handover.py) instead of after
        # WorkerSpec.sticky_timeout. The runtime stops workers before the connection and the dev server
        # (reverse start order), so the RPC gets through.
        if not replaced:
            with trio.CancelScope(shield=True):
                await _shutdown(temporal, worker, spec)
        # Replaced for a new connection: the new Worker starts now; cancelling this one's run() makes
        # the SDK shut it down in the background (in-flight tasks finish meanwhile).
        run_scope.cancel(reason="worker stopping" if not replaced else "replaced")
        if not replaced:
            with trio.CancelScope(shield=True), trio.move_on_after(_RUN_UNWIND):
                await ended.wait()
    emit(
        WorkerStateChanged(
            spec.task_queue, False, epoch, "replaced" if failure is None else f"failed: {failure}"
        )
    )
    if failure is not None:
        raise WorkerFailed(f"the worker of task queue {spec.task_queue!r} failed: {failure}") from failure


def _superseded(cell: ConnectionCell, epoch: int) -> bool:
    """Is the Worker of `epoch` done for? A new epoch began, the runtime is closing, or the supervised
    dev server it polls was condemned: the next epoch's Worker (on the next server) replaces it anyway,
    so it is retired now rather than left polling a dead port (failing polls, the SDK's warnings, CPU)
    through the new server's boot."""
    if cell.epoch != epoch or cell.state is ConnectionState.CLOSED:
        return True
    return cell.follow_server and not cell.server_up


async def _shutdown(temporal: Bridge, worker: Worker, spec: WorkerSpec) -> None:
    """Worker.shutdown() within graceful_shutdown_timeout (+1 s for the SDK's own bookkeeping)."""
    with trio.move_on_after(spec.graceful_shutdown_timeout + 1.0):
        with contextlib.suppress(Exception):  # already shut down, or never started: nothing to stop
            await temporal.shutdown_worker(worker)
