"""Configuration records and the precedence flags > environment > TOML file > defaults (pure)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import attrs
import pytest

from stigmer_trio import ConfigError, RestartPolicy
from stigmer_trio._core._config import (
    DEFAULT_DEVSERVER_POLICY,
    ConnectionConfig,
    DevServerConfig,
    RuntimeConfig,
    resolve,
)
from stigmer_trio._core._layout import default_state_dir

ENV = {"HOME": "/home/u"}


def dev(config: RuntimeConfig) -> DevServerConfig:
    assert config.dev_server is not None
    return config.dev_server


class TestDefaults:
    def test_defaults(self) -> None:
        """Persisted server on 127.0.0.1:7233, namespace 'default', documented probe timings."""
        config = resolve(flags={}, env=ENV)
        server = dev(config)
        assert "127.0.0.1:7233" == server.address
        assert ("default",) == server.namespaces
        assert server.persist
        assert (15.0, 0.5, 0.5, 2) == (
            server.start_timeout, server.health_interval, server.health_timeout, server.failures_to_restart
        )  # fmt: skip
        assert DEFAULT_DEVSERVER_POLICY == server.policy
        assert 0.0 == server.policy.initial_delay  # the first restart after a stable run is immediate

    def test_state_dir_xdg(self) -> None:
        """$XDG_STATE_HOME/stigmer_trio when set."""
        assert Path("/x/state/stigmer_trio") == default_state_dir(
            {"XDG_STATE_HOME": "/x/state", "HOME": "/h"}
        )

    def test_state_dir_home(self) -> None:
        """~/.local/state/stigmer_trio otherwise, also for a relative XDG_STATE_HOME (ignored)."""
        assert Path("/h/.local/state/stigmer_trio") == default_state_dir({"HOME": "/h"})
        assert Path("/h/.local/state/stigmer_trio") == default_state_dir(
            {"XDG_STATE_HOME": "rel", "HOME": "/h"}
        )

    def test_default_state_dir_used(self) -> None:
        """No flag, variable or file setting: the default state dir."""
        assert Path("/home/u/.local/state/stigmer_trio") == resolve(flags={}, env=ENV).state_dir


class TestPrecedence:
    def test_flag_beats_env_beats_file(self) -> None:
        """A flag wins over STIGMER_TRIO_PORT, which wins over the TOML file."""
        file = {"dev_server": {"port": 1111}}
        env = {**ENV, "STIGMER_TRIO_PORT": "2222"}
        assert 1111 == dev(resolve(flags={}, env=ENV, file=file)).port
        assert 2222 == dev(resolve(flags={}, env=env, file=file)).port
        assert 3333 == dev(resolve(flags={"port": 3333}, env=env, file=file)).port

    def test_none_flags_are_ignored(self) -> None:
        """Options the user did not give (None) do not override anything."""
        assert 1111 == dev(resolve(flags={"port": None}, env=ENV, file={"dev_server": {"port": 1111}})).port

    def test_state_dir_sources(self) -> None:
        """state_dir follows the same precedence."""
        file = {"state_dir": "/from/file"}
        assert Path("/from/file") == resolve(flags={}, env=ENV, file=file).state_dir
        env = {**ENV, "STIGMER_TRIO_STATE_DIR": "/from/env"}
        assert Path("/from/env") == resolve(flags={}, env=env, file=file).state_dir
        assert Path("/from/flag") == resolve(flags={"state_dir": "/from/flag"}, env=env, file=file).state_dir

    def test_env_namespaces_are_comma_separated(self) -> None:
        """STIGMER_TRIO_NAMESPACES=a,b gives two namespaces, in order, without repeats."""
        env = {**ENV, "STIGMER_TRIO_NAMESPACES": "orders, billing,orders"}
        assert ("orders", "billing") == dev(resolve(flags={}, env=env)).namespaces

    def test_env_booleans(self) -> None:
        """STIGMER_TRIO_PERSIST accepts the usual spellings."""
        assert not dev(resolve(flags={}, env={**ENV, "STIGMER_TRIO_PERSIST": "off"})).persist
        assert dev(resolve(flags={}, env={**ENV, "STIGMER_TRIO_PERSIST": "Yes"})).persist

    def test_restart_policy_from_file(self) -> None:
        """[dev_server.restart] overrides fields of the default dev-server policy."""
        file = {"dev_server": {"restart": {"max_restarts": 1000, "reset_after": 1.0}}}
        policy = dev(resolve(flags={}, env=ENV, file=file)).policy
        assert (1000, 1.0, DEFAULT_DEVSERVER_POLICY.backoff) == (
            policy.max_restarts, policy.reset_after, policy.backoff
        )  # fmt: skip

    def test_runtime_restart_policy_from_file(self) -> None:
        """[restart] sets the runtime supervisor's intensity; unlimited by default (children bring limits)."""
        assert None is resolve(flags={}, env=ENV).policy.max_restarts
        config = resolve(flags={}, env=ENV, file={"restart": {"max_restarts": 50, "window": 30.0}})
        assert (50, 30.0) == (config.policy.max_restarts, config.policy.window)

    def test_whole_file(self) -> None:
        """Every [dev_server] key is accepted."""
        file: dict[str, Any] = {
            "state_dir": "/s",
            "shutdown_timeout": 3.0,
            "dev_server": {
                "binary": "/opt/temporal", "port": 7000, "http_port": 7001, "metrics_port": 7002,
                "namespaces": ["a1", "b2"], "persist": False, "db_filename": "/d/t.db", "start_timeout": 5.0,
                "health_interval": 0.5, "health_timeout": 0.25, "failures_to_restart": 3, "stop_timeout": 2.0,
                "log_max_bytes": 8192, "log_backups": 1,
            },
        }  # fmt: skip
        config = resolve(flags={}, env=ENV, file=file)
        server = dev(config)
        assert (Path("/opt/temporal"), 7001, 7002, ("a1", "b2"), False) == (
            server.binary, server.http_port, server.metrics_port, server.namespaces, server.persist
        )  # fmt: skip
        assert 3.0 == config.shutdown_timeout


