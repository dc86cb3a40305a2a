"""Process identity and process-group stop against real processes, with the real clock."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import attrs
import psutil
import pytest
import trio

from stigmer_trio._boundary import _process
from stigmer_trio._boundary._process import (
    ProcessIdentity,
    StopOutcome,
    Verdict,
    identity_of,
    stop_process_group,
    stop_process_group_async,
    verify,
)
from stigmer_trio._boundary._statefiles import PidRecord
from stigmer_trio._core._errors import ConfigError, IdentityMismatch

pytestmark = pytest.mark.integration

# A group leader that starts a grandchild in its own process group. Both ignore SIGTERM, except the
# leader when run with "obey". The leader prints "ready <grandchild pid>" once both are set up.
# "Nothing was signalled" is checked after this long: a signal, had one been sent, is delivered and its
# default action (exit) taken within milliseconds, so a live process after 0.2 s received none.
NO_SIGNAL_GRACE = 0.2

_LEADER = r"""
import signal, subprocess, sys, time
if sys.argv[1] == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
stubborn = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ok', flush=True); time.sleep(60)"
)
grandchild = subprocess.Popen([sys.executable, "-c", stubborn], stdout=subprocess.PIPE, text=True)
grandchild.stdout.readline()
print("ready", grandchild.pid, flush=True)
time.sleep(60)
"""

Spawn = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start processes (in a new session by default); kill whatever is left of them afterwards."""
    started: list[tuple[subprocess.Popen[str], bool]] = []

    def start(*args: str, new_session: bool = True) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=new_session,
        )
        started.append((proc, new_session))
        return proc

    yield start
    for proc, new_session in started:
        with proc:
            if proc.poll() is None:  # not reaped yet, so its pid and pgid are still its own
                with contextlib.suppress(ProcessLookupError):
                    if new_session:
                        os.killpg(proc.pid, signal.SIGKILL)
                    else:
                        proc.kill()


@contextlib.contextmanager
def _watch(pid: int) -> Iterator[int]:
    """A pidfd on `pid` for the test's duration; SIGKILLs the process (if still alive) on the way out."""
    fd = os.pidfd_open(pid)
    try:
        yield fd
    finally:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        os.close(fd)


def _exited(pidfd: int, timeout: float = 0.0) -> bool:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(int(timeout * 1000)))


def _leader(spawn: Spawn, mode: str) -> tuple[subprocess.Popen[str], ProcessIdentity, int]:
    """Start _LEADER in its own session; return it, its identity and its grandchild's pid."""
    proc = spawn(sys.executable, "-c", _LEADER, mode)
    assert proc.stdout is not None
    word, grandchild = proc.stdout.readline().split()
    assert "ready" == word
    identity = identity_of(proc.pid)
    assert identity is not None
    return proc, identity, int(grandchild)


def _sleeper(spawn: Spawn, *, new_session: bool = True) -> tuple[subprocess.Popen[str], ProcessIdentity]:
    proc = spawn("sleep", "60", new_session=new_session)
    identity = identity_of(proc.pid)
    assert identity is not None
    return proc, identity


def _started_later(identity: ProcessIdentity, seconds: float) -> ProcessIdentity:
    """What a record of another process that later got the same pid would say (same cmdline)."""
    ticks = identity.start_ticks
    assert ticks is not None  # identity_of reads the start ticks on Linux
    return attrs.evolve(
        identity,
        create_time=identity.create_time + seconds,
        start_ticks=ticks + int(seconds * os.sysconf("SC_CLK_TCK")),
    )


def _alive_and_not_zombie(proc: subprocess.Popen[str]) -> bool:
    return proc.poll() is None and psutil.STATUS_ZOMBIE != psutil.Process(proc.pid).status()


