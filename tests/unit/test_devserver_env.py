"""DevServerConfig.env: what the dev server gets on top of its allowlisted environment."""

from __future__ import annotations

import pytest

from stigmer_trio import ConfigError, DevServerConfig


class TestDevServerEnv:
    def test_default_is_empty(self) -> None:
        """Nothing is added unless configured."""
        assert {} == DevServerConfig().env

    def test_names_and_strings_are_kept(self) -> None:
        """A mapping of names to strings is the setting."""
        assert {"GODEBUG": "x=1"} == DevServerConfig(env={"GODEBUG": "x=1"}).env

    @pytest.mark.parametrize(
        ("env", "message"),
        [
            ({"A=B": "1"}, "dev_server.env: 'A=B' is not an environment variable name"),
            ({"": "1"}, "dev_server.env: '' is not an environment variable name"),
            ({"A": 1}, "dev_server.env['A'] must be a string without NUL, got 1"),
            ({"A": "x\0y"}, "dev_server.env['A'] must be a string without NUL"),
            (["A"], "dev_server.env must be a mapping of names to strings, got ['A']"),
        ],
    )
    def test_bad_values_name_the_field(self, env: object, message: str) -> None:
        """A bad name or value is one ConfigError naming the field and the value."""
        with pytest.raises(ConfigError) as info:
            DevServerConfig(env=env)  # type: ignore[arg-type]
        assert str(info.value).startswith(message)

    def test_the_file_table(self) -> None:
        """[dev_server.env] in the TOML file sets it; a non-table or a bad value names the field."""
        from stigmer_trio._core._config import resolve

        file = {"dev_server": {"env": {"GODEBUG": "x=1"}}}
        config = resolve(flags={"state_dir": "/tmp/x"}, env={}, file=file)
        assert config.dev_server is not None
        assert {"GODEBUG": "x=1"} == config.dev_server.env
        with pytest.raises(ConfigError, match=r"^\[dev_server.env\] must be a table, got 'A=1'"):
            resolve(flags={"state_dir": "/tmp/x"}, env={}, file={"dev_server": {"env": "A=1"}})
        with pytest.raises(ConfigError, match=r"^dev_server.env\['A'\] must be a string"):
            resolve(flags={"state_dir": "/tmp/x"}, env={}, file={"dev_server": {"env": {"A": 1}}})
