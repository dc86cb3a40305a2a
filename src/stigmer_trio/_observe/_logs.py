# Event records as log lines: every event record becomes one log record (text, or JSON lines through
# JsonFormatter), and a crash loop is aggregated instead of flooding. Rule: the one place that words an
# event; dispatches on the record's type (a table below), never on its class name.
from __future__ import annotations

import datetime
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import attrs

from .._core._events import (
    ChildAbandoned,
    ChildExited,
    ChildRestartScheduled,
    ChildStarted,
    ConnectionState,
    ConnectionStateChanged,
    Event,
    FailFastRejected,
    HealthChecked,
    OutboxCounted,
    RestartLimitExceeded,
    ServerExited,
    ServerListening,
    ServerReady,
    SubmissionDelayed,
    SubmissionRejected,
    SubmissionsQueued,
    SubmissionStarted,
    WorkerStateChanged,
)

__all__ = ["EventLog", "JsonFormatter", "describe", "event_fields"]

EVENT_LOGGER = "stigmer_trio.events"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO 8601, UTC), level, event, then the event record's fields.

    A log record that is not an event (say "received SIGTERM: stopping") has event "log" and a message.
    """

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "event": getattr(record, "stigmer_event", "log"),
        }
        fields = getattr(record, "stigmer_fields", None)
        if isinstance(fields, dict):
            document.update({k: v for k, v in fields.items() if k not in ("ts", "level", "event")})
        else:
            document["logger"] = record.name
        document["message"] = record.getMessage()
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return repr(value)


def event_fields(event: Event) -> dict[str, Any]:
    """The record's fields as JSON-able values (exceptions become 'Type: message')."""
    kind: Any = type(event)
    if attrs.has(kind):
        return {f.name: _jsonable(getattr(event, f.name)) for f in attrs.fields(kind)}
    names = ("supervisor", "child", "restarts", "window")  # RestartLimitExceeded: a plain class
    fields = {name: _jsonable(getattr(event, name, None)) for name in names}
    fields["error"] = _jsonable(getattr(event, "error", None))
    return fields


def _server_ready(e: ServerReady) -> tuple[int, str]:
    how = "adopted" if e.adopted else "started"
    return logging.INFO, f"dev server {how} at {e.address} (pid {e.pid}), ready after {e.ready_after:.3f} s"


def _server_listening(e: ServerListening) -> tuple[int, str]:
    return logging.DEBUG, f"dev server pid {e.pid} listens at {e.address}, booting"


def _server_exited(e: ServerExited) -> tuple[int, str]:
    level = logging.INFO if e.reason.startswith("stopped") else logging.WARNING
    return level, f"dev server pid {e.pid} at {e.address}: {e.reason}"


def _child_exited(e: ChildExited) -> tuple[int, str]:
    if e.error is not None and not e.stopped:
        return logging.WARNING, f"child {e.name} failed after {e.ran_for:.3f} s: {_jsonable(e.error)}"
    how = "stopped" if e.stopped else "returned"
    return logging.DEBUG, f"child {e.name} {how} after {e.ran_for:.3f} s"


def _child_started(e: ChildStarted) -> tuple[int, str]:
    return logging.DEBUG, f"child {e.name} started (restarts {e.restarts})"


def _restart_scheduled(e: ChildRestartScheduled) -> tuple[int, str]:
    return logging.INFO, f"restarting {e.name} in {e.delay:.3f} s (attempt {e.attempt}, after {e.cause})"


def _abandoned(e: ChildAbandoned) -> tuple[int, str]:
    return logging.ERROR, f"child {e.name} ignored cancellation for {e.shutdown_timeout:g} s: abandoned"


def _restart_limit(e: RestartLimitExceeded) -> tuple[int, str]:
    return logging.ERROR, str(e)


def _connection(e: ConnectionStateChanged) -> tuple[int, str]:
    if e.new is ConnectionState.CONNECTED:
        return logging.INFO, f"connected to Temporal (epoch {e.epoch})"
    if e.new is ConnectionState.DISCONNECTED:
        return logging.WARNING, f"Temporal unavailable: {e.reason}"
    if e.new is ConnectionState.CLOSED:
        return logging.INFO, "connection closed"
    return logging.DEBUG, f"connecting to Temporal ({e.reason})"


def _worker(e: WorkerStateChanged) -> tuple[int, str]:
    if e.running:
        return logging.INFO, f"worker {e.task_queue} polling (epoch {e.epoch})"
    level = logging.WARNING if e.reason.startswith("failed") else logging.INFO
    return level, f"worker {e.task_queue} stopped (epoch {e.epoch}): {e.reason}"


def _health(e: HealthChecked) -> tuple[int, str]:
    if e.ok:
        return logging.DEBUG, f"health check of {e.address} ok in {e.seconds * 1000:.1f} ms"
    return logging.WARNING, f"health check of {e.address} failed after {e.seconds * 1000:.1f} ms: {e.error}"


