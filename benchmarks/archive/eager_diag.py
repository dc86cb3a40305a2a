"""ARCHIVED (finished; its findings are in docs/benchmarks.md). Where does a one-activity round trip spend
its time? Per-hop history breakdown, plain asyncio.

    .venv/bin/python benchmarks/archive/eager_diag.py [--rounds 40] [--variant NAME ...] [--list]

Starts its own `temporal server start-dev` per distinct server flag set (127.0.0.1, free ports, temp db,
eager workflow start enabled), one Worker per variant (its own task queue), and runs BenchEcho round trips
(start -> result). Variants are interleaved round-robin in the same run (and, per variant, eager and
non-eager starts alternate when the variant says "alt"). For every round trip it fetches the history and
prints the gaps between events, plus client time before the first and after the last event.

No trio, no trio-asyncio, no stigmer_trio: plain temporalio. A diagnostic, kept because it found the
transfer-queue rate limit (history.transferProcessorMaxPollRPS, 20/s by default) behind the bimodal
~50/~100 ms round trips; its wide table-printing lines are exempt from the line-length rule. The server
command line and the percentile are the shared harness's (`_common.start_dev_command`, `_common.pct`).
"""
# ruff: noqa: E501, B904

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/: the shared harness

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.worker import Worker

from _common import EAGER_START, forget, free_port, pct, popen_server, start_dev_command
from bench_workflows import BenchEcho, echo

EAGER = (EAGER_START,)


# --- server ---------------------------------------------------------------------------------------------
class Server:
    def __init__(self, root: Path, dyn: tuple[str, ...], args: tuple[str, ...] = ()) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "home").mkdir(exist_ok=True)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dyn = dyn
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = start_dev_command(
            port=self.port,
            http_port=free_port(),
            metrics_port=free_port(),
            db=None if "--memdb" in self.args else self.root / "temporal.db",
            dynamic_config=self.dyn,
            extra=["--log-level", "warn", *(a for a in self.args if a != "--memdb")],
        )
        self.proc = popen_server(cmd, self.root / "home", self.root / "server.log")
        print(
            f"# server pid {self.proc.pid} {self.address} dyn={list(self.dyn)} args={list(self.args)}",
            file=sys.stderr,
        )

    async def client(self) -> Client:
        deadline = time.monotonic() + 60
        while True:
            try:
                client = await Client.connect(self.address)
                await client.service_client.check_health()
                return client
            except Exception:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"server exited rc={self.proc.returncode}; see {self.root}/server.log")
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        forget(self.proc.pid)
        self.proc = None


# --- variants -------------------------------------------------------------------------------------------
@dataclass
class Variant:
    name: str
    dyn: tuple[str, ...] = ()  # extra dynamic config besides eager start
    worker: dict[str, Any] = field(default_factory=dict)
    args: tuple[str, ...] = ()  # extra `temporal server start-dev` arguments ("--memdb": no --db-filename)
    mode: str = "eager"  # eager | plain | alt (eager and plain alternate on this queue)


# history's transfer-queue reader loads at most this many times a second (server default 20: one load per 50 ms)
RPS = ("history.transferProcessorMaxPollRPS=10000",)
WAL = ("--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal")

