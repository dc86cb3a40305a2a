"""Fail-fast: how long a call takes to raise while Temporal is down, runtime vs SDK. Prints a table.

    .venv/bin/python benchmarks/failfast.py [--calls 200000] [--sdk-calls 2] [--smoke]

Not a test. Real clock, time.perf_counter_ns around each call.

* The runtime: external mode pointing at a closed 127.0.0.1 port (state DISCONNECTED / CONNECTING: its
  connection child keeps retrying with backoff in the background), a WorkerSpec for the queue (as a real
  embedding has). A tight trio loop times each `await rt.start_workflow(...)` raising TemporalUnavailable;
  every 1000 calls it yields (`trio.lowlevel.checkpoint()`, outside the timed region) so the runtime's own
  tasks run as they would in a real program. The series run round-robin in chunks of 10 000 calls.
* Floors, same loop: a sync flag check + raise, and an `async def` that just raises.
* The plain SDK (a child process, plain asyncio, no runtime): a connected Client, then the bare server is
  SIGKILLed, then `client.start_workflow` with the SDK's defaults, timed until it raises.

Ratios to the floors of the same run follow the table. `--smoke` (CI): 10 000 calls per series and one
SDK call (~15 s, most of it the SDK call waiting for UNAVAILABLE); exits non-zero when anything breaks
or a series got no samples.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
import trio.lowlevel
import trio_asyncio

import stigmer_trio as st
from _common import (
    Server,
    Table,
    command_line,
    free_port,
    leave,
    machine_note,
    pct,
    probe_ready,
    require,
    run_timed,
)
from _sdk_child import SdkChild
from bench_workflows import BenchEcho, echo

QUEUE = "ff-q"
CHUNK = 10_000
YIELD_EVERY = 1000
TARGET_P99_US = 50.0
SERIES = (  # every one of them gets CHUNK samples per round
    "floor: sync flag check + raise",
    "floor: async def that just raises",
    "RUNTIME: await rt.start_workflow(...)",
    "runtime: await rt.execute_workflow(...)",
    "runtime: await rt.run_asyncio(fn)",
    "runtime: rt.client() (sync)",
)


class Down(Exception):
    pass


class Bench:
    def __init__(self, calls: int, sdk_calls: int) -> None:
        self.calls = calls
        self.sdk_calls = sdk_calls
        self.root = Path(tempfile.mkdtemp(prefix="stigmer-failfast-"))
        self.samples: dict[str, list[float]] = {}
        self.states: dict[str, int] = {}
        self.messages: set[str] = set()
        self.sdk: list[dict[str, Any]] = []
        self.sdk_warm: dict[str, Any] | None = None
        self.floor_flag = False

    # --- the plain SDK, against a SIGKILLed server -----------------------------------------------------
    async def sdk_part(self) -> None:
        server = Server(self.root / "server", eager=True)
        await server.spawn()
        try:
            async with trio_asyncio.open_loop():
                await probe_ready(server.port)
            child, _ = await SdkChild.start(server.address, QUEUE, self.root / "sdk-child.log", worker=False)
            try:
                self.sdk_warm = await child.request("start")  # server up: creates one workflow
                await server.kill()
                for _ in range(self.sdk_calls):
                    self.sdk.append(await child.request("start"))
            finally:
                await child.close()
        finally:
            with trio.CancelScope(shield=True):
                if server.proc is not None:
                    await server.kill()

    # --- the runtime ---------------------------------------------------------------------------------
    async def series(self, name: str, call: Callable[[], Awaitable[Any]], rt: st.Runtime | None) -> None:
        """CHUNK timed calls of `call`, each expected to raise TemporalUnavailable (or Down)."""
        now = time.perf_counter_ns
        out = self.samples.setdefault(name, [])
        for start in range(0, CHUNK, YIELD_EVERY):
            for _ in range(YIELD_EVERY):
                began = now()
                try:
                    await call()
                except (st.TemporalUnavailable, Down):
                    pass
                else:
                    raise AssertionError(f"{name}: did not raise while Temporal is down")
                out.append(now() - began)
            if rt is not None and start % (5 * YIELD_EVERY) == 0:
                self.states[rt.state.value] = self.states.get(rt.state.value, 0) + 1
            await trio.lowlevel.checkpoint()

    async def sync_series(self, name: str, call: Callable[[], Any], rt: st.Runtime | None) -> None:
        now = time.perf_counter_ns
        out = self.samples.setdefault(name, [])
        for start in range(0, CHUNK, YIELD_EVERY):
            for _ in range(YIELD_EVERY):
                began = now()
                try:
                    call()
                except (st.TemporalUnavailable, Down):
                    pass
                else:
                    raise AssertionError(f"{name}: did not raise while Temporal is down")
                out.append(now() - began)
            if rt is not None and start % (5 * YIELD_EVERY) == 0:
                self.states[rt.state.value] = self.states.get(rt.state.value, 0) + 1
            await trio.lowlevel.checkpoint()

    async def runtime_part(self) -> None:
        port = free_port()  # bound once and released: nothing listens there
        config = st.RuntimeConfig(
            state_dir=self.root / "runtime",
            dev_server=None,
            connection=st.ConnectionConfig(address=f"127.0.0.1:{port}"),
            workers=[st.WorkerSpec(QUEUE, workflows=[BenchEcho], activities=[echo])],
        )
        async with st.open_runtime(config) as rt:
            await trio.sleep(0.3)  # its first connect attempts have failed by now
            try:
                await rt.start_workflow("BenchEcho", "x", id="probe", task_queue=QUEUE)
            except st.TemporalUnavailable as exc:
                self.messages.add(str(exc))

            def floor_sync() -> None:
                if not self.floor_flag:
                    raise Down("Temporal is down")

            async def floor_async() -> None:
                raise Down("Temporal is down")

            async def no_op(client: Any) -> None:
                return None

            def start() -> Awaitable[Any]:
                return rt.start_workflow("BenchEcho", "x", id="ff", task_queue=QUEUE)

            def execute() -> Awaitable[Any]:
                return rt.execute_workflow("BenchEcho", "x", id="ff", task_queue=QUEUE)

            def run_asyncio() -> Awaitable[Any]:
                return rt.run_asyncio(no_op)

            async_series: list[tuple[str, Callable[[], Awaitable[Any]], st.Runtime | None]] = [
                ("floor: async def that just raises", floor_async, None),
                ("RUNTIME: await rt.start_workflow(...)", start, rt),
                ("runtime: await rt.execute_workflow(...)", execute, rt),
                ("runtime: await rt.run_asyncio(fn)", run_asyncio, rt),
            ]
            sync_series: list[tuple[str, Callable[[], Any], st.Runtime | None]] = [
                ("floor: sync flag check + raise", floor_sync, None),
                ("runtime: rt.client() (sync)", rt.client, rt),
            ]
            gc.collect()
            for _ in range(max(1, self.calls // CHUNK)):
                for name, fn, owner in sync_series:
                    await self.sync_series(name, fn, owner)
                for name, afn, owner in async_series:
                    await self.series(name, afn, owner)

    async def run(self) -> None:
        await self.sdk_part()
        await self.runtime_part()

    def table(self) -> str:
        table = Table("µs", "{:.2f}")
        for name in SERIES:
            values = self.micros(name)
            if name.startswith("RUNTIME"):
                table.row(name, values, f"p99 <= {TARGET_P99_US:g}", pct(values, 0.99) <= TARGET_P99_US)
            else:
                table.row(name, values)
        for index, result in enumerate(self.sdk, 1):
            table.text(
                f"plain SDK: client.start_workflow (defaults), server SIGKILLed, call {index}",
                ["1", f"{result['seconds'] * 1e6:,.0f}", "", "", ""],
                "(for comparison)",
            )
        async_floor = self.micros("floor: async def that just raises")
        for name in SERIES[2:5]:
            table.ratios(f"ratio {name.split(': ', 1)[1]} / async floor", self.micros(name), async_floor)
        table.ratios(
            "ratio rt.client() / sync floor",
            self.micros("runtime: rt.client() (sync)"),
            self.micros("floor: sync flag check + raise"),
        )
        return table.render()

    def micros(self, name: str) -> list[float]:
        return [ns / 1000 for ns in self.samples.get(name, [])]

    def describe(self) -> list[str]:
        lines = []
        for name in self.samples:
            values = [ns / 1000 for ns in self.samples[name]]
            lines.append(
                f"- {name}: p99.9 {pct(values, 0.999):.2f} µs, mean {sum(values) / len(values):.2f} µs"
            )
        lines.append(f"- runtime states seen at sampling points: {self.states}")
        for message in sorted(self.messages):
            lines.append(f"- TemporalUnavailable message: {message!r}")
        for result in self.sdk:
            lines.append(f"- plain SDK call: {result['seconds']:.3f} s, raised {result['raised']!r}")
        if self.sdk_warm is not None:
            lines.append(
                f"- plain SDK start with the server up (warm-up): {self.sdk_warm['seconds'] * 1000:.1f} ms"
            )
        return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000, help=f"per series, a multiple of {CHUNK}")
    parser.add_argument("--sdk-calls", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help=f"CI: {CHUNK} calls per series, 1 SDK call")
    args = parser.parse_args()
    if args.smoke:
        args.calls, args.sdk_calls = CHUNK, 1
    if args.calls < CHUNK or args.sdk_calls < 0:
        parser.error(f"--calls must be >= {CHUNK}, --sdk-calls >= 0")
    bench = Bench(args.calls, args.sdk_calls)

    def run() -> None:
        trio.run(bench.run)
        require(bench.samples, *SERIES)
        if len(bench.sdk) != bench.sdk_calls:
            raise RuntimeError(f"{len(bench.sdk)} plain SDK calls answered, {bench.sdk_calls} asked")

    code, elapsed, load_before = run_timed(run)
    print(bench.table())
    print()
    print(f"Command: `{command_line()}` ({elapsed:.0f} s wall). {machine_note(load_before)}")
    print(
        f"Each series: {len(bench.samples.get('RUNTIME: await rt.start_workflow(...)', []))} calls, "
        f"round-robin chunks of {CHUNK}, a yield every {YIELD_EVERY} calls (not timed). The timed region "
        "includes the call, the raise, the except and one perf_counter_ns() (~0.05 µs). Python "
        f"{sys.version.split()[0]}."
    )
    for line in bench.describe():
        print(line)
    shutil.rmtree(bench.root, ignore_errors=True)
    return code


if __name__ == "__main__":
    leave(main())
