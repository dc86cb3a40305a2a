# The outbox: the durable start queue as the tree holds it (`Outbox`: submits with group commit, the
# drain's marks, waiters, the counts the status board reads) and its child (`serve_outbox`: the drain,
# the prune, the watch for rows other processes wrote). Rules: every db call runs off the Trio thread
# (trio.to_thread), commits are shared (many submitters or many marks, one transaction and one fsync),
# and a start is only ever sent with its entry's fixed request id, so sending it again (after a lost
# answer, a lost connection, a SIGKILL between the start and its mark) gives back the first run: the
# server deduplicates the request, while the run is open and after it closed.
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import trio

from .._boundary._outbox_store import Mark, OutboxStore, SubmitResult
from .._boundary._statefiles import ensure_state_dir
from .._core._config import ConnectionConfig, OutboxConfig
from .._core._errors import (
    StateFileError,
    SubmissionFailed,
    TemporalUnavailable,
    WorkflowAlreadyStarted,
)
from .._core._events import (
    ConnectionState,
    ConnectionStateChanged,
    Event,
    EventHook,
    OutboxCounted,
    SubmissionDelayed,
    SubmissionRejected,
    SubmissionsQueued,
    SubmissionStarted,
)
from .._core._outbox import NewEntry, PendingEntry, Submission, SubmissionState
from ._cell import ConnectionCell, Poke

if TYPE_CHECKING:
    import sqlite3

    from .._boundary._bridge import Bridge
    from .._boundary._temporal import Client

__all__ = ["Outbox", "serve_outbox"]

In = TypeVar("In")
Out = TypeVar("Out")

WATCH_INTERVAL = 0.05  # seconds between looks for rows another process committed (PRAGMA data_version)
IDLE_INTERVAL = 1.0  # the drain looks again at least this often (retry times, counts)
PRUNE_INTERVAL = 60.0
TAKE = 256  # pending entries read per look (the drain keeps them in order, `concurrency` in flight)
RETRY_BASE, RETRY_MAX = 0.1, 30.0  # a transient failure on a live connection: 0.1 s doubling to 30 s


def retry_delay(attempts: int) -> float:
    """The wait before attempt `attempts + 1` of an entry whose start failed on a live connection."""
    return min(RETRY_MAX, RETRY_BASE * 2.0 ** min(max(attempts - 1, 0), 20))


class _Slot(Generic[In, Out]):
    __slots__ = ("done", "error", "item", "result")

    def __init__(self, item: In) -> None:
        self.item = item
        self.done = False
        self.result: Out | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[In, Out]):
    """Calls from many tasks, committed together: the first caller that finds its item not yet committed
    takes EVERY item queued so far and runs `commit(items)` once in a worker thread (one transaction, one
    fsync), shielded so the others always get their answers; the rest wait their turn on a fair lock and
    find theirs done. A caller cancelled before its item was taken removes it (nothing stored).
    `committed(results)` runs on the Trio thread after each batch that committed (events, wakes)."""

    def __init__(
        self,
        commit: Callable[[list[In]], Sequence[Out]],
        committed: Callable[[Sequence[Out]], None] | None = None,
    ) -> None:
        self._commit = commit
        self._committed = committed  # called on the Trio thread with each batch's results
        self._queue: list[_Slot[In, Out]] = []
        self._lock = trio.Lock()  # fair: FIFO
        self.commits = 0

    async def __call__(self, item: In) -> Out:
        slot: _Slot[In, Out] = _Slot(item)
        self._queue.append(slot)
        try:
            async with self._lock:
                if not slot.done:
                    batch, self._queue = self._queue, []
                    with trio.CancelScope(shield=True):
                        await self._run(batch)
        except trio.Cancelled:
            if slot in self._queue:
                self._queue.remove(slot)
            raise
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    async def _run(self, batch: list[_Slot[In, Out]]) -> None:
        try:
            results = await trio.to_thread.run_sync(self._commit, [slot.item for slot in batch])
        except Exception as exc:
            for slot in batch:
                slot.error, slot.done = exc, True
            return
        finally:
            self.commits += 1
        for slot, result in zip(batch, results, strict=True):
            slot.result, slot.done = result, True
        if self._committed is not None:
            self._committed(results)