VARIANTS = {
    v.name: v
    for v in [
        Variant("sdk-default", mode="plain"),
        Variant("eager", mode="eager"),
        Variant("alt", mode="alt"),
        Variant(
            "eager-p1",
            dyn=("matching.numTaskqueueReadPartitions=1", "matching.numTaskqueueWritePartitions=1"),
            mode="eager",
        ),
        Variant(
            "alt-p1",
            dyn=("matching.numTaskqueueReadPartitions=1", "matching.numTaskqueueWritePartitions=1"),
            mode="alt",
        ),
        Variant(
            "plain-p1",
            dyn=("matching.numTaskqueueReadPartitions=1", "matching.numTaskqueueWritePartitions=1"),
            mode="plain",
        ),
        Variant("plain-rps", dyn=RPS, mode="plain"),
        Variant("eager-rps", dyn=RPS, mode="eager"),
        Variant("alt-rps", dyn=RPS, mode="alt"),
        Variant("plain-rps-syncoff", dyn=RPS, args=("--sqlite-pragma", "synchronous=OFF"), mode="plain"),
        Variant("eager-rps-syncoff", dyn=RPS, args=("--sqlite-pragma", "synchronous=OFF"), mode="eager"),
        Variant(
            "plain-rps-wal",
            dyn=RPS,
            args=("--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal"),
            mode="plain",
        ),
        Variant(
            "eager-rps-wal",
            dyn=RPS,
            args=("--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal"),
            mode="eager",
        ),
        Variant("plain-rps-memdb", dyn=RPS, args=("--memdb",), mode="plain"),
        Variant("eager-rps-memdb", dyn=RPS, args=("--memdb",), mode="eager"),
        Variant("alt-rps-wal", dyn=RPS, args=WAL, mode="alt"),
        Variant("eager-memdb", args=("--memdb",), mode="eager"),
        Variant("plain-memdb", args=("--memdb",), mode="plain"),
        Variant("alt-memdb", args=("--memdb",), mode="alt"),
        Variant("eager-syncoff", args=("--sqlite-pragma", "synchronous=OFF"), mode="eager"),
        Variant("plain-syncoff", args=("--sqlite-pragma", "synchronous=OFF"), mode="plain"),
        Variant("eager-noeageract", worker={"disable_eager_activity_execution": True}, mode="eager"),
        Variant("eager-wfpoll1", worker={"max_concurrent_workflow_task_polls": 1}, mode="eager"),
        Variant("eager-ratio1", worker={"nonsticky_to_sticky_poll_ratio": 1.0}, mode="eager"),
        Variant("eager-actpoll1", worker={"max_concurrent_activity_task_polls": 1}, mode="eager"),
        Variant("eager-noremote", worker={"no_remote_activities": True}, mode="eager"),
        Variant(
            "eager-sticky1s",
            worker={"sticky_queue_schedule_to_start_timeout": timedelta(seconds=1)},
            mode="eager",
        ),
        Variant("eager-nocache", worker={"max_cached_workflows": 0}, mode="eager"),
        Variant("alt-nocache", worker={"max_cached_workflows": 0}, mode="alt"),
    ]
}

NAMES = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED: "WES",
    EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED: "WTSched",
    EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED: "WTStart",
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED: "WTComp",
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED: "ATSched",
    EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED: "ATStart",
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "ATComp",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED: "WEC",
}


@dataclass
class Sample:
    variant: str
    eager: bool
    total: float
    hops: dict[str, float]
    events: list[str]
    start_rpc: float  # ms spent in start_workflow (client)


async def round_trip(client: Client, queue: str, wid: str, eager: bool) -> Sample | None:
    t0 = time.time_ns()
    p0 = time.perf_counter()
    handle = await client.start_workflow(
        BenchEcho.run, "x", id=wid, task_queue=queue, request_eager_start=eager
    )
    p1 = time.perf_counter()
    try:
        await asyncio.wait_for(handle.result(), 10)
    except TimeoutError:
        print(f"# {wid}: no result within 10 s", file=sys.stderr)
        with contextlib.suppress(Exception):
            await handle.terminate()
        return None
    p2 = time.perf_counter()
    t2 = time.time_ns()
    history = await client.get_workflow_handle(wid).fetch_history()
    stamps: list[tuple[str, int]] = []
    counts: dict[str, int] = {}
    for event in history.events:
        base = NAMES.get(event.event_type, EventType.Name(event.event_type))
        if base in ("WTSched", "WTStart", "WTComp"):
            counts[base] = counts.get(base, 0) + 1
            base = f"{base}{counts[base]}"
        stamps.append((base, event.event_time.ToNanoseconds()))
    names = [n for n, _ in stamps]
    hops: dict[str, float] = {}
    seq = [("client", t0), *stamps, ("client", t2)]
    for (a, ta), (b, tb) in itertools.pairwise(seq):
        hops[f"{a}->{b}"] = (tb - ta) / 1e6
    return Sample("", eager, (p2 - p0) * 1000, hops, names, (p1 - p0) * 1000)


def summarize(samples: list[Sample], title: str) -> None:
    if not samples:
        return
    keys: list[str] = []
    for s in samples:
        for k in s.hops:
            if k not in keys:
                keys.append(k)
    print(f"\n### {title} (n={len(samples)})")
    print("| hop (ms) | n | p50 | mean | p90 |")
    print("|---|---|---|---|---|")
    for k in keys:
        vals = [s.hops[k] for s in samples if k in s.hops]
        print(
            f"| {k} | {len(vals)} | {pct(vals, 0.5):.1f} | {statistics.fmean(vals):.1f} | {pct(vals, 0.9):.1f} |"
        )
    tot = [s.total for s in samples]
    rpc = [s.start_rpc for s in samples]
    print(
        f"| start RPC (client) | {len(rpc)} | {pct(rpc, 0.5):.1f} | {statistics.fmean(rpc):.1f} | {pct(rpc, 0.9):.1f} |"
    )
    print(
        f"| TOTAL round trip | {len(tot)} | {pct(tot, 0.5):.1f} | {statistics.fmean(tot):.1f} | {pct(tot, 0.9):.1f} |"
    )