class TestErrors:
    @pytest.mark.parametrize(
        ("flags", "env", "file", "needle"),
        [
            ({"port": 70000}, {}, {}, "port must be a port number 1-65535, got 70000"),
            ({"port": 0}, {}, {}, "port must be a port number 1-65535, got 0"),
            ({}, {"STIGMER_TRIO_PORT": "http"}, {}, "STIGMER_TRIO_PORT must be a number, got 'http'"),
            ({}, {"STIGMER_TRIO_PERSIST": "maybe"}, {}, "STIGMER_TRIO_PERSIST must be true or false"),
            ({}, {}, {"dev_server": {"port": "7233"}}, "port must be a port number 1-65535, got '7233'"),
            ({}, {}, {"dev_server": {"health_interval": -1}}, "health_interval must be a number of seconds"),
            (
                {},
                {},
                {"dev_server": {"start_timeout": math.inf}},
                "start_timeout must be a number of seconds",
            ),
            (
                {},
                {},
                {"dev_server": {"failures_to_restart": 0}},
                "failures_to_restart must be a whole number >= 1",
            ),
            ({"namespaces": ["bad name!"]}, {}, {}, "namespace must be 2-255 letters"),
            ({"namespaces": []}, {}, {}, "namespaces must be a non-empty list"),
            ({}, {}, {"dev_server": {"persist": "yes"}}, "persist"),
            ({}, {}, {"colour": "blue"}, "config file: unknown setting 'colour'"),
            ({}, {}, {"dev_server": {"prot": 1}}, "[dev_server]: unknown setting 'prot'"),
            (
                {},
                {},
                {"dev_server": {"restart": {"jitter": 2}}},
                "[dev_server.restart] jitter must be in [0, 1)",
            ),
            (
                {},
                {},
                {"dev_server": {"restart": {"max_retries": 2}}},
                "[dev_server.restart]: unknown setting",
            ),
            ({}, {}, {"dev_server": 3}, "[dev_server] must be a table"),
            ({}, {}, {"restart": {"window": 0}}, "[restart] window must be > 0, got 0"),
            ({}, {}, {"restart": {"windows": 1}}, "[restart]: unknown setting 'windows'"),
            ({}, {}, {"state_dir": 5}, "state_dir must be a path, got 5"),
            ({}, {}, {"dev_server": {"binary": ""}}, "binary must be a non-empty path, got ''"),
            ({}, {}, {"dev_server": {"db_filename": 3}}, "db_filename must be a non-empty path, got 3"),
        ],
    )
    def test_bad_value_is_one_clear_line(
        self, flags: dict[str, Any], env: dict[str, str], file: dict[str, Any], needle: str
    ) -> None:
        """Each bad value raises ConfigError naming the field and the value, in one line."""
        with pytest.raises(ConfigError) as info:
            resolve(flags=flags, env={**ENV, **env}, file=file)
        message = str(info.value)
        assert needle in message
        assert "\n" not in message

    def test_records_validate_directly(self) -> None:
        """DevServerConfig validates when built by an embedding program too."""
        with pytest.raises(ConfigError, match="http_port"):
            DevServerConfig(http_port=-1)
        with pytest.raises(ConfigError, match="policy"):
            DevServerConfig(policy={"backoff": 1})  # type: ignore[arg-type]
        assert RestartPolicy() == RuntimeConfig(state_dir="/s", policy=RestartPolicy()).policy


