"""Lock files and pid files on a real filesystem, with real competing processes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stigmer_trio._boundary._statefiles import (
    FileLock,
    PidRecord,
    ensure_state_dir,
    lock_is_held,
    read_pid_file,
    remove_pid_file,
    write_pid_file,
)
from stigmer_trio._core._errors import ConfigError, StateFileError

pytestmark = pytest.mark.integration

# Waits for "go" on stdin, tries the lock once, reports, and holds it until stdin closes.
_RACER = """
import sys
from stigmer_trio._boundary._statefiles import FileLock
lock = FileLock(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
print("WON" if lock.acquire() else "HELD", flush=True)
sys.stdin.read()
"""

# Takes the lock at once and holds it until stdin closes (or it is killed).
_HOLDER = """
import sys
from stigmer_trio._boundary._statefiles import FileLock
lock = FileLock(sys.argv[1])
print("WON" if lock.acquire() else "HELD", flush=True)
sys.stdin.read()
"""


def _python(script: str, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _readline(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


def _send(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A separate process holding the lock at tmp_path/holder.lock."""
    path = tmp_path / "holder.lock"
    with _python(_HOLDER, str(path)) as proc:
        try:
            assert "WON" == _readline(proc)
            yield path, proc
        finally:
            proc.kill()


@pytest.fixture
def record() -> PidRecord:
    return PidRecord(
        pid=4242,
        create_time=1_700_000_000.25,
        cmdline=("temporal", "server", "start-dev"),
        started_at=1_700_000_001.5,
        extra={"address": "127.0.0.1:7233", "ports": [7233, 8233], "db": "/state/temporal.db"},
    )


class TestFileLock:
    def test_exactly_one_of_ten_racing_processes_wins(self, tmp_path: Path) -> None:
        """Ten processes trying the same lock at the same moment: exactly one wins."""
        path = tmp_path / "race.lock"
        with contextlib.ExitStack() as stack:
            racers = [stack.enter_context(_python(_RACER, str(path))) for _ in range(10)]
            for racer in racers:
                assert "ready" == _readline(racer)
            for racer in racers:
                _send(racer, "go")
            answers = [_readline(racer) for racer in racers]
            for racer in racers:
                assert racer.stdin is not None
                racer.stdin.close()
        assert ["HELD"] * 9 + ["WON"] == sorted(answers)

    def test_lock_held_by_a_live_process_is_refused(self, holder: tuple[Path, subprocess.Popen[str]]) -> None:
        """While another process holds the lock, acquire() is False and lock_is_held() is True."""
        path, _proc = holder
        lock = FileLock(path)
        assert (False, False, True) == (lock.acquire(), lock.held, lock_is_held(path))

    def test_lock_is_free_once_its_holder_is_sigkilled(
        self, holder: tuple[Path, subprocess.Popen[str]]
    ) -> None:
        """The OS frees the lock when its holder dies, without any cleanup by the holder."""
        path, proc = holder
        proc.kill()
        proc.wait()
        assert not lock_is_held(path)
        with FileLock(path) as lock:
            assert lock.held

    def test_second_lock_object_in_the_same_process_is_refused(self, tmp_path: Path) -> None:
        """Two FileLock objects on one path in one process: the second does not get the lock."""
        path = tmp_path / "same.lock"
        first, second = FileLock(path), FileLock(path)
        try:
            assert (True, False) == (first.acquire(), second.acquire())
        finally:
            first.release()

    def test_released_lock_can_be_taken_again(self, tmp_path: Path) -> None:
        """After release() another FileLock gets the lock, and the lock file is not deleted."""
        path = tmp_path / "again.lock"
        first, second = FileLock(path), FileLock(path)
        assert first.acquire()
        first.release()
        try:
            assert (True, True) == (second.acquire(), path.exists())
        finally:
            second.release()

    def test_acquire_is_idempotent_and_release_is_too(self, tmp_path: Path) -> None:
        """acquire() on a held lock is True and keeps the same fd; release() twice is harmless."""
        lock = FileLock(tmp_path / "idem.lock")
        assert lock.acquire()
        fd = lock.fileno()
        assert (True, fd) == (lock.acquire(), lock.fileno())
        lock.release()
        lock.release()
        assert not lock.held

    def test_fileno_without_the_lock_is_an_error(self, tmp_path: Path) -> None:
        """fileno() on a lock we do not hold raises ValueError."""
        with pytest.raises(ValueError, match="not held"):
            FileLock(tmp_path / "none.lock").fileno()

    def test_context_manager_refuses_a_held_lock(self, holder: tuple[Path, subprocess.Popen[str]]) -> None:
        """Entering a FileLock held elsewhere raises StateFileError instead of running unlocked."""
        path, _proc = holder
        with pytest.raises(StateFileError, match="held by another process"), FileLock(path):
            pass

    def test_child_inheriting_the_fd_keeps_the_lock_after_release(self, tmp_path: Path) -> None:
        """A child given fileno() still holds the lock after the parent releases its copy."""
        path = tmp_path / "handoff.lock"
        lock = FileLock(path)
        assert lock.acquire()
        with subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"],
            stdin=subprocess.PIPE,
            pass_fds=(lock.fileno(),),
        ) as child:
            lock.release()
            held_by_child = lock_is_held(path)
            assert child.stdin is not None
            child.stdin.close()
        assert (True, False) == (held_by_child, lock_is_held(path))

    def test_lock_file_is_created_0600(self, tmp_path: Path) -> None:
        """A new lock file has mode 0600."""
        path = tmp_path / "mode.lock"
        with FileLock(path):
            assert 0o600 == _mode(path)

    def test_symlink_at_the_lock_path_is_refused(self, tmp_path: Path) -> None:
        """A planted symlink is refused with StateFileError (ELOOP) and its target is not created."""
        target, path = tmp_path / "target", tmp_path / "planted.lock"
        path.symlink_to(target)
        with pytest.raises(StateFileError, match=r"symlink \(ELOOP\)"):
            FileLock(path).acquire()
        assert not target.exists()

    def test_symlink_to_an_existing_file_is_refused_and_the_file_untouched(self, tmp_path: Path) -> None:
        """A symlink to an existing file is refused, and that file keeps its content and mode."""
        target, path = tmp_path / "precious", tmp_path / "planted.lock"
        target.write_text("precious")
        target.chmod(0o644)
        path.symlink_to(target)
        with pytest.raises(StateFileError, match="symlink"):
            FileLock(path).acquire()
        assert ("precious", 0o644) == (target.read_text(), _mode(target))

    def test_fifo_at_the_lock_path_is_refused(self, tmp_path: Path) -> None:
        """A FIFO at the lock path is not a regular file: StateFileError."""
        path = tmp_path / "fifo.lock"
        os.mkfifo(path)
        with pytest.raises(StateFileError, match="not a regular file"):
            FileLock(path).acquire()

    def test_directory_at_the_lock_path_is_refused(self, tmp_path: Path) -> None:
        """A directory at the lock path is refused with StateFileError."""
        path = tmp_path / "dir.lock"
        path.mkdir()
        with pytest.raises(StateFileError, match=re.escape(str(path))):
            FileLock(path).acquire()


