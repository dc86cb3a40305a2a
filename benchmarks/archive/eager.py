"""ARCHIVED (finished; its finding is in docs/benchmarks.md). Eager workflow start through the runtime: in
a row, and interleaved with non-eager starts. A table.

    .venv/bin/python benchmarks/archive/eager.py [--rounds 50]

The runtime in dev-server mode (the dev server runs with system.enableEagerWorkflowStart=true) with one
local worker; a one-activity workflow. Three phases, in this order: N eager round trips in a row
(rt.execute_workflow), N with the SDK's defaults (the same call through rt.run_asyncio with
request_eager_start=False) in a row, then N pairs alternating the two.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/: the shared harness

import trio

import stigmer_trio as st
from _common import Table, command_line, free_port, leave, run_timed
from bench_workflows import BenchEcho, echo

QUEUE = "eager-q"


async def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="stigmer-eager-") as state:
        config = st.RuntimeConfig(
            state_dir=state,
            dev_server=st.DevServerConfig(port=free_port()),
            workers=[st.WorkerSpec(QUEUE, workflows=[BenchEcho], activities=[echo])],
        )
        async with st.open_runtime(config) as rt:
            with trio.fail_after(30):
                await rt.wait_ready()
            counter = iter(range(10**9))

            async def eager() -> float:
                began = time.perf_counter()
                await rt.execute_workflow("BenchEcho", "x", id=f"e-{next(counter)}", task_queue=QUEUE)
                return (time.perf_counter() - began) * 1000

            async def plain_call(client: Any, workflow_id: str) -> Any:
                return await client.execute_workflow(
                    "BenchEcho", "x", id=workflow_id, task_queue=QUEUE, request_eager_start=False
                )

            async def default() -> float:
                began = time.perf_counter()
                await rt.run_asyncio(plain_call, f"d-{next(counter)}")
                return (time.perf_counter() - began) * 1000

            for _ in range(10):  # warm-up
                await eager()
            rows = [
                ("eager start, in a row", [await eager() for _ in range(rounds)]),
                ("SDK defaults (no eager), in a row", [await default() for _ in range(rounds)]),
            ]
            mixed_eager: list[float] = []
            mixed_default: list[float] = []
            for _ in range(rounds):
                mixed_eager.append(await eager())
                mixed_default.append(await default())
            rows += [("eager start, alternating", mixed_eager), ("SDK defaults, alternating", mixed_default)]
    table = Table("ms, round trip through the runtime")
    for name, samples in rows:
        table.row(name, samples)
    table.ratios("ratio eager / SDK defaults, in a row", rows[0][1], rows[1][1])
    table.ratios("ratio eager / SDK defaults, alternating", rows[2][1], rows[3][1])
    print(table.render())
    print(f"\nCommand: `{command_line()}`")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    rounds = parser.parse_args().rounds
    leave(run_timed(lambda: trio.run(main, rounds))[0])  # os._exit: temporalio can crash at exit
