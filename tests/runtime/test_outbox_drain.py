"""The outbox's drain and group commit with a fake Temporal bridge and a real outbox.db (real clock: the
db calls run in threads, which an autojump clock would run past). The connection cell is driven by hand."""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from stigmer_trio import (
    ConnectionConfig,
    ConnectionState,
    Event,
    OutboxConfig,
    OutboxFull,
    SubmissionConflict,
    SubmissionDelayed,
    SubmissionFailed,
    SubmissionRejected,
    SubmissionsQueued,
    SubmissionStarted,
    SubmissionState,
    TemporalUnavailable,
    WorkflowAlreadyStarted,
)
from stigmer_trio._boundary._outbox_store import OutboxStore
from stigmer_trio._core._outbox import NewEntry, PendingEntry
from stigmer_trio._tree import _serve_outbox
from stigmer_trio._tree._cell import ConnectionCell
from stigmer_trio._tree._serve_outbox import GroupCommit, Outbox, retry_delay, serve_outbox

CONNECTION = ConnectionConfig(address="127.0.0.1:1", request_timeout=2.0, workflow_task_timeout=7.0)


def entry(id: str, payloads: bytes = b"", options: str = "{}") -> NewEntry:
    return NewEntry(id, "W", "q", payloads, options, uuid.uuid4().hex)


@attrs.define
class FakeStarts:
    """start_queued: `outcome(entry)` decides (a run id, or raise); records the calls and the peak of
    starts in flight."""

    outcome: Callable[[PendingEntry], Any] = lambda e: f"run-{e.id}"
    calls: list[tuple[str, str, float | None]] = attrs.Factory(list)
    inflight: int = 0
    peak: int = 0
    delay: float = 0.0
    gates: dict[str, trio.Event] = attrs.Factory(dict)  # the start of that id waits for its event

    async def start_queued(
        self,
        client: Any,
        namespace: str,
        e: PendingEntry,
        *,
        timeout: float,
        task_timeout: float | None = None,
    ) -> str:
        self.calls.append((e.id, e.request_id, task_timeout))
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)
        try:
            if e.id in self.gates:
                await self.gates[e.id].wait()
            await trio.sleep(self.delay)
            result = self.outcome(e)
            if isinstance(result, BaseException):
                raise result
            if result == "hang":
                await trio.sleep_forever()
            return str(result)
        finally:
            self.inflight -= 1


@attrs.define
class Drain:
    outbox: Outbox
    cell: ConnectionCell
    fake: FakeStarts
    events: list[Event]
    path: Path

    def connect(self) -> None:
        self.cell.transition(ConnectionState.CONNECTED, "connected", client=object())  # type: ignore[arg-type]

    def disconnect(self) -> None:
        self.cell.transition(ConnectionState.DISCONNECTED, "gone")

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    async def until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await trio.sleep(0.01)


@pytest.fixture
async def drain(tmp_path: Path) -> AsyncIterator[Drain]:
    events: list[Event] = []
    path = tmp_path / "outbox.db"
    outbox = Outbox(OutboxConfig(concurrency=4, max_pending=1000), path, events.append)
    cell = ConnectionCell(emit=events.append)
    cell._emit = lambda event: (events.append(event), outbox.on_event(event))  # type: ignore[func-returns-value]
    fake = FakeStarts()
    async with trio.open_nursery() as nursery:
        serve = functools.partial(serve_outbox, outbox, CONNECTION, cell, events.append, bridge=fake)
        await nursery.start(serve)
        yield Drain(outbox, cell, fake, events, path)
        nursery.cancel_scope.cancel()
    outbox.close()


async def states(d: Drain) -> dict[str, SubmissionState]:
    store = await d.outbox.store()
    return {s.id: s.state for s in await trio.to_thread.run_sync(store.entries)}


