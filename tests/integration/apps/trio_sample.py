"""Temporal's official Trio sample as a worker of the runtime, run by the integration tests in a child
process (a Worker ran: the child reports JSON lines and leaves with os._exit).

    python trio_sample.py STATE_DIR PORT

`trio_async/` beside this file is temporalio/samples-python's `trio_async` sample (commit e652a4d0,
MIT, its LICENSE copied with it): the package, its activities and its workflow, unchanged. Its async
activity awaits Trio through `trio_asyncio.trio_as_aio`; its sync activity calls `trio.from_thread.run`.
Its worker.py and starter.py are not copied: the runtime (and the bridge) take the worker's place, and
this script the starter's. Against a bare `temporal server start-dev` this scenario starts itself:

* "bridge": the bridge alone on `_aioloop.open_loop()` (the batched loop): make_worker + run_worker, and
  the workflow run through the client as the sample's starter runs it;
* "runtime": st.open_runtime in external mode with a WorkerSpec of the sample's workflow and
  activities; the workflow run by rt.execute_workflow and by the starter's call through rt.run_asyncio.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import trio
import trio_asyncio

sys.path.insert(0, str(Path(__file__).parent))

from child import child_main, report
from embed import bare_servers
from trio_async import activities, workflows

import stigmer_trio as st
from stigmer_trio._boundary import _aioloop, _temporal

QUEUE = "trio-async-task-queue"  # the sample's
SPEC = st.WorkerSpec(
    QUEUE,
    workflows=[workflows.SayHelloWorkflow],
    activities=[activities.say_hello_activity_async, activities.say_hello_activity_sync],
    graceful_shutdown_timeout=1.0,
)


async def starter(client: Any, workflow_id: str) -> Any:
    """What the sample's starter.py does with its client (asyncio)."""
    return await client.execute_workflow(
        workflows.SayHelloWorkflow.run, "Temporal", id=workflow_id, task_queue=QUEUE
    )


async def on_fatal_error(error: BaseException) -> None:
    report(step="fatal", error=repr(error))


async def connect(address: str) -> Any:
    """A client once the server answers a health check and knows the namespace (it may still boot)."""
    with trio.fail_after(30):
        while True:
            try:
                client = await _temporal.connect(address, "default", timeout=5)
                await _temporal.probe(client, ("default",), timeout=5)
                return client
            except st.TemporalUnavailable:
                await trio.sleep(0.05)


async def bridge(address: str) -> None:
    async with _aioloop.open_loop() as loop:
        client = await connect(address)
        worker = _temporal.make_worker(client, SPEC, on_fatal_error)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_temporal.run_worker, worker)
            with trio.fail_after(60):
                result = await trio_asyncio.aio_as_trio(starter)(client, "trio-sample-bridge")
            report(
                step="bridge",
                result=result,
                loop=type(loop).__name__,
                workflow_executor=type(worker._workflow_worker._workflow_task_executor).__name__,  # type: ignore[union-attr]
            )
            with trio.fail_after(15):
                await _temporal.shutdown_worker(worker)
            nursery.cancel_scope.cancel(reason="scenario done")


async def runtime(state_dir: Path, address: str) -> None:
    config = st.RuntimeConfig(
        state_dir=state_dir / "runtime",
        dev_server=None,
        connection=st.ConnectionConfig(address=address),
        workers=[SPEC],
    )
    async with st.open_runtime(config) as rt:
        with trio.fail_after(60):
            await rt.wait_ready()
            facade = await rt.execute_workflow(
                workflows.SayHelloWorkflow.run, "Temporal", id="trio-sample-facade", task_queue=QUEUE
            )
            started = await rt.run_asyncio(starter, "trio-sample-starter")
        report(
            step="runtime",
            facade=facade,
            starter=started,
            loop=type(trio_asyncio.current_loop.get()).__name__,
            workers=rt.status()["workers"],
        )


async def main(state_dir: Path, port: int) -> None:
    async with bare_servers(state_dir, port) as spawn:
        await spawn(None)
        address = f"127.0.0.1:{port}"
        await bridge(address)
        await runtime(state_dir, address)


if __name__ == "__main__":
    child_main(lambda: trio.run(main, Path(sys.argv[1]), int(sys.argv[2])))