async def main(args: argparse.Namespace) -> None:
    chosen = [VARIANTS[n] for n in args.variant]
    if args.dyn or args.server_arg:
        extra_dyn, extra_args = tuple(args.dyn), tuple(args.server_arg)
        chosen = [Variant(v.name, v.dyn + extra_dyn, v.worker, v.args + extra_args, v.mode) for v in chosen]
    root = Path(tempfile.mkdtemp(prefix="eagerdiag-", dir="/tmp"))
    servers: dict[tuple[str, ...], Server] = {}
    for v in chosen:
        key = (EAGER + v.dyn, v.args)
        if key not in servers:
            servers[key] = Server(root / f"srv{len(servers)}", *key)
    workers: list[Worker] = []
    tasks: list[asyncio.Task[Any]] = []
    try:
        for s in servers.values():
            s.start()
        clients = {key: await s.client() for key, s in servers.items()}
        queues: dict[str, tuple[Client, str]] = {}
        for i, v in enumerate(chosen):
            client = clients[(EAGER + v.dyn, v.args)]
            queue = f"diag-{i}-{v.name}"
            worker = Worker(client, task_queue=queue, workflows=[BenchEcho], activities=[echo], **v.worker)
            workers.append(worker)
            tasks.append(asyncio.create_task(worker.run()))
            queues[v.name] = (client, queue)
        await asyncio.sleep(0.5)
        counter = iter(range(10**9))
        results: dict[str, list[Sample]] = {v.name: [] for v in chosen}

        async def one(v: Variant, r: int, record: bool) -> None:
            client, queue = queues[v.name]
            eager = v.mode == "eager" or (v.mode == "alt" and r % 2 == 0)
            if args.gap:
                await asyncio.sleep(args.gap)
            s = await round_trip(client, queue, f"{v.name}-{next(counter)}", eager)
            if s is not None and record:
                s.variant = v.name
                results[v.name].append(s)

        for r in range(args.warmup):
            for v in chosen:
                await one(v, r, False)
        if args.block > 1:
            # blocks of `block` consecutive round trips per variant, variants rotated
            r = 0
            while r < args.rounds:
                for v in chosen:
                    for k in range(args.block):
                        await one(v, r + k, True)
                r += args.block
        else:
            for r in range(args.rounds):
                for v in chosen:
                    await one(v, r, True)

        print(f"\n## totals (ms), interleaved in one run; rounds={args.rounds} block={args.block}")
        print("| variant | start | n | p50 | p90 | max |")
        print("|---|---|---|---|---|---|")
        for v in chosen:
            for eager in (True, False):
                tot = [s.total for s in results[v.name] if s.eager == eager]
                if tot:
                    print(
                        f"| {v.name} | {'eager' if eager else 'plain'} | {len(tot)} | {pct(tot, 0.5):.1f} | {pct(tot, 0.9):.1f} | {max(tot):.1f} |"
                    )
        if args.hops:
            for v in chosen:
                for eager in (True, False):
                    group = [s for s in results[v.name] if s.eager == eager]
                    if not group:
                        continue
                    fast = [s for s in group if s.total < args.split]
                    slow = [s for s in group if s.total >= args.split]
                    tag = f"{v.name} {'eager' if eager else 'plain'}"
                    summarize(fast, f"{tag}: FAST (< {args.split} ms)")
                    summarize(slow, f"{tag}: SLOW (>= {args.split} ms)")
            if args.dump:
                for v in chosen:
                    for s in results[v.name][: args.dump]:
                        print(
                            s.variant,
                            "eager" if s.eager else "plain",
                            f"{s.total:.1f}",
                            " ".join(f"{k}={x:.1f}" for k, x in s.hops.items()),
                        )
    finally:
        for w in workers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(w.shutdown(), 10)
        for t in tasks:
            t.cancel()
        for s in servers.values():
            s.stop()
        print(f"\n# state dir {root}; servers stopped", file=sys.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--block", type=int, default=1, help="consecutive round trips per variant turn")
    parser.add_argument("--gap", type=float, default=0.0, help="idle seconds before each round trip")
    parser.add_argument(
        "--dyn", action="append", default=[], help="extra dynamic config KEY=VALUE for every server"
    )
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra start-dev argument for every server"
    )
    parser.add_argument("--split", type=float, default=75.0, help="fast/slow threshold (ms)")
    parser.add_argument("--variant", nargs="+", default=["sdk-default", "eager", "alt"])
    parser.add_argument("--no-hops", dest="hops", action="store_false")
    parser.add_argument("--dump", type=int, default=0)
    parser.add_argument("--list", action="store_true")
    ns = parser.parse_args()
    if ns.list:
        for v in VARIANTS.values():
            print(v)
        sys.exit(0)
    asyncio.run(main(ns))
    sys.stdout.flush()
    os._exit(0)
