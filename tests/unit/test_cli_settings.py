"""The detached daemon's settings: `up --detach` hands over everything it was given (every option of the
`up` parser, the STIGMER_TRIO_* environment, the parsed TOML file) through the detach protocol, so the
daemon resolves exactly the parent's configuration, and a new flag travels without anyone listing it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import pytest

from stigmer_trio._cli._main import build_parser
from stigmer_trio._cli._settings import Settings, full_config
from stigmer_trio._daemon import (
    LOG_ENV,
    NOTIFY_ENV,
    SETTINGS_ENV,
    take_detach_handover,
)


def up_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `up` subcommand's own parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub: argparse.ArgumentParser = action.choices["up"]
            return sub
    raise AssertionError("no subcommands")


def handed_over(settings: Settings) -> Settings:
    """What the detached daemon reads: the parent's settings through a real pipe and the environment."""
    read_end, write_end = os.pipe()
    notify_read, notify_write = os.pipe()
    with os.fdopen(write_end, "wb") as pipe:
        pipe.write(settings.to_json().encode())
    environ = {SETTINGS_ENV: str(read_end), NOTIFY_ENV: str(notify_write), LOG_ENV: "/nowhere/daemon.log"}
    handover = take_detach_handover(environ)
    os.close(notify_read)
    os.close(notify_write)
    assert handover is not None
    assert {} == environ  # taken out: no child of the daemon inherits the protocol's fds
    return Settings.from_json(handover.settings)


class TestHandover:
    def test_a_new_up_flag_reaches_the_daemon(self, tmp_path: Path) -> None:
        """A flag added to `up` after this was written travels to the daemon unnamed by the handover."""
        parser = build_parser()
        up_parser(parser).add_argument("--brand-new-flag", metavar="X")
        args = parser.parse_args(["up", "--detach", "--brand-new-flag", "value-42"])
        received = handed_over(Settings.gather(args, {}, {}, tmp_path))
        assert "value-42" == received.flags["brand_new_flag"]

    def test_every_up_option_round_trips(self, tmp_path: Path) -> None:
        """Every option of `up`, set to a non-default value, arrives in the daemon as the parent had it."""
        argv = ["up"]
        for action in up_parser(build_parser())._actions:
            if not action.option_strings or action.dest == "help":
                continue
            flag = action.option_strings[-1]
            if action.nargs == 0:
                argv.append(flag)
            elif action.choices:
                argv += [flag, str(list(action.choices)[-1])]
            elif action.type is not None:  # int, or a bounded number type (seconds, counts)
                argv += [flag, "7"]
            else:
                argv += [flag, f"value-of-{action.dest}"]
        args = build_parser().parse_args(argv)
        sent = Settings.gather(args, {}, {}, tmp_path)
        received = handed_over(sent)
        assert sent == received
        assert {k: v for k, v in vars(args).items() if k not in ("command", "state_dir")} == {
            k: v for k, v in received.flags.items() if k != "state_dir"
        }

    def test_environment_and_file_travel(self, tmp_path: Path) -> None:
        """The STIGMER_TRIO_* environment (not the protocol's own variables) and the parsed file travel."""
        args = build_parser().parse_args(["up", "--detach"])
        env = {"STIGMER_TRIO_PORT": "7299", "HOME": "/home/x", NOTIFY_ENV: "9"}
        file: dict[str, Any] = {"dev_server": {"namespaces": ["a", "b"]}, "log_format": "json"}
        received = handed_over(Settings.gather(args, env, file, tmp_path))
        assert ({"STIGMER_TRIO_PORT": "7299"}, file) == (received.env, received.file)

    def test_daemon_resolves_the_parents_config(self, tmp_path: Path) -> None:
        """The config the daemon resolves from what it was handed is the one its parent resolved."""
        args = build_parser().parse_args(
            ["up", "--detach", "--port", "7301", "--namespace", "ns1", "--no-demo", "--http", "off",
             "--in-memory", "--start-timeout", "3", "--log-format", "json"]
        )  # fmt: skip
        env = {"STIGMER_TRIO_SHUTDOWN_TIMEOUT": "4"}
        file = {"dev_server": {"stop_timeout": 2.0}}
        sent = Settings.gather(args, env, file, tmp_path / "state")
        parent = full_config(sent)
        daemon = full_config(handed_over(sent))
        assert parent == daemon
        assert (7301, ("ns1",), False, None, 4.0, 2.0) == (
            daemon.dev_server.port if daemon.dev_server else None,
            daemon.dev_server.namespaces if daemon.dev_server else None,
            daemon.demo_worker,
            daemon.http,
            daemon.shutdown_timeout,
            daemon.dev_server.stop_timeout if daemon.dev_server else None,
        )

    def test_not_detached_is_no_handover(self) -> None:
        """A process `up --detach` did not start finds no handover (and its environment is kept)."""
        environ = {"STIGMER_TRIO_PORT": "1"}
        assert take_detach_handover(environ) is None
        assert {"STIGMER_TRIO_PORT": "1"} == environ


@pytest.mark.parametrize("command", ["up", "restart"])
def test_up_and_restart_share_their_options(command: str) -> None:
    """`restart` takes every option `up` takes (it ends in `up --detach`)."""
    parser = build_parser()
    args = parser.parse_args([command, "--port", "1"])
    assert 1 == args.port
