"""The durable start queue (outbox.db) through the daemon, as an operator meets it: `submit` / `queue`
from the CLI, the daemon's drain, its status and metrics, and the promise it exists for: a queued start
is started exactly once, whatever is SIGKILLed when.

Real daemon (`up --detach`), real temporal binary, real clock; the `Stack` of the harness tracks and
cleans up every process (the daemon and dev server are found through this test's own state dir / port
and signalled only through a pidfd, only while they are still that process). Temporal is checked with
a plain temporalio client in this process (under trio-asyncio; no Worker runs here: a daemon's
built-in demo worker runs `StigmerDemo` on `stigmer-trio-demo`). The crash test's seed is printed;
OUTBOX_CRASH_SEED=N repeats its random delays.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio_asyncio
from harness import Identity, Stack, clean_env, free_port, http_get, wait_for, wait_gone
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client, WorkflowExecution, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from stigmer_trio._boundary._outbox_store import OutboxStore
from stigmer_trio._core._outbox import NewEntry, encode_json_input

pytestmark = pytest.mark.integration

DEMO_TYPE = "StigmerDemo"
DEMO_QUEUE = "stigmer-trio-demo"
DRAINED = 30.0  # seconds a running, connected daemon may take to start what is queued
COMPLETED = WorkflowExecutionStatus.COMPLETED
RUNNING = WorkflowExecutionStatus.RUNNING
VISIBLE = 45.0  # seconds until every run is listed and completed (visibility lags; workers reconnect)


# --- helpers -------------------------------------------------------------------------------------------
def demo_entry(id: str, name: str, options: str = "{}") -> NewEntry:
    """A queued start of the demo workflow, exactly as `submit StigmerDemo --input '"NAME"'` stores it."""
    return NewEntry(id, DEMO_TYPE, DEMO_QUEUE, encode_json_input([name]), options, uuid.uuid4().hex)


def write_entries(stack: Stack, entries: Sequence[NewEntry]) -> None:
    """Store `entries` in outbox.db in one transaction, as the CLI's `submit` does (all must be new)."""
    store = OutboxStore(stack.state_dir / "outbox.db")
    try:
        results = store.submit_many(entries, now=time.time(), max_pending=100_000)
    finally:
        store.close()
    assert all(r.created and r.error is None for r in results)


