# The durable start queue on disk: <state_dir>/outbox.db, SQLite from the standard library. Every method
# is synchronous and short; the tree calls them off the Trio thread (trio.to_thread), the CLI directly.
# Durability: WAL with synchronous=FULL, so a submit that returned survives a SIGKILL of any process and
# a power loss. A busy timeout lets the CLI write beside a running daemon. Rules: the db and its -wal /
# -shm files are 0600 (SQLite gives those the db file's mode) and never opened through a symlink; one
# transaction per call, so a batch of submits shares one commit (group commit: one fsync for many).
from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from .._core._errors import OutboxFull, StateFileError, SubmissionConflict
from .._core._outbox import NewEntry, PendingEntry, Submission, SubmissionState
from ._statefiles import open_regular

__all__ = ["BUSY_TIMEOUT", "Mark", "OutboxStore", "SubmitResult"]

BUSY_TIMEOUT = 5.0  # seconds a writer waits for another process's transaction (the CLI beside the daemon)
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,  -- submit order: the drain takes the oldest first
    id            TEXT NOT NULL UNIQUE,               -- the workflow id, the idempotency key
    workflow_type TEXT NOT NULL,
    task_queue    TEXT NOT NULL,
    payloads      BLOB NOT NULL,                      -- the input, encoded at submit, sent as it is
    options       TEXT NOT NULL,                      -- the start options, JSON
    fingerprint   TEXT NOT NULL,                      -- "the same submit": type, queue, input, options
    request_id    TEXT NOT NULL,                      -- sent with every start attempt (server dedup)
    state         TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    submitted_at  REAL NOT NULL,
    next_at       REAL NOT NULL DEFAULT 0,            -- a pending entry is not retried before this
    started_at    REAL,
    run_id        TEXT,
    last_error    TEXT
);
CREATE INDEX IF NOT EXISTS entries_due ON entries (state, next_at, seq);    -- the next retry time
CREATE INDEX IF NOT EXISTS entries_order ON entries (state, seq);  -- oldest first without a sort
CREATE INDEX IF NOT EXISTS entries_started ON entries (state, started_at);
"""

_COLUMNS = "id, workflow_type, task_queue, state, attempts, submitted_at, started_at, run_id, last_error"


class Mark(NamedTuple):
    """What became of one start attempt: STARTED (`at` = when, `run_id`, `error` = a note), FAILED
    (`error` = why), or PENDING again (`at` = not retried before, `error` = what failed)."""

    id: str
    state: SubmissionState
    at: float
    run_id: str | None
    error: str | None


class SubmitResult:
    """One submit of a batch: the entry as stored, and whether this submit stored it (False: it was
    there already, the same start), or the refusal (SubmissionConflict, OutboxFull)."""

    __slots__ = ("created", "error", "submission")

    def __init__(self, submission: Submission | None, created: bool, error: Exception | None = None) -> None:
        self.submission = submission
        self.created = created
        self.error = error


def _secure_create(path: Path) -> None:
    """Create the db file 0600 if missing; refuse a symlink, a non-regular file, or another user's, for
    the db and for SQLite's -wal / -shm files beside it (SQLite itself would follow a planted symlink)."""
    for companion in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            fd = open_regular(companion, os.O_RDONLY, "outbox db file")
        except FileNotFoundError:
            continue  # SQLite creates it with the db's mode
        _check_owner(fd, companion)
    fd = open_regular(path, os.O_RDWR | os.O_CREAT, "outbox db", 0o600)
    _check_owner(fd, path)


def _check_owner(fd: int, path: Path) -> None:
    """Ours (else StateFileError) and 0600; closes `fd`."""
    try:
        info = os.fstat(fd)
        if info.st_uid != os.getuid():
            raise StateFileError(f"refusing to use outbox db {str(path)!r}: it belongs to uid {info.st_uid}")
        if info.st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _submission(row: Sequence[Any]) -> Submission:
    id_, workflow_type, task_queue, state, attempts, submitted_at, started_at, run_id, last_error = row
    return Submission(
        id=id_,
        workflow_type=workflow_type,
        task_queue=task_queue,
        state=SubmissionState(state),
        attempts=attempts,
        submitted_at=submitted_at,
        started_at=started_at,
        run_id=run_id,
        last_error=last_error,
    )


