"""The dev server's Web UI: its settings, the command line it adds, adoption, and where it is reported."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest

from stigmer_trio import ConfigError, DevServerConfig, RuntimeConfig
from stigmer_trio._boundary._statefiles import PidRecord
from stigmer_trio._cli import main
from stigmer_trio._core._config import resolve
from stigmer_trio._tree._cell import ConnectionCell
from stigmer_trio._tree._serve_devserver import DevServer, ServerInfo
from stigmer_trio._tree._status import StatusBoard

ENV = {"HOME": "/home/u"}
PORTS = {"grpc": 7233, "http": 40001, "metrics": 40002}


def server_of(config: RuntimeConfig) -> DevServerConfig:
    assert config.dev_server is not None
    return config.dev_server


def dev_server(tmp_path: Path, **settings: Any) -> DevServer:
    return DevServer(DevServerConfig(**settings), tmp_path)


def options(command: list[str], *names: str) -> dict[str, str | None]:
    """The value after each of `names` in `command` (None: absent; '' for a flag without a value)."""
    found: dict[str, str | None] = {}
    for name in names:
        if name not in command:
            found[name] = None
            continue
        after = command[command.index(name) + 1 :]
        found[name] = after[0] if after and not after[0].startswith("--") else ""
    return found


class TestSettings:
    def test_on_by_default_at_grpc_port_plus_1000(self) -> None:
        """Like `temporal server start-dev`: a Web UI at the gRPC port + 1000 (8233 for 7233)."""
        server = server_of(resolve(flags={}, env=ENV))
        assert (True, None, 8233) == (server.ui, server.ui_port, server.effective_ui_port)
        assert 9243 == DevServerConfig(port=8243).effective_ui_port

    def test_port_zero_and_off(self) -> None:
        """ui_port 0 is a free port at each spawn; ui False is no UI whatever the port."""
        assert 0 == DevServerConfig(ui_port=0).effective_ui_port
        assert None is DevServerConfig(ui=False, ui_port=9000).effective_ui_port

    def test_flag_beats_env_beats_file(self) -> None:
        """--ui-port > STIGMER_TRIO_UI_PORT > [dev_server] ui_port; the same for ui (--no-ui)."""

        def ui(flags: dict[str, Any], env: dict[str, str]) -> tuple[bool, int | None]:
            server = server_of(
                resolve(flags=flags, env=env, file={"dev_server": {"ui_port": 9001, "ui": False}})
            )
            return server.ui, server.ui_port

        assert (False, 9001) == ui({}, ENV)
        env = {**ENV, "STIGMER_TRIO_UI_PORT": "9002", "STIGMER_TRIO_UI": "yes"}
        assert (True, 9002) == ui({}, env)
        assert (False, 9003) == ui({"ui_port": 9003, "ui": False}, {**env, "STIGMER_TRIO_UI": ""})
        assert (True, 9002) == ui({"ui": None, "ui_port": None}, env)  # flags not given: ignored

    @pytest.mark.parametrize(
        ("settings", "message"),
        [
            (
                {"ui_port": 65536},
                "ui_port (--ui-port) must be a port number 0-65535 (0: a free port), got 65536",
            ),
            ({"ui_port": -1}, "ui_port (--ui-port) must be a port number 0-65535 (0: a free port), got -1"),
            ({"ui_port": True}, "ui_port (--ui-port) must be a port number"),
            ({"ui_port": "8233"}, "ui_port (--ui-port) must be a port number"),
            ({"ui": "yes"}, "ui must be true or false, got 'yes'"),
            (
                {"port": 64536},
                "ui_port: the Web UI's default port, the dev server's port 64536 + 1000 = 65536,",
            ),
            ({"ui_port": 7233}, "ui_port (--ui-port) 7233 is also the dev server's port; choose another"),
            (
                {"ui_port": 9000, "metrics_port": 9000},
                "ui_port (--ui-port) 9000 is also the dev server's metrics_port",
            ),
        ],
    )
    def test_bad_values_name_the_field(self, settings: dict[str, Any], message: str) -> None:
        """Out of range, the wrong type, above 65535 when derived, or another port of the server: one
        ConfigError naming ui_port / --ui-port and the value."""
        with pytest.raises(ConfigError) as info:
            DevServerConfig(**settings)
        assert str(info.value).startswith(message), str(info.value)

    def test_derived_port_above_65535_says_what_to_pass(self) -> None:
        """gRPC port + 1000 past 65535 tells the user to pass --ui-port (or --no-ui); both cure it."""
        with pytest.raises(ConfigError, match=r"pass --ui-port N .* or --no-ui"):
            DevServerConfig(port=65000)
        assert 0 == DevServerConfig(port=65000, ui_port=0).effective_ui_port
        assert None is DevServerConfig(port=65000, ui=False).effective_ui_port

    def test_env_values_are_type_checked(self) -> None:
        """STIGMER_TRIO_UI_PORT must be a number, STIGMER_TRIO_UI a boolean: each names the variable."""
        with pytest.raises(ConfigError, match=r"^STIGMER_TRIO_UI_PORT must be a number, got 'x'"):
            resolve(flags={}, env={**ENV, "STIGMER_TRIO_UI_PORT": "x"})
        with pytest.raises(ConfigError, match=r"^STIGMER_TRIO_UI must be true or false, got 'maybe'"):
            resolve(flags={}, env={**ENV, "STIGMER_TRIO_UI": "maybe"})


class TestCommand:
    def test_web_ui_on_loopback_offline(self, tmp_path: Path) -> None:
        """Not headless; the UI bound to 127.0.0.1 on its port, its news feed never fetched."""
        server = dev_server(tmp_path)
        command = server.command({**PORTS, "ui": 8233})
        assert "--headless" not in command
        assert {
            "--ui-ip": "127.0.0.1",
            "--ui-port": "8233",
            "--ui-disable-news-fetch": "",
            "--ip": "127.0.0.1",
        } == (options(command, "--ui-ip", "--ui-port", "--ui-disable-news-fetch", "--ip"))

    def test_no_ui_is_headless_as_before(self, tmp_path: Path) -> None:
        """ui False: the headless command line, exactly as before the Web UI existed."""
        command = dev_server(tmp_path, ui=False).command(PORTS)
        assert ["server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", "7233"] == command[1:8]
        assert not [arg for arg in command if arg.startswith("--ui")]

    def test_ports(self, tmp_path: Path) -> None:
        """The derived or configured UI port is used as it is; 0 picks a free one (a side port)."""
        assert 8233 == dev_server(tmp_path).ports()["ui"]
        assert 9999 == dev_server(tmp_path, ui_port=9999).ports()["ui"]
        assert "ui" not in dev_server(tmp_path, ui=False).ports()
        assert dev_server(tmp_path, ui_port=0).ports()["ui"] not in (0, 8233)


def record_of(server: DevServer, ports: dict[str, int]) -> PidRecord:
    return PidRecord(1, 0.0, tuple(server.command(ports)), 0.0, {"ports": ports})


class TestAdoption:
    def test_derived_or_configured_port_must_match(self, tmp_path: Path) -> None:
        """A server of ours with its UI at another port than this configuration's is not adopted."""
        found = record_of(dev_server(tmp_path, ui_port=9999), {**PORTS, "ui": 9999})
        assert dev_server(tmp_path, ui_port=9999)._same_settings(found)
        assert not dev_server(tmp_path)._same_settings(found)  # derived: 8233

    def test_a_free_ui_port_is_a_side_port(self, tmp_path: Path) -> None:
        """ui_port 0: whatever port the recorded server's UI got, it is this configuration's command."""
        found = record_of(dev_server(tmp_path, ui_port=0), {**PORTS, "ui": 41234})
        assert dev_server(tmp_path, ui_port=0)._same_settings(found)

    def test_ui_on_or_off_must_match(self, tmp_path: Path) -> None:
        """A headless server is not adopted by a configuration with a UI, nor the other way round."""
        headless = record_of(dev_server(tmp_path, ui=False), PORTS)
        with_ui = record_of(dev_server(tmp_path), {**PORTS, "ui": 8233})
        assert not dev_server(tmp_path)._same_settings(headless)
        assert not dev_server(tmp_path, ui=False)._same_settings(with_ui)
        assert dev_server(tmp_path, ui=False)._same_settings(headless)