def submit(stack: Stack, id: str, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """`submit StigmerDemo --id ID --task-queue stigmer-trio-demo --input '"NAME"' EXTRA`."""
    return stack.cli(
        "submit", DEMO_TYPE, "--id", id, "--task-queue", DEMO_QUEUE, "--input", json.dumps(name),
        *extra, "--state-dir", str(stack.state_dir),
    )  # fmt: skip


def queue_json(stack: Stack, *extra: str) -> dict[str, Any]:
    """`queue --json`: the counts and the entries (oldest first)."""
    result = stack.cli("queue", "--json", *extra, "--state-dir", str(stack.state_dir))
    assert (0, "") == (result.returncode, result.stderr), result
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def entries_by_id(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["id"]: entry for entry in report["entries"]}


def wait_queue(stack: Stack, pending: int, failed: int, started: int) -> dict[str, Any]:
    """Poll `queue --json` until its counts are these; the report."""

    def check() -> dict[str, Any] | None:
        report = queue_json(stack)
        counts = (report["pending"], report["failed"], report["started"])
        return report if counts == (pending, failed, started) else None

    what = f"queue --json shows {pending} pending, {failed} failed, {started} started"
    report: dict[str, Any] = wait_for(check, DRAINED, what, interval=0.1)
    return report


class Peek:
    """A reading connection to outbox.db for tight polls (the CLI takes ~100 ms a call)."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, timeout=5.0, isolation_level=None)

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT state, count(*) FROM entries GROUP BY state").fetchall())

    def row(self, id: str) -> tuple[str, str | None, float, float | None] | None:
        found: tuple[str, str | None, float, float | None] | None = self.db.execute(
            "SELECT state, run_id, submitted_at, started_at FROM entries WHERE id = ?", (id,)
        ).fetchone()
        return found

    def close(self) -> None:
        self.db.close()


def metrics(url: str) -> dict[str, float]:
    """The endpoint's stigmer_outbox_* samples by name (they have no labels)."""
    code, body = http_get(url, "/metrics")
    assert 200 == code
    return {
        sample.name: float(sample.value)
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name.startswith("stigmer_outbox_")
    }


def http_outbox(url: str) -> dict[str, Any]:
    code, body = http_get(url, "/status")
    assert 200 == code
    section: dict[str, Any] = json.loads(body)["outbox"]
    return section


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert 1 == len(lines), text
    return lines[0]


@pytest.fixture
def other(tmp_path: Path) -> Iterator[Stack]:
    """A second state dir and port, for a second daemon (a test's worker, or its Temporal)."""
    second = Stack(tmp_path / "other", free_port())
    try:
        yield second
    finally:
        second.cleanup()


async def connect(address: str) -> Client:
    """A plain temporalio client (call inside trio_asyncio.open_loop)."""
    client: Client = await trio_asyncio.aio_as_trio(Client.connect)(address, namespace="default")
    return client


@asynccontextmanager
async def temporal(address: str) -> AsyncIterator[Client]:
    """A plain temporalio client (trio-asyncio loop in this test; nothing of the runtime's)."""
    async with trio_asyncio.open_loop():
        yield await connect(address)


async def list_runs(client: Client, query: str) -> list[WorkflowExecution]:
    async def collect() -> list[WorkflowExecution]:
        return [execution async for execution in client.list_workflows(query)]

    runs: list[WorkflowExecution] = await trio_asyncio.aio_as_trio(collect)()
    return runs


async def describe(client: Client, id: str) -> Any:
    return await trio_asyncio.aio_as_trio(client.get_workflow_handle(id).describe)()


# --- 1. SIGKILLs across the drain ----------------------------------------------------------------------
TOTAL = 300  # queued starts in the crash test
VIA_CLI = 5  # of which written by the real `submit` command (the rest by its store call, in one batch)


@attrs.frozen
class Round:
    """One daemon life: `up --detach`, then at `trigger` + a random delay in `delay`, SIGKILL.
    trigger "appears": the daemon process exists; "draining": it has started something in this life.
    server "first": the dev server is SIGKILLed (at that moment) and the daemon a random 0-0.5 s later;
    "after": the daemon, then at once its dev server (the next `up` boots a new one on the db)."""

    trigger: str
    delay: tuple[float, float]
    server: str | None = None


ROUNDS = (
    Round("appears", (0.0, 0.2)),  # cold: the dev server still boots, nothing is connected
    Round("draining", (0.0, 0.15)),  # mid-drain, the server adopted
    Round("draining", (0.0, 0.15), server="first"),  # mid-drain, the server first, then the daemon
    Round("draining", (0.0, 0.1), server="after"),  # mid-drain, both back to back
    Round("draining", (0.0, 0.3)),  # mid-drain again, the server adopted
    Round("appears", (0.0, 1.5)),  # anywhere: before it is connected, or mid-drain
)


@attrs.frozen
class Outcome:
    round: Round
    delay: float
    started_before: int
    started_after: int
    pending_after: int
    servers_killed: int
    up_code: int | None
    killed_at: float  # wall clock, as the server's and the outbox's times

    @property
    def progress(self) -> int:
        return self.started_after - self.started_before


def identities(processes: Sequence[Any]) -> list[Identity]:
    found = [Identity.of(proc.pid) for proc in processes]
    return [identity for identity in found if identity is not None]


def poll_until(predicate: Any, timeout: float, what: str, stack: Stack) -> None:
    """Tight poll (2 ms): the moments aimed at here pass in tens of ms."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            pytest.fail(f"not within {timeout:g} s: {what}\n{stack.daemon_log()[-3000:]}")
        time.sleep(0.002)


def crash_round(stack: Stack, peek: Peek, round: Round, rng: random.Random) -> Outcome:
    before = peek.counts()
    up = subprocess.Popen(
        [sys.executable, "-m", "stigmer_trio", *stack.up_args("--no-demo")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        poll_until(lambda: stack.daemons(), 30.0, "the daemon process appears", stack)
        [daemon] = identities(stack.daemons())
        stack.track(daemon.pid)
        if round.trigger == "draining" and before.get("pending", 0) > 0:
            started = before.get("started", 0)
            poll_until(lambda: peek.counts().get("started", 0) > started, 30.0, "a start", stack)
        delay = rng.uniform(*round.delay)
        time.sleep(delay)
        killed = 0
        if round.server == "first":
            servers = identities(stack.servers())
            killed += sum(server.signal(signal.SIGKILL) for server in servers)
            time.sleep(rng.uniform(0.0, 0.5))
        assert daemon.signal(signal.SIGKILL), f"the daemon was gone before the kill\n{stack.daemon_log()}"
        killed_at = time.time()  # after the signal: a mark later than this is a later life's
        if round.server == "after":
            servers = identities(stack.servers())
            killed += sum(server.signal(signal.SIGKILL) for server in servers)
        assert [] == wait_gone([daemon], timeout=10.0)
        up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
            up.communicate()
        stack.track_state()
    after = peek.counts()
    return Outcome(
        round, delay, before.get("started", 0), after.get("started", 0), after.get("pending", 0), killed,
        up.returncode, killed_at,
    )  # fmt: skip


async def all_closed(address: str, timeout: float = 20.0) -> None:
    """Until no run of the demo type is open (visibility lags a little: a short look first)."""
    client = await connect(address)
    await trio.sleep(0.3)
    with trio.fail_after(timeout):
        while any(run.status == RUNNING for run in await list_runs(client, f'WorkflowType="{DEMO_TYPE}"')):
            await trio.sleep(0.1)


@pytest.mark.slow  # six daemon lives, then every run listed and completed: 12-21 s
async def test_sigkills_across_the_drain_start_every_entry_exactly_once(stack: Stack, other: Stack) -> None:
    """300 starts queued while nothing runs; the daemon SIGKILLed six times (before it is connected,
    mid-drain, with its dev server); after the last `up` every entry is STARTED, and Temporal has
    exactly one run per id, COMPLETED, whose run id is the one the outbox recorded.

    The runs execute on a second daemon's demo worker (external mode, joined to this daemon's dev
    server; never killed; this daemon runs --no-demo), so a run ends within milliseconds, and after a
    kill the rounds wait until every run so far is closed: a start sent again by the next life (its
    answer lost with the killed daemon) meets a CLOSED run, where the default id reuse policy would let
    a new request make a second run. Only the entry's fixed request id prevents it, and then the server
    answers with the first run (no "already started by another request": no entry has a last_error)."""
    seed = int(os.environ.get("OUTBOX_CRASH_SEED") or random.randrange(2**32))
    print(f"crash test seed {seed} (OUTBOX_CRASH_SEED={seed} repeats it)")
    rng = random.Random(seed)
    ids = [f"crash-{n:03d}" for n in range(TOTAL)]
    for id in ids[:VIA_CLI]:
        result = submit(stack, id, f"name-{id}")
        assert (0, f"queued {id}\n", "") == (result.returncode, result.stdout, result.stderr)
    assert not stack.ours(), "submit started nothing"
    write_entries(stack, [demo_entry(id, f"name-{id}") for id in ids[VIA_CLI:]])
    queued = queue_json(stack)
    assert (TOTAL, 0, 0) == (queued["pending"], queued["failed"], queued["started"])
    worker = other.cli("up", "--detach", "--state-dir", str(other.state_dir), "--external", stack.address)
    assert 0 == worker.returncode, (worker.stdout, worker.stderr, other.daemon_log())

    outcomes: list[Outcome] = []
    async with trio_asyncio.open_loop():
        with closing(Peek(stack.state_dir / "outbox.db")) as peek:
            for round in ROUNDS:
                outcome = crash_round(stack, peek, round, rng)
                outcomes.append(outcome)
                if outcome.progress > 0 and round.server is None:  # its dev server is up (adopted next)
                    await all_closed(stack.address)
        for number, o in enumerate(outcomes, 1):
            print(
                f"round {number}: {o.round.trigger} + {o.delay:.3f} s, server {o.round.server or '-'} "
                f"({o.servers_killed} killed): started {o.started_before} -> {o.started_after}, "
                f"{o.pending_after} pending; up exit {o.up_code}"
            )
        # The rounds did what they are for: a life killed before it started anything, lives killed
        # mid-drain, dev servers killed.
        assert any(o.progress == 0 for o in outcomes), outcomes
        assert any(o.progress > 0 and o.pending_after > 0 for o in outcomes), outcomes
        assert any(o.servers_killed > 0 for o in outcomes), outcomes

        report = stack.start("--no-demo")
        assert report["outbox"] is not None, report
        queued = wait_queue(stack, 0, 0, TOTAL)
        client = await connect(stack.address)
        runs: list[WorkflowExecution] = []
        with trio.move_on_after(VISIBLE):
            while True:
                runs = await list_runs(client, f'WorkflowType="{DEMO_TYPE}"')
                if {run.id for run in runs} >= set(ids) and all(run.status == COMPLETED for run in runs):
                    break
                await trio.sleep(0.5)

    entries = entries_by_id(queued)
    assert sorted(ids) == sorted(entries)
    notes = {id: entry["last_error"] for id, entry in entries.items() if entry["last_error"] is not None}
    assert {} == notes, "a start was answered as another request's"
    recorded = {id: entry["run_id"] for id, entry in entries.items()}
    assert all(isinstance(run_id, str) and run_id for run_id in recorded.values()), recorded
    by_id: dict[str, list[WorkflowExecution]] = {}
    for run in runs:
        by_id.setdefault(run.id, []).append(run)
    assert set() == set(by_id) - set(ids), "runs of ids nobody submitted"
    assert [] == sorted(set(ids) - set(by_id)), "submitted ids without a run"
    twice = {id: [run.run_id for run in found] for id, found in by_id.items() if len(found) != 1}
    assert {} == twice, "ids with more than one run"
    unfinished = {id: found[0].status for id, found in by_id.items() if found[0].status != COMPLETED}
    assert {} == unfinished, "runs not completed"
    mismatched = {
        id: (recorded[id], by_id[id][0].run_id) for id in ids if recorded[id] != by_id[id][0].run_id
    }
    assert {} == mismatched, "the outbox recorded another run id than the server has"

    # The case this test is for, counted: a run the server made before a kill, recorded by the outbox
    # only after it (the start was sent again, with the same request id, by a later life), and of those
    # the ones whose run had closed before the outbox recorded it (the repeat met a closed run).
    repeated = [
        id
        for id in ids
        if any(
            by_id[id][0].start_time.timestamp() < o.killed_at < entries[id]["started_at"] for o in outcomes
        )
    ]
    closed = [
        id
        for id in repeated
        if (end := by_id[id][0].close_time) and end.timestamp() < entries[id]["started_at"]
    ]
    print(
        f"{len(runs)} runs listed: one per id, all completed, each the run the outbox recorded; "
        f"{len(repeated)} started before a kill and recorded after it, {len(closed)} of them closed by "
        f"then: {repeated}"
    )
    assert repeated, f"no start was repeated across a kill (seed {seed}): the rounds missed the window"
    assert closed, f"no repeated start met a closed run (seed {seed}): the rounds missed the window"


# --- 2. a row from the CLI, started within ~200 ms -----------------------------------------------------
LATENCY_SAMPLES = 10


def test_a_row_from_the_cli_is_started_promptly(stack: Stack) -> None:
    """While the daemon runs and is connected, a row `submit` wrote is STARTED shortly after `submit`
    returned (the drain watches the db every 50 ms; the target is 200 ms). Every one is started; the
    latencies are printed, and only a generous bound (2 s) is asserted."""
    report = stack.start()
    assert "connected" == report["connection"]["state"], report
    seen: list[float] = []
    stored: list[float] = []
    with closing(Peek(stack.state_dir / "outbox.db")) as peek:
        for n in range(LATENCY_SAMPLES):
            id = f"prompt-{n}"
            result = submit(stack, id, id)
            returned = time.monotonic()
            assert (0, f"queued {id}\n", "") == (result.returncode, result.stdout, result.stderr)
            deadline = returned + 10.0
            while (row := peek.row(id)) is None or row[0] != "started":
                assert time.monotonic() < deadline, f"{id} not started within 10 s: {row}"
                time.sleep(0.001)
            seen.append(time.monotonic() - returned)
            _state, run_id, submitted_at, started_at = row
            assert run_id
            assert started_at is not None
            stored.append(started_at - submitted_at)
    ms = sorted(round(s * 1000, 1) for s in seen)
    print(f"submit returned -> seen STARTED (ms): {ms}; p50 {statistics.median(ms)} max {max(ms)}")
    db_ms = sorted(round(s * 1000, 1) for s in stored)
    print(
        f"submitted_at -> started_at in the db (ms): {db_ms}; p50 {statistics.median(db_ms)} max {max(db_ms)}"
    )
    assert all(s < 2.0 for s in seen), ms
    wait_queue(stack, 0, 0, LATENCY_SAMPLES)


# --- 3. submit --wait, the same submit again, a conflicting one ----------------------------------------
async def test_submit_wait_duplicate_and_conflict(stack: Stack) -> None:
    """`submit --wait` prints `started ID RUN_ID`, the run the server has (it completes on the daemon's
    worker with the input given); the same submit again stores nothing (exit 0, even with --wait: the
    same run id); another input for the id is refused (exit 2, one line on stderr, the queue unchanged)."""
    report = stack.start()
    daemon_pid = report["daemon"]["pid"]
    result = submit(stack, "waited", "alice", "--wait", "--timeout", "30")
    assert (0, "") == (result.returncode, result.stderr), result
    first, second = result.stdout.splitlines()
    assert "queued waited" == first
    match = re.fullmatch(r"started waited (\S+)", second)
    assert match is not None, result.stdout
    run_id = match.group(1)

    again = submit(stack, "waited", "alice")
    assert (0, "queued waited (already queued: nothing stored)\n", "") == (
        again.returncode, again.stdout, again.stderr,
    )  # fmt: skip
    waited_again = submit(stack, "waited", "alice", "--wait", "--timeout", "30")
    assert (0, f"queued waited (already queued: nothing stored)\nstarted waited {run_id}\n", "") == (
        waited_again.returncode, waited_again.stdout, waited_again.stderr,
    )  # fmt: skip

    before = queue_json(stack)
    conflict = submit(stack, "waited", "bob")
    assert (2, "") == (conflict.returncode, conflict.stdout), conflict
    assert "already queued with another type, task queue, input or options" in one_line(conflict.stderr)
    assert before == queue_json(stack)
    assert (0, 0, 1) == (before["pending"], before["failed"], before["started"])
    assert run_id == entries_by_id(before)["waited"]["run_id"]

    async with temporal(stack.address) as client:
        description = await describe(client, "waited")
        assert (run_id, DEMO_TYPE) == (description.run_id, description.workflow_type)
        handle = client.get_workflow_handle("waited", run_id=run_id)
        with trio.fail_after(30):
            outcome = await trio_asyncio.aio_as_trio(handle.result)()
        assert outcome.startswith(f"hello alice, from worker pid {daemon_pid} "), outcome
        with trio.fail_after(10):
            while not (runs := await list_runs(client, 'WorkflowId="waited"')):
                await trio.sleep(0.1)
        assert [run_id] == [run.run_id for run in runs]


# --- 4. status, GET /status and /metrics ---------------------------------------------------------------
def outbox_section(stack: Stack) -> dict[str, Any]:
    _code, report = stack.status()
    section: dict[str, Any] = report["outbox"]
    return section


def counts_are(section: dict[str, Any] | None, pending: int, failed: int, started: int) -> bool:
    return section is not None and (pending, failed, started) == (
        section["pending"], section["failed"], section["started"],
    )  # fmt: skip


async def test_status_and_metrics_count_the_outbox(stack: Stack, other: Stack) -> None:
    """A daemon in external mode whose Temporal is not there yet: CLI submits are pending in `status
    --json`, GET /status and /metrics (with the oldest one's age). Temporal comes up: they are started
    (stigmer_outbox_started_total counts them). An id already held by a run started elsewhere: the
    drain records that run and counts it deduplicated; a CLI-made duplicate submit does not pass through
    the daemon and is not counted. A start the server refuses: failed, counted."""
    up = stack.cli("up", "--detach", "--state-dir", str(stack.state_dir), "--external", other.address)
    assert 0 == up.returncode, (up.stdout, up.stderr, stack.daemon_log())
    code, report = stack.status()
    assert 1 == code, report  # running, not ready: nothing listens at the address yet
    url = report["http"]["url"]
    assert counts_are(report["outbox"], 0, 0, 0), report["outbox"]

    for n in range(3):
        result = submit(stack, f"obs-{n}", f"obs-{n}")
        assert (0, f"queued obs-{n}\n") == (result.returncode, result.stdout), result
    section = stack.wait_status(
        lambda _code, r: counts_are(r["outbox"], 3, 0, 0) and (r["outbox"]["oldest_pending_age_s"] or 0) > 0,
        10.0,
        "status --json: 3 pending",
    )["outbox"]
    print("status while Temporal is away:", section)
    assert counts_are(http_outbox(url), 3, 0, 0)
    assert http_outbox(url)["oldest_pending_age_s"] > 0
    before = metrics(url)
    assert 3.0 == before["stigmer_outbox_pending"], before
    assert before["stigmer_outbox_oldest_pending_seconds"] > 0, before
    assert 0.0 == before["stigmer_outbox_started_total"] == before["stigmer_outbox_deduplicated_total"]
    assert 0.0 == before["stigmer_outbox_failed_total"]

    other.start("--no-demo")  # Temporal comes up at the address the daemon keeps trying
    stack.wait_status(
        lambda code, r: 0 == code and counts_are(r["outbox"], 0, 0, 3), DRAINED, "status: 3 started"
    )
    assert counts_are(http_outbox(url), 0, 0, 3)
    assert http_outbox(url)["oldest_pending_age_s"] is None
    wait_for(lambda: metrics(url)["stigmer_outbox_started_total"] == 3.0, 5.0, "started_total 3")

    async with temporal(other.address) as client:
        held = await trio_asyncio.aio_as_trio(client.start_workflow)(
            DEMO_TYPE, "elsewhere", id="obs-held", task_queue="nobody-polls-this"
        )
        result = submit(stack, "obs-held", "obs-held", "--wait", "--timeout", "30")
        assert (0, f"queued obs-held\nstarted obs-held {held.result_run_id}\n") == (
            result.returncode, result.stdout,
        ), result  # fmt: skip
        entry = entries_by_id(queue_json(stack))["obs-held"]
        assert "already started by another request" in entry["last_error"], entry
        runs = await list_runs(client, 'WorkflowId="obs-held"')
        assert [held.result_run_id] == [run.run_id for run in runs]  # nothing but the holder's run

    wait_for(
        lambda: (
            (m := metrics(url))["stigmer_outbox_started_total"] == 4.0
            and m["stigmer_outbox_deduplicated_total"] == 1.0
        ),
        5.0,
        "started_total 4, deduplicated_total 1",
    )
    duplicate = submit(stack, "obs-0", "obs-0")  # written by the CLI: the daemon never sees this submit
    assert "queued obs-0 (already queued: nothing stored)\n" == duplicate.stdout, duplicate

    write_entries(stack, [demo_entry("obs-refused", "x", '{"execution_timeout": -5}')])
    stack.wait_status(
        lambda _code, r: counts_are(r["outbox"], 0, 1, 4), DRAINED, "status: 1 failed, 4 started"
    )
    final = outbox_section(stack)
    assert {"pending": 0, "failed": 1, "started": 4, "oldest_pending_age_s": None} == final
    assert final == http_outbox(url)
    after = metrics(url)
    assert {
        "stigmer_outbox_pending": 0.0,
        "stigmer_outbox_oldest_pending_seconds": 0.0,
        "stigmer_outbox_started_total": 4.0,
        "stigmer_outbox_failed_total": 1.0,
        "stigmer_outbox_deduplicated_total": 1.0,
    } == {name: after[name] for name in (
        "stigmer_outbox_pending", "stigmer_outbox_oldest_pending_seconds", "stigmer_outbox_started_total",
        "stigmer_outbox_failed_total", "stigmer_outbox_deduplicated_total",
    )}  # fmt: skip


# --- 5. a start the server refuses for good ------------------------------------------------------------
async def test_a_refused_start_fails_without_blocking_the_others(stack: Stack) -> None:
    """An entry the server refuses with INVALID_ARGUMENT (a negative execution timeout), queued first,
    with five good ones: the good ones start, it is FAILED with the server's reason; `queue --state
    failed` lists it; `queue retry` makes it pending again and it fails again; `queue drop` removes it."""
    stack.start()
    bad = demo_entry("refused", "x", '{"execution_timeout": -5}')
    good = [demo_entry(f"good-{n}", f"good-{n}") for n in range(5)]
    write_entries(stack, [bad, *good])  # the bad one is the oldest: the drain meets it first
    report = wait_queue(stack, 0, 1, 5)
    entries = entries_by_id(report)
    refused = entries["refused"]
    assert ("failed", 1, None) == (refused["state"], refused["attempts"], refused["run_id"]), refused
    assert "INVALID_ARGUMENT" in refused["last_error"], refused
    assert "WorkflowExecutionTimeout" in refused["last_error"], refused
    assert all(entries[e.id]["state"] == "started" and entries[e.id]["run_id"] for e in good)

    failed = queue_json(stack, "--state", "failed")
    assert ["refused"] == [entry["id"] for entry in failed["entries"]]
    listing = stack.cli("queue", "--state", "failed", "--state-dir", str(stack.state_dir))
    assert 0 == listing.returncode, listing
    lines = listing.stdout.splitlines()
    assert lines[0].startswith("0 pending, 1 failed, 5 started"), listing.stdout
    assert 3 == len(lines), listing.stdout  # the counts, the header, the one failed entry
    assert lines[2].startswith("refused "), listing.stdout
    assert " failed " in lines[2], listing.stdout
    assert "INVALID_ARGUMENT" in lines[2], listing.stdout

    async with temporal(stack.address) as client:
        for entry in good:
            description = await describe(client, entry.id)
            assert entries[entry.id]["run_id"] == description.run_id
        with pytest.raises(RPCError) as caught:
            await describe(client, "refused")
        assert RPCStatusCode.NOT_FOUND == caught.value.status

    retry = stack.cli("queue", "retry", "refused", "--state-dir", str(stack.state_dir))
    assert (0, "retrying refused\n", "") == (retry.returncode, retry.stdout, retry.stderr)
    wait_for(
        lambda: entries_by_id(queue_json(stack))["refused"]["attempts"] == 2, DRAINED, "a second attempt"
    )
    again = entries_by_id(wait_queue(stack, 0, 1, 5))["refused"]
    assert ("failed", 2) == (again["state"], again["attempts"]), again
    assert "INVALID_ARGUMENT" in again["last_error"], again

    not_failed = stack.cli("queue", "retry", "good-0", "--state-dir", str(stack.state_dir))
    assert 1 == not_failed.returncode, not_failed
    assert "only a failed entry can be retried" in one_line(not_failed.stderr)
    history = stack.cli("queue", "drop", "good-0", "--state-dir", str(stack.state_dir))
    assert 1 == history.returncode, history
    assert "a started entry is history" in one_line(history.stderr)

    drop = stack.cli("queue", "drop", "refused", "--state-dir", str(stack.state_dir))
    assert (0, "dropped refused\n", "") == (drop.returncode, drop.stdout, drop.stderr)
    after = queue_json(stack)
    assert (0, 0, 5) == (after["pending"], after["failed"], after["started"])
    assert "refused" not in entries_by_id(after)
    gone = stack.cli("queue", "drop", "refused", "--state-dir", str(stack.state_dir))
    assert 2 == gone.returncode, gone
    assert "no queued start 'refused'" in one_line(gone.stderr)