class OutboxStore:
    """outbox.db: submit (in batches), the drain's take / mark, and the `queue` command's views."""

    def __init__(self, path: Path) -> None:
        _secure_create(path)
        self.path = path
        self._lock = threading.Lock()  # one connection, used by one thread at a time
        # The counts per state, kept up to date by this connection's own writes and counted again only
        # when another connection (the CLI) committed: a submit must not count every pending row, nor the
        # status board scan every retained one each second. None: count at the next need.
        self._tally: dict[str, int] | None = None
        self._tally_version = -1
        self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise StateFileError(f"{str(path)!r} has schema version {version}, not {SCHEMA_VERSION}")
            self._db.executescript(_SCHEMA)  # idempotent (IF NOT EXISTS): two openers may race here
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StateFileError(f"{str(path)!r} is not an outbox db: {exc}") from None
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (the write lock up front: no upgrade deadlock with another writer)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._tally = None  # the transaction's own changes to it are rolled back
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _counted(self, db: sqlite3.Connection) -> dict[str, int]:
        """The counts per state now (the lock held): the kept tally while no other connection committed
        since it was last right (PRAGMA data_version changes only for other connections' commits). A
        write that changes a count calls this inside its transaction, then adjusts what it returned."""
        version = db.execute("PRAGMA data_version").fetchone()[0]
        if self._tally is None or version != self._tally_version:
            tally = {state.value: 0 for state in SubmissionState}
            tally.update(db.execute("SELECT state, count(*) FROM entries GROUP BY state").fetchall())
            self._tally, self._tally_version = tally, version
        return self._tally

    # --- submit -----------------------------------------------------------------------------------------
    def submit_many(self, entries: Sequence[NewEntry], *, now: float, max_pending: int) -> list[SubmitResult]:
        """Store every new entry in ONE transaction (one fsync for the batch); per entry: stored, found
        (the same start was there: nothing stored), or refused (another start under that id; full)."""
        results: list[SubmitResult] = []
        with self._transaction() as db:
            tally = self._counted(db)
            pending = tally["pending"]
            for entry in entries:
                found = db.execute(
                    f"SELECT {_COLUMNS}, fingerprint FROM entries WHERE id = ?", (entry.id,)
                ).fetchone()
                if found is not None:
                    if found[-1] != entry.fingerprint:
                        conflict = SubmissionConflict(
                            f"workflow id {entry.id!r} is already queued with another type, task queue, "
                            "input or options"
                        )
                        results.append(SubmitResult(None, False, conflict))
                    else:
                        results.append(SubmitResult(_submission(found[:-1]), False))
                    continue
                if pending >= max_pending:
                    full = OutboxFull(f"the outbox is full: {pending} pending, max_pending {max_pending}")
                    results.append(SubmitResult(None, False, full))
                    continue
                db.execute(
                    "INSERT INTO entries (id, workflow_type, task_queue, payloads, options, fingerprint,"
                    " request_id, state, submitted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (entry.id, entry.workflow_type, entry.task_queue, entry.payloads, entry.options,
                     entry.fingerprint, entry.request_id, "pending", now),
                )  # fmt: skip
                pending += 1
                tally["pending"] = pending
                submission = Submission(
                    entry.id, entry.workflow_type, entry.task_queue, SubmissionState.PENDING, 0, now,
                    None, None, None,
                )  # fmt: skip
                results.append(SubmitResult(submission, True))
        return results

    # --- reading ----------------------------------------------------------------------------------------
    def get(self, id: str) -> Submission | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM entries WHERE id = ?", (id,)).fetchone()
        return None if row is None else _submission(row)

    def entries(self, state: SubmissionState | None = None, limit: int = 1000) -> list[Submission]:
        """Entries in submit order (oldest first), of one state or all."""
        query = f"SELECT {_COLUMNS} FROM entries"
        params: tuple[object, ...] = ()
        if state is not None:
            query += " WHERE state = ?"
            params = (state.value,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq LIMIT ?", (*params, limit)).fetchall()
        return [_submission(row) for row in rows]

    def counts(self, now: float) -> dict[str, float | int | None]:
        """pending / failed / started, and the age of the oldest pending entry (None without one)."""
        with self._lock:
            rows = dict(self._counted(self._db))
            first = self._db.execute(
                "SELECT submitted_at FROM entries WHERE state = 'pending' ORDER BY seq LIMIT 1"
            ).fetchone()
            oldest = None if first is None else first[0]
        return {
            "pending": int(rows.get("pending", 0)),
            "failed": int(rows.get("failed", 0)),
            "started": int(rows.get("started", 0)),
            "oldest_pending_age_s": None if oldest is None else round(max(0.0, now - oldest), 3),
        }

    # --- the drain --------------------------------------------------------------------------------------
    def take_due(self, now: float, limit: int) -> list[PendingEntry]:
        """Up to `limit` pending entries whose retry time has come, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, workflow_type, task_queue, payloads, options, request_id, attempts"
                " FROM entries INDEXED BY entries_order"  # submit order, no sort of every pending row
                " WHERE state = 'pending' AND next_at <= ? ORDER BY seq LIMIT ?",
                (now, limit),
            ).fetchall()
        return [PendingEntry(r[0], r[1], r[2], bytes(r[3]), r[4], r[5], int(r[6])) for r in rows]

    def mark_many(self, marks: Sequence[Mark]) -> None:
        """What became of a batch of start attempts, in ONE transaction (group commit, like submits). A
        mark only touches a PENDING entry: one dropped or already marked meanwhile stays as it is."""
        with self._transaction() as db:
            tally = self._counted(db)
            for mark in marks:
                if mark.state is SubmissionState.STARTED:
                    moved = db.execute(
                        "UPDATE entries SET state = 'started', attempts = attempts + 1, started_at = ?,"
                        " run_id = ?, last_error = ? WHERE id = ? AND state = 'pending'",
                        (mark.at, mark.run_id, mark.error, mark.id),
                    ).rowcount
                    tally["pending"] -= moved
                    tally["started"] += moved
                elif mark.state is SubmissionState.FAILED:
                    moved = db.execute(
                        "UPDATE entries SET state = 'failed', attempts = attempts + 1, last_error = ?"
                        " WHERE id = ? AND state = 'pending'",
                        (mark.error, mark.id),
                    ).rowcount
                    tally["pending"] -= moved
                    tally["failed"] += moved
                else:  # still pending: a transient failure, retried from `at` on
                    db.execute(
                        "UPDATE entries SET attempts = attempts + 1, last_error = ?, next_at = ?"
                        " WHERE id = ? AND state = 'pending'",
                        (mark.error, mark.at, mark.id),
                    )

    def mark_started(self, id: str, run_id: str | None, now: float, note: str | None = None) -> None:
        self.mark_many([Mark(id, SubmissionState.STARTED, now, run_id, note)])

    def mark_retry(self, id: str, error: str, next_at: float) -> None:
        """A transient failure: still pending, one more attempt counted, not before `next_at`."""
        self.mark_many([Mark(id, SubmissionState.PENDING, next_at, None, error)])

    def mark_failed(self, id: str, error: str) -> None:
        """A permanent failure: FAILED with the reason, until `retry` or `drop`."""
        self.mark_many([Mark(id, SubmissionState.FAILED, 0.0, None, error)])

    def release_backoff(self) -> int:
        """Every pending entry due now (the connection is back: its retries need not wait); how many."""
        with self._transaction() as db:
            return db.execute(
                "UPDATE entries SET next_at = 0 WHERE state = 'pending' AND next_at > 0"
            ).rowcount

    def next_due(self) -> float | None:
        """When the next pending entry with a retry time comes due (None: none waits for one)."""
        with self._lock:
            due: float | None = self._db.execute(
                "SELECT min(next_at) FROM entries WHERE state = 'pending' AND next_at > 0"
            ).fetchone()[0]
        return due

    def data_version(self) -> int:
        """Changes whenever ANOTHER connection (the CLI's `submit`, `queue retry`) commits a change."""
        with self._lock:
            version: int = self._db.execute("PRAGMA data_version").fetchone()[0]
        return version

    # --- the queue command ------------------------------------------------------------------------------
    def retry(self, id: str) -> bool:
        """A FAILED entry becomes pending again, due now; False if there is no failed entry `id`."""
        with self._transaction() as db:
            tally = self._counted(db)
            cursor = db.execute(
                "UPDATE entries SET state = 'pending', next_at = 0 WHERE id = ? AND state = 'failed'", (id,)
            )
            tally["failed"] -= cursor.rowcount
            tally["pending"] += cursor.rowcount
            return cursor.rowcount == 1

    def drop(self, id: str) -> bool:
        """Forget a pending or failed entry (a started one is history: see `prune`); False if none."""
        with self._transaction() as db:
            tally = self._counted(db)
            row = db.execute(
                "DELETE FROM entries WHERE id = ? AND state != 'started' RETURNING state", (id,)
            ).fetchone()
            if row is None:
                return False
            tally[row[0]] -= 1
            return True

    def prune(self, started_before: float) -> int:
        """Delete started entries older than `started_before`; how many."""
        with self._transaction() as db:
            tally = self._counted(db)
            cursor = db.execute(
                "DELETE FROM entries WHERE state = 'started' AND started_at < ?", (started_before,)
            )
            tally["started"] -= cursor.rowcount
            return cursor.rowcount
