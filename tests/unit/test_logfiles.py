"""Log files: the size-bounded logs (copy + truncate for the dev server's, rename + reopen for the
daemon's own), their refusal of planted symlinks, and reading them back (`logs -n`).

Local files in tmp_path only: no processes, no sockets. (`logs --follow` across a rotation polls on the
real clock: tests/integration/test_daemon_observability.py; a symlinked log under a running daemon:
tests/integration/test_daemon_hygiene.py.)
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stigmer_trio import StateFileError
from stigmer_trio._observe._logfiles import RotatingLog, RotatingStreamHandler, show_log


def logger_on(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"rotation-test-{id(handler)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    return logger


@pytest.fixture
def umask() -> Iterator[None]:
    """A permissive umask, so that a file's mode is what its creator asked for."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "refusing to rotate" in r.getMessage()]


class TestServerLogRotation:
    """Copy + truncate, for a log another process writes through an inherited fd (the dev server's)."""

    def test_a_symlinked_log_is_refused_and_its_target_untouched(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """devserver.log a symlink to a big file: no stat, copy or truncate through it; one line logged
        (once, however often it is checked); opening it for a writer is a one-line StateFileError."""
        target = tmp_path / "precious.txt"
        target.write_bytes(b"precious\n" * 1000)
        path = tmp_path / "devserver.log"
        path.symlink_to(target)
        log = RotatingLog(path, max_bytes=4096, backups=2)
        with caplog.at_level(logging.ERROR, logger="stigmer_trio"):
            assert not log.rotate_if_needed()
            assert not log.rotate_if_needed()
        assert b"precious\n" * 1000 == target.read_bytes()
        assert not path.with_name("devserver.log.1").exists()
        assert [f"refusing to rotate log file {str(path)!r}: it is a symlink (ELOOP); remove it, a log "
                "file must be a regular file"] == refusals(caplog)  # fmt: skip
        with pytest.raises(StateFileError, match=r"refusing to open log file .*: it is a symlink") as info:
            log.open_for_writer()
        assert "\n" not in str(info.value)
        assert b"precious\n" * 1000 == target.read_bytes()

    @pytest.mark.usefixtures("umask")
    def test_backups_are_new_0600_files_never_followed(self, tmp_path: Path) -> None:
        """NAME.1 is created O_EXCL|O_NOFOLLOW at 0600 (even with umask 0): a symlink planted there is
        replaced, not written through; a stale backup's looser mode does not survive."""
        path = tmp_path / "devserver.log"
        log = RotatingLog(path, max_bytes=4096, backups=3)
        os.close(log.open_for_writer())
        path.write_bytes(b"a" * 5000)
        target = tmp_path / "precious.txt"
        target.write_bytes(b"precious")
        path.with_name("devserver.log.1").symlink_to(target)
        assert log.rotate_if_needed()
        first = path.with_name("devserver.log.1")
        assert not first.is_symlink()
        assert 0o600 == first.stat().st_mode & 0o777
        assert b"a" * 5000 == first.read_bytes()
        assert b"precious" == target.read_bytes()
        assert path.with_name("devserver.log.2").is_symlink()  # shifted by rename, never opened
        assert 0 == path.stat().st_size
        one = RotatingLog(tmp_path / "one.log", max_bytes=4096, backups=1)
        (tmp_path / "one.log.1").write_bytes(b"old")
        os.chmod(tmp_path / "one.log.1", 0o644)
        (tmp_path / "one.log").write_bytes(b"b" * 5000)
        assert one.rotate_if_needed()
        assert 0o600 == (tmp_path / "one.log.1").stat().st_mode & 0o777
        assert b"b" * 5000 == (tmp_path / "one.log.1").read_bytes()


class TestDaemonLogRotation:
    """Rename + reopen, for the log this process writes itself (the detached daemon's stderr)."""

    def test_the_log_stays_bounded_and_rotates(self, tmp_path: Path) -> None:
        """A writer on an O_APPEND fd (as the detached daemon's stderr): past max_bytes the file is
        renamed to .1 and a new one takes its place on the same fd."""
        log = RotatingLog(tmp_path / "daemon.log", max_bytes=4096, backups=2)
        fd = log.open_for_writer()
        with os.fdopen(fd, "w") as stream:
            handler = RotatingStreamHandler(log, stream)
            logger = logging.getLogger(f"rotation-test-{id(handler)}")
            logger.handlers[:] = [handler]
            logger.propagate = False
            for index in range(400):
                logger.warning("line %04d %s", index, "x" * 60)
            handler.flush()
        assert log.size() <= 4096 + 100
        assert (tmp_path / "daemon.log.1").exists()
        assert (tmp_path / "daemon.log.2").exists()
        assert not (tmp_path / "daemon.log.3").exists()
        assert (tmp_path / "daemon.log").read_text().splitlines()[-1].startswith("line 0399")

    @pytest.mark.usefixtures("umask")
    def test_no_line_is_lost(self, tmp_path: Path) -> None:
        """Rotation renames the file the fd writes to (NAME.1 is that very file, nothing is copied) and
        dup2s a new 0600 file onto the fd: every line, logged or written raw to the fd by other code,
        is in one of the files, in order."""
        log = RotatingLog(tmp_path / "daemon.log", max_bytes=4096, backups=50)
        fd = log.open_for_writer()
        first = os.fstat(fd)
        with os.fdopen(fd, "w") as stream:
            handler = RotatingStreamHandler(log, stream)
            logger = logger_on(handler)
            for index in range(300):
                logger.warning("line %04d %s", index, "x" * 60)
                if index % 7 == 0:
                    os.write(stream.fileno(), f"raw {index:04d}\n".encode())
            handler.flush()
        files = sorted(tmp_path.glob("daemon.log.*"), key=lambda p: -int(p.suffix[1:]))
        assert 0o600 == os.stat(tmp_path / "daemon.log").st_mode & 0o777
        text = "".join(p.read_text() for p in [*files, tmp_path / "daemon.log"])
        logged = [line.split()[1] for line in text.splitlines() if line.startswith("line ")]
        raw = [line.split()[1] for line in text.splitlines() if line.startswith("raw ")]
        assert [f"{i:04d}" for i in range(300)] == logged
        assert [f"{i:04d}" for i in range(0, 300, 7)] == raw
        assert any(os.stat(p).st_ino == first.st_ino for p in files)  # renamed, not copied

    def test_a_symlink_at_the_path_is_refused_once(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """daemon.log swapped for a symlink: no rename through it, its target untouched, one line
        logged; logging goes on (to the file the fd still holds)."""
        path = tmp_path / "daemon.log"
        log = RotatingLog(path, max_bytes=4096, backups=2)
        fd = log.open_for_writer()
        target = tmp_path / "precious.txt"
        target.write_bytes(b"precious")
        path.unlink()
        path.symlink_to(target)
        with os.fdopen(fd, "w") as stream, caplog.at_level(logging.ERROR, logger="stigmer_trio"):
            logger = logger_on(RotatingStreamHandler(log, stream))
            for index in range(200):
                logger.warning("line %04d %s", index, "x" * 60)
            assert os.fstat(stream.fileno()).st_size > 4096
        assert b"precious" == target.read_bytes()
        assert path.is_symlink()
        assert not path.with_name("daemon.log.1").exists()
        assert 1 == len(refusals(caplog)), refusals(caplog)
        assert "it is a symlink" in refusals(caplog)[0]

    def test_rotating_a_big_log_costs_no_copy(self, tmp_path: Path) -> None:
        """The write that crosses the bound pays for a few renames, not for copying the file: measured
        against copying the same 32 MiB (the rotation runs in the writing thread, the Trio thread when
        the daemon logs from there)."""
        size = 32 * 1024 * 1024
        path = tmp_path / "daemon.log"
        log = RotatingLog(path, max_bytes=size, backups=2)
        fd = log.open_for_writer()
        os.ftruncate(fd, size)  # as if the daemon had written that much
        with os.fdopen(fd, "w") as stream:
            logger = logger_on(RotatingStreamHandler(log, stream))
            began = time.perf_counter()
            logger.warning("crosses the bound")
            rotating = time.perf_counter() - began
        began = time.perf_counter()
        shutil.copyfile(path.with_name("daemon.log.1"), tmp_path / "copy")
        copying = time.perf_counter() - began
        assert 0 == path.stat().st_size
        assert rotating < copying / 4, (rotating, copying)


class TestShowLog:
    def test_last_lines(self, tmp_path: Path) -> None:
        """lines=N: only the last N lines; a missing file without follow is False."""
        path = tmp_path / "daemon.log"
        path.write_bytes(b"a\nb\nc\n")
        out = io.BytesIO()
        assert show_log(path, lines=2, out=out)
        assert b"b\nc\n" == out.getvalue()
        assert not show_log(tmp_path / "missing.log", out=io.BytesIO())
