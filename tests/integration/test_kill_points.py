"""The daemon SIGKILLed at many instants across `up`, a dev-server respawn, `restart` and `stop`.

After every kill point the same promise is checked with real processes: the next `up --detach` is
ready (adopting a healthy server, or stopping a provably-ours booting/unhealthy one and starting anew),
and `stop` then leaves no process that names this test's state dir or port. The kill points are either
moments the state files reveal (devserver.lock taken, devserver.json written while the server boots,
a new server pid after a respawn) plus a delay, or a delay after a command began; the daemon is found
through the state dir's processes and signalled through a pidfd, only if it is still that process.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from harness import Identity, Stack, clean_env, wait_for

from stigmer_trio._boundary._statefiles import lock_is_held

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # 21 real kill points: ~80 s

TRIGGER_TIMEOUT = 30.0  # seconds a kill point's moment may take to come
BACK = 60.0  # seconds the next `up` may take to be ready


def server_record(stack: Stack) -> dict[str, object]:
    return stack.record("devserver.json") or {}


def booting(stack: Stack) -> bool:
    return server_record(stack).get("phase") == "booting"


def lock_held(stack: Stack) -> bool:
    return lock_is_held(stack.state_dir / "devserver.lock")


def daemon(stack: Stack, not_pid: int | None = None) -> Identity | None:
    """The live daemon of this state dir (not `not_pid`), by identity."""
    for proc in stack.daemons():
        if proc.pid != not_pid:
            return Identity.of(proc.pid)
    return None


def wait_moment(predicate: Callable[[], object], what: str) -> None:
    """Poll tightly (1 ms): the windows hit here are a few milliseconds wide."""
    deadline = time.monotonic() + TRIGGER_TIMEOUT
    while not predicate():
        if time.monotonic() >= deadline:
            pytest.fail(f"kill point never came: {what}")
        time.sleep(0.001)


def kill(identity: Identity | None) -> bool:
    """SIGKILL the daemon if it is still that process (via a pidfd); whether a signal was sent."""
    return identity is not None and identity.signal(signal.SIGKILL)


def background(stack: Stack, *args: str) -> subprocess.Popen[str]:
    """A CLI command on this stack, running while the test kills the daemon under it."""
    return subprocess.Popen(
        [sys.executable, "-m", "stigmer_trio", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )


def finish(proc: subprocess.Popen[str], stack: Stack) -> None:
    """Let the interrupted command end (its verdict may be a failure: the daemon was killed under it)."""
    proc.communicate(timeout=120)
    stack.track_state()


def assert_recovers(stack: Stack, where: str) -> None:
    """The next `up` is ready; `stop` then leaves nothing of this state dir running."""
    result = stack.cli(*stack.up_args(), timeout=BACK)
    assert 0 == result.returncode, (where, result.stdout, result.stderr, stack.daemon_log()[-3000:])
    code, report = stack.status()
    assert 0 == code, (where, report)
    assert report["dev_server"]["pid"] is not None, (where, report)
    stopped = stack.stop()
    assert 0 == stopped.returncode, (where, stopped.stdout, stopped.stderr)
    wait_for(lambda: not stack.ours(), 15.0, f"{where}: nothing of the state dir left after stop")
    assert not lock_held(stack), where


def with_daemon(stack: Stack, predicate: Callable[[], object], what: str) -> Identity:
    """Wait for the daemon to exist and then for the moment; the daemon's identity."""
    wait_moment(lambda: daemon(stack) is not None, "a daemon process")
    identity = daemon(stack)
    assert identity is not None
    wait_moment(predicate, what)
    return identity


# --- up ------------------------------------------------------------------------------------------------
UP_POINTS = [
    ("daemon-appears", 0.0),
    ("daemon-appears", 0.25),
    ("lock-taken", 0.0),
    ("booting", 0.0),
    ("booting", 0.03),
    ("booting", 0.1),
    ("booting", 0.2),
    ("ready", 0.0),
]


@pytest.mark.parametrize(("moment", "delay"), UP_POINTS, ids=[f"{m}+{d:g}s" for m, d in UP_POINTS])
def test_killed_during_up(stack: Stack, moment: str, delay: float) -> None:
    up = background(stack, *stack.up_args())
    predicate: Callable[[], object] = {
        "daemon-appears": lambda: True,
        "lock-taken": lambda: lock_held(stack),
        "booting": lambda: booting(stack),
        "ready": lambda: server_record(stack).get("phase") == "ready",
    }[moment]
    identity = with_daemon(stack, predicate, moment)
    time.sleep(delay)
    kill(identity)
    finish(up, stack)
    assert_recovers(stack, f"up, {moment} + {delay:g} s")