class TestSubmit:
    async def test_a_submit_is_stored_before_it_returns_and_started_when_connected(
        self, drain: Drain
    ) -> None:
        """Disconnected: stored (another connection sees it), nothing sent. Connected: started once,
        with the entry's request id and the connection's default task timeout."""
        submission = await drain.outbox.submit(entry("a"))
        assert submission.state is SubmissionState.PENDING
        other = OutboxStore(drain.path)
        assert other.get("a") is not None
        other.close()
        await trio.sleep(0.1)
        assert drain.fake.calls == []
        drain.connect()
        started = await drain.outbox.wait_started("a")
        assert (started.state, started.run_id, started.attempts) == (SubmissionState.STARTED, "run-a", 1)
        [(id, _, task_timeout)] = drain.fake.calls
        assert (id, task_timeout) == ("a", 7.0)
        # The event follows the mark's commit (a poll of the row can see it first): wait for it.
        await drain.until(lambda: bool(drain.of(SubmissionStarted)))
        assert drain.of(SubmissionStarted) == [SubmissionStarted("a", "run-a", 1)]

    async def test_the_same_submit_is_found_and_another_one_conflicts(self, drain: Drain) -> None:
        first = await drain.outbox.submit(entry("a", b"x"))
        again = await drain.outbox.submit(entry("a", b"x"))  # a new request id: still the same start
        assert again == first
        with pytest.raises(SubmissionConflict, match="'a'"):
            await drain.outbox.submit(entry("a", b"y"))
        drain.connect()
        await drain.outbox.wait_started("a")
        assert [c[0] for c in drain.fake.calls] == ["a"]
        assert (await drain.outbox.submit(entry("a", b"x"))).state is SubmissionState.STARTED

    async def test_concurrent_submits_share_commits(self, drain: Drain) -> None:
        """50 submitters at once: all stored, in far fewer transactions than submits."""
        before = drain.outbox._submits.commits
        async with trio.open_nursery() as nursery:
            for n in range(50):
                nursery.start_soon(drain.outbox.submit, entry(f"e{n}"))
        assert len(await states(drain)) == 50
        assert drain.outbox._submits.commits - before <= 10

    async def test_submit_events_are_emitted_on_the_trio_thread(self, tmp_path: Path) -> None:
        """The commit runs in a worker thread, but its SubmissionsQueued reaches the hook on the Trio
        thread (the hub wakes Trio tasks waiting in events()): one event per committed batch, counting
        every submit."""
        seen: list[SubmissionsQueued] = []

        def hook(event: Event) -> None:
            trio.lowlevel.current_task()  # RuntimeError off the Trio thread
            if isinstance(event, SubmissionsQueued):
                seen.append(event)

        outbox = Outbox(OutboxConfig(), tmp_path / "outbox.db", hook)
        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(outbox.submit, entry(f"e{n}"))
        await outbox.submit(entry("e0"))  # found: deduplicated
        outbox.close()
        assert sum(e.created for e in seen) == 20
        assert sum(e.deduplicated for e in seen) == 1

    async def test_full(self, tmp_path: Path) -> None:
        outbox = Outbox(OutboxConfig(max_pending=2), tmp_path / "outbox.db", lambda e: None)
        await outbox.submit(entry("a"))
        await outbox.submit(entry("b"))
        with pytest.raises(OutboxFull, match="max_pending 2"):
            await outbox.submit(entry("c"))
        assert await outbox.get("c") is None
        assert (await outbox.submit(entry("a"))).id == "a"  # a repeat is not a new entry: not refused
        outbox.close()


