"""The daemon under systemd's notification protocol, with a real AF_UNIX datagram socket standing in for
systemd (which does not run here): a real foreground `python -m stigmer_trio up` with NOTIFY_SOCKET and
WATCHDOG_USEC sends READY=1 once ready, STATUS= as its dev server is killed and replaced, WATCHDOG=1
every WATCHDOG_USEC / 2 from its event loop (none while it is stopped), STOPPING=1 on SIGTERM, and
exits 0."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import RECOVERY, Identity, Stack, clean_env, wait_gone

pytestmark = pytest.mark.integration

WATCHDOG_USEC = 1_000_000  # pings every 0.5 s
BOOT = 60.0  # seconds a first start may take (imports, the server's first boot) on a loaded machine


class FakeSystemd:
    """The listening end of NOTIFY_SOCKET: every datagram, parsed, with the time it arrived."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name  # the NOTIFY_SOCKET value
        self.received: list[tuple[float, dict[str, str]]] = []

    def receive(self, timeout: float) -> dict[str, str] | None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return None
        message = dict(line.split("=", 1) for line in data.decode().split("\n"))
        self.received.append((time.monotonic(), message))
        return message

    def wait_for(self, key: str, timeout: float, contains: str = "") -> dict[str, str]:
        """The next message with `key` (and `contains` in its value); fail at the deadline."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is not None and key in message and contains in message[key]:
                return message
        pytest.fail(f"no {key}{'~' + contains if contains else ''} within {timeout:g} s: {self.received}")

    def collect(self, seconds: float) -> list[tuple[float, dict[str, str]]]:
        """Everything that arrives in the next `seconds`."""
        start = len(self.received)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.receive(left)
        return self.received[start:]


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    """A datagram socket bound at a path under tmp_path."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        yield FakeSystemd(sock, str(tmp_path / "notify"))


@pytest.fixture
def abstract_systemd() -> Iterator[FakeSystemd]:
    """A datagram socket bound to an abstract name: NOTIFY_SOCKET='@...'."""
    name = f"@stigmer-trio-test/{os.getpid()}/{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name[1:])
        yield FakeSystemd(sock, name)


def pings(messages: list[tuple[float, dict[str, str]]]) -> list[float]:
    return [at for at, message in messages if message.get("WATCHDOG") == "1"]


def largest_gap(times: list[float]) -> float:
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def start_daemon(stack: Stack, tmp_path: Path, **env: str) -> subprocess.Popen[bytes]:
    """The foreground daemon, as systemd's ExecStart runs it; its log in tmp_path/daemon.err."""
    with open(tmp_path / "daemon.err", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-P", "-m", "stigmer_trio", "up", "--state-dir", str(stack.state_dir),
             "--port", str(stack.port)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=clean_env(**env),
        )  # fmt: skip


def finish(daemon: subprocess.Popen[bytes]) -> None:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGCONT)
        daemon.kill()
    daemon.wait(timeout=30)


class TestNotify:
    def test_ready_status_watchdog_stopping(self, stack: Stack, systemd: FakeSystemd, tmp_path: Path) -> None:
        """The whole protocol over one daemon's life: READY=1 after it is ready and connected, WATCHDOG=1
        every WATCHDOG_USEC / 2, STATUS= restarting -> connected when its dev server is SIGKILLed, no
        WATCHDOG=1 while it is SIGSTOPped (a wedged loop), STOPPING=1 on SIGTERM, then exit 0."""
        daemon = start_daemon(stack, tmp_path, NOTIFY_SOCKET=systemd.name, WATCHDOG_USEC=str(WATCHDOG_USEC))
        log = tmp_path / "daemon.err"
        try:
            ready = systemd.wait_for("READY", BOOT)
            code, report = stack.status()
            assert 0 == code, report  # READY=1 came once the runtime was ready
            assert str(daemon.pid) == ready["MAINPID"]
            assert ready["STATUS"].startswith(f"ready: Temporal at 127.0.0.1:{stack.port}")
            before = [m.get("STATUS", "") for _, m in systemd.received]
            assert any(s.startswith("connected") for s in before), before  # connected before READY=1

            steady = pings(systemd.collect(3.0))
            assert 5 <= len(steady) <= 8, steady  # every 0.5 s
            assert largest_gap(steady) < WATCHDOG_USEC / 1e6, steady

            server = Identity.of(report["dev_server"]["pid"])
            assert server is not None
            mark = len(systemd.received)
            assert server.signal(signal.SIGKILL)
            systemd.wait_for("STATUS", RECOVERY, "restarting")
            systemd.wait_for("STATUS", RECOVERY, "connected")
            code, report = stack.status()
            replaced = Identity.of(report["dev_server"]["pid"])
            assert replaced is not None
            assert server != replaced
            during = pings(systemd.received[mark:] + systemd.collect(1.0))
            assert largest_gap(during) < WATCHDOG_USEC / 1e6, during  # the restart never starves the loop

            wedged = Identity.of(daemon.pid)
            assert wedged is not None
            assert wedged.signal(signal.SIGSTOP)
            systemd.collect(0.2)  # a ping already in flight
            assert [] == pings(systemd.collect(1.5))  # stopped: no ping (systemd would restart it)
            assert wedged.signal(signal.SIGCONT)
            systemd.wait_for("WATCHDOG", 2.0)

            mark = len(systemd.received)
            daemon.send_signal(signal.SIGTERM)
            stopping = systemd.wait_for("STOPPING", RECOVERY)
            assert "stopping (SIGTERM)" == stopping["STATUS"]
            assert 0 == daemon.wait(timeout=RECOVERY), log.read_text()
            after = [m for _, m in systemd.received[mark:] + systemd.collect(0.2)]
            assert [] == [m for m in after if "STATUS" in m and "STOPPING" not in m]  # no "restarting"
        finally:
            finish(daemon)
        assert [] == wait_gone([replaced])  # the daemon stopped its server before it exited
        assert 3 == stack.status()[0]
        assert "cannot notify systemd" not in log.read_text()

    def test_abstract_socket_and_another_pids_watchdog(
        self, stack: Stack, abstract_systemd: FakeSystemd, tmp_path: Path
    ) -> None:
        """NOTIFY_SOCKET='@name' works; WATCHDOG_PID naming another process: no WATCHDOG=1 is sent."""
        systemd = abstract_systemd
        daemon = start_daemon(
            stack, tmp_path, NOTIFY_SOCKET=systemd.name, WATCHDOG_USEC="200000", WATCHDOG_PID=str(os.getpid())
        )
        try:
            systemd.wait_for("READY", BOOT)
            assert [] == pings(systemd.received + systemd.collect(1.0))
            daemon.send_signal(signal.SIGTERM)
            systemd.wait_for("STOPPING", RECOVERY)
            assert 0 == daemon.wait(timeout=RECOVERY)
        finally:
            finish(daemon)


class TestNoListener:
    def test_daemon_runs_when_systemd_does_not_answer(self, stack: Stack, tmp_path: Path) -> None:
        """NOTIFY_SOCKET naming nothing: the daemon is ready anyway, says so once in its log, stops with 0."""
        daemon = start_daemon(
            stack, tmp_path, NOTIFY_SOCKET=str(tmp_path / "nobody"), WATCHDOG_USEC=str(WATCHDOG_USEC)
        )
        try:
            stack.wait_status(lambda code, _: code == 0, BOOT, "daemon ready without a listening systemd")
            daemon.send_signal(signal.SIGTERM)
            assert 0 == daemon.wait(timeout=RECOVERY)
        finally:
            finish(daemon)
        assert 1 == (tmp_path / "daemon.err").read_text().count("cannot notify systemd")
