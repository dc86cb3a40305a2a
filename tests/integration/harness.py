"""The shared harness of the tests that drive a real daemon: a test's own state dir and port (`Stack`),
the CLI against them, process identities (pid + create time, signalled only through a pidfd), polling
with a deadline, and one `free_port`.

Every process a test learns about (daemon and dev server, from `status --json`, the state files, or a
scan for the test's own unique state dir / port) is recorded by identity. `Stack.cleanup()` (the
`stack` fixture's teardown, conftest.py) runs `stop --state-dir`, then SIGCONT + SIGKILLs only recorded
identities that are still alive.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import psutil
import pytest

from stigmer_trio._boundary._launch import free_port as launch_free_port

RECOVERY = 15.0  # generous upper bound for "it recovered"
TEMPORAL = Path(sys.executable).parent / "temporal"
CLI_TIMEOUT = 60.0  # seconds any single CLI call may take before the test fails
POLL = 0.1  # seconds between status polls
# psutil derives create_time from clock ticks (1/100 s on Linux).
_CREATE_TIME_TOLERANCE = 0.011


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody uses right now, and nor its port + 1000 (the Web UI's)."""
    return launch_free_port(ui=True)


def http_get(url: str, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET `path` from the control endpoint at `url` (http://HOST:PORT): status and body."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def clean_env(**overrides: str) -> dict[str, str]:
    """The test process's environment without any STIGMER_TRIO_* setting, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STIGMER_TRIO_")}
    env.update(overrides)
    return env


@attrs.frozen
class Identity:
    """One process, by pid and create time: a pid alone may be reused."""

    pid: int
    create_time: float

    @classmethod
    def of(cls, pid: int) -> Identity | None:
        """The identity of the live process `pid`, or None if it is gone (or a zombie)."""
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                if proc.status() == psutil.STATUS_ZOMBIE:
                    return None
                return cls(pid, proc.create_time())
        except psutil.NoSuchProcess:
            return None

    def alive(self) -> bool:
        """Is this very process still running (a zombie has exited: it is not)?"""
        now = Identity.of(self.pid)
        return now is not None and abs(now.create_time - self.create_time) <= _CREATE_TIME_TOLERANCE

    def signal(self, sig: signal.Signals) -> bool:
        """Send `sig` through a pidfd, only if the pid is still this process; True if it was sent."""
        try:
            pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return False
        try:
            if not self.alive():  # checked while the pidfd pins the process: no pid reuse in between
                return False
            signal.pidfd_send_signal(pidfd, sig)
            return True
        except ProcessLookupError:
            return False
        finally:
            os.close(pidfd)

    def kill(self) -> None:
        """SIGCONT (in case it is stopped) then SIGKILL, if it is still this process."""
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)


def wait_gone(identities: list[Identity], timeout: float = 15.0) -> list[Identity]:
    """Wait until none of `identities` is alive; returns those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [identity for identity in identities if identity.alive()]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = POLL) -> Any:
    """Poll `predicate` until it returns something truthy; fail the test naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"not within {timeout:g} s: {what}")
        time.sleep(interval)


class Stack:
    """One test's state dir and port, the CLI against them, and the identities of what it started."""

    def __init__(self, state_dir: Path, port: int) -> None:
        self.state_dir = state_dir
        self.port = port
        self.tracked: dict[int, Identity] = {}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # --- the CLI ---------------------------------------------------------------------------------------
    def cli(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = CLI_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run `python -m stigmer_trio ARGS` (no STIGMER_TRIO_* from the outside unless given in `env`)."""
        result = subprocess.run(
            [sys.executable, "-m", "stigmer_trio", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=clean_env(**(env or {})),
            stdin=subprocess.DEVNULL,
        )
        self.track_state()
        return result

    def up_args(self, *extra: str) -> list[str]:
        """The arguments of `up --detach` on this stack's state dir and port."""
        return ["up", "--detach", "--state-dir", str(self.state_dir), "--port", str(self.port), *extra]

    def up(self, *extra: str) -> subprocess.CompletedProcess[str]:
        """`up --detach` on this stack's state dir and port."""
        return self.cli(*self.up_args(*extra))

    def popen_up(self) -> subprocess.Popen[str]:
        """`up --detach` in the background (the caller communicates with it)."""
        return subprocess.Popen(
            [sys.executable, "-m", "stigmer_trio", *self.up_args()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )

    def stop(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.cli("stop", "--state-dir", str(self.state_dir), *extra)

    def status(self) -> tuple[int, dict[str, Any]]:
        """`status --json`: the exit code and the report."""
        result = self.cli("status", "--json", "--state-dir", str(self.state_dir))
        assert "" == result.stderr, result.stderr
        report: dict[str, Any] = json.loads(result.stdout)
        self.track_report(report)
        return result.returncode, report

    def start(self, *extra: str) -> dict[str, Any]:
        """`up --detach`, asserting success; the ready status report."""
        result = self.up(*extra)
        assert 0 == result.returncode, (result.stdout, result.stderr, self.daemon_log())
        code, report = self.status()
        assert 0 == code, report
        return report

    def wait_status(
        self, predicate: Callable[[int, dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        """Poll `status --json` until predicate(code, report) holds; the report."""

        def check() -> dict[str, Any] | None:
            code, report = self.status()
            return report if predicate(code, report) else None

        report: dict[str, Any] = wait_for(check, timeout, what)
        return report

    # --- state files and process identities ------------------------------------------------------------
    def record(self, name: str) -> dict[str, Any] | None:
        """A state file (runtime.json / devserver.json) as JSON, None if missing or unreadable."""
        try:
            data: dict[str, Any] = json.loads((self.state_dir / name).read_text())
            return data
        except (OSError, ValueError):
            return None

    def daemon_log(self) -> str:
        try:
            return (self.state_dir / "logs" / "daemon.log").read_text()
        except OSError:
            return "(no daemon.log)"

    def track(self, pid: object) -> Identity | None:
        """Record the identity of `pid` (if it is a live process) for teardown; returns it."""
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            return None
        identity = Identity.of(pid)
        if identity is not None:
            self.tracked[pid] = identity  # a reused pid: the callers only pass pids that are ours now
        return identity

    def track_report(self, report: Mapping[str, Any]) -> None:
        for part in ("daemon", "dev_server"):
            section = report.get(part)
            if isinstance(section, dict):
                self.track(section.get("pid"))

    def track_state(self) -> None:
        """Record what the state files name and whatever runs with this (unique) state dir or port."""
        for name in ("runtime.json", "devserver.json"):
            record = self.record(name)
            if record is not None:
                pid = record.get("pid")
                # Only processes whose command line mentions our state dir: a planted record is not ours.
                if isinstance(pid, int) and self.mentions_us(pid):
                    self.track(pid)
        for proc in self.ours():
            self.track(proc.pid)

    def mentions_us(self, pid: int) -> bool:
        try:
            return self._is_ours(psutil.Process(pid).cmdline())
        except psutil.Error:
            return False

    def _is_ours(self, cmdline: list[str]) -> bool:
        if any(str(self.state_dir) in arg for arg in cmdline):
            return True
        # An in-memory dev server names no file in the state dir, but it does name our port.
        return "start-dev" in cmdline and any(
            arg == "--port" and value == str(self.port) for arg, value in itertools.pairwise(cmdline)
        )

    def ours(self) -> list[psutil.Process]:
        """Live (non-zombie) processes whose command line names this test's state dir or port."""
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            cmdline = proc.info["cmdline"] or []
            if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if self._is_ours(cmdline):
                found.append(proc)
        return found

    def servers(self) -> list[psutil.Process]:
        """Our live `temporal server start-dev` processes."""
        return [p for p in self.ours() if "start-dev" in (p.info["cmdline"] or [])]

    def daemons(self) -> list[psutil.Process]:
        """Our live daemons: `python -m stigmer_trio up` without --detach (foreground, or the daemon an
        `up --detach` started as a new interpreter), or forked by `up --detach` (the same command line
        as its parent, but the leader of a session of its own)."""
        found = []
        for p in self.ours():
            cmdline = p.info["cmdline"] or []
            if "stigmer_trio" not in cmdline:
                continue
            try:
                leader = os.getsid(p.pid) == p.pid
            except OSError:
                continue
            if "--detach" not in cmdline or leader:
                found.append(p)
        return found

    def cleanup(self) -> list[Identity]:
        """Stop everything; returns the identities that had to be killed (a test may assert on it)."""
        self.track_state()
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                [sys.executable, "-m", "stigmer_trio", "stop", "--state-dir", str(self.state_dir)],
                capture_output=True,
                text=True,
                timeout=CLI_TIMEOUT,
                check=False,
                env=clean_env(),
                stdin=subprocess.DEVNULL,
            )
        self.track_state()
        leftovers = wait_gone(list(self.tracked.values()), timeout=2.0)
        for identity in leftovers:
            identity.kill()
        wait_gone(leftovers, timeout=10.0)
        return leftovers
