"""A program that embeds the runtime, run by the integration tests in a child process.

temporalio can crash the interpreter at exit after a Worker ran, so this script reports what it saw as
JSON lines on stdout and leaves with os._exit: the test judges the lines, never a lucky exit code.

    python embed.py external  STATE_DIR PORT      runtime first, Temporal (bare binary) started later
    python embed.py devserver STATE_DIR PORT      SIGKILL the supervised dev server under load
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).parent))

from workflows import Greet, Nap, greet

import stigmer_trio as st

QUEUE = "embed-q"


def report(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def worker_spec() -> st.WorkerSpec:
    return st.WorkerSpec(QUEUE, workflows=[Greet, Nap], activities=[greet], graceful_shutdown_timeout=1.0)


async def fail_fast(rt: st.Runtime, workflow_id: str) -> float:
    """Seconds one start_workflow took to raise TemporalUnavailable (raises AssertionError if it did not)."""
    began = time.perf_counter()
    try:
        await rt.start_workflow("Greet", "x", id=workflow_id, task_queue=QUEUE)
    except st.TemporalUnavailable:
        return time.perf_counter() - began
    raise AssertionError("start_workflow succeeded while Temporal was down")


async def external(state_dir: Path, port: int) -> None:
    config = st.RuntimeConfig(
        state_dir=state_dir,
        dev_server=None,
        connection=st.ConnectionConfig(address=f"127.0.0.1:{port}", health_interval=0.2),
        workers=[worker_spec()],
    )
    async with st.open_runtime(config) as rt:
        report(step="opened", state=rt.state.value)
        report(step="fail-fast", seconds=await fail_fast(rt, "before-temporal"), state=rt.state.value)
        try:
            rt.client()
            report(step="client", raised=False)
        except st.TemporalUnavailable as exc:
            report(step="client", raised=True, message=str(exc))
        home = state_dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        binary = str(Path(sys.executable).parent / "temporal")
        command = [binary, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port)]
        env = {**os.environ, "HOME": str(home), "TEMPORAL_VERSION_CHECK_DISABLED": "1"}
        with open(state_dir / "bare.log", "wb") as log:
            server = await trio.lowlevel.open_process(
                command, stdout=log, stderr=log, env=env, start_new_session=True
            )
        try:
            began = time.perf_counter()
            with trio.fail_after(30):
                await rt.wait_ready()
            report(step="connected", seconds=time.perf_counter() - began, status=rt.status())
            with trio.fail_after(30):
                result = await rt.execute_workflow("Greet", "trio", id="after-temporal", task_queue=QUEUE)
            report(step="workflow", result=result)
        finally:
            os.killpg(server.pid, signal.SIGKILL)
            with trio.CancelScope(shield=True):
                await server.wait()
    report(step="closed", state=rt.state.value)


async def devserver(state_dir: Path, port: int) -> None:
    config = st.RuntimeConfig(
        state_dir=state_dir,
        dev_server=st.DevServerConfig(port=port),
        connection=st.ConnectionConfig(address=f"127.0.0.1:{port}", health_interval=0.2),
        workers=[worker_spec()],
    )
    async with st.open_runtime(config) as rt:
        with trio.fail_after(30):
            await rt.wait_ready()
        with trio.fail_after(30):
            first = await rt.execute_workflow("Greet", "one", id="first", task_queue=QUEUE)
        report(step="first", result=first)
        await rt.start_workflow("Nap", 3.0, id="pre-kill", task_queue=QUEUE)
        server_pid = rt.status()["dev_server"]["pid"]

        outcomes: list[str] = []

        async def start(index: int) -> None:
            try:
                with trio.fail_after(10):  # "none hangs": the runtime's own request_timeout is 5 s
                    await rt.start_workflow("Greet", f"c{index}", id=f"during-{index}", task_queue=QUEUE)
                outcomes.append(f"ok:{index}")
            except st.TemporalUnavailable:
                outcomes.append(f"unavailable:{index}")
            except trio.TooSlowError:
                outcomes.append(f"hung:{index}")

        transitions: list[tuple[str, int]] = []
        reconnected = trio.Event()
        down_fail_fast: list[float] = []

        async def watch() -> None:
            async for event in rt.events():
                if isinstance(event, st.ConnectionStateChanged):
                    transitions.append((event.new, event.epoch))
                    if event.new == "disconnected" and not down_fail_fast:
                        down_fail_fast.append(await fail_fast(rt, "while-down"))
                    if event.new == "connected" and event.epoch >= 2:
                        reconnected.set()

        began = time.perf_counter()
        async with trio.open_nursery() as watchers:
            watchers.start_soon(watch)
            await trio.sleep(0)  # the watcher subscribes before the kill
            os.kill(server_pid, signal.SIGKILL)
            async with trio.open_nursery() as nursery:
                for index in range(50):
                    nursery.start_soon(start, index)
            report(step="concurrent", outcomes=outcomes)
            with trio.fail_after(30):
                await reconnected.wait()
                await rt.wait_ready()
            watchers.cancel_scope.cancel()
        report(step="back", seconds=time.perf_counter() - began, status=rt.status(), transitions=transitions)
        report(step="fail-fast", seconds=down_fail_fast[0] if down_fail_fast else None)
        with trio.fail_after(30):
            again = await rt.execute_workflow("Greet", "two", id="second", task_queue=QUEUE)
        report(step="second", result=again)

        async def result_of(client: Any, workflow_id: str) -> Any:
            return await client.get_workflow_handle(workflow_id).result()

        async def exists(client: Any, workflow_id: str) -> bool:
            await client.get_workflow_handle(workflow_id).describe()
            return True

        with trio.fail_after(30):
            report(step="pre-kill", result=await rt.run_asyncio(result_of, "pre-kill"))
            started = [int(o.split(":")[1]) for o in outcomes if o.startswith("ok:")]
            visible = [await rt.run_asyncio(exists, f"during-{i}") for i in started]
        report(step="visible", started=len(started), visible=sum(visible))


def main() -> None:
    scenario, state_dir, port = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    code = 0
    try:
        trio.run({"external": external, "devserver": devserver}[scenario], state_dir, port)
        report(step="done")
    except BaseException:
        report(step="error", traceback=traceback.format_exc())
        code = 1
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
