"""A graceful stop hands a worker's cached workflows over at once; duplicate starts; the task timeout.

Run by tests/integration/test_handover.py in a child process (temporalio can crash the interpreter at
exit after a Worker ran): it reports JSON lines on stdout and leaves with os._exit.

    python handover.py main   STATE_DIR PORT   the scenario (starts a bare dev server on PORT itself)
    python handover.py daemon STATE_DIR PORT STICKY   a daemon (daemon_main) with a worker

The scenario: a Handover workflow (waits for a signal) is cached on the worker of runtime A, which is
then closed (leaving open_runtime); another is cached on the worker of a daemon, which gets SIGTERM.
Both workers have sticky_timeout=10 s: without their ShutdownWorker at the stop, the signal's workflow
task would wait 10 s on a dead sticky queue. The control: a third one cached on a daemon whose worker
has sticky_timeout=1 s, killed by SIGKILL (no ShutdownWorker). Runtime B (a new worker on the same
queue) then signals all three and reports how long each took to run on B.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).parent))

from child import child_main, report
from embed import bare_servers, external_config, wait_port
from handover_workflows import Handover
from temporalio.api.enums.v1 import EventType, TaskQueueKind, TimeoutType
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

import stigmer_trio as st

QUEUE = "handover-q"
STICKY = 10.0  # the stopped workers' sticky timeout: what a handover without ShutdownWorker would wait
CONTROL_STICKY = 1.0  # the SIGKILLed worker's: the control waits this long


def spec(sticky: float) -> st.WorkerSpec:
    return st.WorkerSpec(QUEUE, workflows=[Handover], graceful_shutdown_timeout=1.0, sticky_timeout=sticky)


async def history(rt: st.Runtime, workflow_id: str) -> list[Any]:
    async def fetch(client: Any) -> list[Any]:
        return list((await client.get_workflow_handle(workflow_id).fetch_history()).events)

    return await rt.run_asyncio(fetch)


async def wait_cached(rt: st.Runtime, workflow_id: str) -> None:
    """Until the workflow's first task completed (on some worker, which now caches it)."""
    with trio.fail_after(20):
        while not any(
            e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
            for e in await history(rt, workflow_id)
        ):
            await trio.sleep(0.02)


async def task_timeout_of(rt: st.Runtime, workflow_id: str) -> float:
    async def describe(client: Any) -> float:
        description = await client.get_workflow_handle(workflow_id).describe()
        config = description.raw_description.execution_config
        seconds: float = config.default_workflow_task_timeout.ToTimedelta().total_seconds()
        return seconds

    return await rt.run_asyncio(describe)


async def terminate(rt: st.Runtime, workflow_id: str) -> None:
    async def call(client: Any) -> None:
        await client.get_workflow_handle(workflow_id).terminate()

    await rt.run_asyncio(call)


async def signal_and_wait(client: Any, workflow_id: str) -> Any:
    handle = client.get_workflow_handle(workflow_id)
    await handle.signal("go")
    return await handle.result()


async def start_refused(rt: st.Runtime, workflow_id: str, **options: Any) -> dict[str, Any]:
    try:
        handle = await rt.start_workflow("Handover", id=workflow_id, task_queue=QUEUE, **options)
    except st.WorkflowAlreadyStarted as exc:
        return {
            "raised": type(exc).__name__,
            "workflow_id": exc.workflow_id,
            "workflow_type": exc.workflow_type,
            "run_id": exc.run_id,
            "message": str(exc),
        }
    return {"raised": None, "run_id": handle.first_execution_run_id}


async def first_runtime(state_dir: Path, port: int) -> dict[str, Any]:
    """Runtime A: cache a workflow on its worker, check duplicate starts, close it."""
    config = external_config(state_dir / "a", port, [spec(STICKY)], health_interval=0.2)
    async with st.open_runtime(config) as rt:
        with trio.fail_after(30):
            await rt.wait_ready()
        handle = await rt.start_workflow("Handover", id="exit-1", task_queue=QUEUE)
        run_id = handle.first_execution_run_id
        await rt.start_workflow(
            "Handover", id="explicit-tt", task_queue=QUEUE, task_timeout=timedelta(seconds=7)
        )
        await wait_cached(rt, "exit-1")
        duplicate = await start_refused(rt, "exit-1")
        existing = await start_refused(rt, "exit-1", id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING)
        task_timeouts = {
            "default": await task_timeout_of(rt, "exit-1"),
            "explicit": await task_timeout_of(rt, "explicit-tt"),
        }
        await terminate(rt, "explicit-tt")
        closing = time.perf_counter()
    return {
        "run_id": run_id,
        "duplicate": duplicate,
        "use_existing": existing,
        "task_timeouts": task_timeouts,
        "closed_in": time.perf_counter() - closing,
    }


