"""A workflow survives a SIGKILL of the Temporal server in the middle of its activity, and completes
exactly once: one run, one activity execution, one side effect.

Uses the stigmer_trio pytest plugin (installed with stigmer_trio): `temporal_runtime` opens a runtime
with a worker on this test's own task queue against the session's supervised dev server;
`temporal_faults` kills that server (its supervisor starts a new one on the same persistent db).
Run with pytest-trio in trio mode (`trio_mode = true`): `python -m pytest examples/`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from charge_workflow import Charge, charge
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

import stigmer_trio as st


async def wait_for_file(path: Path) -> None:
    with trio.fail_after(30):
        while not path.exists():
            await trio.sleep(0.02)


async def with_temporal(rt: st.Runtime, fn: Any, *args: Any) -> Any:
    """rt.run_asyncio(fn, *args), again after each reconnection, while the server comes back."""
    with trio.fail_after(60):
        while True:
            await rt.wait_connected()
            try:
                return await rt.run_asyncio(fn, *args)
            except st.TemporalUnavailable:
                await trio.sleep(0.1)


async def result(client: Client, workflow_id: str) -> Any:
    return await client.get_workflow_handle(workflow_id).result()


async def runs(client: Client, workflow_id: str) -> list[str]:
    return [execution.run_id async for execution in client.list_workflows(f"WorkflowId = '{workflow_id}'")]


async def history(client: Client, workflow_id: str) -> list[Any]:
    return list((await client.get_workflow_handle(workflow_id).fetch_history()).events)


async def test_workflow_survives_server_kill(temporal_runtime, temporal_faults, tmp_path):
    """SIGKILL the server while the activity runs: the workflow completes, exactly once."""
    ledger = tmp_path / "ledger"
    workflow_id = f"charge-{temporal_runtime.task_queue}"
    async with temporal_runtime(workflows=[Charge], activities=[charge]) as rt:
        await rt.start_workflow(
            Charge.run, str(ledger), id=workflow_id, task_queue=temporal_runtime.task_queue
        )
        await wait_for_file(ledger.with_suffix(".started"))  # the activity is running

        killed = await temporal_faults.kill_server()  # returns once the server is dead
        assert killed != await temporal_faults.wait_server_ready()  # the supervisor's new server
        ledger.with_suffix(".go").touch()  # let the activity finish

        assert "charged" == await with_temporal(rt, result, workflow_id)
        assert 1 == len(await with_temporal(rt, runs, workflow_id))  # one run: no duplicate start
        events = await with_temporal(rt, history, workflow_id)

    scheduled = [e for e in events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED]
    started = [e for e in events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED]
    assert 1 == len(scheduled)
    assert [1] == [e.activity_task_started_event_attributes.attempt for e in started]  # never retried
    assert ["charged"] == ledger.read_text().splitlines()  # the side effect happened once
