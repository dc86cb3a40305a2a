# Log files: size-bounded logs that a process appends to (the dev server's output, the detached
# daemon's stderr), rotated by copy + truncate, and `logs [--follow]` reading them back. Rule: stdlib
# only (the CLI's `logs` is a hot path): no trio, no attrs, no event records here.
from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO

__all__ = ["RotatingLog", "RotatingStreamHandler", "show_log"]


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