class TestDrain:
    async def test_oldest_first_and_never_more_than_concurrency_in_flight(self, drain: Drain) -> None:
        drain.fake.delay = 0.02
        for n in range(20):
            await drain.outbox.submit(entry(f"e{n:02}"))
        drain.connect()
        await drain.until(lambda: len(drain.of(SubmissionStarted)) == 20)
        assert drain.fake.peak == 4
        order = [c[0] for c in drain.fake.calls]
        # Oldest first: the first slots go to the oldest four, the last ones to the newest (trio starts
        # the tasks of one round in an order of its own).
        assert set(order[:4]) == {"e00", "e01", "e02", "e03"}
        assert set(order[-4:]) == {"e16", "e17", "e18", "e19"}
        assert sorted(order) == [f"e{n:02}" for n in range(20)]

    async def test_a_permanent_refusal_fails_that_entry_only(self, drain: Drain) -> None:
        drain.fake.outcome = lambda e: SubmissionFailed("NOT_FOUND: namespace nope") if e.id == "bad" else "r"
        for id in ("bad", "good1", "good2"):
            await drain.outbox.submit(entry(id))
        drain.connect()
        with pytest.raises(SubmissionFailed, match="namespace nope"):
            await drain.outbox.wait_started("bad")
        await drain.outbox.wait_started("good2")
        assert await states(drain) == {"bad": "failed", "good1": "started", "good2": "started"}
        await drain.until(lambda: bool(drain.of(SubmissionRejected)))
        [rejected] = drain.of(SubmissionRejected)
        assert rejected.id == "bad"

    async def test_an_unreadable_row_fails_instead_of_crashing_the_drain(self, drain: Drain) -> None:
        """A row another process wrote that the bridge cannot use (say, options that are not JSON)."""

        def outcome(e: PendingEntry) -> Any:
            return ValueError("bad options") if e.id == "odd" else "r"

        drain.fake.outcome = outcome
        await drain.outbox.submit(entry("odd"))
        await drain.outbox.submit(entry("fine"))
        drain.connect()
        await drain.outbox.wait_started("fine")
        with pytest.raises(SubmissionFailed, match="ValueError: bad options"):
            await drain.outbox.wait_started("odd")

    async def test_already_started_by_another_request_is_started_and_deduplicated(self, drain: Drain) -> None:
        drain.fake.outcome = lambda e: WorkflowAlreadyStarted(e.id, "W", "their-run")
        await drain.outbox.submit(entry("a"))
        drain.connect()
        started = await drain.outbox.wait_started("a")
        assert started.run_id == "their-run"
        assert "already started by another request" in (started.last_error or "")
        await drain.until(lambda: bool(drain.of(SubmissionStarted)))
        assert drain.of(SubmissionStarted) == [SubmissionStarted("a", "their-run", 1, deduplicated=True)]

    async def test_a_transient_failure_on_a_live_connection_backs_off(self, drain: Drain) -> None:
        """RESOURCE_EXHAUSTED (say): pending again, retried after retry_delay, same request id."""
        failures = iter([TemporalUnavailable("RESOURCE_EXHAUSTED: busy", maybe_started=True)])
        drain.fake.outcome = lambda e: next(failures, "run-a")
        await drain.outbox.submit(entry("a"))
        drain.connect()
        started = await drain.outbox.wait_started("a")
        assert started.attempts == 2
        [first, second] = drain.fake.calls
        assert first[1] == second[1]  # the same request id: the server deduplicates it
        [delayed] = drain.of(SubmissionDelayed)
        assert delayed.delay == retry_delay(1) > 0

    async def test_starts_in_flight_when_the_connection_drops_are_sent_again_after_it(
        self, drain: Drain
    ) -> None:
        """Cancelled at the drop (not left to time out), pending again, and sent again with the SAME
        request id once connected again, at once (no backoff left over)."""
        hang = {"on": True}
        drain.fake.outcome = lambda e: "hang" if hang["on"] else f"run-{e.id}"
        await drain.outbox.submit(entry("a"))
        drain.connect()
        await drain.until(lambda: len(drain.fake.calls) == 1)
        drain.disconnect()
        await drain.until(lambda: len(drain.of(SubmissionDelayed)) == 1)
        assert "connection was lost" in drain.of(SubmissionDelayed)[0].error
        assert (await drain.outbox.get("a")).state is SubmissionState.PENDING  # type: ignore[union-attr]
        hang["on"] = False
        began = time.monotonic()
        drain.connect()
        await drain.outbox.wait_started("a")
        assert time.monotonic() - began < 1.0
        assert drain.fake.calls[0][1] == drain.fake.calls[1][1]

    async def test_an_entry_marked_while_a_take_reads_is_not_taken_from_that_read(
        self, drain: Drain, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A take reads "a" pending while its start is in flight; "a"'s mark commits and its slot frees
        before the take's answer reaches the drain. The drain must not start "a" a second time."""
        release = drain.fake.gates["a"] = trio.Event()
        store = await drain.outbox.store()
        real_take, real_get = store.take_due, store.get
        takes: list[list[str]] = []
        token = trio.lowlevel.current_trio_token()

        def take_due(now: float, limit: int) -> list[PendingEntry]:
            rows = real_take(now, limit)
            takes.append([r.id for r in rows])
            if "a" in takes[-1] and len(takes) > 1:
                # "a" is in flight and read pending: let its start end and its mark commit now, and
                # give the Trio thread time to free its slot, before this read's answer arrives.
                trio.from_thread.run_sync(release.set, trio_token=token)
                deadline = time.monotonic() + 5
                while real_get("a").state is not SubmissionState.STARTED and time.monotonic() < deadline:
                    time.sleep(0.005)
                time.sleep(0.2)
            return rows

        monkeypatch.setattr(store, "take_due", take_due)
        await drain.outbox.submit(entry("a"))
        drain.connect()
        await drain.until(lambda: len(drain.fake.calls) == 1)  # "a" in flight, held
        await drain.outbox.submit(entry("b"))  # wakes the drain: a take that reads "a" pending
        await drain.outbox.wait_started("a")
        await drain.outbox.wait_started("b")
        await trio.sleep(0.3)
        assert any("a" in t for t in takes[1:])  # the race was staged
        assert sorted(c[0] for c in drain.fake.calls) == ["a", "b"]

    async def test_rows_from_another_process_are_seen(self, drain: Drain) -> None:
        """The CLI writes outbox.db through its own connection: the drain sees the row within a few
        WATCH_INTERVALs, not at its idle look."""
        drain.connect()
        await trio.sleep(0.2)  # idle
        other = OutboxStore(drain.path)
        other.submit_many([entry("cli")], now=time.time(), max_pending=10)
        other.close()
        began = time.monotonic()
        await drain.outbox.wait_started("cli")
        assert time.monotonic() - began < _serve_outbox.IDLE_INTERVAL * 0.5

    async def test_status_counts(self, drain: Drain) -> None:
        await drain.outbox.submit(entry("a"))
        counts = await drain.outbox.counts()
        assert (counts["pending"], counts["failed"], counts["started"]) == (1, 0, 0)
        assert counts["oldest_pending_age_s"] is not None
        snapshot = drain.outbox.snapshot()
        assert snapshot is not None
        assert snapshot["pending"] == 1
        drain.connect()
        await drain.outbox.wait_started("a")
        counts = await drain.outbox.counts()
        assert (counts["pending"], counts["started"], counts["oldest_pending_age_s"]) == (0, 1, None)

    async def test_wait_started_of_an_unknown_or_dropped_id(self, drain: Drain) -> None:
        with pytest.raises(SubmissionFailed, match="no queued start"):
            await drain.outbox.wait_started("nope")
        await drain.outbox.submit(entry("a"))
        async with trio.open_nursery() as nursery:

            async def drop() -> None:
                await trio.sleep(0.1)
                store = await drain.outbox.store()
                await trio.to_thread.run_sync(store.drop, "a")

            nursery.start_soon(drop)
            with pytest.raises(SubmissionFailed, match="no queued start"):
                await drain.outbox.wait_started("a")


class TestPrune:
    async def test_started_entries_older_than_retain_are_pruned_at_start(self, tmp_path: Path) -> None:
        path = tmp_path / "outbox.db"
        store = OutboxStore(path)
        store.submit_many([entry("old"), entry("new"), entry("waiting")], now=time.time(), max_pending=10)
        store.mark_started("old", "r1", time.time() - 100)
        store.mark_started("new", "r2", time.time())
        store.close()
        outbox = Outbox(OutboxConfig(retain=50.0), path, lambda e: None)
        cell = ConnectionCell()
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_outbox, outbox, CONNECTION, cell, lambda e: None)
            await trio.sleep(0.2)
            assert await outbox.get("old") is None
            assert (await outbox.get("new")) is not None
            assert (await outbox.get("waiting")) is not None
            nursery.cancel_scope.cancel()
        outbox.close()


