"""The supervised dev server frozen (SIGSTOP) under an embedded runtime with a worker; run in a child.

    python freeze.py STATE_DIR PORT

Reports JSON lines (the test judges them) and leaves with os._exit: temporalio can crash the
interpreter at exit after a Worker ran. The frozen server is this runtime's own child, signalled
through a pidfd after its identity (devserver.json: pid + create time + command line) is proven.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).parent))

from child import child_main, report
from workflows import Greet, Nap, greet

import stigmer_trio as st
from stigmer_trio._boundary._process import Verdict, verify
from stigmer_trio._boundary._statefiles import read_pid_file

QUEUE = "freeze-q"
SETTLE = 3.0  # seconds watched after the new epoch: no further epoch may follow


def freeze(state_dir: Path) -> int:
    """SIGSTOP the dev server named by devserver.json, proven ours first; its pid."""
    record = read_pid_file(state_dir / "devserver.json")
    assert record is not None, "no devserver.json"
    pidfd = os.pidfd_open(record.pid)
    try:
        assert verify(record) is Verdict.SAME, "devserver.json does not name a live server of ours"
        signal.pidfd_send_signal(pidfd, signal.SIGSTOP)
    finally:
        os.close(pidfd)
    return record.pid


async def main(state_dir: Path, port: int) -> None:
    config = st.RuntimeConfig(
        state_dir=state_dir,
        dev_server=st.DevServerConfig(port=port),
        workers=[st.WorkerSpec(QUEUE, workflows=[Greet, Nap], activities=[greet])],
    )
    async with st.open_runtime(config) as rt:
        with trio.fail_after(30):
            await rt.wait_ready()
            report(
                step="first", result=await rt.execute_workflow("Greet", "one", id="first", task_queue=QUEUE)
            )
        pre = await rt.start_workflow("Nap", 2.0, id="pre-freeze", task_queue=QUEUE)
        events: list[tuple[float, Any]] = []
        reconnected = trio.Event()

        async def watch() -> None:
            async for event in rt.events():
                events.append((time.perf_counter(), event))
                if isinstance(event, st.ConnectionStateChanged) and event.new == "connected":
                    reconnected.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await trio.sleep(0.1)
            began = time.perf_counter()
            frozen = freeze(state_dir)
            with trio.fail_after(30):
                await reconnected.wait()
            connected_after = time.perf_counter() - began
            await trio.sleep(SETTLE)
            nursery.cancel_scope.cancel(reason="watched long enough")
        with trio.fail_after(30):
            after = await rt.execute_workflow("Greet", "two", id="after", task_queue=QUEUE)
            nap = await rt.run_asyncio(lambda client: client.get_workflow_handle(pre.id).result())

        def at(t: float) -> float:
            return round(t - began, 3)

        report(
            step="freeze",
            frozen_pid=frozen,
            connected_after=connected_after,
            epochs=[
                e.epoch
                for _, e in events
                if isinstance(e, st.ConnectionStateChanged) and e.new == "connected"
            ],
            states=[(at(t), e.new, e.epoch) for t, e in events if isinstance(e, st.ConnectionStateChanged)],
            exits=[(at(t), e.pid, e.reason) for t, e in events if isinstance(e, st.ServerExited)],
            readies=[(at(t), e.pid) for t, e in events if isinstance(e, st.ServerReady)],
            workers=[
                (at(t), e.running, e.epoch, e.reason)
                for t, e in events
                if isinstance(e, st.WorkerStateChanged)
            ],
            after=after,
            nap=nap,
            status=rt.status(),
        )


if __name__ == "__main__":
    child_main(lambda: trio.run(main, Path(sys.argv[1]), int(sys.argv[2])))