class TestLockIsHeld:
    def test_missing_file_is_not_held_and_not_created(self, tmp_path: Path) -> None:
        """Probing a lock path in a missing directory is False and creates nothing."""
        path = tmp_path / "nodir" / "x.lock"
        assert (False, False) == (lock_is_held(path), path.parent.exists())

    def test_unheld_existing_file_is_not_held(self, tmp_path: Path) -> None:
        """An existing lock file nobody holds probes as not held."""
        path = tmp_path / "free.lock"
        path.touch()
        assert not lock_is_held(path)

    def test_probe_sees_a_lock_held_in_this_process(self, tmp_path: Path) -> None:
        """The probe uses its own fd, so it sees our own FileLock as held."""
        path = tmp_path / "own.lock"
        with FileLock(path):
            assert lock_is_held(path)

    def test_symlink_is_refused(self, tmp_path: Path) -> None:
        """Probing through a symlink raises StateFileError."""
        path = tmp_path / "planted.lock"
        path.symlink_to(tmp_path / "target")
        with pytest.raises(StateFileError, match="symlink"):
            lock_is_held(path)


class TestEnsureStateDir:
    def test_creates_missing_parents_with_mode_0700(self, tmp_path: Path) -> None:
        """Every directory it creates is 0700, even under a permissive umask."""
        path = tmp_path / "a" / "b" / "c"
        old_umask = os.umask(0)
        try:
            assert path == ensure_state_dir(path)
        finally:
            os.umask(old_umask)
        assert [0o700] * 3 == [_mode(p) for p in (tmp_path / "a", tmp_path / "a" / "b", path)]

    def test_existing_directory_is_accepted_as_is(self, tmp_path: Path) -> None:
        """An existing directory is returned and its mode left alone."""
        tmp_path.chmod(0o755)
        assert (tmp_path, 0o755) == (ensure_state_dir(tmp_path), _mode(tmp_path))

    def test_regular_file_is_a_config_error_naming_the_path(self, tmp_path: Path) -> None:
        """A regular file where the state dir should be raises ConfigError naming the path."""
        path = tmp_path / "file"
        path.write_text("")
        with pytest.raises(ConfigError, match=rf"state_dir {re.escape(repr(str(path)))} is not a directory"):
            ensure_state_dir(path)

    def test_path_below_a_regular_file_is_a_config_error(self, tmp_path: Path) -> None:
        """A state dir below a regular file cannot be created: ConfigError naming the path."""
        path = tmp_path / "file" / "state"
        (tmp_path / "file").write_text("")
        with pytest.raises(ConfigError, match=re.escape(str(path))):
            ensure_state_dir(path)

    def test_unwritable_directory_is_a_config_error(self, tmp_path: Path) -> None:
        """An existing directory nobody can create files in (sysfs, even for root) raises ConfigError."""
        with pytest.raises(ConfigError, match="state_dir '/sys/kernel' is not writable"):
            ensure_state_dir("/sys/kernel")

    def test_unwritable_mode_for_unprivileged_users(self, tmp_path: Path) -> None:
        """A 0500 directory is refused for a normal user; root really can write there, so it passes."""
        path = tmp_path / "ro"
        path.mkdir(mode=0o500)
        if os.geteuid() == 0:
            assert path == ensure_state_dir(path)
            assert [] == list(path.iterdir())  # the probe file was removed
        else:
            with pytest.raises(ConfigError, match="is not writable"):
                ensure_state_dir(path)


