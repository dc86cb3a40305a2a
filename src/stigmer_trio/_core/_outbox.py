# The durable start queue's records: what a submit stored and what became of it. Pure: no trio, no I/O
# (the store is _boundary/_outbox_store, the drain a child of the tree).
from __future__ import annotations

import enum
import hashlib

import attrs

__all__ = ["NewEntry", "PendingEntry", "Submission", "SubmissionState", "fingerprint"]


class SubmissionState(enum.StrEnum):
    """Where a queued start is: waiting to be started, started (it has a run id), or failed for good."""

    PENDING = "pending"
    STARTED = "started"
    FAILED = "failed"


@attrs.frozen
class Submission:
    """One queued start as its submitter sees it. `submitted_at` / `started_at` are wall-clock seconds."""

    id: str
    workflow_type: str
    task_queue: str
    state: SubmissionState
    attempts: int
    submitted_at: float
    started_at: float | None
    run_id: str | None
    last_error: str | None


def fingerprint(workflow_type: str, task_queue: str, payloads: bytes, options: str) -> str:
    """What makes two submits of one id the same start: type, queue, encoded input and options."""
    digest = hashlib.sha256()
    for part in (workflow_type.encode(), task_queue.encode(), payloads, options.encode()):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


@attrs.frozen
class NewEntry:
    """A submit, ready to store: the input already encoded (`payloads`, sent as they are), the start
    options as JSON, and the request id every start attempt of this entry sends (server-side dedup)."""

    id: str
    workflow_type: str
    task_queue: str
    payloads: bytes
    options: str
    request_id: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.workflow_type, self.task_queue, self.payloads, self.options)


@attrs.frozen
class PendingEntry(NewEntry):
    """A pending entry as the drain takes it: everything a start attempt sends, and the attempts so far."""

    attempts: int
