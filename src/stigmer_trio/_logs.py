# Logs: every event record becomes one log record (text or JSON lines), a crash loop is aggregated
# instead of flooding, log files are size-bounded and rotated, and `logs [--follow]` reads them back.
# Rule: stdlib only at import (the CLI's `logs` is a hot path); the event classes are only matched by
# name and read through attrs lazily, so this module imports neither trio nor temporalio nor attrs.
from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO

    from ._events import Event

__all__ = [
    "EventLog",
    "JsonFormatter",
    "RotatingLog",
    "RotatingStreamHandler",
    "describe",
    "event_fields",
    "show_log",
]

EVENT_LOGGER = "stigmer_trio.events"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class RotatingLog:
    """A size-bounded log file that a process appends to (O_APPEND): rotated by copy + truncate, so the
    writer's file descriptor stays valid (a child's stdout, or the detached daemon's own stderr)."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups

    def open_for_writer(self) -> int:
        """An O_APPEND fd for a writer (the caller closes its copy after handing it over)."""
        self.rotate_if_needed()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(self.path, flags, 0o600)

    def size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0

    def rotate_if_needed(self) -> bool:
        if self.size() <= self.max_bytes:
            return False
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        if self.backups > 0:
            shutil.copyfile(self.path, self.path.with_name(f"{self.path.name}.1"))
        os.truncate(self.path, 0)
        return True

    def tail(self, since: int, limit: int = 4096) -> str:
        """The last lines written after byte offset `since` (for error messages)."""
        try:
            with open(self.path, "rb") as f:
                end = f.seek(0, os.SEEK_END)
                f.seek(max(since if since <= end else 0, end - limit))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


class RotatingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to a stream (the detached daemon's stderr, which is logs/daemon.log opened O_APPEND) and
    keeps that file under its size bound by copy + truncate after a write crosses it."""

    def __init__(self, log: RotatingLog | None, stream: Any = None) -> None:
        super().__init__(stream or sys.stderr)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if self.log is None:
            return
        try:
            if os.fstat(self.stream.fileno()).st_size > self.log.max_bytes:
                self.log.rotate_if_needed()
        except (OSError, ValueError):
            pass


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
    import attrs

    kind: Any = type(event)
    if attrs.has(kind):
        return {f.name: _jsonable(getattr(event, f.name)) for f in attrs.fields(kind)}
    names = ("supervisor", "child", "restarts", "window")  # RestartLimitExceeded: a plain class
    fields = {name: _jsonable(getattr(event, name, None)) for name in names}
    fields["error"] = _jsonable(getattr(event, "error", None))
    return fields


def describe(event: Event) -> tuple[int, str]:
    """The level and the one-line human message of an event record."""
    f = event_fields(event)
    kind = type(event).__name__
    if kind == "ServerReady":
        how = "adopted" if f["adopted"] else "started"
        return logging.INFO, (
            f"dev server {how} at {f['address']} (pid {f['pid']}), ready after {f['ready_after']:.3f} s"
        )
    if kind == "ServerExited":
        level = logging.INFO if str(f["reason"]).startswith("stopped") else logging.WARNING
        return level, f"dev server pid {f['pid']} at {f['address']}: {f['reason']}"
    if kind == "ChildExited":
        if f["error"] is not None and not f["stopped"]:
            return logging.WARNING, f"child {f['name']} failed after {f['ran_for']:.3f} s: {f['error']}"
        how = "stopped" if f["stopped"] else "returned"
        return logging.DEBUG, f"child {f['name']} {how} after {f['ran_for']:.3f} s"
    if kind == "ChildStarted":
        return logging.DEBUG, f"child {f['name']} started (restarts {f['restarts']})"
    if kind == "ChildRestartScheduled":
        return logging.INFO, (
            f"restarting {f['name']} in {f['delay']:.3f} s (attempt {f['attempt']}, after {f['cause']})"
        )
    if kind == "ChildAbandoned":
        return logging.ERROR, (
            f"child {f['name']} ignored cancellation for {f['shutdown_timeout']:g} s: abandoned"
        )
    if kind == "RestartLimitExceeded":
        return logging.ERROR, str(event)
    if kind == "ConnectionStateChanged":
        new = f["new"]
        if new == "connected":
            return logging.INFO, f"connected to Temporal (epoch {f['epoch']})"
        if new == "disconnected":
            return logging.WARNING, f"Temporal unavailable: {f['reason']}"
        if new == "closed":
            return logging.INFO, "connection closed"
        return logging.DEBUG, f"connecting to Temporal ({f['reason']})"
    if kind == "WorkerStateChanged":
        if f["running"]:
            return logging.INFO, f"worker {f['task_queue']} polling (epoch {f['epoch']})"
        level = logging.WARNING if str(f["reason"]).startswith("failed") else logging.INFO
        return level, f"worker {f['task_queue']} stopped (epoch {f['epoch']}): {f['reason']}"
    if kind == "HealthChecked":
        if f["ok"]:
            return logging.DEBUG, f"health check of {f['address']} ok in {f['seconds'] * 1000:.1f} ms"
        return logging.WARNING, (
            f"health check of {f['address']} failed after {f['seconds'] * 1000:.1f} ms: {f['error']}"
        )
    if kind == "FailFastRejected":
        return logging.DEBUG, f"{f['operation']} refused at once: Temporal is {f['state']}"
    return logging.INFO, f"{kind} {f}"


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
        if level < logging.WARNING and kind != "ChildRestartScheduled":
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


def show_log(
    path: Path,
    *,
    lines: int | None = None,
    follow: bool = False,
    out: BinaryIO | None = None,
    poll: float = 0.1,
    should_stop: Callable[[], bool] = lambda: False,
) -> bool:
    """Copy the log at `path` to `out` (its last `lines` lines if given); with `follow`, keep copying
    what is appended, from the start again when the file is rotated (truncated). False if it does not
    exist (and `follow` is off)."""
    out = out or sys.stdout.buffer
    position = 0
    try:
        with open(path, "rb") as f:
            data = f.read()
            position = len(data)
    except FileNotFoundError:
        if not follow:
            return False
        data = b""
    if lines is not None:
        data = b"".join(data.splitlines(keepends=True)[-lines:]) if lines > 0 else b""
    out.write(data)
    out.flush()
    while follow and not should_stop():
        time.sleep(poll)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            position = 0
            continue
        if size < position:  # rotated: copy + truncate
            position = 0
        if size == position:
            continue
        with open(path, "rb") as f:
            f.seek(position)
            chunk = f.read(size - position)
        position += len(chunk)
        out.write(chunk)
        out.flush()
    return True
