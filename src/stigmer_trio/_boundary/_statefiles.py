# Lock files and pid files in the state directory. Owns: creating the state dir (0700), the flock-based
# FileLock, atomic pid-file writes and tolerant pid-file reads, and trusting them: like ssh with its
# files, a state dir, lock or pid file not owned by our effective uid, or writable by group or others,
# is refused (whoever can write there could aim our signals at any process). Also reads the boot id and
# a process's boot-relative start ticks (/proc), which a record carries beside its wall-clock create
# time. Must never: follow a symlink planted at a lock or pid path, delete a lock file (the OS frees a
# dead holder's lock; unlinking would let two processes lock two different inodes), raise on a corrupt
# pid file (it reads as None), or import trio (the CLI's hot paths use this module without it).
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import stat
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType, TracebackType

from .._core._errors import ConfigError, StateFileError

TYPE_CHECKING = False  # typing is not imported at run time: the CLI's hot paths stay lean
if TYPE_CHECKING:
    from typing import Any, Final, Self, TypeGuard

__all__ = [
    "FileLock",
    "PidRecord",
    "UntrustedStateFile",
    "check_trusted_dir",
    "ensure_state_dir",
    "lock_holder_pids",
    "lock_is_held",
    "open_regular",
    "read_boot_id",
    "read_pid_file",
    "read_start_ticks",
    "remove_pid_file",
    "write_pid_file",
]

_StrPath = str | os.PathLike[str]

_FILE_MODE: Final = 0o600
_DIR_MODE: Final = 0o700
_ACQUIRE_TRIES: Final = 4
_ACQUIRE_PAUSE: Final = 0.002  # seconds
# A pid file is a few hundred bytes; anything much bigger was not written by us.
_MAX_PID_FILE_SIZE: Final = 1 << 20
_RECORD_KEYS: Final = frozenset({"pid", "create_time", "cmdline", "started_at", "boot_id", "start_ticks"})
# Mode bits that let someone other than the owner replace or rewrite a file (or a directory's entries).
_FOREIGN_WRITE: Final = stat.S_IWGRP | stat.S_IWOTH
_BOOT_ID: Final = "/proc/sys/kernel/random/boot_id"
# psutil's create_time is start ticks / CLK_TCK + btime; one tick of slack for float rounding.
_STAMP_TOLERANCE: Final = 0.011


class UntrustedStateFile(StateFileError):
    """A state dir, lock or pid file that someone other than us could have written: refused."""


def _trust_error(path: Path, st: os.stat_result, what: str) -> UntrustedStateFile | None:
    euid = os.geteuid()
    if st.st_uid != euid:
        return UntrustedStateFile(
            f"refusing to use {what} {str(path)!r}: it is owned by uid {st.st_uid}, not by us (uid {euid})"
        )
    if st.st_mode & _FOREIGN_WRITE:
        return UntrustedStateFile(
            f"refusing to use {what} {str(path)!r}: it is writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); `chmod go-w` it"
        )
    return None


def check_trusted_dir(path: _StrPath, what: str = "state_dir") -> None:
    """Refuse (UntrustedStateFile) a directory not owned by our euid or writable by group/other.

    A missing directory passes (whoever creates it creates it 0700). Symlinks are followed, as ssh
    does: what counts is the directory the files land in.
    """
    directory = Path(path)
    try:
        st = os.stat(directory)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        raise StateFileError(f"cannot use {what} {str(directory)!r}: {_describe(exc)}") from exc
    error = _trust_error(directory, st, what)
    if error is not None:
        raise error


def _check_trusted_fd(fd: int, path: Path, what: str) -> None:
    error = _trust_error(path, os.fstat(fd), what)
    if error is not None:
        raise error


def _describe(exc: OSError) -> str:
    """An OSError for a message; running out of descriptors is named as such, not as the path's fault."""
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return f"too many open files ({errno.errorcode[exc.errno]})"
    return exc.strerror or str(exc)


def _chmod_created_dir(directory: Path, created: Path) -> None:
    # mkdir's mode is filtered through the umask; make the result independent of it, through an fd
    # opened with O_NOFOLLOW so that a directory swapped for a symlink meanwhile is not followed.
    try:
        fd = os.open(created, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, _DIR_MODE)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ConfigError(f"state_dir {str(directory)!r} cannot be created: {_describe(exc)}") from exc


