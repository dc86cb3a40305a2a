"""Workflow and activity definitions for the benchmarks. No trio here: the workflow sandbox re-imports it."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow


@activity.defn
async def echo(value: str) -> str:
    return value


@workflow.defn(name="BenchEcho")
class BenchEcho:
    """One activity: start -> workflow task -> activity task -> workflow task -> result."""

    @workflow.run
    async def run(self, value: str) -> str:
        return await workflow.execute_activity(echo, value, start_to_close_timeout=timedelta(seconds=30))
