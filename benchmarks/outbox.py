"""The durable start queue (outbox): submit latency and throughput, drain rate, beside floors and peers.

    .venv/bin/python benchmarks/outbox.py [--samples 2000] [--submits 2000] [--rounds 5]
                                          [--drain 5000] [--drain-rounds 2] [--smoke]

Not a test. Real clock, time.perf_counter_ns. Every state dir, db and server lives in one temp dir (same
filesystem for the floors and the runtimes); everything binds 127.0.0.1. No Worker anywhere: the queued
workflows ("BenchQueued") are only started, never run (a start needs no poller).

* **Submit latency** (ms), one `await rt.submit_workflow(...)` at a time, each returning once its entry is
  committed and fsynced: (a) Temporal up: a runtime in dev-server mode, CONNECTED, its drain starting each
  entry as it comes (the drain's marks share the db); (b) Temporal down: a runtime in external mode
  pointing at a closed port (DISCONNECTED the whole time). Beside them, the floors of the same run and
  the same temp dir: `os.write` of 64 bytes (append) + `os.fsync`; a bare SQLite WAL `synchronous=FULL`
  transaction inserting one row (BEGIN IMMEDIATE / INSERT / COMMIT, on this thread); the same through
  `trio.to_thread.run_sync` (the hop every outbox commit takes). The series run round-robin in chunks;
  after an "up" chunk the script waits (untimed) until that runtime has drained it.
* **Submit throughput** (submits/s), 50 submitter tasks submitting unique ids until `--submits` are in,
  per round: the runtime down (the queue alone), the runtime up (its drain competing), and the peer "one
  commit per submit": the same 50 tasks each calling `OutboxStore.submit_many([entry])` through
  `trio.to_thread.run_sync` on a store of its own db (one transaction and one fsync per submit, serialized
  by the store's lock). Submits per commit = submits / `GroupCommit.commits` of the round.
* **Drain** (entries/s): a bare dev server with the runtime's own settings (`_common.Server(tuned=True)`).
  Peer first: a plain asyncio temporalio Client in a child process of this script (no trio, SDK
  defaults) makes `--drain` `client.start_workflow(...)` calls, 16 asyncio tasks at a time (the drain's
  `OutboxConfig.concurrency`), timed from the first call to the last answer on a connected client. Then,
  per round: the server is SIGKILLed, a runtime in external mode (`concurrency=16`) gets `--drain` submits
  while it is down, the server is respawned on its db, and the drain is timed from the runtime's CONNECTED
  (and from our own readiness probe) to the last `SubmissionStarted` event; then the peer runs again on
  the same server, so each drain sits between two peer runs (the server slows as its db grows; the ratio
  is to the mean of the two). CPU per entry: the process's CPU time over the drain (the runtime's, incl.
  its other children) or over the peer's calls. Every id is then checked on the server: each
  expected workflow exists exactly once (visibility listing), the outbox says started == submitted with
  nothing pending or failed, and a few `describe` calls match the run ids the outbox recorded.

`--smoke` (CI): 200 latency samples per series, 500 submits per throughput series, 300 drained entries
and 300 peer starts, one round each (~10 s); exits non-zero when anything breaks, a series got no samples
or a verification fails. Timings never decide the exit code: the targets are printed, met or **NO**.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import itertools
import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
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
    ratio,
    require,
    run_timed,
)
from _sdk_child import SdkChild
from stigmer_trio._boundary._outbox_store import OutboxStore
from stigmer_trio._core._outbox import NewEntry, encode_json_input

HERE = Path(__file__).resolve().parent
WORKFLOW = "BenchQueued"  # nobody polls it: the starts are measured, the workflows never run
CHUNK = 100  # latency samples per series per turn of the round-robin
CONCURRENT = 50  # submitter tasks of the throughput series
DRAIN_CONCURRENCY = 16  # OutboxConfig.concurrency's default, and the peer's asyncio tasks
TARGET_P99_MS = 10.0
TARGET_RATE = 2000.0
TARGET_DRAIN_RATIO = 0.8
LIMIT = 300.0  # s for any one wait (a drain, a peer run, visibility catching up) before it is a failure

FSYNC = "floor: os.write 64 B (append) + os.fsync"
SQLITE = "floor: SQLite WAL synchronous=FULL, one-row INSERT + COMMIT"
SQLITE_THREAD = "floor: the same through trio.to_thread.run_sync"
RT_UP = "RUNTIME, Temporal up: await rt.submit_workflow(...)"
RT_DOWN = "RUNTIME, Temporal down: await rt.submit_workflow(...)"
LATENCY = (FSYNC, SQLITE, SQLITE_THREAD, RT_UP, RT_DOWN)

T_DOWN = "RUNTIME, Temporal down: 50 tasks x rt.submit_workflow"
T_UP = "runtime, Temporal up: 50 tasks x rt.submit_workflow"
T_ONE = "one commit per submit: 50 tasks x to_thread(store.submit_many([entry]))"
THROUGHPUT = (T_DOWN, T_UP, T_ONE)


def progress(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def id_prefix(workflow_id: str) -> str:
    """ "drain0-17" -> "drain0-": the series an id belongs to."""
    return workflow_id.rsplit("-", 1)[0] + "-"


class Recorder:
    """Event hook of one runtime: the first SubmissionStarted of each id (time.monotonic, this process's
    CPU time, run id), the ones that repeat an id already started, commit sizes, connection changes."""

    def __init__(self) -> None:
        self.first: dict[str, tuple[float, float, str | None]] = {}
        self.repeats: list[st.SubmissionStarted] = []
        self.distinct: Counter[str] = Counter()  # distinct ids started, per id prefix
        self.cpu_connected: list[float] = []
        self.queued: list[int] = []  # entries created per commit (SubmissionsQueued)
        self.delayed = 0
        self.rejected = 0
        self.deduplicated = 0  # SubmissionStarted(deduplicated=True): another request held the id
        self.attempts = 0  # the most attempts any start took
        self.connected: list[float] = []
        self.disconnected: list[float] = []
        # Set (and replaced) at every SubmissionStarted / ConnectionStateChanged: both are emitted on the
        # Trio thread. SubmissionsQueued is not (the commit's worker thread emits it): no trio call for it.
        self.changed = trio.Event()

    def wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def __call__(self, event: st.Event) -> None:
        if isinstance(event, st.SubmissionStarted):
            if event.id in self.first:
                self.repeats.append(event)
            else:
                self.first[event.id] = (time.monotonic(), time.process_time(), event.run_id)
                self.distinct[id_prefix(event.id)] += 1
            self.deduplicated += event.deduplicated
            self.attempts = max(self.attempts, event.attempts)
            self.wake()
        elif isinstance(event, st.SubmissionsQueued):
            self.queued.append(event.created + event.deduplicated)
        elif isinstance(event, st.SubmissionDelayed):
            self.delayed += 1
        elif isinstance(event, st.SubmissionRejected):
            self.rejected += 1
        elif isinstance(event, st.ConnectionStateChanged):
            if event.new == "connected":
                self.connected.append(time.monotonic())
                self.cpu_connected.append(time.process_time())
            elif event.new == "disconnected":
                self.disconnected.append(time.monotonic())
            self.wake()


def commits(rt: st.Runtime) -> int:
    """The outbox's submit commits so far (GroupCommit.commits; not public API)."""
    return int(rt._tree.outbox._submits.commits)  # type: ignore[union-attr]