def test_cli_signal_numbers_match_the_daemon() -> None:
    """The daemon names the handover and stop signals by number (the CLI's hot paths import it, and not
    signal): SIGUSR1 and SIGTERM."""
    import signal

    from stigmer_trio import _daemon

    assert (signal.SIGUSR1, signal.SIGTERM) == (_daemon.HANDOVER_SIGNAL, _daemon.SIGTERM)


# Every duration setting the file (or the environment) can reach, where it lives in the file.
DURATIONS = [
    ({"dev_server": {"start_timeout": None}}, "start_timeout"),
    ({"dev_server": {"health_interval": None}}, "health_interval"),
    ({"dev_server": {"health_timeout": None}}, "health_timeout"),
    ({"dev_server": {"stop_timeout": None}}, "stop_timeout"),
    ({"shutdown_timeout": None}, "shutdown_timeout"),
    ({"outbox": {"retain": None}}, "retain"),
]


def _with(file: dict[str, Any], value: Any) -> dict[str, Any]:
    """`file` with its one None leaf replaced by `value`."""
    return {k: _with(v, value) if isinstance(v, dict) else value for k, v in file.items()}


class TestBounds:
    @pytest.mark.parametrize("value", [1e308, math.inf, math.nan, 86_400 * 400, -1])
    @pytest.mark.parametrize(("file", "field"), DURATIONS)
    def test_durations_are_finite_and_bounded(self, file: dict[str, Any], field: str, value: float) -> None:
        """Every duration must be finite and at most a day (retain: 366 days); 1e308 used to pass."""
        with pytest.raises(ConfigError) as info:
            resolve(flags={}, env=ENV, file=_with(file, value))
        message = str(info.value)
        assert f"{field} must be a number of seconds" in message
        assert repr(value) in message
        assert "at most" in message

    def test_largest_durations_pass(self) -> None:
        """A day (a year for retain) is still accepted."""
        config = resolve(
            flags={}, env=ENV, file={"dev_server": {"stop_timeout": 86_400}, "outbox": {"retain": 31_622_400}}
        )
        assert 86_400 == dev(config).stop_timeout
        assert config.outbox is not None
        assert 31_622_400 == config.outbox.retain

    @pytest.mark.parametrize(
        ("file", "needle"),
        [
            (
                {"dev_server": {"failures_to_restart": 10**6}},
                "failures_to_restart must be a whole number >= 1",
            ),
            ({"log_max_bytes": 2**80}, "log_max_bytes must be a whole number >= 4096"),
            ({"outbox": {"max_pending": 2**63}}, "max_pending must be a whole number >= 1"),
            ({"http_max_connections": 10**9}, "max_connections must be a whole number >= 1"),
        ],
    )
    def test_counts_are_bounded(self, file: dict[str, Any], needle: str) -> None:
        """Counts have a named upper bound too (a 2**63 max_pending overflowed SQLite's integer)."""
        with pytest.raises(ConfigError, match=re.escape(needle) + r".*\(at most \d+\)$"):
            resolve(flags={}, env=ENV, file={**file, "http": "127.0.0.1:0"})

    @pytest.mark.parametrize(
        ("file", "field"),
        [
            ({"dev_server": {"namespaces": ["ab\n"]}}, "namespace"),
            ({"dev_server": {"dynamic_config": ["a=b\n"]}}, "dynamic_config"),
            ({"dev_server": {"sqlite_pragmas": ["journal_mode=wal\n"]}}, "sqlite_pragmas"),
            ({"dev_server": {"dynamic_config": ["a=b c"]}}, "dynamic_config"),
            ({"external": "host\n:7233"}, "external"),
            ({"external": "host:\uff17\uff12\uff13\uff13"}, "external"),
            ({"http": "bad\nhost:0", "http_allow_remote": True}, "host"),
            ({"http": "127.0.0.1:\uff18\uff10"}, "http"),
        ],
    )
    def test_whole_value_must_match(self, file: dict[str, Any], field: str) -> None:
        """A trailing newline (or non-ASCII digits) no longer slips past a pattern: fullmatch."""
        with pytest.raises(ConfigError) as info:
            resolve(flags={}, env=ENV, file=file)
        assert str(info.value).startswith(field)

    def test_connection_namespace_is_checked(self) -> None:
        """ConnectionConfig's namespace follows the same rule as the dev server's."""
        with pytest.raises(ConfigError, match=r"^namespace must be"):
            ConnectionConfig(namespace="default\n")


