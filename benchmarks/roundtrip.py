"""Workflow round trips (start -> result, one activity): the runtime vs plain asyncio temporalio; tables.

    .venv/bin/python benchmarks/roundtrip.py [--seq 200] [--batch 1] [--conc 50] [--bursts 5] [--busy]
                                             [--idle 5] [--smoke]

Not a test. Real clock. Two bare `temporal server start-dev` (127.0.0.1, free ports, persisted db):

* "tuned": with the runtime's dev-server settings (DevServerConfig defaults: eager workflow start,
  history.transferProcessorMaxPollRPS=1000, SQLite WAL + synchronous=normal);
* "stock": what a user of the SDK runs without us, `temporal server start-dev --db-filename ...`.

Three clients:

* this process (trio): the runtime in external mode on the tuned server, its own Worker on "rt-q";
* a child process (plain asyncio, no trio): Client.connect + Worker with the SDK's defaults on "sdk-q",
  on the tuned server (the bridge-overhead comparison: same server, same settings);
* another such child on the stock server (what the runtime is measured against).

Five ways to run the same workflow, interleaved: the sequential series alternate in batches of `--batch`
(default 1: one round trip per way in turn; the order rotates each round, since the server's latency comes
in streaks), then `--bursts` rounds of `--conc` concurrent workflows per way.

  RT       rt.execute_workflow(...): the runtime's facade; it requests eager start (rt-q has a local worker)
  RT-BR    rt.run_asyncio(lambda c: c.execute_workflow(..., request_eager_start=False)): the same SDK call as
           SDK, through the bridge, on the runtime's worker: the bridge overhead with eager start off
  RT-BR-E  the same with request_eager_start=True: the bridge overhead with eager start on
  SDK      plain asyncio, client.execute_workflow(...) with the SDK's defaults (no eager start)
  SDK-E    plain asyncio with request_eager_start=True
  SDK-STOCK  plain asyncio with the SDK's defaults against the stock dev server
  TH-BR    the alternative bridge: temporalio (Client + Worker on "th-q") on a plain asyncio loop in a
           dedicated thread of this process; trio submits with asyncio.run_coroutine_threadsafe and is
           woken through its TrioToken. Eager start off, as RT-BR: compare the two bridges with SDK.

`--busy`: CPU contention in the same run. Each burst round runs every way on a quiet machine, then
RT, RT-BR, SDK and TH-BR again while burners (one `while True: pass` process per core, started by us in
their own sessions, paused with SIGSTOP between busy rounds, SIGKILLed at the end whatever happens) spin
on every core. The busy table gives throughput and CPU per workflow quiet vs busy; the targets: RT-BR's
CPU per workflow <= 1.15x the SDK's, quiet and busy, and RT-BR's busy throughput >= 0.9x the SDK's.
Before the sequential series, the CPU of this process and of the SDK child with no workflows (`--idle`
seconds, twice: before the runtime opens and with it open) says how much of the gap is the runtime's
idle work (health loop, outbox watch, ...) rather than the bridge.

Every figure that has a target is a ratio to a peer of the same run (the third table). `--smoke` (CI):
3 sequential round trips and one burst of 5 per way, quiet and busy, 1 warm-up (~25 s); exits non-zero
when anything breaks or a way got no samples.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import trio
import trio_asyncio

import stigmer_trio as st
from _common import (
    STARTED,
    Server,
    Table,
    command_line,
    forget,
    leave,
    machine_note,
    pct,
    probe_ready,
    require,
    run_timed,
)
from _sdk_child import SdkChild
from bench_workflows import BenchEcho, echo

RT_QUEUE = "rt-q"
SDK_QUEUE = "sdk-q"
TH_QUEUE = "th-q"
WAYS = ("RT", "RT-BR", "RT-BR-E", "SDK", "SDK-E", "SDK-STOCK", "TH-BR")
BUSY_WAYS = ("RT", "RT-BR", "SDK", "TH-BR")  # again under CPU contention (--busy)
LABELS = {
    "RT": "RT: runtime facade rt.execute_workflow (eager start)",
    "RT-BR": "RT-BR: runtime bridge, run_asyncio, eager OFF",
    "RT-BR-E": "RT-BR-E: runtime bridge, run_asyncio, eager ON",
    "SDK": "SDK: plain asyncio, SDK defaults (eager off)",
    "SDK-E": "SDK-E: plain asyncio, eager ON",
    "SDK-STOCK": "SDK-STOCK: plain asyncio, SDK defaults, stock dev server",
    "TH-BR": "TH-BR: alternative bridge, asyncio loop in a thread, eager OFF",
}


class ThreadBridge:
    """temporalio on its own asyncio loop in a dedicated thread; trio awaits results without a thread
    hop of its own: the concurrent future's done-callback wakes trio through its TrioToken."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.loop: asyncio.AbstractEventLoop = asyncio.SelectorEventLoop()  # a plain one, not trio-asyncio's
        self.client: Any = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="asyncio-bridge", daemon=True)

    def _run(self) -> None:
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        from temporalio.client import Client
        from temporalio.worker import Worker

        self._stop = asyncio.Event()
        self.client = await Client.connect(self.address)
        worker = Worker(
            self.client,
            task_queue=TH_QUEUE,
            workflows=[BenchEcho],
            activities=[echo],
            activity_executor=concurrent.futures.ThreadPoolExecutor(8),
        )
        async with worker:
            self._ready.set()
            await self._stop.wait()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"the asyncio bridge thread did not start: {self._error!r}")

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    async def call(self, fn: Any, *args: Any) -> Any:
        future = asyncio.run_coroutine_threadsafe(fn(self.client, *args), self.loop)
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        future.add_done_callback(lambda _: token.run_sync_soon(done.set))
        try:
            await done.wait()
        except trio.Cancelled:
            future.cancel()
            raise
        return future.result()


