"""The scale benchmark's application: SCALE_WORKERS (default 1) WorkerSpecs, one per task queue
`scale-<i>`, each with one small workflow and one sync and one async activity (`up --external ADDRESS
--worker scale_app:specs --no-demo`, cwd = benchmarks/). No trio here: the workflow sandbox re-imports
this module; stigmer_trio is passed through.
"""

from __future__ import annotations

import os
from datetime import timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    import stigmer_trio as st


@activity.defn(name="scale_sync")
def scale_sync(text: str) -> str:
    return text


@activity.defn(name="scale_async")
async def scale_async(text: str) -> str:
    return text


@workflow.defn(name="ScaleWorkflow")
class ScaleWorkflow:
    @workflow.run
    async def run(self, text: str) -> str:
        first = await workflow.execute_activity(
            scale_sync, text, start_to_close_timeout=timedelta(seconds=10)
        )
        return await workflow.execute_activity(
            scale_async, first, start_to_close_timeout=timedelta(seconds=10)
        )


def specs() -> list[st.WorkerSpec]:
    count = int(os.environ.get("SCALE_WORKERS", "1"))
    return [
        st.WorkerSpec(
            task_queue=f"scale-{i}", workflows=(ScaleWorkflow,), activities=(scale_sync, scale_async)
        )
        for i in range(count)
    ]