def _fail_fast(e: FailFastRejected) -> tuple[int, str]:
    return logging.DEBUG, f"{e.operation} refused at once: Temporal is {e.state}"


def _queued(e: SubmissionsQueued) -> tuple[int, str]:
    return logging.DEBUG, f"outbox: {e.created} start(s) queued, {e.deduplicated} already there"


def _submission_started(e: SubmissionStarted) -> tuple[int, str]:
    if e.deduplicated:
        return logging.INFO, f"outbox: {e.id} was already started (run {e.run_id}): not started again"
    return logging.DEBUG, f"outbox: started {e.id} (run {e.run_id}) after {e.attempts} attempt(s)"


def _submission_delayed(e: SubmissionDelayed) -> tuple[int, str]:
    return (
        logging.WARNING,
        f"outbox: start of {e.id} failed (attempt {e.attempts}), retry in {e.delay:.1f} s: {e.error}",
    )


def _submission_rejected(e: SubmissionRejected) -> tuple[int, str]:
    return logging.ERROR, f"outbox: start of {e.id} refused for good, marked failed: {e.error}"


def _outbox_counted(e: OutboxCounted) -> tuple[int, str]:
    return logging.DEBUG, f"outbox: {e.pending} pending, {e.failed} failed"


# Each event type, and how it is worded: its level and one line.
_DESCRIBE: dict[type[Any], Callable[[Any], tuple[int, str]]] = {
    ServerListening: _server_listening,
    ServerReady: _server_ready,
    ServerExited: _server_exited,
    ChildExited: _child_exited,
    ChildStarted: _child_started,
    ChildRestartScheduled: _restart_scheduled,
    ChildAbandoned: _abandoned,
    RestartLimitExceeded: _restart_limit,
    ConnectionStateChanged: _connection,
    WorkerStateChanged: _worker,
    HealthChecked: _health,
    FailFastRejected: _fail_fast,
    SubmissionsQueued: _queued,
    SubmissionStarted: _submission_started,
    SubmissionDelayed: _submission_delayed,
    SubmissionRejected: _submission_rejected,
    OutboxCounted: _outbox_counted,
}


def describe(event: Event) -> tuple[int, str]:
    """The level and the one-line human message of an event record."""
    wording = _DESCRIBE.get(type(event))
    if wording is None:
        return logging.INFO, f"{type(event).__name__} {event_fields(event)}"
    return wording(event)


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


class _Burst:
    __slots__ = ("began", "count", "fields", "level", "message")

    def __init__(self, began: float, level: int, message: str, fields: dict[str, Any]) -> None:
        self.began = began
        self.count = 0  # repeats suppressed since `began`
        self.level = level
        self.message = message
        self.fields = fields


class EventLog:
    """The logging hook: every event is logged once, except that identical repeated failures within
    `window` seconds are counted and summarised ("... (repeated 40 times in 60 s)").

    "Identical" means the same event type and the same message once numbers are masked (a crash loop
    differs only in pids, attempts and delays). Only failures and restart notices are aggregated
    (WARNING and above, and ChildRestartScheduled); a recovery is always logged. Call `flush()` now and
    then (the runtime does, every second) so a summary appears even when the loop has stopped.
    """

    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger or logging.getLogger(EVENT_LOGGER)
        self.window = window
        self.clock = clock
        self._bursts: dict[tuple[str, str], _Burst] = {}

    def __call__(self, event: Event) -> None:
        level, message = describe(event)
        if not self.logger.isEnabledFor(level):
            return
        kind = type(event).__name__
        fields = event_fields(event)
        if level < logging.WARNING and not isinstance(event, ChildRestartScheduled):
            self._log(level, kind, message, fields)
            return
        now = self.clock()
        key = (kind, _NUMBER.sub("#", message))
        burst = self._bursts.get(key)
        if burst is not None and now - burst.began < self.window:
            burst.count += 1
            burst.level, burst.message, burst.fields = level, message, fields
            return
        if burst is not None:
            self._summarise(kind, burst, now)
        self._bursts[key] = _Burst(now, level, message, fields)
        self._log(level, kind, message, fields)

    def flush(self, *, force: bool = False) -> None:
        """Write the summary of every burst whose window has ended (all of them with `force`)."""
        now = self.clock()
        for key, burst in list(self._bursts.items()):
            if force or now - burst.began >= self.window:
                del self._bursts[key]
                self._summarise(key[0], burst, now)

    def _summarise(self, kind: str, burst: _Burst, now: float) -> None:
        if burst.count == 0:
            return
        span = min(now - burst.began, self.window)
        fields = {**burst.fields, "repeated": burst.count, "repeated_within_s": round(span, 3)}
        message = f"{burst.message} (repeated {burst.count} times in {span:.0f} s)"
        self._log(burst.level, kind, message, fields)

    def _log(self, level: int, kind: str, message: str, fields: dict[str, Any]) -> None:
        self.logger.log(level, "%s", message, extra={"stigmer_event": kind, "stigmer_fields": fields})
