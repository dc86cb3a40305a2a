# Process identity and process-group stop. Owns: proving that a pid is still the process we started
# (pid + start time + cmdline + our uid, via psutil and /proc; the start time as boot id + start ticks
# when the record has them, so a stepped wall clock changes nothing) and stopping that process's whole
# group: SIGTERM, SIGKILL after a timeout, then SIGKILL for stragglers left in the group. Must never:
# send a signal before the identity is proven against a pidfd held open (PID reuse), signal PID 1, our
# own process or our own process group, start a stop it cannot finish (a timeout is checked before the
# first signal), leave a group running when a stop is cancelled, or import trio at module level (the
# async variant imports it lazily).
from __future__ import annotations

import contextlib
import enum
import math
import os
import select
import signal
import time
from collections.abc import Generator, Iterable, Mapping, Sequence
from typing import Any, Final, TypeAlias

import attrs
import psutil

from .._core._errors import ConfigError, IdentityMismatch, ProcessStopTimeout
from ._statefiles import PidRecord, read_boot_id, read_start_ticks

__all__ = [
    "PinnedProcess",
    "ProcessIdentity",
    "StopOutcome",
    "StopResult",
    "Verdict",
    "check_timeout",
    "identity_of",
    "live_identity",
    "pin_verified",
    "signal_verified",
    "stop_process_group",
    "stop_process_group_async",
    "verify",
]

# psutil derives create_time from clock ticks (1/100 s on Linux).
_CREATE_TIME_TOLERANCE: Final = 0.01
# A straggler may fork while we sweep; rescan until a round finds nobody new (bounded).
_SWEEP_ROUNDS: Final = 5
# Between close-on-exec (when Popen returns) and the new argv being mapped, /proc/<pid>/cmdline is empty.
_EXEC_SETTLE: Final = 0.05
# poll(2) takes a C int of milliseconds: a long wait is done in slices of at most this many.
_POLL_SLICE_MS: Final = 3_600_000


