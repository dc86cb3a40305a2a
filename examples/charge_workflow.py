"""The workflow of examples/test_survives_server_kill.py. Workflow modules must not import trio or
pytest: the SDK's sandbox imports this module again for every workflow run."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from temporalio import activity, workflow


@activity.defn
async def charge(ledger: str) -> str:
    """The side effect: one line in the ledger. Says it started, then waits for the test's go-ahead."""
    path = Path(ledger)
    path.with_suffix(".started").touch()
    while not path.with_suffix(".go").exists():
        await asyncio.sleep(0.02)
    with path.open("a") as file:
        file.write("charged\n")
    return "charged"


@workflow.defn(name="Charge")
class Charge:
    @workflow.run
    async def run(self, ledger: str) -> str:
        return await workflow.execute_activity(charge, ledger, start_to_close_timeout=timedelta(seconds=60))