class Burners:
    """One `while True: pass` process per core, each in its own session (recorded in _common.STARTED, so
    leave() kills them too), paused (SIGSTOP) except while `busy()` is entered; `stop()` SIGKILLs them."""

    def __init__(self) -> None:
        self.count = os.cpu_count() or 1
        self.procs: list[trio.Process] = []
        self.busy_wall = 0.0  # seconds spent busy
        self.busy_cpu = 0.0  # CPU seconds the burners got meanwhile

    async def start(self) -> None:
        for _ in range(self.count):
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-c", "while True: pass"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            STARTED[proc.pid] = True
            self.procs.append(proc)
            os.killpg(proc.pid, signal.SIGSTOP)

    def _cpu(self) -> float:
        total = 0.0
        for proc in self.procs:
            times = psutil.Process(proc.pid).cpu_times()
            total += times.user + times.system
        return total

    @contextlib.asynccontextmanager
    async def busy(self) -> AsyncIterator[None]:
        cpu, began = self._cpu(), time.monotonic()
        for proc in self.procs:
            os.killpg(proc.pid, signal.SIGCONT)
        try:
            await trio.sleep(0.2)  # the scheduler has spread them over the cores
            yield
        finally:
            for proc in self.procs:
                os.killpg(proc.pid, signal.SIGSTOP)
            self.busy_wall += time.monotonic() - began
            self.busy_cpu += self._cpu() - cpu

    async def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            forget(proc.pid)
        self.procs = []


WARMUP = 10  # round trips per way before anything is recorded (--smoke: 1)


