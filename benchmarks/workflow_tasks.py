"""Workflow-task latencies under load, from the server's own history timestamps: how short may the
sticky queue timeout (WorkerSpec.sticky_timeout) and the workflow task timeout
(ConnectionConfig.workflow_task_timeout) be before a busy worker's tasks time out?

    .venv/bin/python benchmarks/workflow_tasks.py [--conc 100] [--seconds 30] [--sticky 1.0]
        [--task-timeout 10] [--hogs 0] [--smoke]

Not a test. Real clock. One runtime (trio) with its supervised dev server (tmp state dir, free port) and
one worker; `--conc` BenchEcho workflows (start -> workflow task -> activity -> workflow task on the
sticky queue -> result) are kept in flight for `--seconds`; `--hogs N` also runs N busy-loop processes
(the machine's other work). Then every history is read and, per workflow task, the server's
Scheduled -> Started (split: normal / sticky queue) and Started -> Completed gaps are printed, with
every WorkflowTaskTimedOut (SCHEDULE_TO_START = a sticky timeout: the cache was lost; START_TO_CLOSE = a
task timeout: the task was retried). `--smoke` (CI) exits non-zero when anything breaks or no workflow
completed.
"""
# ruff: noqa: E402

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import trio
from temporalio.api.enums.v1 import EventType, TaskQueueKind, TimeoutType

import stigmer_trio as st
from _common import free_port, pct, require
from bench_workflows import BenchEcho, echo

QUEUE = "wft-q"


def line(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"{name:<26} n={len(ms):>6}  p50 {pct(ms, 0.5):8.1f}  p99 {pct(ms, 0.99):8.1f}  "
        f"p99.9 {pct(ms, 0.999):8.1f}  max {max(ms, default=math.nan):8.1f} ms"
    )


def analyse(histories: list[Any]) -> dict[str, Any]:
    normal: list[float] = []
    sticky: list[float] = []
    processing: list[float] = []
    timeouts: dict[str, int] = {}
    for events in histories:
        scheduled: tuple[float, int] | None = None
        started: float | None = None
        for event in events:
            at = event.event_time.ToNanoseconds() / 1e9
            kind = event.event_type
            if kind == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
                queue_kind = event.workflow_task_scheduled_event_attributes.task_queue.kind
                scheduled = (at, queue_kind)
            elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED and scheduled is not None:
                at_scheduled, queue_kind = scheduled
                (sticky if queue_kind == TaskQueueKind.TASK_QUEUE_KIND_STICKY else normal).append(
                    at - at_scheduled
                )
                started = at
            elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED and started is not None:
                processing.append(at - started)
                started = None
            elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
                name = TimeoutType.Name(event.workflow_task_timed_out_event_attributes.timeout_type)
                timeouts[name] = timeouts.get(name, 0) + 1
    return {"normal": normal, "sticky": sticky, "processing": processing, "timeouts": timeouts}


async def main(args: argparse.Namespace, hogs: list[subprocess.Popen[bytes]]) -> None:
    state = Path(tempfile.mkdtemp(prefix="wft-"))
    spec = st.WorkerSpec(QUEUE, workflows=[BenchEcho], activities=[echo], sticky_timeout=args.sticky)
    config = st.RuntimeConfig(
        state_dir=state,
        dev_server=st.DevServerConfig(port=free_port()),
        connection=None,
        workers=[spec],
    )
    ids: list[str] = []
    round_trips: list[float] = []
    failed: list[str] = []
    try:
        async with st.open_runtime(config) as rt:
            with trio.fail_after(30):
                await rt.wait_ready()
            deadline = trio.current_time() + args.seconds
            load_before = os.getloadavg()

            async def loop(lane: int) -> None:
                n = 0
                while trio.current_time() < deadline:
                    workflow_id = f"wft-{lane}-{n}"
                    n += 1
                    began = time.perf_counter()
                    try:
                        await rt.execute_workflow(
                            "BenchEcho",
                            "x",
                            id=workflow_id,
                            task_queue=QUEUE,
                            task_timeout=st_timedelta(args.task_timeout),
                        )
                    except st.TemporalUnavailable as exc:  # overload: a start met its request_timeout
                        failed.append(str(exc))
                        if exc.maybe_started:
                            ids.append(workflow_id)
                        continue
                    round_trips.append(time.perf_counter() - began)
                    ids.append(workflow_id)

            async with trio.open_nursery() as nursery:
                for lane in range(args.conc):
                    nursery.start_soon(loop, lane)
            load_after = os.getloadavg()
            stop_hogs(hogs)

            histories: list[Any] = []

            async def fetch(client: Any, workflow_id: str) -> Any:
                try:
                    history = await client.get_workflow_handle(workflow_id).fetch_history()
                except Exception:  # a start that never made it
                    return []
                return list(history.events)

            limit = trio.CapacityLimiter(20)

            async def one(workflow_id: str) -> None:
                async with limit:
                    histories.append(await rt.run_asyncio(fetch, workflow_id))

            async with trio.open_nursery() as nursery:
                for workflow_id in ids:
                    nursery.start_soon(one, workflow_id)
    finally:
        stop_hogs(hogs)
        shutil.rmtree(state, ignore_errors=True)  # the runtime has stopped its dev server by now
    result = analyse(histories)
    require({"round trip": round_trips, **result}, "round trip", "normal", "processing")
    print(
        f"conc={args.conc} seconds={args.seconds} sticky={args.sticky} task_timeout={args.task_timeout} "
        f"hogs={args.hogs}; {os.cpu_count()} cores, load {load_before[0]:.2f} -> {load_after[0]:.2f}; "
        f"{len(ids)} workflows ({len(ids) / args.seconds:.0f}/s)"
    )
    print(line("round trip (client)", round_trips))
    print(line("scheduled->started normal", result["normal"]))
    print(line("scheduled->started sticky", result["sticky"]))
    print(line("started->completed", result["processing"]))
    print(f"workflow task timeouts: {result['timeouts'] or 'none'}; failed starts: {len(failed)}")


def stop_hogs(hogs: list[subprocess.Popen[bytes]]) -> None:
    """SIGKILL the busy loops (not reaped yet, so their pids are still ours); the caller reaps them."""
    for hog in hogs:
        os.killpg(hog.pid, signal.SIGKILL)


def st_timedelta(seconds: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=seconds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--conc", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--sticky", type=float, default=1.0)
    parser.add_argument("--task-timeout", type=float, default=10.0)
    parser.add_argument("--hogs", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="seconds: 10 in flight for 3 s (CI)")
    arguments = parser.parse_args()
    if arguments.smoke:
        arguments.conc, arguments.seconds = 10, 3.0
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
        for _ in range(arguments.hogs)
    ]
    code = 0
    try:
        trio.run(main, arguments, hogs)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        stop_hogs(hogs)
        for hog in hogs:
            hog.wait()
    sys.stdout.flush()
    os._exit(code)  # temporalio can crash the interpreter at exit after a Worker ran
