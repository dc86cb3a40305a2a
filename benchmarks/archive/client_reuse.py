"""ARCHIVED (finished; its finding is in docs/benchmarks.md). After a server restart: is a kept Client or a
fresh Client.connect usable sooner? Prints a table.

    .venv/bin/python benchmarks/archive/client_reuse.py [--rounds 10]

A bare `temporal server start-dev` (persisted db) is SIGKILLed and respawned each round; from the respawn,
we poll every 2 ms until DescribeNamespace succeeds, alternating rounds between (a) the Client that was
connected before the kill and (b) a new Client.connect. The runtime's connection child replaces the
Client on every new epoch; this measured what that choice costs or saves (nothing: both ~130 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/: the shared harness

from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client

from _common import (
    Table,
    command_line,
    free_port,
    kill_popen,
    leave,
    popen_server,
    run_timed,
    start_dev_command,
)


async def describe(client: Client) -> None:
    await client.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace="default"), timeout=timedelta(seconds=1)
    )


async def usable_after(address: str, kept: Client | None) -> float:
    began = time.perf_counter()
    while True:
        try:
            client = kept if kept is not None else await Client.connect(address)
            await describe(client)
            return time.perf_counter() - began
        except Exception:
            await asyncio.sleep(0.002)


async def main(rounds: int) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="stigmer-reuse-") as tmp:
        state = Path(tmp)
        command = start_dev_command(
            port=port, http_port=free_port(), metrics_port=free_port(), db=state / "t.db"
        )
        server = popen_server(command, state, state / "server.log")
        kept_times: list[float] = []
        fresh_times: list[float] = []
        try:
            await usable_after(address, None)
            for index in range(2 * rounds):
                client = await Client.connect(address)
                await describe(client)
                kill_popen(server)
                await asyncio.sleep(0.5)
                server = popen_server(command, state, state / "server.log")
                if index % 2 == 0:
                    kept_times.append(await usable_after(address, client))
                else:
                    fresh_times.append(await usable_after(address, None))
        finally:
            kill_popen(server)
    table = Table("ms, after respawn until DescribeNamespace succeeds")
    kept = [s * 1000 for s in kept_times]
    fresh = [s * 1000 for s in fresh_times]
    table.row("kept Client (connected before the kill)", kept)
    table.row("new Client.connect", fresh)
    table.ratios("ratio kept / new", kept, fresh)
    print(table.render())
    print(f"\nCommand: `{command_line()}`")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    rounds = parser.parse_args().rounds
    leave(run_timed(lambda: asyncio.run(main(rounds)))[0])