class TestApiKeyTls:
    def test_tls_follows_the_api_key(self) -> None:
        """TLS is on by default exactly when an api_key is set."""
        assert (False, True) == (ConnectionConfig().tls, ConnectionConfig(api_key="k").tls)

    def test_plaintext_api_key_is_refused(self) -> None:
        """tls=False with an api_key would send it in cleartext: refused, naming the way out."""
        with pytest.raises(ConfigError, match=r"cleartext.*plaintext_api_key=True"):
            ConnectionConfig(address="10.0.0.1:7233", api_key="k", tls=False)

    def test_plaintext_api_key_when_asked(self) -> None:
        """plaintext_api_key=True is the explicit opt-in (e.g. a TLS-terminating sidecar on loopback)."""
        config = ConnectionConfig(api_key="k", tls=False, plaintext_api_key=True)
        assert not config.tls

    def test_evolve_does_not_leak(self) -> None:
        """Adding an api_key to a plaintext config later is refused too, not silently plaintext."""
        with pytest.raises(ConfigError, match="cleartext"):
            attrs.evolve(ConnectionConfig(), api_key="k")

    def test_api_key_not_in_repr(self) -> None:
        """The key never shows in a repr (logs, tracebacks)."""
        assert "sekrit" not in repr(ConnectionConfig(api_key="sekrit"))


class TestPolicyBounds:
    @pytest.mark.parametrize(
        ("table", "key", "value"),
        [
            ("restart", "max_delay", 1e308),
            ("restart", "window", math.inf),
            ("restart", "reset_after", math.inf),
            ("restart", "max_restarts", 2**64),
            ("dev_server.restart", "initial_delay", 86_401),
            ("dev_server.restart", "multiplier", 1e6),
        ],
    )
    def test_file_policy_is_bounded(self, table: str, key: str, value: float) -> None:
        """A [restart] or [dev_server.restart] value beyond its bound is one line naming both."""
        file: dict[str, Any] = (
            {"restart": {key: value}} if table == "restart" else {"dev_server": {"restart": {key: value}}}
        )
        with pytest.raises(ConfigError, match=re.escape(f"[{table}] {key} must be at most")):
            resolve(flags={}, env=ENV, file=file)

    def test_file_policy_within_bounds(self) -> None:
        """A day's delay and a year's window are accepted."""
        config = resolve(flags={}, env=ENV, file={"restart": {"max_delay": 86_400, "window": 31_622_400}})
        assert (86_400, 31_622_400) == (config.policy.max_delay, config.policy.window)