async def wait_drained(rt: st.Runtime, limit: float = LIMIT) -> dict[str, Any]:
    """Until the runtime's outbox has nothing pending (polled every 20 ms); its counts then."""
    with trio.fail_after(limit):
        while True:
            counts = await rt.outbox_status()
            if counts["pending"] == 0:
                return counts
            await trio.sleep(0.02)


async def fan_out(n: int, workers: int, one: Callable[[int], Awaitable[None]]) -> float:
    """`workers` tasks calling `one(i)` for i in 0..n-1 between them; the wall seconds for all of them."""
    numbers = iter(range(n))

    async def worker() -> None:
        for i in numbers:
            await one(i)

    began = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(workers):
            nursery.start_soon(worker)
    return time.perf_counter() - began


class Bench:
    def __init__(self, samples: int, submits: int, rounds: int, drain: int, drain_rounds: int) -> None:
        self.n_samples = samples
        self.submits = submits
        self.rounds = rounds
        self.drain_n = drain
        self.drain_rounds = drain_rounds
        self.root = Path(tempfile.mkdtemp(prefix="stigmer-outbox-"))
        self.payloads = encode_json_input(["x"])
        self.latency: dict[str, list[float]] = {name: [] for name in LATENCY}  # ns
        self.rates: dict[str, list[float]] = {name: [] for name in THROUGHPUT}  # submits/s per round
        self.batch: dict[str, list[float]] = {name: [] for name in THROUGHPUT}  # submits per commit
        self.commit_sizes: dict[str, list[int]] = {T_DOWN: [], T_UP: []}
        self.drains: list[dict[str, Any]] = []
        self.peers: list[dict[str, Any]] = []
        self.checks: list[str] = []  # verification results, printed
        self.failures: list[str] = []
        self.notes: list[str] = []

    # --- floors ----------------------------------------------------------------------------------------
    def open_floors(self) -> None:
        self.fsync_fd = os.open(self.root / "fsync-floor.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        db = sqlite3.connect(self.root / "floor.db", isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE rows (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE, payload BLOB)")
        self.floor_db = db
        self.floor_serial = itertools.count()

    def close_floors(self) -> None:
        os.close(self.fsync_fd)
        self.floor_db.close()

    def sqlite_commit(self) -> None:
        db = self.floor_db
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO rows (id, payload) VALUES (?, ?)", (f"row-{next(self.floor_serial)}", self.payloads)
        )
        db.execute("COMMIT")

    # --- latency ---------------------------------------------------------------------------------------
    async def latency_chunk(self, name: str, rt_up: st.Runtime, rt_down: st.Runtime) -> None:
        now = time.perf_counter_ns
        out = self.latency[name]
        base = len(out)
        for i in range(base, base + CHUNK):
            if name == FSYNC:
                began = now()
                os.write(self.fsync_fd, b"x" * 64)
                os.fsync(self.fsync_fd)
            elif name == SQLITE:
                began = now()
                self.sqlite_commit()
            elif name == SQLITE_THREAD:
                began = now()
                await trio.to_thread.run_sync(self.sqlite_commit)
            else:
                rt, prefix = (rt_up, "lat-up-") if name == RT_UP else (rt_down, "lat-down-")
                began = now()
                await rt.submit_workflow(WORKFLOW, "x", id=f"{prefix}{i}", task_queue=prefix + "q")
            out.append(now() - began)
        if name == RT_UP:
            await wait_drained(rt_up)  # its drain's work stays out of the other series' chunks

    # --- throughput ------------------------------------------------------------------------------------
    async def throughput_round(
        self, name: str, index: int, rt_up: st.Runtime, rt_down: st.Runtime, recorders: dict[str, Recorder]
    ) -> None:
        n = self.submits
        if name == T_ONE:
            store = self.peer_store

            async def one(i: int) -> None:
                entry = NewEntry(f"one-{index}-{i}", WORKFLOW, "one-q", self.payloads, "{}", uuid.uuid4().hex)
                call = functools.partial(store.submit_many, [entry], now=time.time(), max_pending=10**9)
                (result,) = await trio.to_thread.run_sync(call)
                if not result.created:
                    raise RuntimeError(f"store peer: {entry.id} not created: {result.error}")

            seconds = await fan_out(n, CONCURRENT, one)
            self.rates[name].append(n / seconds)
            self.batch[name].append(1.0)
            return
        rt = rt_down if name == T_DOWN else rt_up
        prefix = f"{'tput-down' if name == T_DOWN else 'tput-up'}-{index}-"
        recorder = recorders[name]
        commits_before, sizes_before = commits(rt), len(recorder.queued)

        async def submit(i: int) -> None:
            await rt.submit_workflow(WORKFLOW, "x", id=f"{prefix}{i}", task_queue=prefix[:-1] + "q")

        seconds = await fan_out(n, CONCURRENT, submit)
        made = commits(rt) - commits_before
        self.rates[name].append(n / seconds)
        self.batch[name].append(n / made if made else float("nan"))
        self.commit_sizes[name] += recorder.queued[sizes_before:]
        if name == T_UP:
            await wait_drained(rt_up)

    async def queue_part(self) -> None:
        """Latency and throughput: both runtimes open at once, the series round-robin."""
        rec_up, rec_down = Recorder(), Recorder()
        up_config = st.RuntimeConfig(
            state_dir=self.root / "rt-up",
            dev_server=st.DevServerConfig(port=free_port()),
            outbox=st.OutboxConfig(concurrency=DRAIN_CONCURRENCY),
        )
        down_config = st.RuntimeConfig(
            state_dir=self.root / "rt-down",
            dev_server=None,
            connection=st.ConnectionConfig(address=f"127.0.0.1:{free_port()}"),  # nothing listens there
            outbox=st.OutboxConfig(concurrency=DRAIN_CONCURRENCY),
        )
        self.open_floors()
        self.peer_store = OutboxStore(self.root / "one-commit-per-submit.db")
        try:
            async with (
                st.open_runtime(up_config, hooks=(rec_up,)) as rt_up,
                st.open_runtime(down_config, hooks=(rec_down,)) as rt_down,
            ):
                with trio.fail_after(60):
                    await rt_up.wait_connected()
                await trio.sleep(0.3)  # the down runtime's first connect attempts have failed by now
                # warm-up (not recorded): each runtime's store opened, the encoder imported
                await rt_up.submit_workflow(WORKFLOW, "x", id="warm-up", task_queue="warm-q")
                await rt_down.submit_workflow(WORKFLOW, "x", id="warm-down", task_queue="warm-q")
                await wait_drained(rt_up)
                series = list(LATENCY)
                turns = max(1, self.n_samples // CHUNK)
                progress(f"latency: {turns} turns of {CHUNK} samples x {len(series)} series")
                gc.collect()
                for turn in range(turns):
                    for name in series[turn % len(series) :] + series[: turn % len(series)]:
                        await self.latency_chunk(name, rt_up, rt_down)
                    if rt_down.state is st.ConnectionState.CONNECTED:
                        raise RuntimeError("the 'down' runtime connected to something")
                progress(f"throughput: {self.rounds} rounds of {self.submits} submits x 3 series")
                recorders = {T_DOWN: rec_down, T_UP: rec_up}
                for index in range(self.rounds):
                    order = list(THROUGHPUT)
                    order = order[index % 3 :] + order[: index % 3]
                    for name in order:
                        gc.collect()
                        await self.throughput_round(name, index, rt_up, rt_down, recorders)
                await self.verify_queue(rt_up, rt_down, rec_up)
        finally:
            self.close_floors()
            self.peer_store.close()

    async def verify_queue(self, rt_up: st.Runtime, rt_down: st.Runtime, rec_up: Recorder) -> None:
        up = await wait_drained(rt_up)
        down = await rt_down.outbox_status()
        want_up = 1 + len(self.latency[RT_UP]) + self.submits * len(self.rates[T_UP])
        want_down = 1 + len(self.latency[RT_DOWN]) + self.submits * len(self.rates[T_DOWN])
        started_events = len(rec_up.first)
        self.check(
            f"Temporal up runtime: outbox {up['started']} started / {up['pending']} pending / {up['failed']} "
            f"failed, {started_events} distinct SubmissionStarted, of {want_up} submitted",
            up["started"] == want_up and up["failed"] == 0 and started_events == want_up,
        )
        self.note_repeats("Temporal up runtime", rec_up, rec_up.repeats)
        self.check(
            f"Temporal down runtime: outbox {down['pending']} pending / {down['started']} started, of "
            f"{want_down} submitted (none can start)",
            down["pending"] == want_down and down["started"] == 0 and down["failed"] == 0,
        )
        peer = self.peer_store.counts(time.time())
        want_peer = self.submits * len(self.rates[T_ONE])
        self.check(
            f"one-commit-per-submit store: {peer['pending']} rows of {want_peer} submitted",
            peer["pending"] == want_peer,
        )

    # --- drain -----------------------------------------------------------------------------------------
    async def peer_run(self, server: Server, index: int) -> None:
        """The plain SDK: `drain_n` start_workflow calls, 16 at a time, in a fresh child process."""
        program = (sys.executable, str(HERE / "outbox.py"), "--sdk-peer")
        log = self.root / f"peer-{index}.log"
        child, _ = await SdkChild.start(server.address, "peer-q", log, program=program)
        try:
            with trio.fail_after(LIMIT):
                answer = await child.request(
                    "starts", n=self.drain_n, concurrency=DRAIN_CONCURRENCY, prefix=f"peer{index}-"
                )
        finally:
            await child.close()
        answer["index"] = index
        self.peers.append(answer)
        if answer["errors"]:
            self.failures.append(f"peer run {index}: {answer['errors']}")
        progress(f"peer {index}: {self.drain_n} starts in {answer['seconds']:.2f} s")

    async def drain_part(self) -> None:
        server = Server(self.root / "drain-server", tuned=True)
        await server.spawn()
        recorder = self.drain_recorder = Recorder()
        try:
            async with trio_asyncio.open_loop():
                await probe_ready(server.port)
            await self.peer_run(server, 0)
            config = st.RuntimeConfig(
                state_dir=self.root / "rt-drain",
                dev_server=None,
                connection=st.ConnectionConfig(address=server.address),
                outbox=st.OutboxConfig(concurrency=DRAIN_CONCURRENCY),
            )
            await server.kill()
            async with st.open_runtime(config, hooks=(recorder,)) as rt:
                for index in range(self.drain_rounds):
                    await self.drain_round(rt, server, recorder, index)
                    await self.peer_run(server, index + 1)
                await self.verify_server(rt)
        finally:
            with trio.CancelScope(shield=True):
                if server.proc is not None:
                    await server.kill()

    async def drain_round(self, rt: st.Runtime, server: Server, recorder: Recorder, index: int) -> None:
        if server.proc is not None:
            await server.kill()
        with trio.fail_after(30):
            while rt.state is st.ConnectionState.CONNECTED:  # the kill noticed: no start is tried now
                await recorder.changed.wait()
        prefix = f"drain{index}-"

        async def submit(i: int) -> None:
            await rt.submit_workflow(WORKFLOW, "x", id=f"{prefix}{i}", task_queue="drain-q")

        await fan_out(self.drain_n, CONCURRENT, submit)
        counts = await rt.outbox_status()
        if counts["pending"] != self.drain_n:
            raise RuntimeError(f"drain round {index}: {counts['pending']} pending after the submits, not "
                               f"{self.drain_n}")  # fmt: skip
        connected_before = len(recorder.connected)
        gc.collect()
        spawned = await server.spawn()
        result: dict[str, Any] = {"index": index}

        async def probe() -> None:
            result["ready"], _ = await probe_ready(server.port)

        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(probe)
                while recorder.distinct[prefix] < self.drain_n:  # every id of the round started
                    await recorder.changed.wait()
        firsts = [seen for wid, seen in recorder.first.items() if wid.startswith(prefix)]
        result["spawned"] = spawned
        result["connected"] = recorder.connected[connected_before]
        result["first"] = min(at for at, _, _ in firsts)
        result["last"], cpu_last, _ = max(firsts)
        result["cpu"] = cpu_last - recorder.cpu_connected[connected_before]
        self.drains.append(result)
        seconds = result["last"] - result["connected"]
        progress(f"drain {index}: {self.drain_n} entries in {seconds:.2f} s from CONNECTED")

    async def verify_server(self, rt: st.Runtime) -> None:
        """Every expected id exactly once on the server; the outbox's counts; describe spot checks."""
        counts = await rt.outbox_status()
        want = self.drain_n * len(self.drains)
        self.check(
            f"drain runtime: outbox {counts['started']} started / {counts['pending']} pending / "
            f"{counts['failed']} failed, of {want} submitted",
            counts["started"] == want and counts["pending"] == 0 and counts["failed"] == 0,
        )
        recorder = self.drain_recorder
        for drain in self.drains:
            prefix = f"drain{drain['index']}-"
            ids = {wid for wid in recorder.first if wid.startswith(prefix)}
            expected = {f"{prefix}{i}" for i in range(self.drain_n)}
            self.check(f"drain {drain['index']}: {len(ids)} distinct ids started (events)", ids == expected)
        self.check(
            f"drain runtime: {recorder.deduplicated} starts found the id held by another request, "
            f"{recorder.delayed} delayed, {recorder.rejected} rejected; most attempts of one entry "
            f"{recorder.attempts}",
            recorder.deduplicated == 0 and recorder.rejected == 0,
        )
        self.note_repeats("drain runtime", recorder, recorder.repeats)

        async def listing(client: Any, total: int) -> tuple[int, Counter[str]]:
            query = f'WorkflowType = "{WORKFLOW}"'
            deadline = time.monotonic() + 60
            while True:  # visibility is eventually consistent: wait until it has them all
                count = (await client.count_workflows(query)).count
                if count >= total or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            found: Counter[str] = Counter()
            async for execution in client.list_workflows(query, page_size=1000):
                found[execution.id] += 1
            return count, found

        total = want + self.drain_n * len(self.peers)
        count, found = await rt.run_asyncio(listing, total)
        prefixes = [f"drain{d['index']}-" for d in self.drains] + [f"peer{p['index']}-" for p in self.peers]
        for prefix in prefixes:
            expected = {f"{prefix}{i}" for i in range(self.drain_n)}
            got = {wid: n for wid, n in found.items() if wid.startswith(prefix)}
            executions = sum(got.values())
            self.check(
                f"server: {prefix}* {len(got)} ids, {executions} executions, of {self.drain_n} expected",
                set(got) == expected and executions == self.drain_n,
            )
        self.check(f"server: {count} {WORKFLOW} executions counted, {total} expected", count == total)

        async def describe(client: Any, workflow_id: str) -> str:
            return str((await client.get_workflow_handle(workflow_id).describe()).run_id)

        spot = random.Random(0).sample(range(self.drain_n), min(5, self.drain_n))
        matches = 0
        for drain in self.drains:
            for i in spot:
                workflow_id = f"drain{drain['index']}-{i}"
                submission = await rt.submission(workflow_id)
                run_id = await rt.run_asyncio(describe, workflow_id)
                matches += submission is not None and submission.run_id == run_id
        checked = len(spot) * len(self.drains)
        self.check(f"describe: {matches} of {checked} sampled run ids match the outbox's", matches == checked)

    def note_repeats(self, who: str, recorder: Recorder, repeats: list[st.SubmissionStarted]) -> None:
        """SubmissionStarted for an id already started: the drain sent that start again. A failure only
        if the server made a second run (another run id); with the same run id it is the runtime's
        wasted request (and a repeated event), which the server deduplicated by the request id."""
        other_run = [e.id for e in repeats if e.run_id != recorder.first[e.id][2]]
        self.check(
            f"{who}: {len(repeats)} SubmissionStarted events repeated an id already started "
            f"({len(repeats) - len(other_run)} with the same run id, {len(other_run)} with another)",
            not other_run,
        )
        if repeats:
            ids = ", ".join(sorted({e.id for e in repeats})[:5])
            self.notes.append(
                f"{who}: the drain started {len(repeats)} entries a second time (e.g. {ids}; attempts "
                f"{sorted({e.attempts for e in repeats})}): the server answered with the first run (same "
                "request id), so no workflow ran twice; a runtime issue, not the benchmark's"
            )

    def check(self, what: str, ok: bool) -> None:
        self.checks.append(f"{what}: {'OK' if ok else 'FAILED'}")
        if not ok:
            self.failures.append(what)

    async def run(self) -> None:
        await self.queue_part()
        await self.drain_part()

    # --- report ----------------------------------------------------------------------------------------
    def millis(self, name: str) -> list[float]:
        return [ns / 1e6 for ns in self.latency[name]]

    def latency_table(self) -> str:
        table = Table("ms", "{:.2f}")
        for name in LATENCY:
            values = self.millis(name)
            if name.startswith("RUNTIME"):
                table.row(name, values, f"p99 <= {TARGET_P99_MS:g}", pct(values, 0.99) <= TARGET_P99_MS)
            else:
                table.row(name, values)
        for name in (RT_UP, RT_DOWN):
            for floor in (SQLITE, SQLITE_THREAD, FSYNC):
                label = {SQLITE: "SQLite floor", SQLITE_THREAD: "SQLite via thread", FSYNC: "fsync floor"}
                table.ratios(
                    f"ratio {name.split(':')[0].split(', ')[1]} / {label[floor]}",
                    self.millis(name),
                    self.millis(floor),
                )
        return table.render()

    def throughput_table(self) -> str:
        lines = [
            f"| throughput, {CONCURRENT} concurrent submitters (submits/s) | rounds x submits | min | p50 "
            "| max | submits per commit (mean of rounds) | commit size p50 / max | target | met |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name in THROUGHPUT:
            values = self.rates[name]
            if not values:
                lines.append(f"| {name} | 0 | | | | | | | no samples |")
                continue
            sizes = self.commit_sizes.get(name, [])
            size = f"{pct(sizes, 0.5):.0f} / {max(sizes)}" if sizes else ("1 / 1" if name == T_ONE else "")
            target, met = "", ""
            if name == T_DOWN:
                target = f"p50 >= {TARGET_RATE:g}"
                met = "yes" if pct(values, 0.5) >= TARGET_RATE else "**NO**"
            batch = sum(self.batch[name]) / len(self.batch[name])
            lines.append(
                f"| {name} | {len(values)} x {self.submits} | {min(values):.0f} | {pct(values, 0.5):.0f} "
                f"| {max(values):.0f} | {batch:.1f} | {size} | {target} | {met} |"
            )
        one = pct(self.rates[T_ONE], 0.5)
        for name in (T_DOWN, T_UP):
            value = ratio(pct(self.rates[name], 0.5), one)
            label = name.split(":")[0]
            lines.append(f"| ratio of p50s: {label} / one commit per submit | | | {value:.2f}x | | | | | |")
        return "\n".join(lines)

    def peer_rate(self, index: int) -> float:
        for peer in self.peers:
            if peer["index"] == index:
                return float(self.drain_n / peer["seconds"])
        return float("nan")

    def drain_table(self) -> str:
        n = self.drain_n
        lines = [
            "| drain | entries | seconds | entries/s | CPU ms per entry (its process) | target | met |",
            "|---|---|---|---|---|---|---|",
        ]
        for peer in sorted(self.peers, key=lambda p: p["index"]):
            lines.append(
                f"| PLAIN SDK run {peer['index']}: client.start_workflow, {DRAIN_CONCURRENCY} asyncio tasks "
                f"(child process) | {n} | {peer['seconds']:.2f} | {n / peer['seconds']:.0f} "
                f"| {1000 * peer['cpu'] / n:.2f} | | |"
            )
        for drain in self.drains:
            i = drain["index"]
            from_connected = drain["last"] - drain["connected"]
            from_ready = drain["last"] - drain["ready"]
            mean = (self.peer_rate(i) + self.peer_rate(i + 1)) / 2
            value = ratio(n / from_connected, mean)
            met = "yes" if value >= TARGET_DRAIN_RATIO else "**NO**"
            phases = [drain["ready"] - drain["spawned"], drain["connected"] - drain["ready"]]
            phases.append(drain["first"] - drain["connected"])
            lines += [
                f"| DRAIN round {i}: CONNECTED -> every entry STARTED | {n} | {from_connected:.2f} "
                f"| {n / from_connected:.0f} | {1000 * drain['cpu'] / n:.2f} | | |",
                f"| drain round {i}: server ready (our probe) -> every entry STARTED | {n} "
                f"| {from_ready:.2f} | {n / from_ready:.0f} | | | |",
                f"| drain round {i}: spawn -> ready / ready -> CONNECTED / CONNECTED -> first STARTED (ms) "
                f"| | {' / '.join(f'{1000 * p:.0f}' for p in phases)} | | | | |",
                f"| ratio drain round {i} / plain SDK (mean of runs {i} and {i + 1}: {mean:.0f}/s) | | "
                f"| {value:.2f}x | | >= {TARGET_DRAIN_RATIO:g}x | {met} |",
            ]
        return "\n".join(lines)

    def target_lines(self) -> list[str]:
        lines = []
        for name in (RT_UP, RT_DOWN):
            p99 = pct(self.millis(name), 0.99)
            verdict = "met" if p99 <= TARGET_P99_MS else "NOT met"
            lines.append(
                f"- {name.split(':')[0]}: submit p99 {p99:.2f} ms <= {TARGET_P99_MS:g} ms: {verdict}"
            )
        rate = pct(self.rates[T_DOWN], 0.5)
        verdict = "met" if rate >= TARGET_RATE else "NOT met"
        lines.append(f"- {T_DOWN}: p50 of rounds {rate:.0f} submits/s >= {TARGET_RATE:g}/s: {verdict}")
        rate_up = pct(self.rates[T_UP], 0.5)
        lines.append(
            f"- (no target) {T_UP}: p50 of rounds {rate_up:.0f} submits/s "
            f"({'>=' if rate_up >= TARGET_RATE else '<'} {TARGET_RATE:g}/s)"
        )
        for drain in self.drains:
            i = drain["index"]
            rate = self.drain_n / (drain["last"] - drain["connected"])
            mean = (self.peer_rate(i) + self.peer_rate(i + 1)) / 2
            value = ratio(rate, mean)
            verdict = "met" if value >= TARGET_DRAIN_RATIO else "NOT met"
            lines.append(
                f"- drain round {i}: {rate:.0f} entries/s = {value:.2f}x the plain SDK's {mean:.0f} starts/s "
                f">= {TARGET_DRAIN_RATIO:g}x: {verdict}"
            )
        return lines


# --- the plain-SDK peer child (asyncio only; `outbox.py --sdk-peer ADDRESS TASK_QUEUE`) -------------------
async def peer_main(address: str, task_queue: str, emit: Callable[[dict[str, Any]], None]) -> None:
    from _sdk_child import _connect, serve_requests

    client = await _connect(address)

    async def starts(n: int, concurrency: int, prefix: str) -> dict[str, Any]:
        numbers = iter(range(n))
        errors: Counter[str] = Counter()

        async def worker() -> None:
            for i in numbers:
                try:
                    await client.start_workflow(WORKFLOW, "x", id=f"{prefix}{i}", task_queue=task_queue)
                except Exception as exc:
                    errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1

        cpu = time.process_time()
        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - began
        return {"seconds": seconds, "cpu": time.process_time() - cpu, "errors": dict(errors)}

    emit({"event": "ready", "pid": os.getpid()})
    await serve_requests({"starts": starts}, emit)
    emit({"event": "bye"})


def peer_entry(address: str, task_queue: str) -> None:
    protocol = os.fdopen(os.dup(1), "w", buffering=1)  # answers here; fd 1 (the SDK core's logs) -> stderr
    os.dup2(2, 1)

    def emit(message: dict[str, Any]) -> None:
        protocol.write(json.dumps(message) + "\n")
        protocol.flush()

    code = 0
    try:
        asyncio.run(peer_main(address, task_queue, emit))
    except BaseException as exc:
        emit({"event": "failed", "error": f"{type(exc).__name__}: {exc}"})
        code = 1
    sys.stderr.flush()
    os._exit(code)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000, help=f"latency samples per series (x {CHUNK})")
    parser.add_argument("--submits", type=int, default=2000, help="submits per throughput round and series")
    parser.add_argument("--rounds", type=int, default=5, help="throughput rounds")
    parser.add_argument("--drain", type=int, default=5000, help="entries per drain round (and peer run)")
    parser.add_argument("--drain-rounds", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="CI: 200 samples, 500 submits, 300 drained")
    args = parser.parse_args()
    if args.smoke:
        args.samples, args.submits, args.rounds, args.drain, args.drain_rounds = 200, 500, 1, 300, 1
    if args.samples < CHUNK or min(args.submits, args.rounds, args.drain, args.drain_rounds) < 1:
        parser.error(f"--samples must be >= {CHUNK}, every other count >= 1")
    bench = Bench(args.samples, args.submits, args.rounds, args.drain, args.drain_rounds)

    def run() -> None:
        trio.run(bench.run)
        require(bench.latency, *LATENCY)
        require(bench.rates, *THROUGHPUT)
        if len(bench.drains) != args.drain_rounds or len(bench.peers) != args.drain_rounds + 1:
            raise RuntimeError(f"{len(bench.drains)} drains and {len(bench.peers)} peer runs measured")

    code, elapsed, load_before = run_timed(run)
    for render in (bench.latency_table, bench.throughput_table, bench.drain_table):
        try:
            print(render())
        except Exception as exc:
            print(f"(table failed: {type(exc).__name__}: {exc})")
            code = 1
        print()
    for line in bench.target_lines():
        print(line)
    print()
    print(f"Command: `{command_line()}` ({elapsed:.0f} s wall). {machine_note(load_before)}")
    print(
        f"Latency: {len(bench.latency[RT_UP])} samples per series, round-robin chunks of {CHUNK} (the order "
        "rotates each turn); the timed region is the call alone (for the runtime: encoding, the group "
        "commit's thread hop, BEGIN IMMEDIATE / SELECTs / INSERT / COMMIT with its fsync). Temporal up: the "
        "runtime's own dev server (DevServerConfig defaults), its drain starting each entry while the next "
        "submits come. Throughput: the series rotate each round; submits/s = submits / wall time of the "
        f"round; trio's default thread limiter (40) bounds the store peer's threads. Drain: "
        f"OutboxConfig(concurrency={DRAIN_CONCURRENCY}); bare server with the runtime's dev-server settings "
        "(runtime_settings()), persisted db, SIGKILLed and respawned on it each round."
    )
    for line in bench.checks:
        print(f"- {line}")
    for line in bench.notes:
        print(f"- {line}")
    for line in bench.failures:
        print(f"- FAILURE: {line}")
    shutil.rmtree(bench.root, ignore_errors=True)
    return 1 if bench.failures else code


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--sdk-peer":
        peer_entry(sys.argv[2], sys.argv[3])
    leave(main())
