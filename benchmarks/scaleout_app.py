"""The scale-out benchmark's application: what each of the N daemons runs (`up --external PROXY --worker
scaleout_app:spec`, cwd = benchmarks/). No trio here: the workflow sandbox re-imports this module;
stigmer_trio is passed through.

ScaleoutWorkflow runs `steps` activities one after the other; each sleeps `ms` milliseconds and
heartbeats (heartbeat timeout HEARTBEAT_TIMEOUT, retry initial interval `initial_ms`), and returns
"<daemon name>/<attempt>": the workflow's result says which attempt of every step the server accepted,
and where it ran.

The daemon's name comes from SCALEOUT_NAME (also the Worker's `identity`, so a history names the daemon
that ran each workflow task); every activity attempt appends one JSON line at its start and one at its
end to SCALEOUT_LOG (wall-clock times, `time.time()`), so a fault's victim and the completion elsewhere
of what was in flight on it can be read back.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    import stigmer_trio as st

TASK_QUEUE = "scaleout"
HEARTBEAT_TIMEOUT = 2.0
NAME = os.environ.get("SCALEOUT_NAME", "unnamed")
LOG = os.environ.get("SCALEOUT_LOG")


def _record(event: str, **fields: object) -> None:
    if LOG is None:
        return
    line = json.dumps({"event": event, "daemon": NAME, "t": time.time(), **fields}) + "\n"
    fd = os.open(LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line.encode())  # one write of one short line with O_APPEND: never interleaved
    finally:
        os.close(fd)


@activity.defn(name="scaleout_step")
async def scaleout_step(ms: int) -> str:
    info = activity.info()
    key = {"wid": info.workflow_id, "step": info.activity_id, "attempt": info.attempt}
    _record("start", **key)
    activity.heartbeat()
    remaining = ms / 1000
    while remaining > 0:  # heartbeat every 100 ms (the SDK throttles what it sends to 0.8 x the timeout)
        await asyncio.sleep(min(0.1, remaining))
        remaining -= 0.1
        activity.heartbeat()
    _record("done", **key)
    return f"{NAME}/{info.attempt}"


@workflow.defn(name="ScaleoutWorkflow")
class ScaleoutWorkflow:
    @workflow.run
    async def run(self, steps: int, ms: int, initial_ms: int) -> list[str]:
        retry = RetryPolicy(
            initial_interval=timedelta(milliseconds=initial_ms), maximum_interval=timedelta(seconds=2)
        )
        ran = []
        for _ in range(steps):
            ran.append(
                await workflow.execute_activity(
                    scaleout_step,
                    ms,
                    start_to_close_timeout=timedelta(seconds=30),
                    heartbeat_timeout=timedelta(seconds=HEARTBEAT_TIMEOUT),
                    retry_policy=retry,
                )
            )
        return ran


spec = st.WorkerSpec(
    TASK_QUEUE,
    workflows=[ScaleoutWorkflow],
    activities=[scaleout_step],
    options={"identity": f"scaleout-{NAME}"},
)