def ensure_state_dir(path: _StrPath) -> Path:
    """Create `path` (and missing parents) with mode 0700 and check it is a writable directory that
    only we can write to (ConfigError otherwise: owned by another uid, or writable by group/other)."""
    directory = Path(path)
    missing: list[Path] = []
    for candidate in (directory, *directory.parents):
        if os.path.lexists(candidate):
            break
        missing.append(candidate)
    for candidate in reversed(missing):
        try:
            candidate.mkdir(mode=_DIR_MODE)
        except FileExistsError:
            continue  # created concurrently; checked below like any existing directory
        except OSError as exc:
            raise ConfigError(f"state_dir {str(directory)!r} cannot be created: {_describe(exc)}") from exc
        _chmod_created_dir(directory, candidate)
    if not directory.is_dir():
        raise ConfigError(f"state_dir {str(directory)!r} is not a directory")
    try:
        check_trusted_dir(directory)
    except StateFileError as exc:
        raise ConfigError(str(exc)) from None
    _probe_writable(directory)
    return directory


def _probe_writable(directory: Path) -> None:
    """Create and remove a file: os.access() says yes to root even where writes fail (sysfs, ro mounts)."""
    probe = directory / f".write-probe-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, _FILE_MODE)
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            raise ConfigError(
                f"{_describe(exc)} while probing that state_dir {str(directory)!r} is writable"
            ) from exc
        raise ConfigError(f"state_dir {str(directory)!r} is not writable: {exc.strerror}") from exc
    os.close(fd)
    os.unlink(probe)


def _refuse(path: Path, exc: OSError, what: str) -> StateFileError:
    if exc.errno == errno.ELOOP:
        return StateFileError(
            f"refusing to open {what} {str(path)!r}: it is a symlink (ELOOP); "
            "remove it, a state file must be a regular file"
        )
    return StateFileError(f"cannot use {what} {str(path)!r}: {_describe(exc)}")