def _positive_pid(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{attribute.name} must be a positive int, got {value!r}")


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class ProcessIdentity:
    """Who a process is: a pid alone can be reused, pid + start time + cmdline cannot (in practice).

    The start time is `boot_id` + `start_ticks` (clock ticks since that boot) when known, which no
    wall-clock step moves; else `create_time` (wall clock, what older records carry).
    """

    pid: int = attrs.field(validator=_positive_pid)
    create_time: float
    cmdline: tuple[str, ...] = attrs.field(converter=_str_tuple)
    # Not part of ==: two identities that agree on pid, create time and cmdline name the same process.
    boot_id: str | None = attrs.field(default=None, kw_only=True, eq=False)
    start_ticks: int | None = attrs.field(default=None, kw_only=True, eq=False)

    @classmethod
    def of_record(cls, record: PidRecord) -> ProcessIdentity:
        """The identity a pid file claims."""
        return cls(
            pid=record.pid,
            create_time=record.create_time,
            cmdline=record.cmdline,
            boot_id=record.boot_id,
            start_ticks=record.start_ticks,
        )

    def to_pid_record(
        self, *, started_at: float | None = None, extra: Mapping[str, Any] | None = None
    ) -> PidRecord:
        """A pid-file record for this identity (`started_at` defaults to now, wall clock)."""
        return PidRecord(
            pid=self.pid,
            create_time=self.create_time,
            cmdline=self.cmdline,
            started_at=time.time() if started_at is None else started_at,
            extra={} if extra is None else extra,
            boot_id=self.boot_id,
            start_ticks=self.start_ticks,
        )


def _as_identity(identity: ProcessIdentity | PidRecord) -> ProcessIdentity:
    return identity if isinstance(identity, ProcessIdentity) else ProcessIdentity.of_record(identity)


def _read_identity(pid: int) -> ProcessIdentity | None:
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            create_time, cmdline = proc.create_time(), tuple(proc.cmdline())
    except psutil.Error:
        return None
    ticks = read_start_ticks(pid)
    boot_id = read_boot_id() if ticks is not None else None
    return ProcessIdentity(pid, create_time, cmdline, boot_id=boot_id, start_ticks=ticks)


def identity_of(pid: int) -> ProcessIdentity | None:
    """The identity of the live process `pid`; None if it is gone, a zombie, or not readable by us.

    Take it after the child has exec'd (subprocess.Popen and trio's open_process return once the exec
    has begun). During the exec itself the kernel briefly shows an empty cmdline; an empty cmdline is
    therefore re-read for up to 50 ms (blocking) before it is believed.
    """
    if isinstance(pid, bool) or pid <= 0:
        return None
    deadline = time.monotonic() + _EXEC_SETTLE
    while True:
        identity = _read_identity(pid)
        if identity is None or identity.cmdline or time.monotonic() >= deadline:
            return identity
        time.sleep(0.001)


class Verdict(enum.Enum):
    """What `verify` found at the identity's pid."""

    SAME = "same"  # alive, ours, same start time and cmdline: it is the process we started
    DEAD = "dead"  # no such process, or a zombie
    OTHER = "other"  # alive but someone else (PID reuse, a different cmdline, another uid)
    UNVERIFIABLE = "unverifiable"  # alive but psutil was denied access


def _same_start(proc: psutil.Process, expected: ProcessIdentity) -> bool:
    """Same start time: boot id + start ticks when the identity has them (a stepped wall clock moves
    psutil's create_time, not these), else the wall-clock create time (records from before)."""
    if expected.boot_id is not None and expected.start_ticks is not None:
        boot_id, ticks = read_boot_id(), read_start_ticks(expected.pid)
        if boot_id is not None and ticks is not None:
            return boot_id == expected.boot_id and ticks == expected.start_ticks
    return abs(proc.create_time() - expected.create_time) <= _CREATE_TIME_TOLERANCE


def verify(identity: ProcessIdentity | PidRecord) -> Verdict:
    """Check whether the identity's pid is still that very process, running as our effective uid.

    An accurate record is not enough on its own (anyone can read a process's pid, start time and
    command line): the process must also run as us (real and effective uid), so a record naming some
    other user's process is OTHER. Callers that signal hold a pidfd while they verify.
    """
    expected = _as_identity(identity)
    euid = os.geteuid()
    try:
        proc = psutil.Process(expected.pid)
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                return Verdict.DEAD
            uids = proc.uids()
            if uids.real != euid or uids.effective != euid:
                return Verdict.OTHER
            if not _same_start(proc, expected):
                return Verdict.OTHER
            cmdline = tuple(proc.cmdline())
    except psutil.NoSuchProcess:  # includes psutil.ZombieProcess
        return Verdict.DEAD
    except psutil.AccessDenied:
        return Verdict.UNVERIFIABLE
    return Verdict.SAME if cmdline == expected.cmdline else Verdict.OTHER


def live_identity(record: PidRecord) -> tuple[ProcessIdentity, Verdict]:
    """Which identity of a pid file is alive: the one it names, or the launcher's it execs from.

    A process may be recorded before it execs its real command line (the dev server starts as a small
    launcher that waits for its record to be on disk, then execs the server: same pid, same create
    time). A record may name that launcher's command line under the extra key "launcher". Returns the
    identity that verifies SAME, else the recorded one with its verdict.
    """
    recorded = ProcessIdentity.of_record(record)
    verdict = verify(recorded)
    if verdict is Verdict.SAME:
        return recorded, verdict
    launcher = record.extra.get("launcher")
    if isinstance(launcher, list) and launcher and all(isinstance(arg, str) for arg in launcher):
        before_exec = attrs.evolve(recorded, cmdline=tuple(launcher))
        if verify(before_exec) is Verdict.SAME:
            return before_exec, Verdict.SAME
        verdict = verify(recorded)  # the exec may have happened between the two checks
    return recorded, verdict


def _refuse_special(pid: int) -> None:
    """PID 1, this process and the leader of our own process group are never signalled."""
    if pid == 1:
        raise IdentityMismatch("refusing to signal pid 1 (init); no signal was sent")
    if pid == os.getpid():
        raise IdentityMismatch(f"refusing to signal pid {pid}: it is this process; no signal was sent")
    if pid == os.getpgrp():
        raise IdentityMismatch(
            f"refusing to signal pid {pid}: it leads our own process group; no signal was sent"
        )


class PinnedProcess:
    """One process proven to be the identity's, held by a pidfd: signals and waits go to that process
    and no other, whatever happens to its pid meanwhile. Made by `pin_verified`."""

    def __init__(self, identity: ProcessIdentity, pidfd: int) -> None:
        self.identity = identity
        self._pidfd = pidfd

    @property
    def pid(self) -> int:
        return self.identity.pid

    def exited(self) -> bool:
        return _is_readable(self._pidfd)

    def send(self, sig: int) -> bool:
        """Send `sig`; False if the process had already exited (nothing sent)."""
        if self.exited():
            return False
        try:
            signal.pidfd_send_signal(self._pidfd, sig)
        except ProcessLookupError:
            return False
        return True

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` s (finite, >= 0) for it to exit: True if it has."""
        return _wait_readable((self._pidfd,), check_timeout("timeout", timeout))


@contextlib.contextmanager
def pin_verified(identity: ProcessIdentity | PidRecord) -> Generator[PinnedProcess | None]:
    """Open a pidfd on the identity's pid, THEN verify it: yields the pinned process, or None if it is
    gone. Raises IdentityMismatch (nothing sent) if it is alive but not provably that process, or is
    PID 1, this process or our own group's leader. The pidfd is closed on exit."""
    expected = _as_identity(identity)
    _refuse_special(expected.pid)
    try:
        pidfd = os.pidfd_open(expected.pid)
    except ProcessLookupError:
        yield None
        return
    try:
        verdict = verify(expected)
        if verdict is Verdict.DEAD or _is_readable(pidfd):
            yield None
            return
        if verdict is not Verdict.SAME:
            raise IdentityMismatch(
                f"refusing to signal pid {expected.pid}: verdict {verdict.name}; no signal was sent"
            )
        yield PinnedProcess(expected, pidfd)
    finally:
        os.close(pidfd)


def signal_verified(identity: ProcessIdentity | PidRecord, sig: int, *, wait: float = 0.0) -> bool:
    """Send `sig` to the one process `identity` names, then wait up to `wait` seconds for it to exit.

    The pidfd is opened first and the identity verified while it pins the process, so a reused pid is
    never signalled. True if the process has exited (or was gone already); False if it still runs after
    `wait`. Raises IdentityMismatch, sending nothing, if the pid is alive but not provably that process;
    ConfigError, sending nothing, if `wait` is not a finite number >= 0.
    """
    wait = check_timeout("wait", wait)
    with pin_verified(identity) as process:
        if process is None or not process.send(sig):
            return True
        return process.wait(wait)


class StopOutcome(enum.Enum):
    TERMINATED = "terminated"  # the leader exited after SIGTERM
    KILLED = "killed"  # the leader ignored SIGTERM for `timeout` seconds and was SIGKILLed
    ALREADY_GONE = "already_gone"  # nothing to stop: the process had already exited


@attrs.frozen
class StopResult:
    outcome: StopOutcome
    elapsed: float  # seconds, from the call to the end of the stop


# --- the stop itself ---------------------------------------------------------------------------------
# The steps live in one generator shared by the sync and the async variant: it does every check and
# every signal itself and only yields "wait until these pidfds are readable, at most this long"; the
# caller answers True (all readable) or False (timed out). The sync driver waits with select.poll, the
# async one with trio.lowlevel.wait_readable. If the wait raises (cancellation, KeyboardInterrupt), the
# driver throws the exception into the generator, which SIGKILLs the group before it propagates.

_Wait: TypeAlias = tuple[tuple[int, ...], float]


def check_timeout(name: str, value: float) -> float:
    """`value` as a float if it is a finite number >= 0; else ConfigError naming `name` and the value.
    Checked before any signal, so a stop never starts that its SIGKILL fallback could not finish."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _is_readable(fd: int) -> bool:
    """A pidfd polls readable once its process has exited (a zombie counts as exited)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _open_verified_leader(identity: ProcessIdentity) -> int | None:
    """A pidfd on the identity's process once it is proven to be ours and a group leader; None if gone.

    The pidfd is opened first and checked to be still unreadable (alive) after the checks, so the pid
    cannot have been reused in between: every check describes the process the pidfd refers to.
    """
    pid = identity.pid
    if pid == 1:
        raise IdentityMismatch("refusing to stop pid 1 (init); no signal was sent")
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    try:
        verdict = verify(identity)
        try:
            pgid: int | None = os.getpgid(pid)
        except ProcessLookupError:
            pgid = None
        if verdict is Verdict.DEAD or _is_readable(pidfd):
            os.close(pidfd)  # whatever the verdict, the process the pid named when we started is gone
            return None
        if verdict is not Verdict.SAME:
            raise IdentityMismatch(
                f"refusing to stop pid {pid}: verdict {verdict.name} (expected create_time "
                f"{identity.create_time:.2f} and cmdline {list(identity.cmdline)!r}); no signal was sent"
            )
        if pgid != pid:
            raise IdentityMismatch(
                f"refusing to stop pid {pid}: it is not a process-group leader (pgid {pgid}); "
                "no signal was sent"
            )
        if pgid == os.getpgrp():
            raise IdentityMismatch(f"refusing to stop pid {pid}: it leads our own process group")
    except BaseException:
        os.close(pidfd)
        raise
    return pidfd


def _signal_group(pgid: int, leader_pidfd: int, sig: signal.Signals) -> None:
    """killpg, but only while the leader is alive (while it lives, its pgid cannot name anyone else)."""
    if _is_readable(leader_pidfd):
        return  # the leader is gone: the straggler sweep handles what is left of the group
    with contextlib.suppress(ProcessLookupError):  # the group died on its own meanwhile
        os.killpg(pgid, sig)


def _not_older(pid: int, proc: psutil.Process, leader: ProcessIdentity) -> bool:
    """Was `pid` started no earlier than the leader (by start ticks when known, else wall clock)?"""
    if leader.start_ticks is not None:
        ticks = read_start_ticks(pid)
        if ticks is not None:
            return ticks >= leader.start_ticks
    return bool(proc.create_time() >= leader.create_time - _CREATE_TIME_TOLERANCE)


def _pidfd_of_member(pid: int, pgid: int, leader: ProcessIdentity) -> int | None:
    """A pidfd on `pid` if it is a live member of group `pgid` started no earlier than `leader`."""
    try:
        if os.getpgid(pid) != pgid:  # cheap prefilter, no /proc parsing
            return None
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            member = (
                os.getpgid(pid) == pgid
                and proc.status() != psutil.STATUS_ZOMBIE
                and _not_older(pid, proc, leader)
            )
        if member and not _is_readable(fd):  # still alive: the checks above were about this process
            return fd
    except (psutil.Error, OSError):
        pass
    os.close(fd)
    return None


def _kill_stragglers(pgid: int, leader: ProcessIdentity) -> list[int]:
    """SIGKILL the live processes left in group `pgid` and return their pidfds (the caller closes them).

    Only processes whose start time is not before the leader's are touched. The pid `pgid` itself is
    skipped: the leader has exited, so a live process with that pid is not ours.
    """
    signalled: dict[int, int] = {}
    try:
        for _ in range(_SWEEP_ROUNDS):
            found = False
            for pid in psutil.pids():
                if pid == pgid or pid in signalled:
                    continue
                fd = _pidfd_of_member(pid, pgid, leader)
                if fd is None:
                    continue
                signalled[pid] = fd
                found = True
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
            if not found:
                break
    except BaseException:
        for fd in signalled.values():
            os.close(fd)
        raise
    return list(signalled.values())


def _reap(pidfd: int) -> None:
    """Reap the leader if it is our own exited child (via the pidfd, so never a recycled pid)."""
    with contextlib.suppress(ChildProcessError):  # not our child: its own parent reaps it
        os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)


def _stop_steps(
    identity: ProcessIdentity, timeout: float, kill_timeout: float
) -> Generator[_Wait, bool, StopResult]:
    started = time.monotonic()
    pidfd = _open_verified_leader(identity)
    if pidfd is None:
        return StopResult(StopOutcome.ALREADY_GONE, time.monotonic() - started)
    pgid = identity.pid
    try:
        try:
            outcome = StopOutcome.TERMINATED
            _signal_group(pgid, pidfd, signal.SIGTERM)
            _signal_group(pgid, pidfd, signal.SIGCONT)  # a stopped (SIGSTOP) group handles SIGTERM too
            if not (yield (pidfd,), timeout):
                outcome = StopOutcome.KILLED
                _signal_group(pgid, pidfd, signal.SIGKILL)
                if not (yield (pidfd,), kill_timeout):
                    raise ProcessStopTimeout(
                        f"pid {identity.pid} was sent SIGKILL but had not exited after {kill_timeout:g} s"
                    )
            # Swept before the leader is reaped: while our child's zombie exists its pgid stays taken.
            stragglers = _kill_stragglers(pgid, identity)
            try:
                if stragglers:
                    yield tuple(stragglers), kill_timeout
            finally:
                for fd in stragglers:
                    os.close(fd)
        except BaseException:
            # Cancelled or interrupted while waiting (or stuck): never leave the group running.
            _signal_group(pgid, pidfd, signal.SIGKILL)
            for fd in _kill_stragglers(pgid, identity):
                os.close(fd)
            raise
    finally:
        _reap(pidfd)
        os.close(pidfd)
    return StopResult(outcome, time.monotonic() - started)


def _wait_readable(fds: Sequence[int], timeout: float) -> bool:
    """Block until every fd polls readable (True) or `timeout` seconds pass (False)."""
    poller = select.poll()
    pending = set(fds)
    for fd in pending:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while True:
        remaining_ms = min(_POLL_SLICE_MS, max(0, math.ceil((deadline - time.monotonic()) * 1000)))
        for fd, _events in poller.poll(remaining_ms):
            pending.discard(fd)
            poller.unregister(fd)
        if not pending:
            return True
        if time.monotonic() >= deadline:
            return False


def stop_process_group(
    identity: ProcessIdentity | PidRecord, *, timeout: float, kill_timeout: float = 5.0
) -> StopResult:
    """Stop the process group led by `identity`: SIGTERM, then SIGKILL after `timeout` s, then stragglers.

    Raises IdentityMismatch (sending no signal) unless the pid is provably that process and leads its
    own group; ProcessStopTimeout if the leader survives SIGKILL for `kill_timeout` s.
    """
    steps = _stop_steps(
        _as_identity(identity),
        check_timeout("timeout", timeout),
        check_timeout("kill_timeout", kill_timeout),
    )
    try:
        fds, wait_for = next(steps)
        while True:
            try:
                ready = _wait_readable(fds, wait_for)
            except BaseException as exc:
                steps.throw(exc)  # kills the group, then re-raises exc
                raise
            fds, wait_for = steps.send(ready)
    except StopIteration as done:
        result: StopResult = done.value
        return result


async def _wait_readable_trio(fds: Sequence[int], seconds: float) -> bool:
    import trio

    with trio.move_on_after(seconds):
        for fd in fds:
            await trio.lowlevel.wait_readable(fd)
        return True
    return False


async def stop_process_group_async(
    identity: ProcessIdentity | PidRecord,
    *,
    timeout: float,  # noqa: ASYNC109 -- the SIGTERM grace period, not a deadline for this call
    kill_timeout: float = 5.0,
) -> StopResult:
    """Trio variant of `stop_process_group`; if cancelled while waiting, it SIGKILLs the group first."""
    import trio

    steps = _stop_steps(
        _as_identity(identity),
        check_timeout("timeout", timeout),
        check_timeout("kill_timeout", kill_timeout),
    )
    try:
        try:
            fds, wait_for = next(steps)
        except StopIteration:
            await trio.lowlevel.checkpoint()  # nothing was waited for: still honour the checkpoint contract
            raise
        while True:
            try:
                ready = await _wait_readable_trio(fds, wait_for)
            except BaseException as exc:
                steps.throw(exc)  # kills the group, then re-raises exc
                raise
            fds, wait_for = steps.send(ready)
    except StopIteration as done:
        result: StopResult = done.value
        return result
