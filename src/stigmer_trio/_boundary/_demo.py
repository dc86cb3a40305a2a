# The built-in demo: a workflow and an activity the daemon's demo worker serves, so that a new user sees
# the stack work with `python -m stigmer_trio up` then `python -m stigmer_trio demo`. Rule: no trio
# import here, and nothing but temporalio's workflow-authoring API (the workflow sandbox re-imports this
# module); the demo's client is _temporal.run_demo_client.
from __future__ import annotations

import os
import socket
from datetime import timedelta

from temporalio import activity, workflow

from .._core._names import DEMO_TASK_QUEUE

__all__ = ["DEMO_TASK_QUEUE", "StigmerDemo", "greet"]


@activity.defn(name="stigmer_demo_greet")
async def greet(name: str) -> str:
    return f"hello {name}, from worker pid {os.getpid()} on {socket.gethostname()}"


@workflow.defn(name="StigmerDemo")
class StigmerDemo:
    @workflow.run
    async def run(self, name: str) -> str:
        return await workflow.execute_activity(greet, name, start_to_close_timeout=timedelta(seconds=10))
