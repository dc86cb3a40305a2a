"""After a server restart: is a kept Client or a fresh Client.connect usable sooner? Prints a table.

    python benchmarks/client_reuse.py [--rounds 10]

A bare `temporal server start-dev` (persisted db) is SIGKILLed and respawned each round; from the respawn,
we poll every 2 ms until DescribeNamespace succeeds, alternating rounds between (a) the Client that was
connected before the kill and (b) a new Client.connect. The runtime's connection child replaces the
Client on every new epoch; this measures what that choice costs or saves.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client

BINARY = str(Path(sys.executable).parent / "temporal")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def spawn(port: int, state: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HOME": str(state), "TEMPORAL_VERSION_CHECK_DISABLED": "1"}
    command = [BINARY, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port),
               "--db-filename", str(state / "t.db"), "--log-format", "json"]  # fmt: skip
    with open(state / "server.log", "ab") as log:
        return subprocess.Popen(command, stdout=log, stderr=log, env=env, start_new_session=True)


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
        server = spawn(port, state)
        kept_times: list[float] = []
        fresh_times: list[float] = []
        try:
            await usable_after(address, None)
            for index in range(2 * rounds):
                client = await Client.connect(address)
                await describe(client)
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
                await asyncio.sleep(0.5)
                server = spawn(port, state)
                if index % 2 == 0:
                    kept_times.append(await usable_after(address, client))
                else:
                    fresh_times.append(await usable_after(address, None))
        finally:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    print("| after respawn, until DescribeNamespace succeeds (ms) | n | min | median | max |")
    print("|---|---|---|---|---|")
    for name, samples in (("kept Client (connected before the kill)", kept_times),
                          ("new Client.connect", fresh_times)):  # fmt: skip
        ms = sorted(s * 1000 for s in samples)
        print(f"| {name} | {len(ms)} | {ms[0]:.1f} | {statistics.median(ms):.1f} | {ms[-1]:.1f} |")
    print(f"\ncommand: python benchmarks/client_reuse.py --rounds {rounds}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    asyncio.run(main(parser.parse_args().rounds))
    sys.stdout.flush()
    os._exit(0)
