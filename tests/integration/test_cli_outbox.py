"""`submit` and `queue` as a user runs them (a real interpreter in a subprocess) with no daemon and no
Temporal: the row is written durably by the command itself, mistakes are one line and exit 2 with
nothing stored, and `submit` imports neither trio nor temporalio. (Draining, with a daemon and the real
server: tests/integration/test_outbox_daemon.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from harness import clean_env

from stigmer_trio._boundary._outbox_store import OutboxStore
from stigmer_trio._boundary._temporal import encode_input

pytestmark = pytest.mark.integration


def cli(state_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stigmer_trio", *args, "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=clean_env(**(env or {})),
        stdin=subprocess.DEVNULL,
    )


def listing(state_dir: Path, *args: str) -> dict[str, Any]:
    result = cli(state_dir, "queue", "--json", *args)
    assert (result.returncode, result.stderr) == (0, "")
    document: dict[str, Any] = json.loads(result.stdout)
    return document


class TestSubmit:
    def test_queues_durably_with_the_sdks_encoding(self, tmp_path: Path) -> None:
        """`queued ID`; the row is in outbox.db (0600), its input byte-equal to the SDK's encoding."""
        state = tmp_path / "state"
        result = cli(state, "submit", "Greet", "--id", "w1", "--task-queue", "q", "--input", '"ann"',
                     "--input", '{"n": [1, null]}')  # fmt: skip
        assert (result.returncode, result.stdout, result.stderr) == (0, "queued w1\n", "")
        assert 0o600 == os.stat(state / "outbox.db").st_mode & 0o777
        store = OutboxStore(state / "outbox.db")
        try:
            [row] = store.take_due(now=1e12, limit=10)
        finally:
            store.close()
        assert (row.id, row.workflow_type, row.task_queue, row.options) == ("w1", "Greet", "q", "{}")
        assert row.payloads == encode_input(["ann", {"n": [1, None]}])

    def test_the_same_submit_again_stores_nothing_and_another_one_is_refused(self, tmp_path: Path) -> None:
        args = ("submit", "Greet", "--id", "w1", "--task-queue", "q", "--input", '"ann"')
        assert 0 == cli(tmp_path, *args).returncode
        again = cli(tmp_path, *args)
        assert (again.returncode, again.stdout) == (0, "queued w1 (already queued: nothing stored)\n")
        other = cli(tmp_path, "submit", "Greet", "--id", "w1", "--task-queue", "q", "--input", '"bob"')
        assert other.returncode == 2
        assert other.stderr.count("\n") == 1
        assert "'w1' is already queued with another type, task queue, input or options" in other.stderr
        assert [e["id"] for e in listing(tmp_path)["entries"]] == ["w1"]

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--id", "w", "--task-queue", "q", "--input", "{bad"], "--input #1 '{bad' is not JSON"),
            (
                ["--id", "w", "--task-queue", "q", "--input", "1", "--input", "NaN"],
                "--input #2 'NaN' is not JSON",
            ),
            (["--task-queue", "q"], "the following arguments are required: --id"),
            (["--id", "w"], "the following arguments are required: --task-queue"),
            (["--id", "", "--task-queue", "q"], "--id must be a non-empty name"),
            (["--id", "w", "--task-queue", " "], "--task-queue must be a non-empty name"),
            (["--id", "w", "--task-queue", "q", "--wait", "--timeout", "0"], "--timeout must be a number"),
        ],
    )
    def test_a_mistake_is_one_line_exit_2_and_stores_nothing(
        self, tmp_path: Path, args: list[str], message: str
    ) -> None:
        result = cli(tmp_path / "state", "submit", "Greet", *args)
        assert (result.returncode, result.stdout) == (2, "")
        assert result.stderr.count("\n") == 1
        assert message in result.stderr
        assert not (tmp_path / "state" / "outbox.db").exists()

    def test_a_bad_outbox_setting_is_a_usage_error(self, tmp_path: Path) -> None:
        result = cli(tmp_path, "submit", "W", "--id", "w", "--task-queue", "q",
                     env={"STIGMER_TRIO_OUTBOX_MAX_PENDING": "0"})  # fmt: skip
        assert result.returncode == 2
        assert "outbox max_pending must be a whole number >= 1, got 0" in result.stderr

    def test_full(self, tmp_path: Path) -> None:
        env = {"STIGMER_TRIO_OUTBOX_MAX_PENDING": "1"}
        assert 0 == cli(tmp_path, "submit", "W", "--id", "a", "--task-queue", "q", env=env).returncode
        full = cli(tmp_path, "submit", "W", "--id", "b", "--task-queue", "q", env=env)
        assert full.returncode == 1
        assert "the outbox is full: 1 pending, max_pending 1" in full.stderr

    def test_wait_gives_up_after_its_timeout_and_the_entry_stays(self, tmp_path: Path) -> None:
        result = cli(tmp_path, "submit", "W", "--id", "a", "--task-queue", "q", "--wait", "--timeout", "0.2")
        assert result.returncode == 1
        assert result.stdout == "queued a\n"
        assert "'a' is still pending after 0.2 s (it stays queued)" in result.stderr
        assert listing(tmp_path)["pending"] == 1

    def test_submit_imports_neither_trio_nor_temporalio(self, tmp_path: Path) -> None:
        argv = ["submit", "W", "--id", "x", "--task-queue", "q", "--input", "1", "--state-dir", str(tmp_path)]
        code = (
            "import sys\n"
            "from stigmer_trio._cli._main import main\n"
            f"rc = main({argv!r})\n"
            "heavy = {'trio', 'trio_asyncio', 'temporalio'}\n"
            "print(rc, sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.stdout.splitlines()[-1] == "0 []", result.stderr


class TestQueue:
    def test_an_empty_or_missing_queue(self, tmp_path: Path) -> None:
        assert listing(tmp_path / "none") == {"pending": 0, "failed": 0, "started": 0, "entries": []}
        assert not (tmp_path / "none").exists()  # reading creates nothing
        result = cli(tmp_path / "none", "queue")
        assert result.returncode == 0
        assert result.stdout.startswith("0 pending, 0 failed, 0 started")

    def test_json_rows_filter_retry_and_drop(self, tmp_path: Path) -> None:
        for id in ("a", "b", "c"):
            assert 0 == cli(tmp_path, "submit", "W", "--id", id, "--task-queue", "q").returncode
        store = OutboxStore(tmp_path / "outbox.db")
        store.mark_failed("b", "INVALID_ARGUMENT: no")
        store.mark_started("c", "run-c", 123.0)
        store.close()
        document = listing(tmp_path)
        assert (document["pending"], document["failed"], document["started"]) == (1, 1, 1)
        keys = {"id", "state", "workflow_type", "task_queue", "attempts", "submitted_at", "started_at",
                "run_id", "last_error"}  # fmt: skip
        assert all(set(e) == keys for e in document["entries"])
        assert [(e["id"], e["state"]) for e in document["entries"]] == [
            ("a", "pending"), ("b", "failed"), ("c", "started"),
        ]  # fmt: skip
        [failed] = listing(tmp_path, "--state", "failed")["entries"]
        assert (failed["id"], failed["last_error"], failed["attempts"]) == ("b", "INVALID_ARGUMENT: no", 1)
        text = cli(tmp_path, "queue", "--state", "started").stdout
        assert "run-c" in text
        assert " a " not in text

        retry = cli(tmp_path, "queue", "retry", "b")
        assert (retry.returncode, retry.stdout) == (0, "retrying b\n")
        assert listing(tmp_path)["pending"] == 2
        not_failed = cli(tmp_path, "queue", "retry", "a")
        assert not_failed.returncode == 1
        assert "'a' is pending: only a failed entry can be retried" in not_failed.stderr
        started = cli(tmp_path, "queue", "drop", "c")
        assert started.returncode == 1
        assert "was started (run run-c)" in started.stderr
        drop = cli(tmp_path, "queue", "drop", "a")
        assert (drop.returncode, drop.stdout) == (0, "dropped a\n")
        unknown = cli(tmp_path, "queue", "drop", "zz")
        assert (unknown.returncode, unknown.stderr.count("\n")) == (2, 1)
        assert [e["id"] for e in listing(tmp_path)["entries"]] == ["b", "c"]

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["retry"], "queue retry needs the workflow id"),
            (["a"], "invalid choice: 'a'"),
            (["--state", "odd"], "invalid choice: 'odd'"),
            (["--limit", "-1"], "--limit must be >= 0"),
        ],
    )
    def test_mistakes(self, tmp_path: Path, args: list[str], message: str) -> None:
        result = cli(tmp_path, "queue", *args)
        assert result.returncode == 2
        assert message in result.stderr
        assert result.stderr.count("\n") == 1