class TestIdentity:
    def test_identity_of_our_own_process(self) -> None:
        """identity_of(our pid) carries our create time and cmdline."""
        me = psutil.Process()
        assert ProcessIdentity(os.getpid(), me.create_time(), tuple(me.cmdline())) == identity_of(os.getpid())

    def test_identity_of_a_zombie_is_none(self, spawn: Spawn) -> None:
        """An exited but unreaped child has no identity."""
        proc = spawn(sys.executable, "-c", "pass")
        with _watch(proc.pid) as pidfd:
            assert _exited(pidfd, timeout=10)
            assert None is identity_of(proc.pid)

    def test_empty_cmdline_during_exec_is_read_again(
        self, spawn: Spawn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An empty cmdline (the kernel shows one mid-exec, right after Popen returns) is re-read."""
        _proc, identity = _sleeper(spawn)
        real_cmdline = psutil.Process.cmdline
        empty_reads = iter([1, 2, 3])

        def mid_exec(self: psutil.Process) -> list[str]:
            return [] if next(empty_reads, None) else real_cmdline(self)

        monkeypatch.setattr(psutil.Process, "cmdline", mid_exec)
        assert identity == identity_of(identity.pid)

    def test_of_record_takes_the_identity_from_a_pid_file_record(self) -> None:
        """ProcessIdentity.of_record keeps pid, create time and cmdline of a PidRecord."""
        record = PidRecord(pid=9, create_time=2.5, cmdline=("x",), started_at=3.0, extra={"db": "d"})
        assert ProcessIdentity(9, 2.5, ("x",)) == ProcessIdentity.of_record(record)

    def test_to_pid_record_round_trips(self) -> None:
        """An identity turned into a PidRecord comes back unchanged through of_record."""
        identity = ProcessIdentity(9, 2.5, ("x", "y"))
        record = identity.to_pid_record(started_at=3.0, extra={"address": "a"})
        assert identity == ProcessIdentity.of_record(record)

    def test_non_positive_pid_is_rejected(self) -> None:
        """A ProcessIdentity needs a positive pid (pid 0 or -1 would mean a whole group to kill())."""
        with pytest.raises(ValueError, match="positive"):
            ProcessIdentity(0, 1.0, ())


class TestVerify:
    def test_our_own_process_is_same(self) -> None:
        """Our own live process verifies as SAME."""
        identity = identity_of(os.getpid())
        assert identity is not None
        assert Verdict.SAME == verify(identity)

    def test_a_pid_record_is_accepted(self, spawn: Spawn) -> None:
        """verify accepts the PidRecord read from a pid file."""
        _proc, identity = _sleeper(spawn)
        assert Verdict.SAME == verify(identity.to_pid_record())

    def test_reaped_process_is_dead(self, spawn: Spawn) -> None:
        """A process we started, killed and reaped verifies as DEAD."""
        proc, identity = _sleeper(spawn)
        proc.kill()
        proc.wait()
        assert Verdict.DEAD == verify(identity)

    def test_zombie_is_dead(self, spawn: Spawn) -> None:
        """An exited, unreaped child verifies as DEAD."""
        proc, identity = _sleeper(spawn)
        with _watch(proc.pid) as pidfd:
            proc.send_signal(signal.SIGKILL)
            assert _exited(pidfd, timeout=10)
            assert Verdict.DEAD == verify(identity)

    def test_other_create_time_is_pid_reuse(self, spawn: Spawn) -> None:
        """A live pid whose create time differs by 5 s is OTHER (PID reuse)."""
        _proc, identity = _sleeper(spawn)
        assert Verdict.OTHER == verify(_started_later(identity, 5))

    def test_other_cmdline_is_other(self, spawn: Spawn) -> None:
        """A live pid with the right create time but another cmdline is OTHER."""
        _proc, identity = _sleeper(spawn)
        assert Verdict.OTHER == verify(attrs.evolve(identity, cmdline=(*identity.cmdline, "--extra")))

    def test_access_denied_is_unverifiable(self, spawn: Spawn, monkeypatch: pytest.MonkeyPatch) -> None:
        """psutil.AccessDenied while reading the process makes the verdict UNVERIFIABLE."""
        _proc, identity = _sleeper(spawn)

        def denied(self: psutil.Process) -> list[str]:
            raise psutil.AccessDenied(self.pid)

        monkeypatch.setattr(psutil.Process, "cmdline", denied)
        assert Verdict.UNVERIFIABLE == verify(identity)


class TestStopProcessGroup:
    def test_pid_reuse_is_refused_and_never_signalled(self, spawn: Spawn) -> None:
        """A record whose create time is 5 s off raises IdentityMismatch; the process gets no signal."""
        proc, identity = _sleeper(spawn)
        reused = _started_later(identity, 5)
        with pytest.raises(IdentityMismatch, match=rf"pid {proc.pid}: verdict OTHER"):
            stop_process_group(reused, timeout=0.5)
        time.sleep(NO_SIGNAL_GRACE)
        assert _alive_and_not_zombie(proc)

    def test_unverifiable_is_refused_and_never_signalled(
        self, spawn: Spawn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """When psutil is denied access, stop raises IdentityMismatch and sends no signal."""
        proc, identity = _sleeper(spawn)

        def denied(self: psutil.Process) -> list[str]:
            raise psutil.AccessDenied(self.pid)

        monkeypatch.setattr(psutil.Process, "cmdline", denied)
        with pytest.raises(IdentityMismatch, match="verdict UNVERIFIABLE"):
            stop_process_group(identity, timeout=0.5)
        monkeypatch.undo()
        time.sleep(NO_SIGNAL_GRACE)
        assert _alive_and_not_zombie(proc)

    def test_non_leader_is_refused_and_never_signalled(self, spawn: Spawn) -> None:
        """A process that does not lead its own group raises IdentityMismatch and is left alone."""
        proc, identity = _sleeper(spawn, new_session=False)
        with pytest.raises(IdentityMismatch, match="not a process-group leader"):
            stop_process_group(identity, timeout=0.5)
        time.sleep(NO_SIGNAL_GRACE)
        assert _alive_and_not_zombie(proc)

    def test_our_own_process_is_refused(self) -> None:
        """Stopping our own process (and with it our group) is refused."""
        identity = identity_of(os.getpid())
        assert identity is not None
        with pytest.raises(IdentityMismatch):
            stop_process_group(identity, timeout=0.5)

    def test_dead_process_is_already_gone(self, spawn: Spawn) -> None:
        """A process that has exited and been reaped gives ALREADY_GONE."""
        proc, identity = _sleeper(spawn)
        proc.kill()
        proc.wait()
        assert StopOutcome.ALREADY_GONE == stop_process_group(identity, timeout=0.5).outcome

    def test_leader_that_obeys_sigterm_is_terminated_quickly(self, spawn: Spawn) -> None:
        """A leader that exits on SIGTERM gives TERMINATED well before the timeout."""
        _proc, identity = _sleeper(spawn)
        result = stop_process_group(identity, timeout=10)
        assert (StopOutcome.TERMINATED, True) == (result.outcome, result.elapsed < 2)

    def test_our_child_leader_is_reaped(self, spawn: Spawn) -> None:
        """When the leader is our own child, the stop reaps it: no zombie is left."""
        proc, identity = _sleeper(spawn)
        stop_process_group(identity, timeout=10)
        assert not psutil.pid_exists(proc.pid)

    def test_leader_ignoring_sigterm_is_killed_with_its_group(self, spawn: Spawn) -> None:
        """A leader ignoring SIGTERM is SIGKILLed after the timeout, and its grandchild is gone too."""
        _proc, identity, grandchild = _leader(spawn, "ignore")
        with _watch(identity.pid) as leader_fd, _watch(grandchild) as grandchild_fd:
            result = stop_process_group(identity, timeout=0.5)
            assert (StopOutcome.KILLED, True, True, True) == (
                result.outcome,
                result.elapsed >= 0.5,
                _exited(leader_fd),
                _exited(grandchild_fd),
            )

    def test_straggler_ignoring_sigterm_is_killed_after_the_leader_exits(self, spawn: Spawn) -> None:
        """When the leader obeys SIGTERM, a group member that ignores it is SIGKILLed afterwards."""
        _proc, identity, grandchild = _leader(spawn, "obey")
        with _watch(grandchild) as grandchild_fd:
            result = stop_process_group(identity, timeout=5)
            assert (StopOutcome.TERMINATED, True) == (result.outcome, _exited(grandchild_fd))

    def test_straggler_sweep_spares_processes_older_than_the_leader(self, spawn: Spawn) -> None:
        """The sweep only kills group members created no earlier than the leader's create time."""
        _proc, identity, grandchild = _leader(spawn, "ignore")
        with _watch(grandchild) as grandchild_fd:
            fds = _process._kill_stragglers(identity.pid, _started_later(identity, 5))
            time.sleep(NO_SIGNAL_GRACE)
            assert ([], False) == (fds, _exited(grandchild_fd))

    def test_negative_timeout_is_a_config_error(self, spawn: Spawn) -> None:
        """A negative or non-finite timeout is rejected before anything is signalled."""
        proc, identity = _sleeper(spawn)
        with pytest.raises(ConfigError, match="timeout"):
            stop_process_group(identity, timeout=-1)
        assert _alive_and_not_zombie(proc)


class TestStopProcessGroupAsync:
    async def test_leader_that_obeys_sigterm_is_terminated(self, spawn: Spawn) -> None:
        """The async stop of a leader that exits on SIGTERM gives TERMINATED quickly."""
        _proc, identity = _sleeper(spawn)
        result = await stop_process_group_async(identity, timeout=10)
        assert (StopOutcome.TERMINATED, True) == (result.outcome, result.elapsed < 2)

    async def test_leader_ignoring_sigterm_is_killed_with_its_group(self, spawn: Spawn) -> None:
        """The async stop SIGKILLs a leader ignoring SIGTERM after the timeout, grandchild included."""
        _proc, identity, grandchild = _leader(spawn, "ignore")
        with _watch(identity.pid) as leader_fd, _watch(grandchild) as grandchild_fd:
            result = await stop_process_group_async(identity, timeout=0.5)
            assert (StopOutcome.KILLED, True, True, True) == (
                result.outcome,
                result.elapsed >= 0.5,
                _exited(leader_fd),
                _exited(grandchild_fd),
            )

    async def test_cancellation_kills_the_group_before_propagating(self, spawn: Spawn) -> None:
        """Cancelled during the SIGTERM grace period, the stop SIGKILLs the whole group, then unwinds."""
        _proc, identity, grandchild = _leader(spawn, "ignore")
        with _watch(identity.pid) as leader_fd, _watch(grandchild) as grandchild_fd:
            with trio.move_on_after(0.3) as scope:
                await stop_process_group_async(identity, timeout=30)
            assert (True, True, True) == (
                scope.cancelled_caught,
                _exited(leader_fd, timeout=5),
                _exited(grandchild_fd, timeout=5),
            )

    async def test_dead_process_is_already_gone(self, spawn: Spawn) -> None:
        """The async stop of a reaped process gives ALREADY_GONE."""
        proc, identity = _sleeper(spawn)
        proc.kill()
        proc.wait()
        assert StopOutcome.ALREADY_GONE == (await stop_process_group_async(identity, timeout=0.5)).outcome