class TestGroupCommit:
    async def test_one_commit_for_callers_waiting_together(self) -> None:
        batches: list[list[int]] = []

        def commit(items: list[int]) -> list[int]:
            time.sleep(0.02)
            batches.append(items)
            return [i * 10 for i in items]

        group: GroupCommit[int, int] = GroupCommit(commit)
        results: dict[int, int] = {}

        async def call(i: int) -> None:
            results[i] = await group(i)

        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(call, i)
        assert results == {i: i * 10 for i in range(30)}
        assert len(batches) <= 3
        assert sorted(i for b in batches for i in b) == list(range(30))

    async def test_a_failed_commit_fails_every_caller_of_that_batch(self) -> None:
        def commit(items: list[int]) -> list[int]:
            raise OSError("disk full")

        group: GroupCommit[int, int] = GroupCommit(commit)
        with pytest.raises(OSError, match="disk full"):
            await group(1)

    async def test_a_caller_cancelled_before_its_turn_stores_nothing(self) -> None:
        committed: list[int] = []

        def commit(items: list[int]) -> list[None]:
            committed.extend(items)
            return [None] * len(items)

        group: GroupCommit[int, None] = GroupCommit(commit)
        async with trio.open_nursery() as nursery, group._lock:  # a commit in progress: callers wait
            nursery.start_soon(group, 1)
            with trio.CancelScope() as scope:
                scope.cancel()
                with pytest.raises(trio.Cancelled):
                    await group(2)
        assert committed == [1]