class TestStatus:
    def board(self, tmp_path: Path, config: RuntimeConfig, server: DevServer | None) -> StatusBoard:
        return StatusBoard(config, ConnectionCell(), server, {})

    def test_url_while_a_server_with_a_ui_is_up(self, tmp_path: Path) -> None:
        """status()["ui"] is the UI's URL while a server serves; None before (and between) servers."""
        config = RuntimeConfig(state_dir=tmp_path, dev_server=DevServerConfig(port=7300))
        server = DevServer(config.dev_server, tmp_path)  # type: ignore[arg-type]
        board = self.board(tmp_path, config, server)
        assert None is board.status()["ui"]
        server.info = ServerInfo(42, "127.0.0.1:7300", {**PORTS, "ui": 8300}, adopted=False, started_at=0.0)
        assert {"url": "http://127.0.0.1:8300"} == board.status()["ui"]

    def test_none_without_ui_and_in_external_mode(self, tmp_path: Path) -> None:
        """--no-ui (a headless server is up) and external mode: ui is None."""
        config = RuntimeConfig(state_dir=tmp_path, dev_server=DevServerConfig(ui=False))
        server = DevServer(config.dev_server, tmp_path)  # type: ignore[arg-type]
        server.info = ServerInfo(42, "127.0.0.1:7233", dict(PORTS), adopted=False, started_at=0.0)
        assert None is self.board(tmp_path, config, server).status()["ui"]
        from stigmer_trio import ConnectionConfig

        external = RuntimeConfig(
            state_dir=tmp_path, dev_server=None, connection=ConnectionConfig(address="127.0.0.1:7233")
        )
        assert None is self.board(tmp_path, external, None).status()["ui"]


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv, {})
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


class TestFlags:
    @pytest.mark.parametrize(
        ("argv", "needle"),
        [
            (
                ["--ui-port", "70000"],
                "ui_port (--ui-port) must be a port number 0-65535 (0: a free port), got 70000",
            ),
            (["--ui-port", "x"], "--ui-port: invalid int value: 'x'"),
            (["--port", "65000"], "+ 1000 = 66000, is above 65535; pass --ui-port N"),
        ],
    )
    def test_up_check_refuses_in_one_line(self, tmp_path: Path, argv: list[str], needle: str) -> None:
        """`up --check` (and so `up`): exit 2, one line naming --ui-port and the value, nothing created."""
        state = tmp_path / "state"
        code, _, stderr = run_main(["up", "--check", "--state-dir", str(state), *argv])
        assert 2 == code, stderr
        assert 1 == stderr.count("\n"), stderr
        assert needle in stderr
        assert not state.exists()

    @pytest.mark.parametrize("argv", [["--port", "65000", "--no-ui"], ["--port", "65000", "--ui-port", "0"]])
    def test_up_check_accepts_the_cures(self, tmp_path: Path, argv: list[str]) -> None:
        """What the error suggests works: --no-ui, or a --ui-port of one's own."""
        code, stdout, stderr = run_main(["up", "--check", "--state-dir", str(tmp_path / "state"), *argv])
        assert (0, "") == (code, stderr)
        assert stdout.startswith("settings OK")
