"""Trusting a dev server: only a server this state dir spawned is adopted or stopped, only one spawned
with this configuration is adopted, it answers on its port in person, and it gets neither the
runtime's environment nor world-readable files."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio
import trio_asyncio
from harness import TEMPORAL, Identity, Stack, free_port, wait_for, wait_gone

from stigmer_trio import ConnectionConfig, DevServerConfig
from stigmer_trio._boundary._holdings import listens_on
from stigmer_trio._boundary._launch import server_env
from stigmer_trio._boundary._statefiles import FileLock, PidRecord, ensure_state_dir, write_pid_file
from stigmer_trio._core._errors import DevServerError
from stigmer_trio._core._events import ConnectionState, ServerReady
from stigmer_trio._core._layout import StateLayout
from stigmer_trio._tree._cell import ConnectionCell
from stigmer_trio._tree._hub import EventHub
from stigmer_trio._tree._serve_connection import serve_connection
from stigmer_trio._tree._serve_devserver import DevServer

pytestmark = pytest.mark.integration


def server_of(report: dict[str, Any]) -> Identity:
    identity = Identity.of(report["dev_server"]["pid"])
    assert identity is not None, report
    return identity


@pytest.fixture(scope="module")
def stranger() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A real Temporal dev server that this runtime did not spawn (in memory), and its port."""
    port = free_port()
    proc = subprocess.Popen(
        [str(TEMPORAL), "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port),
         "--http-port", str(free_port()), "--metrics-port", str(free_port())],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: listens_on(proc.pid, port), 15.0, "the stranger server listens")
        yield proc, port
    finally:
        proc.kill()
        proc.wait()


def record_of(pid: int, port: int) -> PidRecord:
    """A devserver.json naming `pid` accurately (pid, create time, command line) on `port`."""
    proc = psutil.Process(pid)
    extra = {"address": f"127.0.0.1:{port}", "phase": "ready"}
    return PidRecord(pid, proc.create_time(), proc.cmdline(), time.time(), extra)


class TestOnlyOurServer:
    def test_stop_leaves_a_recorded_stranger_alone(
        self, stack: Stack, stranger: tuple[subprocess.Popen[bytes], int]
    ) -> None:
        """An accurate devserver.json naming a server this state dir did not spawn (it does not hold
        devserver.lock) does not make `stop` signal it: exit 1, naming why, the server lives on."""
        proc, port = stranger
        layout = StateLayout(ensure_state_dir(stack.state_dir))
        write_pid_file(layout.devserver_record, record_of(proc.pid, port))
        with FileLock(layout.devserver_lock):
            result = stack.stop()
        assert 1 == result.returncode, (result.stdout, result.stderr)
        assert "not provably our dev server" in result.stderr
        assert "devserver.lock" in result.stderr
        assert proc.poll() is None

    async def test_the_daemon_neither_adopts_nor_stops_it(
        self, tmp_path: Path, stranger: tuple[subprocess.Popen[bytes], int]
    ) -> None:
        """The dev-server child, finding such a record, fails without touching the process (whatever
        its settings: this one's command line is not what this configuration would spawn)."""
        proc, port = stranger
        layout = StateLayout(ensure_state_dir(tmp_path / "state"))
        write_pid_file(layout.devserver_record, record_of(proc.pid, port))
        with FileLock(layout.devserver_lock):
            server = DevServer(DevServerConfig(port=port, persist=False), layout.root)
            with trio.fail_after(10), pytest.raises(DevServerError, match="not provably our dev server"):
                await server.serve()
        assert proc.poll() is None


class TestConnectionChecksTheListener:
    async def test_a_stranger_on_the_port_is_not_connected(
        self, stranger: tuple[subprocess.Popen[bytes], int]
    ) -> None:
        """Following a dev server, what answers at the address must be that server's pid: a Temporal
        server of someone else's there is never CONNECTED; the right pid then connects at once."""
        proc, port = stranger
        hub = EventHub(())
        cell = ConnectionCell(follow_server=True)
        config = ConnectionConfig(address=f"127.0.0.1:{port}")
        async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
            await nursery.start(serve_connection, config, cell, hub)
            hub.emit(ServerReady(config.address, os.getpid(), adopted=False, ready_after=0.0))
            with trio.move_on_after(3):
                await cell.wait_until(lambda c: c.state is ConnectionState.CONNECTED)
            assert ConnectionState.CONNECTED is not cell.state
            assert f"is not the dev server (pid {os.getpid()})" in (cell.last_error or "")
            hub.emit(ServerReady(config.address, proc.pid, adopted=False, ready_after=0.0))
            with trio.fail_after(5):
                await cell.wait_connected()
            nursery.cancel_scope.cancel(reason="test done")

    def test_a_plain_listener_is_seen_as_not_ours(self) -> None:
        """The kernel check itself: a listener on the port belongs to its process, to no other."""
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            port = listener.getsockname()[1]
            assert (True, False) == (listens_on(os.getpid(), port), listens_on(1, port))
        assert not listens_on(os.getpid(), port)  # nobody listens: nobody is the server

    def test_the_check_costs_milliseconds(self) -> None:
        """Measured once per (re)connection, in a thread: well under the connect itself."""
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            port = listener.getsockname()[1]
            began = time.perf_counter()
            for _ in range(20):
                assert listens_on(os.getpid(), port)
            each = (time.perf_counter() - began) / 20
        assert each < 0.05, each