async def read_lines(stream: trio.abc.ReceiveStream) -> Any:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        while b"\n" in buffer:
            raw, buffer = buffer.split(b"\n", 1)
            yield json.loads(raw)


async def daemon_round(state_dir: Path, port: int, workflow_id: str, stop: signal.Signals) -> dict[str, Any]:
    """A daemon (another process) caches a workflow on its worker, then gets `stop` (SIGTERM/SIGKILL)."""
    sticky = STICKY if stop is signal.SIGTERM else CONTROL_STICKY
    daemon = await trio.lowlevel.open_process(
        [sys.executable, __file__, "daemon", str(state_dir / workflow_id), str(port), str(sticky)], stdout=-1
    )
    try:
        assert daemon.stdout is not None
        lines = read_lines(daemon.stdout)
        with trio.fail_after(60):
            ready = await lines.__anext__()
        assert ready["event"] == "ready", ready
        config = external_config(state_dir / f"r-{workflow_id}", port, [], health_interval=0.2)
        async with st.open_runtime(config) as rt:  # no worker: the daemon's is the only one
            with trio.fail_after(30):
                await rt.wait_ready()
            await rt.start_workflow("Handover", id=workflow_id, task_queue=QUEUE)
            await wait_cached(rt, workflow_id)
            stopping = time.perf_counter()
            daemon.send_signal(stop)
            with trio.fail_after(30):
                code = await daemon.wait()
            stopped_in = time.perf_counter() - stopping
        return {"returncode": code, "stopped_in": stopped_in}
    finally:
        if daemon.returncode is None:
            daemon.kill()
            with trio.CancelScope(shield=True):
                await daemon.wait()


def after_signal(events: list[Any]) -> dict[str, Any]:
    """From the signal to the next workflow task's start, by the server's clock; that task's queue."""
    signalled = next(e for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)
    later = [e for e in events if e.event_id > signalled.event_id]
    started = next(e for e in later if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED)
    kinds = [
        TaskQueueKind.Name(e.workflow_task_scheduled_event_attributes.task_queue.kind)
        for e in later
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED
    ]
    timeouts = [
        TimeoutType.Name(e.workflow_task_timed_out_event_attributes.timeout_type)
        for e in later
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT
    ]
    gap = started.event_time.ToNanoseconds() - signalled.event_time.ToNanoseconds()
    return {"signal_to_started": gap / 1e9, "scheduled_on": kinds, "timeouts": timeouts}


async def successor(state_dir: Path, port: int, first: dict[str, Any]) -> None:
    """Runtime B: a new worker on the queue; signal the cached workflows; then duplicate starts."""
    config = external_config(state_dir / "b", port, [spec(2.0)], health_interval=0.2)
    async with st.open_runtime(config) as rt:
        with trio.fail_after(30):
            await rt.wait_ready()
        for workflow_id in ("exit-1", "sigterm-1", "sigkill-1"):
            began = time.perf_counter()
            with trio.fail_after(30):
                result = await rt.run_asyncio(signal_and_wait, workflow_id)
            report(
                step=f"handover-{workflow_id}",
                result=result,
                seconds=time.perf_counter() - began,
                **after_signal(await history(rt, workflow_id)),
            )
        # Both first runs are closed now.
        reject = WorkflowIDReusePolicy.REJECT_DUPLICATE
        existing = WorkflowIDConflictPolicy.USE_EXISTING
        rejected = await start_refused(rt, "exit-1", id_reuse_policy=reject)
        both = await start_refused(rt, "exit-1", id_reuse_policy=reject, id_conflict_policy=existing)
        second = await start_refused(rt, "exit-1")  # the default policies: a second run
        await terminate(rt, "exit-1")
        report(
            step="after-close",
            first_run_id=first["run_id"],
            reject_duplicate=rejected,
            both_policies=both,
            default=second,
        )


async def main_scenario(state_dir: Path, port: int) -> None:
    async with bare_servers(state_dir, port) as spawn:
        await spawn(None)
        with trio.fail_after(30):
            await wait_port(port)
        first = await first_runtime(state_dir, port)
        report(step="first", **first)
        report(step="daemon", **await daemon_round(state_dir, port, "sigterm-1", signal.SIGTERM))
        report(step="control", **await daemon_round(state_dir, port, "sigkill-1", signal.SIGKILL))
        await successor(state_dir, port, first)


def daemon(state_dir: Path, port: int, sticky: float) -> int:
    from stigmer_trio._daemon import daemon_main

    config = external_config(state_dir, port, [spec(sticky)], health_interval=0.2)

    def notify(message: dict[str, Any]) -> None:
        print(json.dumps(message), flush=True)

    return daemon_main(config, notify)


def main() -> int | None:
    mode, state_dir, port = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    if mode == "daemon":
        return daemon(state_dir, port, float(sys.argv[4]))
    trio.run(main_scenario, state_dir, port)
    return None


if __name__ == "__main__":
    child_main(main)
