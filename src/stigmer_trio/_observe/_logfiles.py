# Log files: size-bounded logs that a process appends to (the dev server's output, the detached
# daemon's stderr) and `logs [--follow]` reading them back. Two rotations: a log another process writes
# through an inherited fd (the dev server's) is copied and truncated through one O_NOFOLLOW fd; the
# daemon's own log is renamed and reopened (dup2 onto its stderr), so none of its lines is lost.
# Rule: stdlib only (the CLI's `logs` is a hot path): no trio, no attrs, no event records here. Must
# never: follow a symlink planted at a log or a backup path (refused, one line logged, nothing touched).
from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO

__all__ = ["RotatingLog", "RotatingStreamHandler", "show_log"]

LOGGER = "stigmer_trio"  # where a refused rotation is reported (the daemon's log)
_FILE_MODE = 0o600
_CHUNK = 1 << 20  # bytes per read while copying a log to its backup
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


class RotatingLog:
    """A size-bounded log file that a process appends to (O_APPEND), with `backups` older copies beside
    it (``NAME.1`` the newest). `rotate_if_needed` copies + truncates, so a writer's fd stays valid (the
    dev server's stdout); `rotate_by_rename` renames + reopens, for a log this process writes itself
    (the detached daemon's stderr). Both refuse a symlink or a non-regular file at the path."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._refused = False  # a refusal is logged once, until a rotation succeeds again

    def open_for_writer(self) -> int:
        """An O_APPEND fd for a writer (the caller closes its copy after handing it over). Rotates first
        (copying up to max_bytes: call it off the Trio thread). A symlink or a non-regular file at the
        path is a StateFileError (one line)."""
        self.rotate_if_needed()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW
        try:
            fd = os.open(self.path, flags, _FILE_MODE)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR):
                reason = "it is a symlink (ELOOP)" if exc.errno == errno.ELOOP else "it is a directory"
                raise self._error(reason) from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise self._error("it is not a regular file")
        return fd

    def size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0

    def rotate_if_needed(self) -> bool:
        """Past max_bytes: copy the log to ``NAME.1`` (created O_EXCL|O_NOFOLLOW, 0600; the older backups
        shift up by rename) and truncate it, all through one O_NOFOLLOW fd. Lines the writer appends
        while the copy runs are copied too; only those appended between the copy's last read and the
        truncate (microseconds) are lost. A symlink or a non-regular file at the path: refused, nothing
        touched, one line logged, False."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | _NOFOLLOW)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                self._refuse("it is a symlink (ELOOP)" if exc.errno == errno.ELOOP else "not a regular file")
                return False
            raise
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                self._refuse("it is not a regular file")
                return False
            if info.st_size <= self.max_bytes:
                return False
            self._shift_backups()
            if self.backups > 0:
                self._copy_to_backup(fd)
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)
        self._refused = False
        return True

    def rotate_by_rename(self, fd: int) -> bool:
        """For a log this process writes through `fd` (its stderr, and its stdout when that is the same
        file): past max_bytes, the backups shift, the file is renamed to ``NAME.1`` and a new one
        (O_EXCL|O_NOFOLLOW, 0600) is dup2'ed onto those fds. Nothing is copied and no line is lost: a
        line written meanwhile lands in ``NAME.1``. Call it under the writer's lock (the logging
        handler's). A symlink at the path: refused, one line logged, False."""
        current = os.fstat(fd)
        if current.st_size <= self.max_bytes:
            return False
        try:
            there = os.lstat(self.path)
        except FileNotFoundError:
            there = None
        if there is not None and not stat.S_ISREG(there.st_mode):
            self._refuse("it is a symlink" if stat.S_ISLNK(there.st_mode) else "it is not a regular file")
            return False
        exclusive = 0
        if there is not None and (there.st_dev, there.st_ino) == (current.st_dev, current.st_ino):
            self._shift_backups()
            if self.backups > 0:
                os.replace(self.path, self._backup(1))
            else:
                os.unlink(self.path)
            exclusive = os.O_EXCL
        # else: the file was removed or replaced meanwhile; write to what is there now
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | exclusive | _NOFOLLOW
        new = os.open(self.path, flags, _FILE_MODE)
        try:
            if not stat.S_ISREG(os.fstat(new).st_mode):
                self._refuse("it is not a regular file")
                return False
            for target in dict.fromkeys((fd, 1, 2)):
                with contextlib.suppress(OSError):
                    same = os.fstat(target)
                    if (same.st_dev, same.st_ino) == (current.st_dev, current.st_ino):
                        os.dup2(new, target, inheritable=target in (1, 2))
        finally:
            os.close(new)
        self._refused = False
        return True

    def tail(self, since: int, limit: int = 4096) -> str:
        """The last lines written after byte offset `since` (for error messages)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW)
        except OSError:
            return ""
        try:
            end = os.fstat(fd).st_size
            start = max(since if since <= end else 0, end - limit)
            return os.pread(fd, end - start, start).decode("utf-8", "replace")
        except OSError:
            return ""
        finally:
            os.close(fd)

    def _backup(self, index: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{index}")

    def _shift_backups(self) -> None:
        """NAME.i -> NAME.i+1 (rename: a planted symlink is moved, never followed); NAME.1 is free."""
        for index in range(self.backups - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(self._backup(index), self._backup(index + 1))

    def _copy_to_backup(self, fd: int) -> None:
        backup = self._backup(1)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(backup)  # a symlink there is removed, never written through
        out = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, _FILE_MODE)
        try:
            offset = 0
            while chunk := os.pread(fd, _CHUNK, offset):  # to the end, including what came meanwhile
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view) :]
                offset += len(chunk)
        finally:
            os.close(out)

    def _refuse(self, reason: str) -> None:
        if self._refused:
            return
        self._refused = True  # first: the line below may come back here through the daemon's handler
        logging.getLogger(LOGGER).error(
            "refusing to rotate log file %r: %s; remove it, a log file must be a regular file",
            str(self.path),
            reason,
        )

    def _error(self, reason: str) -> Exception:
        from .._core._errors import StateFileError

        return StateFileError(
            f"refusing to open log file {str(self.path)!r}: {reason}; remove it, a log file must be a "
            "regular file"
        )


class RotatingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to a stream (the detached daemon's stderr, which is logs/daemon.log opened O_APPEND) and
    keeps that file under its size bound: after a write crosses it, rename + reopen
    (RotatingLog.rotate_by_rename) under this handler's lock, in the writing thread (a few syscalls;
    nothing is copied)."""

    def __init__(self, log: RotatingLog | None, stream: Any = None) -> None:
        super().__init__(stream or sys.stderr)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)  # Handler.handle holds self.lock: no other record is written meanwhile
        if self.log is None:
            return
        try:
            fd = self.stream.fileno()
            if os.fstat(fd).st_size > self.log.max_bytes:
                self.log.rotate_by_rename(fd)
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
