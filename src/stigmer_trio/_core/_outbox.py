# The durable start queue's records: what a submit stored and what became of it. Pure: no trio, no I/O
# (the store is _boundary/_outbox_store, the drain a child of the tree).
from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import attrs

__all__ = [
    "NO_OPTIONS",
    "NewEntry",
    "PendingEntry",
    "Submission",
    "SubmissionState",
    "encode_json_input",
    "fingerprint",
]

NO_OPTIONS = "{}"  # a submit without start options (the stored JSON is canonical: sorted, compact)


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


# --- the CLI's encoder ----------------------------------------------------------------------------------
# `submit --input JSON` must not import temporalio (~150 ms for its protobuf modules alone): JSON values
# are encoded here exactly as temporalio's default data converter encodes them (None as binary/null,
# everything else as json/plain, compact with sorted keys) and serialized as the Payloads message by
# hand. tests/unit/test_outbox_encoding.py proves the bytes equal the SDK's for every JSON kind.
def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, data: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _payload(value: Any) -> bytes:
    if value is None:
        encoding, data = b"binary/null", b""
    else:
        encoding = b"json/plain"
        data = json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
    metadata = _field(1, _field(1, b"encoding") + _field(2, encoding))  # map<string, bytes> metadata = 1
    return metadata + (_field(2, data) if data else b"")  # bytes data = 2


def encode_json_input(values: Sequence[Any]) -> bytes:
    """JSON values (as json.loads gives them) as a serialized temporal.api.common.v1.Payloads."""
    return b"".join(_field(1, _payload(value)) for value in values)  # repeated Payload payloads = 1
