# The durable start queue's commands: `submit` (queue a start: it writes outbox.db itself, so it works
# while Temporal or the daemon is down; a running daemon sees the row within WATCH_INTERVAL) and `queue`
# (list, retry, drop). Rule: no trio, no temporalio (`submit` must stay well under 300 ms): the input is
# encoded by _core/_outbox's hand-written encoder, byte-equal to the SDK's default converter.
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from .._core._layout import StateLayout
from .._core._outbox import NO_OPTIONS, NewEntry, Submission, SubmissionState, encode_json_input
from ._common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError, say

TYPE_CHECKING = False  # typing is not imported at run time: the hot paths stay lean
if TYPE_CHECKING:
    from typing import Any

    from .._boundary._outbox_store import OutboxStore

__all__ = ["queue", "submit"]

WAIT_POLL = 0.02  # seconds between looks while `submit --wait` waits for the start


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_inputs(inputs: list[str]) -> list[Any]:
    values = []
    for number, raw in enumerate(inputs, 1):
        try:
            values.append(json.loads(raw, parse_constant=_refuse_constant))
        except ValueError as exc:  # JSONDecodeError is one
            why = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise UsageError(f"--input #{number} {raw!r} is not JSON: {why}") from None
    return values


def _name(value: str, flag: str) -> str:
    if not value or not value.strip() or len(value) > 1000:
        raise UsageError(f"{flag} must be a non-empty name of at most 1000 characters, got {value!r}")
    return value


def _max_pending(env: Mapping[str, str], file: Mapping[str, Any]) -> int:
    from .._core._config import OutboxConfig, resolve_outbox
    from .._core._errors import ConfigError

    try:
        config = resolve_outbox(flags={}, env=env, file=file)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    return (config or OutboxConfig()).max_pending


def _open(state_dir: Path, *, create: bool) -> OutboxStore | None:
    """The state dir's outbox db (None: there is none and `create` is false). Errors: UsageError."""
    from .._boundary._outbox_store import OutboxStore
    from .._boundary._statefiles import ensure_state_dir
    from .._core._errors import ConfigError

    path = StateLayout(state_dir).outbox
    if not create and not path.exists():
        return None
    try:
        ensure_state_dir(state_dir)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    return OutboxStore(path)


# --- submit --------------------------------------------------------------------------------------------
def submit(
    state_dir: Path,
    env: Mapping[str, str],
    file: Mapping[str, Any],
    *,
    workflow_type: str,
    id: str,
    task_queue: str,
    inputs: list[str],
    wait: bool,
    timeout: float | None,
) -> int:
    """Queue one start (durable when this prints `queued ID`); with `wait`, until it is started."""
    from .._core._errors import OutboxFull, SubmissionConflict

    values = _parse_inputs(inputs)
    entry = NewEntry(
        _name(id, "--id"),
        _name(workflow_type, "WORKFLOW_TYPE"),
        _name(task_queue, "--task-queue"),
        encode_json_input(values),
        NO_OPTIONS,
        uuid.uuid4().hex,
    )
    if timeout is not None and not timeout > 0:
        raise UsageError(f"--timeout must be a number of seconds > 0, got {timeout!r}")
    max_pending = _max_pending(env, file)
    store = _open(state_dir, create=True)
    assert store is not None
    try:
        [result] = store.submit_many([entry], now=time.time(), max_pending=max_pending)
        if isinstance(result.error, SubmissionConflict):
            raise UsageError(str(result.error))
        if isinstance(result.error, OutboxFull):
            say(f"error: {result.error}")
            return EXIT_FAILURE
        print(
            f"queued {id}" if result.created else f"queued {id} (already queued: nothing stored)", flush=True
        )
        return _wait_started(store, id, timeout) if wait else EXIT_OK
    finally:
        store.close()


def _wait_started(store: OutboxStore, id: str, timeout: float | None) -> int:
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            found = store.get(id)
            if found is None:
                say(f"error: {id!r} was dropped from the queue before it started")
                return EXIT_FAILURE
            if found.state is SubmissionState.STARTED:
                print(f"started {id} {found.run_id}")
                return EXIT_OK
            if found.state is SubmissionState.FAILED:
                say(f"error: the start of {id!r} failed: {found.last_error}")
                return EXIT_FAILURE
            if deadline is not None and time.monotonic() >= deadline:
                say(f"error: {id!r} is still pending after {timeout} s (it stays queued)")
                return EXIT_FAILURE
            time.sleep(WAIT_POLL)
    except KeyboardInterrupt:
        return 130


# --- queue ---------------------------------------------------------------------------------------------
def _row(entry: Submission) -> dict[str, Any]:
    return {
        "id": entry.id,
        "state": entry.state.value,
        "workflow_type": entry.workflow_type,
        "task_queue": entry.task_queue,
        "attempts": entry.attempts,
        "submitted_at": entry.submitted_at,
        "started_at": entry.started_at,
        "run_id": entry.run_id,
        "last_error": entry.last_error,
    }


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def queue(
    state_dir: Path, *, action: str | None, id: str | None, as_json: bool, state: str | None, limit: int
) -> int:
    """`queue` lists (counts and entries, oldest first); `queue retry ID` / `queue drop ID`."""
    if limit < 0:
        raise UsageError(f"--limit must be >= 0, got {limit!r}")
    if action in ("retry", "drop"):
        if not id:
            raise UsageError(f"queue {action} needs the workflow id of an entry")
        return _change(state_dir, action, id)
    if id is not None:
        raise UsageError(
            f"unexpected argument {id!r}: `queue` lists; `queue retry ID`, `queue drop ID` change"
        )
    store = _open(state_dir, create=False)
    if store is None:
        counts: dict[str, Any] = {"pending": 0, "failed": 0, "started": 0}
        entries: list[Submission] = []
    else:
        try:
            full = store.counts(time.time())
            counts = {key: full[key] for key in ("pending", "failed", "started")}
            entries = store.entries(None if state is None else SubmissionState(state), limit)
        finally:
            store.close()
    if as_json:
        print(json.dumps({**counts, "entries": [_row(e) for e in entries]}))
        return EXIT_OK
    print(
        f"{counts['pending']} pending, {counts['failed']} failed, {counts['started']} started ({state_dir})"
    )
    if entries:
        print(
            f"{'ID':<24} {'STATE':<8} {'TYPE':<18} {'TASK QUEUE':<18} {'TRIES':>5} {'SUBMITTED':<20} "
            "RUN / ERROR"
        )
        for e in entries:
            detail = e.run_id if e.state is SubmissionState.STARTED else (e.last_error or "")
            print(
                f"{e.id:<24} {e.state.value:<8} {e.workflow_type:<18} {e.task_queue:<18} {e.attempts:>5} "
                f"{_when(e.submitted_at):<20} {detail}"
            )
    return EXIT_OK


def _change(state_dir: Path, action: str, id: str) -> int:
    store = _open(state_dir, create=False)
    if store is None:
        say(f"error: no queued start {id!r}: there is no outbox in {state_dir}")
        return EXIT_FAILURE
    try:
        before = store.get(id)
        done = store.retry(id) if action == "retry" else store.drop(id)
    finally:
        store.close()
    if done:
        print(f"{'retrying' if action == 'retry' else 'dropped'} {id}")
        return EXIT_OK
    if before is None:
        say(f"error: no queued start {id!r}")
    elif action == "retry":
        say(f"error: {id!r} is {before.state.value}: only a failed entry can be retried")
    else:
        say(
            f"error: {id!r} was started (run {before.run_id}): a started entry is history (pruned after "
            "retain)"
        )
    return EXIT_USAGE if before is None else EXIT_FAILURE
