"""Eager workflow start through the runtime: in a row, and interleaved with non-eager starts. A table.

    python benchmarks/eager.py [--rounds 50]

The runtime in dev-server mode (the dev server runs with system.enableEagerWorkflowStart=true) with one
local worker; a one-activity workflow. Three phases, in this order: N eager round trips in a row
(rt.execute_workflow), N with the SDK's defaults (the same call through rt.run_asyncio with
request_eager_start=False) in a row, then N pairs alternating the two.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).parent))

import stigmer_trio as st
from bench_workflows import BenchEcho, echo
from stigmer_trio._devserver import free_port

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
    print("| round trip through the runtime (ms) | n | p50 | p90 | max |")
    print("|---|---|---|---|---|")
    for name, samples in rows:
        ordered = sorted(samples)
        p90 = ordered[int(0.9 * (len(ordered) - 1))]
        print(
            f"| {name} | {len(ordered)} | {statistics.median(ordered):.1f} | {p90:.1f} | {ordered[-1]:.1f} |"
        )
    print(f"\ncommand: python benchmarks/eager.py --rounds {rounds}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    trio.run(main, parser.parse_args().rounds)
    sys.stdout.flush()
    os._exit(0)  # temporalio can crash the interpreter at exit after a Worker ran