class Outbox:
    """The durable start queue of one runtime: `<state_dir>/outbox.db`, opened at first use."""

    def __init__(self, config: OutboxConfig, path: Path, emit: EventHook) -> None:
        self.config = config
        self.path = path
        self._emit = emit
        self._store: OutboxStore | None = None
        self._opening = trio.Lock()
        self._submits: GroupCommit[NewEntry, SubmitResult] = GroupCommit(self._submit_batch, self._queued)
        self._marks: GroupCommit[Mark, None] = GroupCommit(self._mark_batch)
        self._changed = trio.Event()  # set (and replaced) after every commit of marks
        self._wake = trio.Event()  # the drain: something new may be due
        self._counts: dict[str, Any] | None = None
        self._counted_at = 0.0
        self._inflight: set[trio.CancelScope] = set()  # the drain's start requests

    # --- the store --------------------------------------------------------------------------------------
    async def store(self) -> OutboxStore:
        """The open store (opened off the Trio thread at first use; the state dir made if missing)."""
        if self._store is None:
            async with self._opening:
                if self._store is None:
                    self._store = await trio.to_thread.run_sync(self._open)
        return self._store

    def _open(self) -> OutboxStore:
        ensure_state_dir(self.path.parent)
        return OutboxStore(self.path)

    def _db(self) -> OutboxStore:
        assert self._store is not None, "store() first"
        return self._store

    async def _run(self, fn: Callable[..., Out], *args: Any) -> Out:
        """A store call off the Trio thread; a SQLite failure is a StateFileError naming the db."""
        await self.store()
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except _sqlite_errors() as exc:
            raise StateFileError(f"outbox db {str(self.path)!r}: {exc}") from exc

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    # --- submits ----------------------------------------------------------------------------------------
    def _submit_batch(self, entries: list[NewEntry]) -> list[SubmitResult]:
        try:
            results = self._db().submit_many(entries, now=time.time(), max_pending=self.config.max_pending)
        except _sqlite_errors() as exc:
            raise StateFileError(f"outbox db {str(self.path)!r}: {exc}") from exc
        return results

    def _queued(self, results: Sequence[SubmitResult]) -> None:
        """After a batch of submits committed (on the Trio thread: the hub's readers are Trio tasks)."""
        created = sum(1 for r in results if r.created)
        found = sum(1 for r in results if r.error is None and not r.created)
        if created or found:
            self._emit(SubmissionsQueued(created, found))
        if created:
            self.wake()

    async def submit(self, entry: NewEntry) -> Submission:
        """Store `entry` durably (committed and fsynced when this returns), or find the same start
        already there; SubmissionConflict / OutboxFull refuse it (nothing stored)."""
        await self.store()
        result = await self._submits(entry)
        if result.error is not None:
            raise result.error
        assert result.submission is not None
        return result.submission

    # --- readers ----------------------------------------------------------------------------------------
    async def get(self, id: str) -> Submission | None:
        return await self._run(self._db().get, id)

    async def wait_started(self, id: str) -> Submission:
        """Until entry `id` is STARTED (returned); SubmissionFailed when it is FAILED, unknown or dropped."""
        while True:
            changed = self._changed
            submission = await self.get(id)
            if submission is None:
                raise SubmissionFailed(f"no queued start with workflow id {id!r} in the outbox")
            if submission.state is SubmissionState.STARTED:
                return submission
            if submission.state is SubmissionState.FAILED:
                raise SubmissionFailed(f"the queued start of {id!r} failed: {submission.last_error}")
            with trio.move_on_after(0.5):  # marks wake us; `queue retry` / `drop` by the CLI: this poll
                await changed.wait()

    async def counts(self) -> dict[str, Any]:
        """pending / failed / started now, and the oldest pending entry's age (fresh from the db)."""
        counts = await self._run(self._db().counts, time.time())
        self._counts, self._counted_at = counts, time.monotonic()
        return counts

    def snapshot(self) -> dict[str, Any] | None:
        """The last counts (no I/O: the status board's), the oldest pending age brought up to now."""
        if self._counts is None:
            return None
        counts = dict(self._counts)
        if counts["oldest_pending_age_s"] is not None:
            age = counts["oldest_pending_age_s"] + time.monotonic() - self._counted_at
            counts["oldest_pending_age_s"] = round(age, 3)
        return counts

    # --- the drain's side -------------------------------------------------------------------------------
    def wake(self) -> None:
        """The drain looks again now: a submit, a freed slot, the connection changed, a row from the CLI."""
        self._wake.set()

    def clear_wake(self) -> None:
        if self._wake.is_set():
            self._wake = trio.Event()

    async def wait_wake(self, seconds: float) -> None:
        with trio.move_on_after(seconds):
            await self._wake.wait()

    def _mark_batch(self, marks: list[Mark]) -> list[None]:
        self._db().mark_many(marks)
        return [None] * len(marks)

    async def mark(self, mark: Mark) -> None:
        await self._marks(mark)
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    def on_event(self, event: Event) -> None:
        """Hub hook: when the connection drops, the starts in flight are cancelled now (sent again with
        the same request id once it is back) instead of each waiting out its own timeout."""
        if isinstance(event, ConnectionStateChanged):
            if event.new is ConnectionState.DISCONNECTED:
                for scope in list(self._inflight):
                    scope.cancel(reason="connection lost")
            self.wake()