_VALID: dict[str, Any] = {"pid": 77, "create_time": 12.5, "cmdline": ["a", "b"], "started_at": 13.0}


def _json(**changes: Any) -> bytes:
    return json.dumps({**_VALID, **changes}).encode()


def _without(key: str) -> bytes:
    return json.dumps({k: v for k, v in _VALID.items() if k != key}).encode()


_CORRUPT: dict[str, bytes] = {
    "empty": b"",
    "whitespace": b"  \n",
    "truncated": _json()[:-7],
    "garbage": b"\x00\x01garbage\xfe",
    "non-utf8": b'{"pid": 77, "cmdline": ["\xff"]}',
    "json-list": b"[77, 12.5]",
    "json-string": b'"77"',
    "json-null": b"null",
    "deeply-nested": b"[" * 100_000,
    "missing-pid": _without("pid"),
    "missing-create_time": _without("create_time"),
    "missing-cmdline": _without("cmdline"),
    "missing-started_at": _without("started_at"),
    "pid-string": _json(pid="77"),
    "pid-float": _json(pid=77.0),
    "pid-true": _json(pid=True),
    "pid-negative": _json(pid=-5),
    "pid-zero": _json(pid=0),
    "create_time-string": _json(create_time="12.5"),
    "create_time-bool": _json(create_time=False),
    "create_time-nan": b'{"pid": 77, "create_time": NaN, "cmdline": [], "started_at": 1}',
    "cmdline-string": _json(cmdline="a b"),
    "cmdline-int-item": _json(cmdline=["a", 1]),
    "started_at-null": _json(started_at=None),
    "started_at-infinity": b'{"pid": 77, "create_time": 1, "cmdline": [], "started_at": Infinity}',
}