class TestSettingsDecideAdoption:
    def test_an_in_memory_orphan_is_replaced_by_a_persistent_up(self, stack: Stack) -> None:
        """`up --in-memory`, SIGKILL the daemon, plain `up`: the orphan is not adopted (its workflows
        would vanish) but stopped, in the same lifetime, and the new server has the db."""
        before = stack.start("--in-memory")
        daemon, orphan = Identity.of(before["daemon"]["pid"]), server_of(before)
        assert daemon is not None
        assert daemon.signal(signal.SIGKILL)
        assert [] == wait_gone([daemon], timeout=5.0)
        after = stack.start()
        server = after["dev_server"]
        assert (False, 0) == (server["adopted"], server["restarts"])
        assert [] == wait_gone([orphan], timeout=5.0)
        cmdline = psutil.Process(server["pid"]).cmdline()
        db = stack.state_dir / "temporal.db"
        assert str(db) == cmdline[cmdline.index("--db-filename") + 1]
        assert db.exists()
        assert "started with other settings (its command line differs); replacing it" in stack.daemon_log()


class TestServerProcessHygiene:
    def test_secrets_in_the_environment_are_not_inherited(self, stack: Stack) -> None:
        """The daemon's TEMPORAL_* and cloud credentials are not in the server's /proc/<pid>/environ;
        its HOME is its own dir in the state dir."""
        result = stack.cli(*stack.up_args(), env={"TEMPORAL_FOO": "secret", "AWS_SECRET_ACCESS_KEY": "k"})
        assert 0 == result.returncode, (result.stderr, stack.daemon_log())
        _code, report = stack.status()
        daemon_env = Path(f"/proc/{report['daemon']['pid']}/environ").read_bytes().split(b"\0")
        assert b"TEMPORAL_FOO=secret" in daemon_env  # the daemon had them
        server_env_now = Path(f"/proc/{report['dev_server']['pid']}/environ").read_bytes().split(b"\0")
        names = {entry.partition(b"=")[0] for entry in server_env_now if entry}
        assert set() == names & {b"TEMPORAL_FOO", b"AWS_SECRET_ACCESS_KEY"}
        assert f"HOME={stack.state_dir / 'home'}".encode() in server_env_now

    def test_configured_variables_are_added(self, tmp_path: Path) -> None:
        """DevServerConfig.env adds to the allowlist (PATH, LANG, LC_*, TZ, TMPDIR) and HOME."""
        inherited = {"PATH": "/bin", "LC_ALL": "C", "TZ": "UTC", "TEMPORAL_X": "1", "AWS_SECRET_KEY": "k"}
        env = server_env(inherited, tmp_path, {"GODEBUG": "x=1"})
        assert {"PATH": "/bin", "LC_ALL": "C", "TZ": "UTC", "HOME": str(tmp_path), "GODEBUG": "x=1",
                "TEMPORAL_VERSION_CHECK_DISABLED": "1"} == env  # fmt: skip

    def test_db_files_are_private_whatever_the_umask(self, stack: Stack) -> None:
        """With umask 022 in the parent, temporal.db and its -wal / -shm are created 0600."""
        old = os.umask(0o022)
        try:
            stack.start()
        finally:
            os.umask(old)
        names = ("temporal.db", "temporal.db-wal", "temporal.db-shm")
        wait_for(lambda: all((stack.state_dir / n).exists() for n in names), 10.0, "the db files exist")
        modes = {n: oct((stack.state_dir / n).stat().st_mode & 0o777) for n in names}
        assert dict.fromkeys(names, "0o600") == modes

    def test_an_existing_loose_db_is_made_private(self, tmp_path: Path) -> None:
        """A db and -wal left 0644 (an older version, a copy) are 0600 once a server is spawned on them;
        a symlink beside them is not followed (its target keeps its mode)."""
        from stigmer_trio._boundary._launch import tighten_db_files

        db = tmp_path / "temporal.db"
        wal = tmp_path / "temporal.db-wal"
        target = tmp_path / "elsewhere"
        for path in (db, wal, target):
            path.write_bytes(b"x")
            path.chmod(0o644)
        (tmp_path / "temporal.db-shm").symlink_to(target)
        assert [db, wal] == tighten_db_files(db)
        assert (0o600, 0o600, 0o644) == tuple(p.stat().st_mode & 0o777 for p in (db, wal, target))
        assert [] == tighten_db_files(db)
