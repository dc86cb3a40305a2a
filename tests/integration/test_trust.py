"""Whose state dir, whose process: `stop` and `status` trust only a state dir and state files that no one
but us can write, and a process that runs as us, holds the lock and matches its record by start ticks."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import psutil
import pytest

from stigmer_trio._boundary import _process
from stigmer_trio._boundary._process import (
    ProcessIdentity,
    Verdict,
    identity_of,
    signal_verified,
    stop_process_group,
    verify,
)
from stigmer_trio._boundary._statefiles import (
    FileLock,
    PidRecord,
    UntrustedStateFile,
    check_trusted_dir,
    ensure_state_dir,
    lock_is_held,
    read_boot_id,
    read_pid_file,
    read_start_ticks,
    write_pid_file,
)
from stigmer_trio._cli import _commands
from stigmer_trio._cli._common import UsageError
from stigmer_trio._core._errors import ConfigError, IdentityMismatch
from stigmer_trio._core._layout import StateLayout, default_state_dir

pytestmark = pytest.mark.integration

ROOT = os.geteuid() == 0
NOBODY = 65534
needs_root = pytest.mark.skipif(not ROOT, reason="needs root: acts as another user (nobody) or drops caps")

# Takes the lock at argv[1] and holds it until stdin closes (or it is killed).
_HOLDER = """
import sys
from stigmer_trio._boundary._statefiles import FileLock
lock = FileLock(sys.argv[1])
print("WON" if lock.acquire() else "HELD", flush=True)
sys.stdin.read()
"""

# A daemon as `stop` sees one, however it was started: it holds runtime.lock and runtime.json names it.
_FAKE_DAEMON = """
import os, sys, time
import psutil
from stigmer_trio._boundary._statefiles import FileLock, PidRecord, write_pid_file
state = sys.argv[1]
lock = FileLock(state + "/runtime.lock")
assert lock.acquire()
me = psutil.Process()
record = PidRecord(os.getpid(), me.create_time(), me.cmdline(), time.time(), {"ready": True})
write_pid_file(state + "/runtime.json", record)
print("ready", flush=True)
sys.stdin.read()
time.sleep(60)
"""

Spawn = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start processes in a new session; SIGKILL whatever is left of them (only them) afterwards."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, stdin: int = subprocess.DEVNULL) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            list(args), stdin=stdin, stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        with proc:
            if proc.poll() is None:  # not reaped yet: its pid and pgid are still its own
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)


def _sleeper(spawn: Spawn, *prefix: str) -> tuple[subprocess.Popen[str], ProcessIdentity]:
    proc = spawn(*prefix, "sleep", "60")
    deadline = time.monotonic() + 5
    while True:  # setpriv execs sleep in the same process: wait for the final command line
        identity = identity_of(proc.pid)
        assert identity is not None
        if identity.cmdline == ("sleep", "60") or time.monotonic() > deadline:
            return proc, identity
        time.sleep(0.005)


def _holder(spawn: Spawn, lock: Path) -> subprocess.Popen[str]:
    proc = spawn(sys.executable, "-c", _HOLDER, str(lock), stdin=subprocess.PIPE)
    assert proc.stdout is not None
    assert "WON\n" == proc.stdout.readline()
    return proc


def _fake_daemon(spawn: Spawn, state_dir: Path) -> subprocess.Popen[str]:
    proc = spawn(sys.executable, "-c", _FAKE_DAEMON, str(state_dir), stdin=subprocess.PIPE)
    assert proc.stdout is not None
    assert "ready\n" == proc.stdout.readline()
    return proc


FakeDaemon = tuple[Path, subprocess.Popen[str]]


@pytest.fixture
def fake_daemon(tmp_path: Path, spawn: Spawn) -> FakeDaemon:
    """A trusted state dir and a daemon in it (holding runtime.lock, named by runtime.json)."""
    state_dir = ensure_state_dir(tmp_path / "state")
    return state_dir, _fake_daemon(spawn, state_dir)


def _forge(state_dir: Path, identity: ProcessIdentity, spawn: Spawn) -> None:
    """What someone who can write `state_dir` can do: accurate records of `identity` (pid, start time
    and command line are all readable in /proc), with both locks held by a process of theirs."""
    state_dir.mkdir(mode=0o700, exist_ok=True)
    record = identity.to_pid_record(extra={"ready": True, "address": "127.0.0.1:1"}).to_json()
    for name in ("runtime.json", "devserver.json"):
        (state_dir / name).write_text(json.dumps(record) + "\n")
    for name in ("runtime.lock", "devserver.lock"):
        _holder(spawn, state_dir / name)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STIGMER_TRIO_")}
    return subprocess.run(
        [sys.executable, "-m", "stigmer_trio", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def _one_line(text: str) -> str:
    lines = text.splitlines()
    assert 1 == len(lines), text
    assert "Traceback" not in text
    return lines[0]


def _untouched(proc: subprocess.Popen[str]) -> bool:
    """Alive and never stopped or terminated (a SIGTERM kills `sleep` within milliseconds)."""
    time.sleep(0.05)
    alive = (psutil.STATUS_SLEEPING, psutil.STATUS_RUNNING)
    return proc.poll() is None and psutil.Process(proc.pid).status() in alive


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """Every signal this process sends through pidfd_send_signal or killpg, recorded instead of sent."""
    sent: list[tuple[str, int, int]] = []

    def pidfd_send_signal(fd: int, sig: int, *args: Any) -> None:
        sent.append(("pidfd", fd, sig))

    def killpg(pgid: int, sig: int) -> None:
        sent.append(("killpg", pgid, sig))

    monkeypatch.setattr(signal, "pidfd_send_signal", pidfd_send_signal)
    monkeypatch.setattr(os, "killpg", killpg)
    return sent


class TestUntrustedStateDir:
    @needs_root
    def test_a_state_dir_owned_by_another_user_is_refused(self, tmp_path: Path, spawn: Spawn) -> None:
        """As root, `stop` on nobody's state dir with accurate records of our sleep: exit 2, one line."""
        sleeper, identity = _sleeper(spawn)
        state_dir = tmp_path / "state"
        _forge(state_dir, identity, spawn)
        os.chown(state_dir, NOBODY, NOBODY)
        result = _cli("stop", "--state-dir", str(state_dir))
        assert 2 == result.returncode, result
        line = _one_line(result.stderr)
        assert str(state_dir) in line
        assert f"owned by uid {NOBODY}" in line
        assert _untouched(sleeper)
        assert 2 == _cli("status", "--state-dir", str(state_dir)).returncode

    def test_a_world_writable_state_dir_of_ours_is_refused(self, tmp_path: Path, spawn: Spawn) -> None:
        """A 0777 state dir we own, accurate records of our sleep, locks held: `stop` exits 2, one line."""
        sleeper, identity = _sleeper(spawn)
        state_dir = tmp_path / "state"
        _forge(state_dir, identity, spawn)
        state_dir.chmod(0o777)
        result = _cli("stop", "--state-dir", str(state_dir))
        assert 2 == result.returncode, result
        assert "writable by group or others (mode 0777)" in _one_line(result.stderr)
        assert _untouched(sleeper)

    @needs_root
    def test_a_record_owned_by_another_user_is_refused(self, tmp_path: Path, spawn: Spawn) -> None:
        """Our 0700 state dir, but runtime.json belongs to nobody: `stop` exits 2 naming the file."""
        sleeper, identity = _sleeper(spawn)
        state_dir = tmp_path / "state"
        _forge(state_dir, identity, spawn)
        os.chown(state_dir / "runtime.json", NOBODY, NOBODY)
        result = _cli("stop", "--state-dir", str(state_dir))
        assert 2 == result.returncode, result
        assert "runtime.json" in _one_line(result.stderr)
        assert _untouched(sleeper)

    def test_a_group_writable_lock_file_is_refused(self, tmp_path: Path) -> None:
        """A lock file others may write is refused by lock_is_held and FileLock alike."""
        lock = tmp_path / "runtime.lock"
        lock.touch()
        lock.chmod(0o620)
        with pytest.raises(UntrustedStateFile, match="mode 0620"):
            lock_is_held(lock)
        with pytest.raises(UntrustedStateFile, match="mode 0620"):
            FileLock(lock).acquire()

    def test_what_our_own_code_creates_is_trusted(self, tmp_path: Path) -> None:
        """Under umask 0, ensure_state_dir, FileLock and write_pid_file still create only trusted files."""
        old = os.umask(0)
        try:
            state_dir = ensure_state_dir(tmp_path / "a" / "b" / "state")
            layout = StateLayout(state_dir)
            for sub in (layout.logs, layout.home):
                ensure_state_dir(sub)
            with FileLock(layout.runtime_lock):
                assert lock_is_held(layout.runtime_lock)
            me = psutil.Process()
            write_pid_file(layout.runtime_record, PidRecord(os.getpid(), me.create_time(), me.cmdline(), 1.0))
        finally:
            os.umask(old)
        for path in (state_dir, layout.logs, layout.home):
            check_trusted_dir(path)
        record = read_pid_file(layout.runtime_record)
        assert record is not None
        assert os.getpid() == record.pid
        assert 3 == _cli("status", "--state-dir", str(state_dir)).returncode

    def test_the_default_state_dir_is_trusted(self, tmp_path: Path) -> None:
        """The XDG default (created by ensure_state_dir under a fresh HOME) passes the rule."""
        env = {"HOME": str(tmp_path)}
        state_dir = ensure_state_dir(default_state_dir(env))
        check_trusted_dir(state_dir)
        assert 0o700 == state_dir.stat().st_mode & 0o777