class Bench:
    def __init__(
        self,
        seq: int,
        batch: int,
        conc: int,
        bursts: int,
        warmup: int = WARMUP,
        *,
        busy: bool = False,
        idle: float = 5.0,
    ) -> None:
        self.seq, self.batch, self.conc, self.bursts, self.warmup = seq, batch, conc, bursts, warmup
        self.burners = Burners() if busy else None
        self.idle_seconds = idle
        self.root = Path(tempfile.mkdtemp(prefix="stigmer-roundtrip-"))
        self.server = Server(self.root / "server", tuned=True)
        self.stock = Server(self.root / "stock", eager=False)
        self.serial = itertools.count()
        self.latency: dict[str, list[float]] = {way: [] for way in WAYS}  # ms
        self.throughput: dict[str, list[float]] = {way: [] for way in WAYS}  # workflows/s
        self.cpu: dict[str, list[float]] = {way: [] for way in WAYS}  # CPU s per workflow, per burst
        self.busy_throughput: dict[str, list[float]] = {way: [] for way in BUSY_WAYS}
        self.busy_cpu: dict[str, list[float]] = {way: [] for way in BUSY_WAYS}
        self.burst_seconds: dict[str, list[float]] = {way: [] for way in WAYS}  # quiet bursts' wall time
        self.idle: dict[str, float] = {}  # CPU ms per second with no workflows, by what was measured
        self.notes: list[str] = []

    def next_id(self, way: str) -> str:
        return f"{way.lower()}-{next(self.serial)}"

    # --- one round trip, each way, in this process ---------------------------------------------------
    def runtime_call(self, rt: st.Runtime, way: str) -> Any:
        if way == "TH-BR":
            thread_id = self.next_id(way)

            async def in_thread(client: Any) -> Any:
                return await client.execute_workflow("BenchEcho", "x", id=thread_id, task_queue=TH_QUEUE)

            return self.bridge.call(in_thread)
        if way == "RT":
            return rt.execute_workflow("BenchEcho", "x", id=self.next_id(way), task_queue=RT_QUEUE)
        eager = way == "RT-BR-E"
        workflow_id = self.next_id(way)

        async def execute(client: Any) -> Any:
            return await client.execute_workflow(
                "BenchEcho", "x", id=workflow_id, task_queue=RT_QUEUE, request_eager_start=eager
            )

        return rt.run_asyncio(execute)

    async def seq_batch(
        self, rt: st.Runtime, sdks: dict[str, SdkChild], way: str, n: int, record: bool = True
    ) -> None:
        if way.startswith("SDK"):
            sdk = sdks["stock" if way == "SDK-STOCK" else "tuned"]
            latencies = (await sdk.request("seq", n=n, eager=way == "SDK-E"))["lat_ns"]
        else:
            latencies = []
            for _ in range(n):
                began = time.perf_counter_ns()
                await self.runtime_call(rt, way)
                latencies.append(time.perf_counter_ns() - began)
        if record:
            self.latency[way] += [ns / 1e6 for ns in latencies]

    async def burst(self, rt: st.Runtime, sdks: dict[str, SdkChild], way: str, busy: bool = False) -> None:
        if way.startswith("SDK"):
            sdk = sdks["stock" if way == "SDK-STOCK" else "tuned"]
            answer = await sdk.request("burst", n=self.conc, eager=way == "SDK-E")
            elapsed, cpu = answer["elapsed_ns"] / 1e9, answer["cpu"]
        else:
            cpu = time.process_time()
            began = time.perf_counter_ns()
            async with trio.open_nursery() as nursery:
                for _ in range(self.conc):
                    nursery.start_soon(self.runtime_call, rt, way)
            elapsed = (time.perf_counter_ns() - began) / 1e9
            cpu = time.process_time() - cpu
        if busy:
            self.busy_throughput[way].append(self.conc / elapsed)
            self.busy_cpu[way].append(cpu / self.conc)
        else:
            self.throughput[way].append(self.conc / elapsed)
            self.cpu[way].append(cpu / self.conc)
            self.burst_seconds[way].append(elapsed)

    async def measure_idle(self, what: str, sdk: SdkChild) -> None:
        """CPU ms per second of this process and of the SDK child while no workflow runs."""
        child = psutil.Process(sdk.proc.pid)

        def child_cpu() -> float:
            times = child.cpu_times()
            return times.user + times.system

        ours, theirs, began = time.process_time(), child_cpu(), time.monotonic()
        await trio.sleep(self.idle_seconds)
        wall = time.monotonic() - began
        self.idle[what] = (time.process_time() - ours) / wall * 1000
        self.idle["SDK child"] = (child_cpu() - theirs) / wall * 1000

    async def run(self) -> None:
        await self.server.spawn()
        await self.stock.spawn()
        async with trio_asyncio.open_loop():
            await probe_ready(self.server.port)
            await probe_ready(self.stock.port)
        sdk, _ = await SdkChild.start(self.server.address, SDK_QUEUE, self.root / "sdk-child.log")
        stock, _ = await SdkChild.start(self.stock.address, SDK_QUEUE, self.root / "sdk-stock-child.log")
        sdks = {"tuned": sdk, "stock": stock}
        self.bridge = ThreadBridge(self.server.address)
        self.bridge.start()
        if self.burners is not None:
            await self.burners.start()
        await self.measure_idle("this process, TH-BR only", sdk)
        config = st.RuntimeConfig(
            state_dir=self.root / "runtime",
            dev_server=None,
            connection=st.ConnectionConfig(address=self.server.address),
            workers=[st.WorkerSpec(RT_QUEUE, workflows=[BenchEcho], activities=[echo])],
        )
        try:
            async with st.open_runtime(config) as rt:
                with trio.fail_after(60):
                    await rt.wait_ready()
                for way in WAYS:
                    await self.seq_batch(rt, sdks, way, self.warmup, record=False)
                await self.measure_idle("this process, TH-BR + runtime", sdk)
                try:  # can the facade be told not to start eagerly?
                    await rt.execute_workflow(
                        "BenchEcho",
                        "x",
                        id=self.next_id("kw"),
                        task_queue=RT_QUEUE,
                        request_eager_start=False,
                    )
                    self.notes.append("rt.execute_workflow(..., request_eager_start=False) worked")
                except TypeError as exc:
                    self.notes.append(
                        f"rt.execute_workflow(..., request_eager_start=False) raised TypeError: {exc}"
                    )
                rounds = max(1, -(-self.seq // self.batch))
                for index in range(rounds):
                    shift = index % len(WAYS)
                    order = WAYS[shift:] + WAYS[:shift]
                    if index % 2:
                        order = order[::-1]
                    for way in order:
                        await self.seq_batch(rt, sdks, way, self.batch)
                    if (index + 1) % max(1, rounds // 10) == 0:
                        progress(f"sequential round {index + 1}/{rounds}")
                for index in range(self.bursts):
                    shift = index % len(WAYS)
                    order = WAYS[shift:] + WAYS[:shift]
                    for way in order:
                        await self.burst(rt, sdks, way)
                    if self.burners is not None:
                        shift = index % len(BUSY_WAYS)
                        async with self.burners.busy():
                            for way in BUSY_WAYS[shift:] + BUSY_WAYS[:shift]:
                                await self.burst(rt, sdks, way, busy=True)
                    progress(f"burst round {index + 1}/{self.bursts}")
                status = rt.status()
                if status["connection"]["epoch"] != 1:
                    self.notes.append(f"the runtime reconnected during the run: {status['connection']}")
        finally:
            with trio.CancelScope(shield=True):
                if self.burners is not None:
                    await self.burners.stop()
                await sdk.close()
                await stock.close()
                await trio.to_thread.run_sync(self.bridge.stop)
                for server in (self.server, self.stock):
                    if server.proc is not None:
                        await server.kill()

    # --- report --------------------------------------------------------------------------------------
    def tables(self) -> str:
        lat = Table("ms", "{:.1f}")
        for way in WAYS:
            lat.row(f"sequential {LABELS[way]}", self.latency[way])

        def ratio(a: str, b: str, q: float) -> float:
            return pct(self.latency[a], q) / pct(self.latency[b], q)

        def tput(a: str, b: str) -> float:
            return pct(self.throughput[a], 0.5) / pct(self.throughput[b], 0.5)

        def busy_tput(a: str) -> float:
            return pct(self.busy_throughput[a], 0.5) / pct(self.busy_throughput["SDK"], 0.5)

        def cpu_ratio(cpu: dict[str, list[float]], a: str) -> float:
            return pct(cpu[a], 0.5) / pct(cpu["SDK"], 0.5)

        checks = [
            (
                "RT p50 / SDK-STOCK p50 (the runtime vs SDK defaults, stock server)",
                ratio("RT", "SDK-STOCK", 0.5),
                "<= 0.6",
            ),
            (
                "RT p50 / SDK p50 (the runtime vs SDK defaults, same tuned server)",
                ratio("RT", "SDK", 0.5),
                "",
            ),
            ("RT-BR p50 / SDK p50 (bridge overhead, eager off)", ratio("RT-BR", "SDK", 0.5), "<= 1.05"),
            ("RT-BR p99 / SDK p99 (bridge overhead, eager off)", ratio("RT-BR", "SDK", 0.99), "<= 1.2"),
            ("RT-BR / SDK throughput, p50 of bursts", tput("RT-BR", "SDK"), ">= 0.95"),
            ("RT-BR-E p50 / SDK-E p50 (bridge overhead, eager on)", ratio("RT-BR-E", "SDK-E", 0.5), ""),
            ("RT-BR-E p99 / SDK-E p99 (bridge overhead, eager on)", ratio("RT-BR-E", "SDK-E", 0.99), ""),
            ("RT-BR-E / SDK-E throughput", tput("RT-BR-E", "SDK-E"), ""),
            ("RT p50 / RT-BR-E p50 (the facade's own cost)", ratio("RT", "RT-BR-E", 0.5), ""),
            ("RT p99 / RT-BR-E p99 (the facade's own cost)", ratio("RT", "RT-BR-E", 0.99), ""),
            ("RT / SDK throughput", tput("RT", "SDK"), ""),
            ("TH-BR p50 / SDK p50 (thread bridge overhead, eager off)", ratio("TH-BR", "SDK", 0.5), ""),
            ("TH-BR p99 / SDK p99 (thread bridge overhead, eager off)", ratio("TH-BR", "SDK", 0.99), ""),
            ("TH-BR / SDK throughput (thread bridge)", tput("TH-BR", "SDK"), ""),
            ("RT-BR / SDK CPU per workflow, p50 of bursts", cpu_ratio(self.cpu, "RT-BR"), "<= 1.15"),
            ("TH-BR / SDK CPU per workflow (thread bridge)", cpu_ratio(self.cpu, "TH-BR"), ""),
            ("RT / SDK CPU per workflow", cpu_ratio(self.cpu, "RT"), ""),
        ]
        if self.burners is not None:
            checks += [
                ("busy CPU: RT-BR / SDK CPU per workflow", cpu_ratio(self.busy_cpu, "RT-BR"), "<= 1.15"),
                ("busy CPU: RT-BR / SDK throughput", busy_tput("RT-BR"), ">= 0.9"),
                ("busy CPU: TH-BR / SDK CPU per workflow", cpu_ratio(self.busy_cpu, "TH-BR"), ""),
                ("busy CPU: TH-BR / SDK throughput", busy_tput("TH-BR"), ""),
                ("busy CPU: RT / SDK throughput", busy_tput("RT"), ""),
            ]
        bounds = {"<= 0.6": (0.6, -1), "<= 1.05": (1.05, -1), "<= 1.2": (1.2, -1), ">= 0.95": (0.95, 1)}
        bounds |= {"<= 1.15": (1.15, -1), ">= 0.9": (0.9, 1)}
        lines = ["| ratio | value | target | met |", "|---|---|---|---|"]
        for name, value, target in checks:
            met = ""
            if target in bounds:
                bound, sign = bounds[target]
                met = "yes" if (value - bound) * sign >= 0 else "**NO**"
            lines.append(f"| {name} | {value:.3f} | {target} | {met} |")

        thr = [
            f"| throughput, {self.conc} concurrent (workflows/s) | bursts | min | p50 | max "
            "| CPU ms/workflow of its process (p50) |",
            "|---|---|---|---|---|---|",
        ]
        for way in WAYS:
            values = self.throughput[way]
            if values:
                cpu = pct([s * 1000 for s in self.cpu[way]], 0.5)
                thr.append(
                    f"| {LABELS[way]} | {len(values)} | {min(values):.1f} | {pct(values, 0.5):.1f} "
                    f"| {max(values):.1f} | {cpu:.1f} |"
                )
        tables = [lat.render(), "\n".join(thr)]
        if self.burners is not None:
            busy = [
                f"| {self.conc} concurrent, quiet vs busy CPU (p50 of bursts) | bursts | workflows/s quiet "
                "| workflows/s busy | busy / quiet | CPU ms/workflow quiet | CPU ms/workflow busy |",
                "|---|---|---|---|---|---|---|",
            ]
            for way in BUSY_WAYS:
                quiet, loaded = pct(self.throughput[way], 0.5), pct(self.busy_throughput[way], 0.5)
                busy.append(
                    f"| {LABELS[way]} | {len(self.throughput[way])} / {len(self.busy_throughput[way])} "
                    f"| {quiet:.1f} | {loaded:.1f} | {loaded / quiet:.2f} "
                    f"| {pct(self.cpu[way], 0.5) * 1000:.1f} | {pct(self.busy_cpu[way], 0.5) * 1000:.1f} |"
                )
            tables.append("\n".join(busy))
        tables.append("\n".join(lines))
        return "\n\n".join(tables)

    def idle_note(self) -> str:
        """The idle CPU, and what the runtime's share of it costs each workflow of an RT-BR burst."""
        if not self.idle:
            return ""
        parts = [f"{what} {rate:.1f} ms/s" for what, rate in self.idle.items()]
        runtime = self.idle.get("this process, TH-BR + runtime", 0.0) - self.idle.get(
            "this process, TH-BR only", 0.0
        )
        seconds = pct(self.burst_seconds["RT-BR"], 0.5)
        share = runtime * seconds / self.conc
        return (
            f"Idle CPU (no workflows, {self.idle_seconds:g} s each): {'; '.join(parts)}. The runtime's own "
            f"idle work ({runtime:.1f} ms/s) is {share:.2f} ms of CPU per workflow of a {self.conc}-workflow "
            f"RT-BR burst ({seconds:.2f} s)."
        )


def progress(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=200, help="sequential round trips per way")
    parser.add_argument("--batch", type=int, default=1, help="sequential round trips per batch")
    parser.add_argument("--conc", type=int, default=50, help="workflows per concurrent burst")
    parser.add_argument("--bursts", type=int, default=5, help="concurrent bursts per way")
    parser.add_argument("--busy", action="store_true", help="also run bursts with every core kept busy")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of each idle CPU measurement")
    parser.add_argument(
        "--smoke", action="store_true", help="CI: 3 round trips and 1 burst of 5 per way, quiet and busy"
    )
    args = parser.parse_args()
    if min(args.seq, args.batch, args.conc, args.bursts) < 1 or args.idle <= 0:
        parser.error("every count must be >= 1 and --idle > 0")
    if args.smoke:
        args.seq, args.batch, args.conc, args.bursts, args.busy, args.idle = 3, 1, 5, 1, True, 0.5
    bench = Bench(
        args.seq,
        args.batch,
        args.conc,
        args.bursts,
        warmup=1 if args.smoke else WARMUP,
        busy=args.busy,
        idle=args.idle,
    )

    def run() -> None:
        trio.run(bench.run)
        require(bench.latency, *WAYS)
        require(bench.throughput, *WAYS)
        if args.busy:
            require(bench.busy_throughput, *BUSY_WAYS)

    code, elapsed, load_before = run_timed(run)
    try:
        print(bench.tables())
    except Exception:
        traceback.print_exc()
        code = 1
    print()
    print(f"Command: `{command_line()}` ({elapsed:.0f} s wall). {machine_note(load_before)}")
    print(
        "Latency = start -> result of one workflow (time.perf_counter_ns around the call, in the process "
        f"that makes it). Sequential: {args.seq} per way in batches of {args.batch}, rotating order; p99 of "
        f"{args.seq} samples is nearly the max. {bench.warmup} warm-up round trips per way are not recorded. "
        f"Throughput: {args.conc} started at once, time until all completed."
    )
    print(
        "Eager start off for the runtime (RT-BR): the same SDK call as the plain side, through "
        "rt.run_asyncio with request_eager_start=False, on rt-q (served by the runtime's own Worker). That "
        "is the whole bridge: client calls and the Worker under trio-asyncio."
    )
    if bench.burners is not None and bench.burners.busy_wall:
        print(
            f"Busy: {bench.burners.count} burner processes got "
            f"{bench.burners.busy_cpu / bench.burners.busy_wall:.2f} cores on average while busy "
            f"({bench.burners.busy_wall:.0f} s); CPU per workflow counts every thread of the process that "
            "runs the workflow (its Worker and its client)."
        )
    print(bench.idle_note())
    for note in bench.notes:
        print(f"- {note}")
    shutil.rmtree(bench.root, ignore_errors=True)
    return code


if __name__ == "__main__":
    leave(main())
