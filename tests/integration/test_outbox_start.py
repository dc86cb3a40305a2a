"""How the outbox starts a queued entry, against the real dev server: the raw start with the entry's fixed
request id is answered with the first request's run, while it runs and after it closed, so a drain that
repeats a start (its answer lost, its daemon killed) never makes a second run.

No Worker runs here (nothing polls the task queue), so the test stays in this process.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import trio
import trio_asyncio
from harness import Stack

from stigmer_trio import WorkflowAlreadyStarted
from stigmer_trio._boundary import _temporal
from stigmer_trio._core._outbox import NewEntry

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[Any]:
    stack.start("--no-demo")
    async with trio_asyncio.open_loop():
        yield await _temporal.connect(stack.address, "default", timeout=10.0)


def queued(id: str, *, request_id: str | None = None) -> NewEntry:
    payloads = _temporal.encode_input(["hello", {"n": 1}])
    return NewEntry(
        id, "Queued", "nobody-polls", payloads, '{"task_timeout": 7}', request_id or uuid.uuid4().hex
    )


async def describe(client: Any, id: str, run_id: str) -> Any:
    return await trio_asyncio.aio_as_trio(client.get_workflow_handle(id, run_id=run_id).describe)()


class TestStartQueued:
    async def test_a_repeated_request_gets_the_first_run_while_it_runs(self, client: Any) -> None:
        """The same request id again: the same run, no second one."""
        entry = queued("q-running")
        first_run = await _temporal.start_queued(client, "default", entry, timeout=5.0)
        assert first_run == await _temporal.start_queued(client, "default", entry, timeout=5.0)
        runs = await self.runs(client, "q-running", first_run)
        assert [first_run] == runs

    async def test_a_repeated_request_gets_the_first_run_after_it_closed(self, client: Any) -> None:
        """Closed (terminated here) and the request repeated: still the first run, no new one, whatever the
        default reuse policy (ALLOW_DUPLICATE) would let a new request do."""
        entry = queued("q-closed")
        first_run = await _temporal.start_queued(client, "default", entry, timeout=5.0)
        handle = client.get_workflow_handle("q-closed", run_id=first_run)
        await trio_asyncio.aio_as_trio(handle.terminate)("closed by the test")
        assert first_run == await _temporal.start_queued(client, "default", entry, timeout=5.0)
        runs = await self.runs(client, "q-closed", first_run)
        assert [first_run] == runs

    async def test_another_request_for_a_running_id_is_already_started(self, client: Any) -> None:
        """Another request id for an id that is running: WorkflowAlreadyStarted, not a second run."""
        await _temporal.start_queued(client, "default", queued("q-taken"), timeout=5.0)
        with pytest.raises(WorkflowAlreadyStarted) as caught:
            await _temporal.start_queued(client, "default", queued("q-taken"), timeout=5.0)
        assert ("q-taken", "Queued") == (caught.value.workflow_id, caught.value.workflow_type)

    async def test_the_stored_input_and_options_arrive(self, client: Any) -> None:
        """The payloads are sent as stored (decoded by a plain client as the arguments given) and the
        stored task timeout is the run's."""
        run_id = await _temporal.start_queued(client, "default", queued("q-input"), timeout=5.0)
        description = await describe(client, "q-input", run_id)
        assert (
            timedelta(seconds=7)
            == description.raw_description.execution_config.default_workflow_task_timeout.ToTimedelta()
        )
        history = await trio_asyncio.aio_as_trio(
            client.get_workflow_handle("q-input", run_id=run_id).fetch_history
        )()
        started = history.events[0].workflow_execution_started_event_attributes
        converter = client.data_converter.payload_converter
        assert ["hello", {"n": 1}] == converter.from_payloads(started.input.payloads)

    @staticmethod
    async def runs(client: Any, id: str, expected: str) -> list[str]:
        """Every run of `id` that visibility lists, once it lists `expected` (it lags: up to 10 s)."""

        async def listed() -> list[str]:
            return [w.run_id async for w in client.list_workflows(f'WorkflowId = "{id}"')]

        with trio.fail_after(10):
            while expected not in (found := await trio_asyncio.aio_as_trio(listed)()):
                await trio.sleep(0.1)
        return found
