"""The soak's application: the workflow the daemon's worker runs (`up --worker soak_app:spec`, cwd =
benchmarks/). No trio here: the workflow sandbox re-imports this module; stigmer_trio is passed through.

SoakWorkflow = activity -> durable timer (0.2 s) -> activity, so every workflow crosses at least three
workflow tasks, two activity tasks and a timer: a fault can land at any of those points.
"""

from __future__ import annotations

import os
from datetime import timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    import stigmer_trio as st

TASK_QUEUE = "soak"
TIMER_SECONDS = 0.2


@activity.defn(name="soak_step")
async def soak_step(value: str) -> str:
    return value


@workflow.defn(name="SoakWorkflow")
class SoakWorkflow:
    @workflow.run
    async def run(self, value: str) -> str:
        first = await workflow.execute_activity(
            soak_step, value, start_to_close_timeout=timedelta(seconds=10)
        )
        await workflow.sleep(TIMER_SECONDS)
        return await workflow.execute_activity(soak_step, first, start_to_close_timeout=timedelta(seconds=10))


# `soak.py --timeouts S` sets the worker's sticky timeout through the environment (a before/after of
# the runtime's default against the SDK's 10 s); unset: the runtime's default.
_sticky = os.environ.get("SOAK_STICKY_TIMEOUT")
spec = st.WorkerSpec(
    TASK_QUEUE,
    workflows=[SoakWorkflow],
    activities=[soak_step],
    **({} if _sticky is None else {"sticky_timeout": float(_sticky)}),
)