def open_regular(path: Path, flags: int, what: str, mode: int = _FILE_MODE, *, trusted: bool = False) -> int:
    """os.open with O_NOFOLLOW|O_CLOEXEC; a symlink or a non-regular file is a StateFileError, and so is
    a file we may not open (EACCES, EPERM). `trusted`: the file and its directory must also be owned by
    our euid and not writable by group/other (UntrustedStateFile), checked before anything is created."""
    if trusted:
        check_trusted_dir(path.parent)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except (FileNotFoundError, NotADirectoryError):
        raise
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.EACCES, errno.EPERM):
            raise _refuse(path, exc, what) from exc
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StateFileError(f"refusing to use {what} {str(path)!r}: it is not a regular file")
        if trusted:
            _check_trusted_fd(fd, path, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


class FileLock:
    """An exclusive, non-blocking flock(2) on a lock file.

    The lock belongs to the open file description, so a second FileLock on the same path in the same
    process does not get it, and a child that inherits `fileno()` keeps holding it after we `release()`
    (release closes our fd without LOCK_UN, so a handed-over lock is never dropped behind the child's
    back). The OS drops the lock when the last holder dies; the file itself is never deleted.
    """

    def __init__(self, path: _StrPath) -> None:
        self._path = Path(path)
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def held(self) -> bool:
        return self._fd is not None

    def fileno(self) -> int:
        """The locked file descriptor (close-on-exec; pass it explicitly to hand the lock to a child)."""
        if self._fd is None:
            raise ValueError(f"lock {str(self._path)!r} is not held")
        return self._fd

    def acquire(self) -> bool:
        """Take the lock without waiting for a holder: True if we hold it (now or already), else False."""
        if self._fd is not None:
            return True
        fd = open_regular(self._path, os.O_RDWR | os.O_CREAT, "lock file", trusted=True)
        try:
            for attempt in range(_ACQUIRE_TRIES):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if attempt + 1 == _ACQUIRE_TRIES:
                        os.close(fd)
                        return False
                    # A holder keeps the lock; a prober (lock_is_held without /proc/locks) lets go
                    # within microseconds: a few short retries tell them apart.
                    time.sleep(_ACQUIRE_PAUSE)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        """Close our descriptor (idempotent). The lock is freed unless a child inherited the fd."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> Self:
        if not self.acquire():
            raise StateFileError(f"lock file {str(self._path)!r} is held by another process")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"FileLock({str(self._path)!r}, held={self.held})"


def _flock_holders(st: os.stat_result) -> frozenset[int] | None:
    """The pids /proc/locks lists as holding a flock on this file (None when it cannot be read): the
    pid that took the lock, even where a child inherited the descriptor since.

    Reading /proc/locks disturbs nobody, unlike a probe that takes the lock for an instant (which makes
    a concurrent acquire() fail).
    """
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    holders: set[int] = set()
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5308987 0 EOF"; blocked waiters have "->" after the id
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted and fields[4].isdigit():
            holders.add(int(fields[4]))
    return frozenset(holders)


def lock_holder_pids(path: _StrPath) -> frozenset[int] | None:
    """The pids holding the (trusted) lock at `path`, from /proc/locks; None where that cannot be read.

    A missing file is held by nobody. Raises UntrustedStateFile like `lock_is_held`.
    """
    try:
        fd = open_regular(Path(path), os.O_RDONLY | os.O_NONBLOCK, "lock file", trusted=True)
    except (FileNotFoundError, NotADirectoryError):
        return frozenset()
    try:
        return _flock_holders(os.fstat(fd))
    finally:
        os.close(fd)


def lock_is_held(path: _StrPath) -> bool:
    """Whether someone holds the lock at `path` (a missing file is not held; nothing is created).

    On Linux it reads /proc/locks and touches no lock. Elsewhere it probes with a shared lock for an
    instant, which a racing acquire() rides out with its short retry. A lock file (or directory) that
    another uid owns or could write is an UntrustedStateFile; one we may not open a StateFileError.
    """
    lock_path = Path(path)
    try:
        fd = open_regular(lock_path, os.O_RDONLY | os.O_NONBLOCK, "lock file", trusted=True)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        listed = _flock_holders(os.fstat(fd))
        if listed is not None:
            return bool(listed)
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing also drops the lock if the probe took it
    return False


def _frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


class PidRecord:
    """What a pid file says: the process identity, when it started, and free-form extra keys.

    `boot_id` and `start_ticks` (the boot's /proc id and the process's start time in clock ticks since
    boot) identify the process independently of the wall clock; records from before they existed have
    None there and are compared by `create_time` (wall clock) alone. `write_pid_file` fills them in.

    Immutable. A hand-written class, not attrs or a dataclass: the CLI's hot paths read pid files
    and must import as little as possible (dataclasses alone costs ~8 ms here).
    """

    __slots__ = ("boot_id", "cmdline", "create_time", "extra", "pid", "start_ticks", "started_at")
    pid: int
    create_time: float
    cmdline: tuple[str, ...]
    started_at: float
    extra: Mapping[str, Any]
    boot_id: str | None
    start_ticks: int | None

    def __init__(
        self,
        pid: int,
        create_time: float,
        cmdline: Iterable[str],
        started_at: float,
        extra: Mapping[str, Any] | None = None,
        *,
        boot_id: str | None = None,
        start_ticks: int | None = None,
    ) -> None:
        extra = _frozen_mapping(extra or {})
        bad = sorted(key for key in extra if not isinstance(key, str) or key in _RECORD_KEYS)
        if bad:
            raise ValueError(
                f"PidRecord.extra keys must be strings other than {sorted(_RECORD_KEYS)}: {bad!r}"
            )
        for name, value in (
            ("pid", pid),
            ("create_time", create_time),
            ("cmdline", _str_tuple(cmdline)),
            ("started_at", started_at),
            ("extra", extra),
            ("boot_id", boot_id),
            ("start_ticks", start_ticks),
        ):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"PidRecord is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"PidRecord is immutable: cannot delete {name!r}")

    def _key(self) -> tuple[Any, ...]:
        return (
            self.pid,
            self.create_time,
            self.cmdline,
            self.started_at,
            dict(self.extra),
            self.boot_id,
            self.start_ticks,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PidRecord) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash((self.pid, self.create_time, self.cmdline, self.started_at))

    def __repr__(self) -> str:
        return (
            f"PidRecord(pid={self.pid!r}, create_time={self.create_time!r}, cmdline={self.cmdline!r}, "
            f"started_at={self.started_at!r}, extra={dict(self.extra)!r}, boot_id={self.boot_id!r}, "
            f"start_ticks={self.start_ticks!r})"
        )

    def to_json(self) -> dict[str, Any]:
        """The flat JSON object stored in the file: {pid, create_time, cmdline, started_at, **extra},
        plus boot_id and start_ticks when known."""
        boot = {} if self.boot_id is None else {"boot_id": self.boot_id}
        ticks = {} if self.start_ticks is None else {"start_ticks": self.start_ticks}
        return {
            "pid": self.pid,
            "create_time": self.create_time,
            "cmdline": list(self.cmdline),
            "started_at": self.started_at,
            **boot,
            **ticks,
            **self.extra,
        }


def read_boot_id() -> str | None:
    """This boot's id (/proc/sys/kernel/random/boot_id); None where there is none."""
    try:
        with open(_BOOT_ID, encoding="ascii") as f:
            value = f.read().strip()
    except (OSError, ValueError):
        return None
    return value or None


def _read_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (field 3 onwards); None if unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself contain ") ": split after the last.
    _, _, rest = data.rpartition(b")")
    return rest.decode("ascii", "replace").split()


def read_start_ticks(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (/proc/<pid>/stat field 22): unlike a wall-clock
    create time it does not move when the clock is stepped. None if the process cannot be read."""
    fields = _read_stat(pid)
    if fields is None or len(fields) < 20 or not fields[19].isdigit():
        return None
    return int(fields[19])


def _boot_time() -> float | None:
    """btime of /proc/stat: the wall-clock time of boot, as psutil adds it to a process's start ticks."""
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime"):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _stamped(record: PidRecord) -> PidRecord:
    """`record` with boot_id and start_ticks filled in, if the live process at its pid is the one it
    names (its start ticks give the recorded create time); else `record` unchanged."""
    if record.start_ticks is not None and record.boot_id is not None:
        return record
    boot_id = read_boot_id()
    ticks = read_start_ticks(record.pid)
    boot_time = _boot_time()
    if boot_id is None or ticks is None or boot_time is None:
        return record
    if abs(ticks / os.sysconf("SC_CLK_TCK") + boot_time - record.create_time) > _STAMP_TOLERANCE:
        return record  # another process holds the pid now (or the clock moved just now): do not vouch
    return PidRecord(
        record.pid,
        record.create_time,
        record.cmdline,
        record.started_at,
        record.extra,
        boot_id=boot_id,
        start_ticks=ticks,
    )


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # some filesystems cannot fsync a directory
            raise
    finally:
        os.close(fd)


def write_pid_file(path: _StrPath, record: PidRecord, *, durable: bool = True) -> None:
    """Atomically replace the pid file at `path` (temp file + fsync + rename + directory fsync).

    The record gains boot_id and start_ticks when it lacks them and its pid is still the process it
    names. Its directory must be trusted (UntrustedStateFile otherwise).

    `durable=False` skips both fsyncs (1-2 ms each, far more while a booting server writes its db) and
    keeps the atomic rename: for the record of a process that is alive now. Every other process sees
    the new record at once (the page cache); only an OS crash could lose it, and an OS crash takes the
    process it names down with it, so a lost record can only be a stale one, which every reader
    already handles (boot_id).
    """
    target = Path(path)
    check_trusted_dir(target.parent)
    record = _stamped(record)
    try:
        existing = os.lstat(target)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISLNK(existing.st_mode):
            raise StateFileError(f"refusing to write pid file {str(target)!r}: it is a symlink")
        if not stat.S_ISREG(existing.st_mode):
            raise StateFileError(f"refusing to write pid file {str(target)!r}: it is not a regular file")
    # Serialise first: a bad extra value fails before anything touches the disk.
    data = json.dumps(record.to_json(), allow_nan=False).encode() + b"\n"
    temp = target.with_name(f".{target.name}.{os.urandom(8).hex()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, _FILE_MODE)
    try:
        try:
            os.fchmod(fd, _FILE_MODE)  # independent of the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        # rename(2) replaces a symlink planted since the check above; it never writes through it.
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    if durable:
        _fsync_dir(target.parent)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _parse(data: bytes) -> PidRecord | None:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    if not isinstance(obj, dict):
        return None
    pid = obj.get("pid")
    create_time = obj.get("create_time")
    cmdline = obj.get("cmdline")
    started_at = obj.get("started_at")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    if not _is_number(create_time) or not _is_number(started_at):
        return None
    if not isinstance(cmdline, list) or not all(isinstance(arg, str) for arg in cmdline):
        return None
    extra = {key: value for key, value in obj.items() if key not in _RECORD_KEYS}
    # Optional, and tolerated when malformed: such a record is compared by create_time alone.
    boot_id = obj.get("boot_id")
    ticks = obj.get("start_ticks")
    return PidRecord(
        pid=pid,
        create_time=float(create_time),
        cmdline=tuple(cmdline),
        started_at=float(started_at),
        extra=extra,
        boot_id=boot_id if isinstance(boot_id, str) and 0 < len(boot_id) <= 64 else None,
        start_ticks=ticks if isinstance(ticks, int) and not isinstance(ticks, bool) and ticks >= 0 else None,
    )


def read_pid_file(path: _StrPath) -> PidRecord | None:
    """Read a pid file; a missing file or corrupt content gives None.

    A symlink, a non-regular file or an unreadable file is a StateFileError; a file (or directory)
    another uid owns or could write is an UntrustedStateFile.
    """
    source = Path(path)
    try:
        # O_NONBLOCK: a FIFO planted at the path must not hang the open; fstat then rejects it.
        fd = open_regular(source, os.O_RDONLY | os.O_NONBLOCK, "pid file", trusted=True)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise _refuse(source, exc, "pid file") from exc
    try:
        chunks: list[bytes] = []
        size = 0
        while size <= _MAX_PID_FILE_SIZE:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > _MAX_PID_FILE_SIZE:
        return None
    return _parse(b"".join(chunks))


def remove_pid_file(path: _StrPath) -> None:
    """Unlink the pid file; a missing file is fine (a symlink is removed, never its target)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
