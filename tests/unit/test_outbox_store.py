"""The durable start queue's store (outbox.db): idempotent submits, group commit, the drain's take and
marks, the queue command's views, file modes, and two writers (the CLI beside the daemon).

Local files in tmp_path only: no processes, no sockets, no clock (times are passed in).
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stigmer_trio._boundary._outbox_store import OutboxStore
from stigmer_trio._core._errors import OutboxFull, StateFileError, SubmissionConflict
from stigmer_trio._core._outbox import NewEntry, SubmissionState

MANY = 10_000


def entry(id: str, payloads: bytes = b"input", workflow_type: str = "W", task_queue: str = "q") -> NewEntry:
    return NewEntry(id, workflow_type, task_queue, payloads, '{"task_timeout": 5}', f"req-{id}")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[OutboxStore]:
    opened = OutboxStore(tmp_path / "outbox.db")
    yield opened
    opened.close()


class TestSubmit:
    def test_a_submit_is_pending_and_survives_a_reopen(self, tmp_path: Path) -> None:
        """A stored submit is PENDING with no attempts; a new store on the same file finds it."""
        first = OutboxStore(tmp_path / "outbox.db")
        [result] = first.submit_many([entry("a")], now=100.0, max_pending=MANY)
        first.close()
        assert (True, None) == (result.created, result.error)
        again = OutboxStore(tmp_path / "outbox.db")
        found = again.get("a")
        again.close()
        assert found == result.submission
        assert (SubmissionState.PENDING, 0, 100.0, None) == (
            found.state,
            found.attempts,
            found.submitted_at,
            found.run_id,
        )

    def test_the_same_submit_again_stores_nothing(self, store: OutboxStore) -> None:
        """The same id, type, queue, input and options: the existing entry, created False."""
        store.submit_many([entry("a")], now=1.0, max_pending=MANY)
        [again] = store.submit_many([entry("a")], now=2.0, max_pending=MANY)
        assert (False, None, 1.0) == (again.created, again.error, again.submission.submitted_at)
        assert 1 == len(store.entries())

    @pytest.mark.parametrize(
        "other",
        [entry("a", payloads=b"other"), entry("a", workflow_type="V"), entry("a", task_queue="r")],
        ids=["input", "type", "queue"],
    )
    def test_the_same_id_for_another_start_is_a_conflict(self, store: OutboxStore, other: NewEntry) -> None:
        """The same id with another input, type or queue: SubmissionConflict, nothing changed."""
        store.submit_many([entry("a")], now=1.0, max_pending=MANY)
        [result] = store.submit_many([other], now=2.0, max_pending=MANY)
        assert isinstance(result.error, SubmissionConflict)
        assert "'a'" in str(result.error)
        assert [b"input"] == [p.payloads for p in store.take_due(now=9.0, limit=10)]

    def test_a_started_id_is_still_the_same_start(self, store: OutboxStore) -> None:
        """Submitting an id that was already started returns the started entry."""
        store.submit_many([entry("a")], now=1.0, max_pending=MANY)
        store.mark_started("a", "run-1", now=2.0)
        [again] = store.submit_many([entry("a")], now=3.0, max_pending=MANY)
        assert (False, SubmissionState.STARTED, "run-1") == (
            again.created,
            again.submission.state,
            again.submission.run_id,
        )

    def test_full_refuses_only_what_does_not_fit(self, store: OutboxStore) -> None:
        """max_pending counts pending entries: a batch fills up to it, the rest get OutboxFull; started
        entries do not count."""
        store.submit_many([entry("old")], now=1.0, max_pending=3)
        store.mark_started("old", "run", now=1.5)
        results = store.submit_many([entry(f"e{i}") for i in range(5)], now=2.0, max_pending=3)
        assert [True, True, True, False, False] == [r.created for r in results]
        assert all(isinstance(r.error, OutboxFull) for r in results[3:])
        assert 3 == store.counts(now=2.0)["pending"]

    def test_a_batch_is_one_transaction(self, store: OutboxStore) -> None:
        """1000 submits in one call are stored in one transaction: one COMMIT (one fsync) for them all."""
        statements: list[str] = []
        store._db.set_trace_callback(statements.append)
        results = store.submit_many([entry(f"e{i}") for i in range(1000)], now=1.0, max_pending=MANY)
        store._db.set_trace_callback(None)
        assert all(r.created for r in results)
        assert (1, 1, 1000) == (
            statements.count("BEGIN IMMEDIATE"),
            statements.count("COMMIT"),
            sum(s.startswith("INSERT") for s in statements),
        )
        assert 1000 == store.counts(now=1.0)["pending"]


class TestDrain:
    def test_due_entries_oldest_first_and_not_before_their_retry_time(self, store: OutboxStore) -> None:
        """take_due: pending, due, in submit order; a retried entry waits for next_at."""
        store.submit_many([entry("a"), entry("b"), entry("c")], now=1.0, max_pending=MANY)
        store.mark_retry("a", "UNAVAILABLE", next_at=10.0)
        assert ["b", "c"] == [e.id for e in store.take_due(now=5.0, limit=10)]
        assert ["a", "b"] == [e.id for e in store.take_due(now=10.0, limit=2)]
        due = store.take_due(now=10.0, limit=1)[0]
        assert (1, "req-a", b"input", '{"task_timeout": 5}') == (
            due.attempts,
            due.request_id,
            due.payloads,
            due.options,
        )

    def test_started_and_failed_leave_the_drain(self, store: OutboxStore) -> None:
        """mark_started records the run id and time; mark_failed the reason; neither is due again."""
        store.submit_many([entry("a"), entry("b")], now=1.0, max_pending=MANY)
        store.mark_started("a", "run-a", now=2.0)
        store.mark_failed("b", "namespace not found")
        assert [] == store.take_due(now=99.0, limit=10)
        a, b = store.get("a"), store.get("b")
        assert (SubmissionState.STARTED, 1, 2.0, "run-a", None) == (
            a.state,
            a.attempts,
            a.started_at,
            a.run_id,
            a.last_error,
        )
        assert (SubmissionState.FAILED, 1, "namespace not found") == (b.state, b.attempts, b.last_error)

    def test_marks_only_move_pending_entries(self, store: OutboxStore) -> None:
        """A late mark (say, a retry decided after the entry started) does not undo a start."""
        store.submit_many([entry("a")], now=1.0, max_pending=MANY)
        store.mark_started("a", "run-a", now=2.0)
        store.mark_retry("a", "late", next_at=3.0)
        store.mark_failed("a", "late")
        assert (SubmissionState.STARTED, 1, None) == (
            store.get("a").state,
            store.get("a").attempts,
            store.get("a").last_error,
        )


class TestQueueCommand:
    def test_retry_makes_a_failed_entry_due(self, store: OutboxStore) -> None:
        store.submit_many([entry("a")], now=1.0, max_pending=MANY)
        store.mark_failed("a", "boom")
        assert store.retry("a")
        assert not store.retry("a")  # not failed any more
        assert ["a"] == [e.id for e in store.take_due(now=1.0, limit=10)]

    def test_drop_forgets_pending_and_failed_never_started(self, store: OutboxStore) -> None:
        store.submit_many([entry("a"), entry("b"), entry("c")], now=1.0, max_pending=MANY)
        store.mark_failed("b", "boom")
        store.mark_started("c", "run-c", now=2.0)
        assert (True, True, False, False) == (
            store.drop("a"),
            store.drop("b"),
            store.drop("c"),
            store.drop("missing"),
        )
        assert ["c"] == [s.id for s in store.entries()]

    def test_prune_deletes_only_old_started_entries(self, store: OutboxStore) -> None:
        store.submit_many([entry(i) for i in "abcd"], now=1.0, max_pending=MANY)
        store.mark_started("a", "r", now=10.0)
        store.mark_started("b", "r", now=20.0)
        store.mark_failed("c", "boom")
        assert 1 == store.prune(started_before=15.0)
        assert ["b", "c", "d"] == [s.id for s in store.entries()]

    def test_counts_and_views(self, store: OutboxStore) -> None:
        store.submit_many([entry(i) for i in "abc"], now=10.0, max_pending=MANY)
        store.mark_started("a", "r", now=11.0)
        store.mark_failed("b", "boom")
        assert {"pending": 1, "failed": 1, "started": 1, "oldest_pending_age_s": 5.0} == store.counts(15.0)
        assert ["b"] == [s.id for s in store.entries(SubmissionState.FAILED)]
        empty = OutboxStore(store.path.with_name("empty.db"))
        assert {"pending": 0, "failed": 0, "started": 0, "oldest_pending_age_s": None} == empty.counts(1.0)
        empty.close()


class TestKeptCounts:
    """The counts are kept by each store's own writes and counted again after another connection's
    commit: checked against a fresh GROUP BY after every step of a mixed history of two stores."""

    @staticmethod
    def truth(path: Path) -> dict[str, int]:
        db = sqlite3.connect(path)
        rows = dict(db.execute("SELECT state, count(*) FROM entries GROUP BY state").fetchall())
        db.close()
        return {state: rows.get(state, 0) for state in ("pending", "failed", "started")}

    @staticmethod
    def kept(store: OutboxStore) -> dict[str, int]:
        counts = store.counts(0.0)
        return {state: int(counts[state] or 0) for state in ("pending", "failed", "started")}

    def test_every_write_by_either_store_keeps_both_right(self, tmp_path: Path) -> None:
        daemon, cli = OutboxStore(tmp_path / "outbox.db"), OutboxStore(tmp_path / "outbox.db")
        steps = [
            lambda: daemon.submit_many([entry(i) for i in "abcdef"], now=1.0, max_pending=MANY),
            lambda: cli.submit_many([entry("g"), entry("a")], now=1.0, max_pending=MANY),
            lambda: daemon.mark_started("a", "r", now=2.0),
            lambda: daemon.mark_failed("b", "boom"),
            lambda: daemon.mark_failed("b", "again: not pending, nothing moves"),
            lambda: cli.mark_started("c", "r", now=3.0),
            lambda: daemon.mark_retry("d", "UNAVAILABLE", next_at=5.0),
            lambda: cli.retry("b"),
            lambda: daemon.drop("e"),
            lambda: cli.drop("f"),
            lambda: daemon.mark_failed("g", "boom"),
            lambda: daemon.drop("g"),
            lambda: daemon.prune(started_before=2.5),
            lambda: cli.prune(started_before=10.0),
        ]
        for step in steps:
            step()
            truth = self.truth(tmp_path / "outbox.db")
            assert truth == self.kept(daemon) == self.kept(cli)
        daemon.close()
        cli.close()

    def test_a_rolled_back_batch_leaves_the_counts_right(self, store: OutboxStore) -> None:
        """A batch that fails inside its transaction stores nothing and counts nothing."""
        store.submit_many([entry("a")], now=1.0, max_pending=MANY)
        unbindable = NewEntry("c", "W", "q", b"", "{}", object())  # type: ignore[arg-type]
        with pytest.raises(sqlite3.ProgrammingError):
            store.submit_many([entry("b"), unbindable], now=1.0, max_pending=MANY)
        assert {"pending": 1, "failed": 0, "started": 0} == self.kept(store)
        assert self.truth(store.path) == self.kept(store)


class TestFile:
    def test_db_and_its_wal_files_are_0600(self, store: OutboxStore) -> None:
        store.submit_many([entry("a")], now=1.0, max_pending=MANY)
        for suffix in ("", "-wal", "-shm"):
            path = Path(f"{store.path}{suffix}")
            assert 0o600 == stat.S_IMODE(path.stat().st_mode), path

    def test_a_planted_symlink_is_refused(self, tmp_path: Path) -> None:
        target = tmp_path / "elsewhere.db"
        target.write_bytes(b"")
        (tmp_path / "outbox.db").symlink_to(target)
        with pytest.raises(StateFileError, match="symlink"):
            OutboxStore(tmp_path / "outbox.db")

    @pytest.mark.parametrize(
        ("content", "match"),
        [(b"not a database at all" * 100, "is not an outbox db"), (None, "schema version 7")],
        ids=["garbage", "newer-schema"],
    )
    def test_a_file_that_is_not_ours_is_refused(
        self, tmp_path: Path, content: bytes | None, match: str
    ) -> None:
        """Garbage, or a db of a schema this code does not know: StateFileError, the file untouched."""
        path = tmp_path / "outbox.db"
        if content is not None:
            path.write_bytes(content)
        else:
            OutboxStore(path).close()
            db = sqlite3.connect(path)
            db.execute("PRAGMA user_version=7")
            db.close()
        before = path.read_bytes()
        with pytest.raises(StateFileError, match=match):
            OutboxStore(path)
        assert before == path.read_bytes()

    def test_a_loose_mode_is_tightened(self, tmp_path: Path) -> None:
        path = tmp_path / "outbox.db"
        path.touch()
        os.chmod(path, 0o644)
        OutboxStore(path).close()
        assert 0o600 == stat.S_IMODE(path.stat().st_mode)

    def test_two_writers_share_the_file(self, tmp_path: Path) -> None:
        """The CLI's store beside the daemon's: 4 threads x 2 stores x 50 batches, nothing lost."""
        stores = [OutboxStore(tmp_path / "outbox.db") for _ in range(2)]
        errors: list[BaseException] = []

        def write(store: OutboxStore, name: str) -> None:
            try:
                for batch in range(50):
                    store.submit_many([entry(f"{name}-{batch}")], now=1.0, max_pending=MANY)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [
            threading.Thread(target=write, args=(stores[i % 2], f"w{i}")) for i in range(4)
        ]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [] == errors
        assert 200 == stores[0].counts(now=1.0)["pending"]
        for opened in stores:
            opened.close()


class TestCompanionFiles:
    @pytest.mark.parametrize("suffix", ["-wal", "-shm"])
    def test_a_symlinked_wal_or_shm_is_refused(self, tmp_path: Path, suffix: str) -> None:
        """SQLite would follow a planted -wal / -shm symlink; the store refuses it, touching nothing."""
        target = tmp_path / "target"
        target.write_bytes(b"precious")
        (tmp_path / f"outbox.db{suffix}").symlink_to(target)
        with pytest.raises(StateFileError, match="symlink"):
            OutboxStore(tmp_path / "outbox.db")
        assert target.read_bytes() == b"precious"
        assert not (tmp_path / "outbox.db").exists()