def test_sigterm_while_the_daemon_imports_stops_its_early_server(stack: Stack) -> None:
    """SIGTERM while the daemon still imports (its dev server, spawned first, boots meanwhile): the
    daemon stops that server and leaves (exit 0) instead of dying and orphaning it; `up` says it exited
    before it was ready, and nothing of the state dir runs afterwards."""
    up = background(stack, *stack.up_args())
    identity = with_daemon(stack, lambda: booting(stack), "booting")
    server = Identity.of(int(server_record(stack)["pid"]))  # type: ignore[call-overload]
    assert identity.signal(signal.SIGTERM)
    out, err = up.communicate(timeout=120)
    stack.track_state()
    assert 1 == up.returncode, (out, err)
    assert "exited with code 0 before it was ready" in err, err
    wait_for(lambda: not stack.ours(), 15.0, "nothing of the state dir left after the SIGTERM")
    assert server is not None
    assert not server.alive()
    assert not (stack.state_dir / "devserver.json").exists()
    assert_recovers(stack, "up after a SIGTERM while importing")


# --- a respawn of the dev server -----------------------------------------------------------------------
RESPAWN_POINTS = [("server-killed", 0.0), ("new-server", 0.0), ("new-server", 0.03), ("new-server", 0.15)]


@pytest.mark.parametrize(("moment", "delay"), RESPAWN_POINTS, ids=[f"{m}+{d:g}s" for m, d in RESPAWN_POINTS])
def test_killed_during_respawn(stack: Stack, moment: str, delay: float) -> None:
    report = stack.start()
    old = Identity.of(report["dev_server"]["pid"])
    identity = daemon(stack)
    assert old is not None
    assert identity is not None
    assert old.signal(signal.SIGKILL)
    if moment == "new-server":
        wait_moment(lambda: server_record(stack).get("pid") not in (None, old.pid), "a new server record")
    time.sleep(delay)
    kill(identity)
    stack.track_state()
    assert_recovers(stack, f"respawn, {moment} + {delay:g} s")


# --- restart -------------------------------------------------------------------------------------------
RESTART_POINTS = [("old-stopping", 0.2), ("old-stopping", 0.8), ("new-daemon", 0.0), ("new-daemon", 0.4)]


@pytest.mark.parametrize(("moment", "delay"), RESTART_POINTS, ids=[f"{m}+{d:g}s" for m, d in RESTART_POINTS])
def test_killed_during_restart(stack: Stack, moment: str, delay: float) -> None:
    stack.start()
    first = daemon(stack)
    assert first is not None
    restart = background(stack, "restart", "--state-dir", str(stack.state_dir), "--port", str(stack.port))
    if moment == "old-stopping":
        time.sleep(delay)
        kill(first)
    else:
        wait_moment(lambda: daemon(stack, not_pid=first.pid) is not None, "the new daemon")
        time.sleep(delay)
        kill(daemon(stack, not_pid=first.pid))
    finish(restart, stack)
    assert_recovers(stack, f"restart, {moment} + {delay:g} s")


# --- stop ----------------------------------------------------------------------------------------------
STOP_POINTS = [0.05, 0.2, 0.5, 1.0]


@pytest.mark.parametrize("delay", STOP_POINTS, ids=[f"stop+{d:g}s" for d in STOP_POINTS])
def test_killed_during_stop(stack: Stack, delay: float) -> None:
    stack.start()
    identity = daemon(stack)
    stop = background(stack, "stop", "--state-dir", str(stack.state_dir))
    time.sleep(delay)
    kill(identity)
    finish(stop, stack)
    assert_recovers(stack, f"stop + {delay:g} s")


def test_kill_points_cover_the_phases() -> None:
    """At least 20 kill points, spread over up, a respawn, restart and stop."""
    counts = [len(UP_POINTS), len(RESPAWN_POINTS), len(RESTART_POINTS), len(STOP_POINTS)]
    assert sum(counts) >= 20
    assert all(count >= 4 for count in counts)