# The fuzz tests reuse one tmp_path file, overwritten by every example: the fixture is safe to share.
_ONE_FILE_PER_TEST = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


class TestPidFile:
    def test_round_trip_keeps_every_field_and_extra_key(self, tmp_path: Path, record: PidRecord) -> None:
        """What write_pid_file writes, read_pid_file reads back equal, extra keys included."""
        path = tmp_path / "server.pid"
        write_pid_file(path, record)
        assert record == read_pid_file(path)

    def test_file_is_flat_json(self, tmp_path: Path, record: PidRecord) -> None:
        """The file is one flat JSON object: the four record keys plus the extra keys."""
        path = tmp_path / "server.pid"
        write_pid_file(path, record)
        assert {
            "pid": 4242,
            "create_time": 1_700_000_000.25,
            "cmdline": ["temporal", "server", "start-dev"],
            "started_at": 1_700_000_001.5,
            "address": "127.0.0.1:7233",
            "ports": [7233, 8233],
            "db": "/state/temporal.db",
        } == json.loads(path.read_bytes())

    def test_pid_file_is_0600(self, tmp_path: Path, record: PidRecord) -> None:
        """The pid file has mode 0600 whatever the umask."""
        path = tmp_path / "server.pid"
        old_umask = os.umask(0)
        try:
            write_pid_file(path, record)
        finally:
            os.umask(old_umask)
        assert 0o600 == _mode(path)

    def test_missing_file_reads_as_none(self, tmp_path: Path) -> None:
        """A missing pid file (or directory) reads as None."""
        assert (None, None) == (read_pid_file(tmp_path / "x.pid"), read_pid_file(tmp_path / "no" / "x.pid"))

    @pytest.mark.parametrize("content", _CORRUPT.values(), ids=_CORRUPT.keys())
    def test_corrupt_content_reads_as_none(self, tmp_path: Path, content: bytes) -> None:
        """Corrupt, truncated, mistyped or incomplete content reads as None."""
        path = tmp_path / "corrupt.pid"
        path.write_bytes(content)
        assert None is read_pid_file(path)

    @_ONE_FILE_PER_TEST
    @given(content=st.binary(max_size=256))
    def test_arbitrary_bytes_never_raise(self, tmp_path: Path, content: bytes) -> None:
        """Any bytes at all read as a PidRecord or None, never an exception."""
        path = tmp_path / "fuzz.pid"
        path.write_bytes(content)
        assert isinstance(read_pid_file(path), PidRecord | None)

    @_ONE_FILE_PER_TEST
    @given(value=st.dictionaries(st.sampled_from(sorted(_VALID)), _JSON) | _JSON)
    def test_arbitrary_json_never_raises(self, tmp_path: Path, value: Any) -> None:
        """Any JSON value, including objects with the right keys and wrong values, never raises."""
        path = tmp_path / "fuzz.pid"
        path.write_text(json.dumps(value))
        assert isinstance(read_pid_file(path), PidRecord | None)

    def test_write_replaces_the_old_file_and_leaves_no_temp_file(
        self, tmp_path: Path, record: PidRecord
    ) -> None:
        """A second write replaces the first, and only the pid file is left in the directory."""
        path = tmp_path / "server.pid"
        write_pid_file(path, PidRecord(pid=1, create_time=1.0, cmdline=(), started_at=1.0))
        write_pid_file(path, record)
        assert (record, ["server.pid"]) == (read_pid_file(path), os.listdir(tmp_path))

    def test_unserialisable_extra_leaves_the_old_file_intact(self, tmp_path: Path, record: PidRecord) -> None:
        """A non-JSON extra value raises TypeError; the old file is untouched and no temp file is left."""
        path = tmp_path / "server.pid"
        write_pid_file(path, record)
        bad = PidRecord(pid=5, create_time=1.0, cmdline=(), started_at=1.0, extra={"sock": object()})
        with pytest.raises(TypeError):
            write_pid_file(path, bad)
        assert (record, ["server.pid"]) == (read_pid_file(path), os.listdir(tmp_path))

    def test_failed_rename_removes_the_temp_file(
        self, tmp_path: Path, record: PidRecord, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If the rename fails the temp file is removed and the old file is intact."""
        path = tmp_path / "server.pid"
        write_pid_file(path, record)

        def fail(src: object, dst: object) -> None:
            raise OSError("simulated rename failure")

        monkeypatch.setattr(os, "replace", fail)
        with pytest.raises(OSError, match="simulated"):
            write_pid_file(path, PidRecord(pid=5, create_time=1.0, cmdline=(), started_at=1.0))
        monkeypatch.undo()
        assert (record, ["server.pid"]) == (read_pid_file(path), os.listdir(tmp_path))

    def test_write_through_a_symlink_is_refused(self, tmp_path: Path, record: PidRecord) -> None:
        """Writing to a pid path that is a symlink raises StateFileError; the link and target stay."""
        target, path = tmp_path / "precious", tmp_path / "server.pid"
        target.write_text("precious")
        path.symlink_to(target)
        with pytest.raises(StateFileError, match="symlink"):
            write_pid_file(path, record)
        assert ("precious", True) == (target.read_text(), path.is_symlink())

    def test_write_through_a_dangling_symlink_creates_nothing(
        self, tmp_path: Path, record: PidRecord
    ) -> None:
        """A dangling symlink at the pid path is refused and its target is not created."""
        target, path = tmp_path / "target", tmp_path / "server.pid"
        path.symlink_to(target)
        with pytest.raises(StateFileError, match="symlink"):
            write_pid_file(path, record)
        assert not target.exists()

    def test_read_through_a_symlink_is_refused(self, tmp_path: Path, record: PidRecord) -> None:
        """Reading a pid path that is a symlink (even to a valid pid file) raises StateFileError."""
        target, path = tmp_path / "real.pid", tmp_path / "server.pid"
        write_pid_file(target, record)
        path.symlink_to(target)
        with pytest.raises(StateFileError, match=r"symlink \(ELOOP\)"):
            read_pid_file(path)

    def test_read_of_a_fifo_is_refused_without_blocking(self, tmp_path: Path) -> None:
        """A FIFO at the pid path raises StateFileError instead of hanging the open."""
        path = tmp_path / "server.pid"
        os.mkfifo(path)
        with pytest.raises(StateFileError, match="not a regular file"):
            read_pid_file(path)

    def test_remove_deletes_the_file_and_tolerates_a_missing_one(
        self, tmp_path: Path, record: PidRecord
    ) -> None:
        """remove_pid_file deletes the file, and a second call is harmless."""
        path = tmp_path / "server.pid"
        write_pid_file(path, record)
        remove_pid_file(path)
        remove_pid_file(path)
        assert not path.exists()

    def test_remove_of_a_symlink_removes_only_the_link(self, tmp_path: Path) -> None:
        """Removing a symlinked pid path deletes the link, never its target."""
        target, path = tmp_path / "precious", tmp_path / "server.pid"
        target.write_text("precious")
        path.symlink_to(target)
        remove_pid_file(path)
        assert (False, "precious") == (path.is_symlink(), target.read_text())


class TestPidRecord:
    def test_extra_cannot_shadow_a_record_key(self) -> None:
        """An extra key named like a record field is rejected at construction."""
        with pytest.raises(ValueError, match="pid"):
            PidRecord(pid=1, create_time=1.0, cmdline=(), started_at=1.0, extra={"pid": 2})

    def test_extra_is_read_only(self, record: PidRecord) -> None:
        """The extra mapping of a frozen record cannot be mutated."""
        with pytest.raises(TypeError):
            record.extra["address"] = "elsewhere"  # type: ignore[index]
