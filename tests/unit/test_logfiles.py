"""Log files: the size-bounded, copy + truncate rotated logs and reading them back (`logs -n`).

Local files in tmp_path only: no processes, no sockets, no clock. (`logs --follow` across a rotation
polls on the real clock: tests/integration/test_daemon_observability.py.)
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

from stigmer_trio._observe._logfiles import RotatingLog, RotatingStreamHandler, show_log


class TestDaemonLogRotation:
    def test_the_log_stays_bounded_and_rotates(self, tmp_path: Path) -> None:
        """A writer on an O_APPEND fd (as the detached daemon's stderr): past max_bytes the file is
        copied to .1 and truncated; the writer keeps writing to the same file."""
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


class TestShowLog:
    def test_last_lines(self, tmp_path: Path) -> None:
        """lines=N: only the last N lines; a missing file without follow is False."""
        path = tmp_path / "daemon.log"
        path.write_bytes(b"a\nb\nc\n")
        out = io.BytesIO()
        assert show_log(path, lines=2, out=out)
        assert b"b\nc\n" == out.getvalue()
        assert not show_log(tmp_path / "missing.log", out=io.BytesIO())