class TestProofOfTheDaemon:
    def test_a_daemon_holding_its_lock_is_stopped(self, fake_daemon: FakeDaemon) -> None:
        """A process that holds runtime.lock and is named by runtime.json is stopped, whatever its argv."""
        state_dir, daemon = fake_daemon
        result = _cli("stop", "--state-dir", str(state_dir), "--timeout", "5")
        assert 0 == result.returncode, result
        assert f"stopped daemon pid {daemon.pid}" in result.stdout
        assert -signal.SIGTERM == daemon.wait(timeout=5)

    def test_an_accurate_record_of_a_process_without_the_lock_is_refused(
        self, tmp_path: Path, spawn: Spawn
    ) -> None:
        """Trusted dir, accurate runtime.json of our sleep, but someone else holds runtime.lock: exit 1."""
        sleeper, identity = _sleeper(spawn)
        state_dir = ensure_state_dir(tmp_path / "state")
        write_pid_file(state_dir / "runtime.json", identity.to_pid_record(extra={"ready": True}))
        holder = _holder(spawn, state_dir / "runtime.lock")
        result = _cli("stop", "--state-dir", str(state_dir))
        assert 1 == result.returncode, result
        line = _one_line(result.stderr)
        assert f"its holder is not pid {sleeper.pid}" in line
        assert "not touching it" in line
        assert _untouched(sleeper)
        assert holder.poll() is None

    @needs_root
    def test_a_process_of_another_uid_is_never_ours(self, spawn: Spawn) -> None:
        """nobody's sleep, recorded accurately: OTHER; neither signal_verified nor a group stop sends."""
        sleeper, identity = _sleeper(
            spawn, "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"
        )
        assert NOBODY == psutil.Process(sleeper.pid).uids().real
        assert Verdict.OTHER == verify(identity)
        with pytest.raises(IdentityMismatch, match="verdict OTHER"):
            signal_verified(identity, signal.SIGTERM)
        with pytest.raises(IdentityMismatch, match="verdict OTHER"):
            stop_process_group(identity, timeout=1)
        assert _untouched(sleeper)

    def test_pid_1_is_never_signalled(self, sends: list[tuple[str, int, int]]) -> None:
        """An accurate identity of PID 1: signal_verified and stop_process_group refuse; nothing is sent.
        Where PID 1 is ours (root here) the PID 1 rule itself refuses, naming it; elsewhere the uid rule
        (or an unreadable /proc/1) does, and still nothing is sent."""
        init = identity_of(1) or ProcessIdentity(pid=1, create_time=0.0, cmdline=("init",))
        ours = verify(init) is Verdict.SAME
        with pytest.raises(IdentityMismatch, match="pid 1" if ours else None):
            signal_verified(init, signal.SIGTERM)
        with pytest.raises(IdentityMismatch, match="pid 1" if ours else None):
            stop_process_group(init, timeout=1)
        assert [] == sends

    def test_our_own_process_and_group_are_never_signalled(self, sends: list[tuple[str, int, int]]) -> None:
        """Accurate identities of this process and of our group's leader: refused; nothing is sent."""
        for pid in {os.getpid(), os.getpgrp()}:
            identity = identity_of(pid)
            assert identity is not None
            with pytest.raises(IdentityMismatch, match=f"pid {pid}"):
                signal_verified(identity, signal.SIGTERM)
        assert [] == sends

    def test_stop_never_signals_pid_1_named_by_a_trusted_record(
        self,
        tmp_path: Path,
        spawn: Spawn,
        sends: list[tuple[str, int, int]],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """runtime.json in our own dir names PID 1 (accurately), the lock is held: `stop` sends nothing."""
        init = identity_of(1) or ProcessIdentity(pid=1, create_time=0.0, cmdline=("init",))
        state_dir = ensure_state_dir(tmp_path / "state")
        write_pid_file(state_dir / "runtime.json", init.to_pid_record())
        _holder(spawn, state_dir / "runtime.lock")
        assert 1 == _commands.stop(state_dir, 1.0)
        assert "not touching it" in capsys.readouterr().err
        assert [] == sends


def _step_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wall clock stepped 5 minutes ahead, as psutil sees it: the boot time it adds to a process's
    start ticks (btime of /proc/stat) moves with every step of the wall clock."""
    from psutil import _pslinux

    real = _pslinux.boot_time()
    monkeypatch.setattr(_pslinux, "boot_time", lambda: real + 300.0)


class TestClockStep:
    def test_verify_survives_a_stepped_clock(self, spawn: Spawn, monkeypatch: pytest.MonkeyPatch) -> None:
        """After a step, create_time moves: start ticks + boot id still say SAME; create_time alone not."""
        sleeper, identity = _sleeper(spawn)
        assert identity.start_ticks == read_start_ticks(sleeper.pid)
        assert identity.boot_id == read_boot_id()
        _step_clock(monkeypatch)
        assert psutil.Process(sleeper.pid).create_time() - identity.create_time == pytest.approx(300, abs=0.1)
        assert Verdict.SAME == verify(identity)
        old_record = attrs.evolve(identity, boot_id=None, start_ticks=None)
        assert Verdict.OTHER == verify(old_record)  # what the wall-clock comparison alone concludes

    def test_another_boot_or_other_ticks_are_other(self, spawn: Spawn) -> None:
        """The same ticks in another boot, or other ticks in this one, are another process."""
        _sleeper_proc, identity = _sleeper(spawn)
        assert identity.start_ticks is not None
        assert Verdict.OTHER == verify(attrs.evolve(identity, boot_id="another-boot"))
        assert Verdict.OTHER == verify(attrs.evolve(identity, start_ticks=identity.start_ticks + 1))

    def test_records_carry_the_boot_fields_and_old_ones_still_read(
        self, tmp_path: Path, spawn: Spawn
    ) -> None:
        """write_pid_file stamps boot id + start ticks; a record without them reads and verifies as before."""
        sleeper, identity = _sleeper(spawn)
        bare = PidRecord(identity.pid, identity.create_time, identity.cmdline, 1.0)
        write_pid_file(tmp_path / "new.json", bare)
        stamped = read_pid_file(tmp_path / "new.json")
        assert stamped is not None
        assert (read_boot_id(), read_start_ticks(sleeper.pid)) == (stamped.boot_id, stamped.start_ticks)
        old = {"pid": identity.pid, "create_time": identity.create_time, "cmdline": list(identity.cmdline)}
        (tmp_path / "old.json").write_text(json.dumps({**old, "started_at": 1.0}))
        legacy = read_pid_file(tmp_path / "old.json")
        assert legacy is not None
        assert (None, None) == (legacy.boot_id, legacy.start_ticks)
        assert Verdict.SAME == verify(legacy)

    def test_a_record_of_another_process_is_not_stamped(self, tmp_path: Path, spawn: Spawn) -> None:
        """A record whose create time is not the live pid's gets no boot fields: it is never vouched for."""
        _proc, identity = _sleeper(spawn)
        write_pid_file(
            tmp_path / "r.json", PidRecord(identity.pid, identity.create_time - 50, identity.cmdline, 1.0)
        )
        record = read_pid_file(tmp_path / "r.json")
        assert record is not None
        assert (None, None) == (record.boot_id, record.start_ticks)
        assert Verdict.OTHER == verify(record)

    def test_stop_after_a_clock_step(
        self, fake_daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The daemon recorded before a 5-minute step is still stopped (it was refused before)."""
        state_dir, daemon = fake_daemon
        _step_clock(monkeypatch)
        assert 0 == _commands.stop(state_dir, 5.0)
        assert f"stopped daemon pid {daemon.pid}" in capsys.readouterr().out
        assert -signal.SIGTERM == daemon.wait(timeout=5)

    def test_a_group_stop_after_a_clock_step(self, spawn: Spawn, monkeypatch: pytest.MonkeyPatch) -> None:
        """stop_process_group on an identity taken before the step still stops the group."""
        _proc, identity = _sleeper(spawn)
        _step_clock(monkeypatch)
        assert _process.StopOutcome.TERMINATED == stop_process_group(identity, timeout=5).outcome
        assert Verdict.DEAD == verify(identity)  # it reaped our child, too


class TestPidfdFirst:
    def test_stop_opens_the_pidfd_before_it_verifies(
        self, fake_daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`stop`: pidfd_open of the daemon's pid, then verify, then the signal; never verify first."""
        state_dir, daemon = fake_daemon
        events: list[str] = []
        real_open, real_verify, real_send = os.pidfd_open, _process.verify, signal.pidfd_send_signal

        def pidfd_open(pid: int, *args: Any) -> int:
            events.append(f"pidfd_open {pid}")
            return real_open(pid, *args)

        def verify_(identity: Any) -> Verdict:
            events.append(f"verify {identity.pid}")
            return real_verify(identity)

        def send(fd: int, sig: int, *args: Any) -> None:
            events.append(f"signal {sig}")
            real_send(fd, sig, *args)

        monkeypatch.setattr(os, "pidfd_open", pidfd_open)
        monkeypatch.setattr(_process, "verify", verify_)
        monkeypatch.setattr(signal, "pidfd_send_signal", send)
        assert 0 == _commands.stop(state_dir, 5.0)
        pid = daemon.pid
        assert [f"pidfd_open {pid}", f"verify {pid}", f"signal {signal.SIGTERM}"] == [
            e for e in events if e.endswith(str(pid)) or e.startswith("signal")
        ][:3]
        assert "stopped daemon" in capsys.readouterr().out


class TestStopTimeouts:
    @pytest.mark.parametrize("wait", [math.inf, math.nan, -1.0])
    def test_a_bad_wait_is_refused_before_any_signal(self, spawn: Spawn, wait: float) -> None:
        """signal_verified(wait=inf / nan / -1): ConfigError, and the process got nothing."""
        sleeper, identity = _sleeper(spawn)
        with pytest.raises(ConfigError, match="wait must be a finite number"):
            signal_verified(identity, signal.SIGTERM, wait=wait)
        assert _untouched(sleeper)

    def test_a_huge_wait_does_not_overflow(self, spawn: Spawn) -> None:
        """wait=1e7 s (past poll's int milliseconds): the process is signalled and seen to exit."""
        sleeper, identity = _sleeper(spawn)
        assert signal_verified(identity, signal.SIGTERM, wait=1e7)
        assert -signal.SIGTERM == sleeper.wait(timeout=5)

    @pytest.mark.parametrize("timeout", [math.inf, math.nan, -1.0])
    def test_stop_refuses_a_bad_timeout_before_anything(
        self, fake_daemon: FakeDaemon, timeout: float, sends: list[tuple[str, int, int]]
    ) -> None:
        """`stop` with timeout inf / nan / -1: a UsageError before any signal; the daemon runs on."""
        state_dir, daemon = fake_daemon
        with pytest.raises(UsageError, match="--timeout must be a finite number >= 0"):
            _commands.stop(state_dir, timeout)
        assert [] == sends
        assert daemon.poll() is None


class TestStateFileErrors:
    @needs_root
    def test_an_unreadable_lock_file_is_one_line(self, tmp_path: Path) -> None:
        """`status` (as root without CAP_DAC_OVERRIDE) on a mode-000 runtime.lock: exit 2, one line."""
        state_dir = ensure_state_dir(tmp_path / "state")
        (state_dir / "runtime.lock").touch(mode=0o000)
        (state_dir / "runtime.lock").chmod(0o000)
        drop = "-dac_override,-dac_read_search"
        result = subprocess.run(
            [
                *("setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}"),
                *(sys.executable, "-m", "stigmer_trio", "status", "--state-dir", str(state_dir)),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert 2 == result.returncode, result
        line = _one_line(result.stderr)
        assert "runtime.lock" in line
        assert "Permission denied" in line

    def test_running_out_of_descriptors_is_named_as_such(self, tmp_path: Path) -> None:
        """ensure_state_dir with no descriptor left says EMFILE, not that the state dir is unwritable."""
        state_dir = ensure_state_dir(tmp_path / "state")
        script = """
import os, resource, sys
from stigmer_trio._boundary._statefiles import ensure_state_dir
from stigmer_trio._core._errors import ConfigError
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
try:
    ensure_state_dir(sys.argv[1])
except ConfigError as exc:
    print(exc)
"""
        result = subprocess.run(
            [sys.executable, "-c", script, str(state_dir)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert "too many open files (EMFILE) while probing" in result.stdout
        assert "not writable" not in result.stdout