def _sqlite_errors() -> type[sqlite3.Error]:
    import sqlite3

    return sqlite3.Error


async def serve_outbox(
    outbox: Outbox,
    connection: ConnectionConfig,
    cell: ConnectionCell,
    emit: EventHook,
    *,
    bridge: Bridge | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The outbox child: open the store, then drain, prune and watch until cancelled. `bridge`: Temporal
    (default: the real one, imported at the first start)."""
    await outbox.store()
    await _count(outbox, emit)
    task_status.started()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch, outbox)
        nursery.start_soon(_prune, outbox, emit)
        await _Drain(outbox, connection, cell, emit, bridge).run()


async def _count(outbox: Outbox, emit: EventHook) -> None:
    counts = await outbox.counts()
    emit(OutboxCounted(counts["pending"], counts["failed"], counts["oldest_pending_age_s"]))


async def _watch(outbox: Outbox) -> None:
    """Wake the drain when another process (the CLI's `submit`, `queue retry`) committed rows."""
    store = await outbox.store()
    seen = await trio.to_thread.run_sync(store.data_version)
    while True:
        await trio.sleep(WATCH_INTERVAL)
        version = await trio.to_thread.run_sync(store.data_version)
        if version != seen:
            seen = version
            outbox.wake()


async def _prune(outbox: Outbox, emit: EventHook) -> None:
    """Forget started entries older than `retain`, now and every PRUNE_INTERVAL; keep the counts fresh."""
    store = await outbox.store()
    next_prune = 0.0
    while True:
        if trio.current_time() >= next_prune:
            await trio.to_thread.run_sync(store.prune, time.time() - outbox.config.retain)
            next_prune = trio.current_time() + PRUNE_INTERVAL
        await _count(outbox, emit)
        await trio.sleep(IDLE_INTERVAL)


class _Drain:
    """Start pending entries, oldest first, `concurrency` at a time, while CONNECTED."""

    def __init__(
        self,
        outbox: Outbox,
        connection: ConnectionConfig,
        cell: ConnectionCell,
        emit: EventHook,
        bridge: Bridge | None,
    ) -> None:
        self.outbox = outbox
        self.connection = connection
        self.cell = cell
        self.emit = emit
        self.bridge = bridge
        self.inflight: set[str] = set()
        self.ready: deque[PendingEntry] = deque()
        # Ids whose attempt ended (its mark committed) while a take was reading: the take may have read
        # them pending before the mark, so they are not taken from that read (a needless second start).
        self.reading = False
        self.ended_during_read: set[str] = set()

    async def run(self) -> None:
        from .._boundary._bridge import temporal_bridge

        temporal = self.bridge or temporal_bridge()
        outbox = self.outbox
        store = await outbox.store()
        concurrency = outbox.config.concurrency
        epoch = 0
        async with trio.open_nursery() as starts:
            while True:
                client, now_epoch = await self.cell.wait_connected()
                outbox.clear_wake()  # anything from here on (a submit, a freed slot, a drop) wakes the wait
                if now_epoch != epoch:
                    # A (re)connection: entries backed off while it was down are due now, and the ones
                    # read before it are read again (another process may have changed them).
                    epoch = now_epoch
                    self.ready.clear()
                    await trio.to_thread.run_sync(store.release_backoff)
                if not self.ready:
                    self.reading = True
                    try:
                        due = await trio.to_thread.run_sync(
                            store.take_due, time.time(), TAKE + len(self.inflight)
                        )
                    finally:
                        self.reading = False
                    skip = self.inflight | self.ended_during_read
                    self.ended_during_read.clear()
                    self.ready.extend(e for e in due if e.id not in skip)
                while self.ready and len(self.inflight) < concurrency:
                    entry = self.ready.popleft()
                    self.inflight.add(entry.id)
                    starts.start_soon(self._start, temporal, client, epoch, entry)
                if self.ready:
                    wait = IDLE_INTERVAL  # every slot busy: until one frees
                else:
                    # Nothing more due now: until a submit, a row from another process, a freed slot
                    # (its entry may be due again), the connection changing, or the next retry time.
                    next_due = await trio.to_thread.run_sync(store.next_due)
                    wait = IDLE_INTERVAL if next_due is None else min(IDLE_INTERVAL, next_due - time.time())
                if wait > 0 and self.cell.state is ConnectionState.CONNECTED:
                    await outbox.wait_wake(wait)

    async def _start(self, temporal: Bridge, client: Client, epoch: int, entry: PendingEntry) -> None:
        """One start attempt of `entry` and its mark; the slot is freed once the mark is committed (until
        then the entry is pending in the db and must not be taken again)."""
        attempts = entry.attempts + 1
        try:
            mark, event = await self._attempt(temporal, client, epoch, entry, attempts)
            await self.outbox.mark(mark)
            self.emit(event)
        finally:
            self.inflight.discard(entry.id)
            if self.reading:
                self.ended_during_read.add(entry.id)
            self.outbox.wake()

    async def _attempt(
        self, temporal: Bridge, client: Client, epoch: int, entry: PendingEntry, attempts: int
    ) -> tuple[Mark, Event]:
        connection = self.connection
        error: str
        with trio.CancelScope() as scope:
            self.outbox._inflight.add(scope)
            try:
                run_id = await temporal.start_queued(
                    client,
                    connection.namespace,
                    entry,
                    timeout=connection.request_timeout,
                    task_timeout=connection.workflow_task_timeout,
                )
                started = SubmissionStarted(entry.id, run_id, attempts)
                return Mark(entry.id, SubmissionState.STARTED, time.time(), run_id, None), started
            except WorkflowAlreadyStarted as exc:
                # Another request (not one of ours: those are deduplicated) holds the id: the workflow
                # this entry names exists, and starting it is what the entry asked for. Not twice.
                note = f"already started by another request (run {exc.run_id})"
                started = SubmissionStarted(entry.id, exc.run_id, attempts, deduplicated=True)
                return Mark(entry.id, SubmissionState.STARTED, time.time(), exc.run_id, note), started
            except SubmissionFailed as exc:
                rejected = SubmissionRejected(entry.id, attempts, str(exc))
                return Mark(entry.id, SubmissionState.FAILED, 0.0, None, str(exc)), rejected
            except TemporalUnavailable as exc:
                self.cell.poke(Poke.PROBE)
                error = str(exc)
            except Exception as exc:  # a row the bridge cannot read (another process's bad options)
                why = f"cannot be started: {type(exc).__name__}: {exc}"
                rejected = SubmissionRejected(entry.id, attempts, why)
                return Mark(entry.id, SubmissionState.FAILED, 0.0, None, why), rejected
            finally:
                self.outbox._inflight.discard(scope)
        if scope.cancelled_caught:
            error = "the connection was lost during the start"
        # Transient: pending again. On a connection that is still the one we used, back off (the entry
        # met RESOURCE_EXHAUSTED or a timeout); after a drop, the reconnection releases it at once.
        live = self.cell.state is ConnectionState.CONNECTED and self.cell.epoch == epoch
        delay = retry_delay(attempts) if live else 0.0
        delayed = SubmissionDelayed(entry.id, attempts, error, delay)
        return Mark(entry.id, SubmissionState.PENDING, time.time() + delay, None, error), delayed
