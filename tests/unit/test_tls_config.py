"""TLS and API-key settings: TlsConfig and ConnectionConfig's rules, the files' safety checks (read at each
connect), the precedence of our settings over the Temporal SDK's environment configuration (TEMPORAL_*
variables over a temporal.toml profile), and that the SDK's loader is imported only when it is used."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import stigmer_trio as st
from stigmer_trio._boundary._envprofile import load_temporal_profile
from stigmer_trio._boundary._tls import TlsMaterial, check_files, connect_material, read_api_key, reads_files
from stigmer_trio._cli._main import build_parser
from stigmer_trio._cli._settings import Settings
from stigmer_trio._core._config import resolve

KEY = "api-key-0123456789"
PEM = b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ib2R5\n-----END PRIVATE KEY-----\n"
CA = b"-----BEGIN CERTIFICATE-----\nQ0E=\n-----END CERTIFICATE-----\n"
CERT = b"-----BEGIN CERTIFICATE-----\nQ0VSVA==\n-----END CERTIFICATE-----\n"


def write(path: Path, data: bytes | str, mode: int = 0o600) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)
    return path


class TestTlsConfig:
    def test_certificate_without_key_is_refused(self) -> None:
        """mTLS needs both halves: a certificate alone is a one-line ConfigError."""
        with pytest.raises(st.ConfigError, match="got only a certificate"):
            st.TlsConfig(cert_file="/c.pem")

    def test_key_without_certificate_is_refused(self) -> None:
        """...and so is a key alone."""
        with pytest.raises(st.ConfigError, match="got only a key"):
            st.TlsConfig(key_data=PEM)

    def test_file_and_data_of_one_kind_are_refused(self) -> None:
        """A CA from a file and inline at once is ambiguous."""
        with pytest.raises(st.ConfigError, match="give ca_file or ca_data, not both"):
            st.TlsConfig(ca_file="/ca.pem", ca_data=PEM)

    def test_paths_are_paths(self) -> None:
        """Strings become Paths, `~` expanded."""
        tls = st.TlsConfig(ca_file="~/ca.pem")
        assert Path("~/ca.pem").expanduser() == tls.ca_file

    def test_repr_shows_no_pem(self) -> None:
        """Inline PEM data never shows in a repr."""
        tls = st.TlsConfig(cert_data=b"CERT", key_data=PEM, server_name="t.example")
        assert "PRIVATE" not in repr(tls)
        assert "c2VjcmV0" not in repr(st.ConnectionConfig(tls=tls, api_key=KEY))
        assert KEY not in repr(st.ConnectionConfig(tls=tls, api_key=KEY))


class TestConnectionConfig:
    def test_tls_defaults_on_with_an_api_key_file(self) -> None:
        """An API key from a file turns TLS on, like an api_key."""
        assert st.ConnectionConfig(api_key_file="/k").tls is True
        assert st.ConnectionConfig().tls is False

    def test_api_key_file_over_plaintext_is_refused(self) -> None:
        """tls=False with an api_key_file: refused unless plaintext_api_key says so."""
        with pytest.raises(st.ConfigError, match="cleartext"):
            st.ConnectionConfig(api_key_file="/k", tls=False)
        assert st.ConnectionConfig(api_key_file="/k", tls=False, plaintext_api_key=True).tls is False

    def test_tls_config_counts_as_on(self) -> None:
        """A TlsConfig with an api_key is TLS: accepted."""
        tls = st.TlsConfig(ca_file="/ca.pem")
        assert tls == st.ConnectionConfig(api_key=KEY, tls=tls).tls

    def test_key_and_key_file_together_are_refused(self) -> None:
        """One API key: from the config or from a file, not both."""
        with pytest.raises(st.ConfigError, match="api_key or api_key_file, not both"):
            st.ConnectionConfig(api_key=KEY, api_key_file="/k")

    def test_tls_of_another_type_is_refused(self) -> None:
        """tls is a bool or a TlsConfig."""
        with pytest.raises(st.ConfigError, match="tls must be true, false or a TlsConfig, got 'yes'"):
            st.ConnectionConfig(tls="yes")


class TestFiles:
    @pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
    def test_key_readable_by_others_is_refused(self, tmp_path: Path, mode: int) -> None:
        """A private key group or others can access is refused, naming the file and its mode (as ssh)."""
        key = write(tmp_path / "client.key", PEM, mode)
        tls = st.TlsConfig(cert_data=b"CERT", key_file=key)
        with pytest.raises(st.ConfigError) as caught:
            connect_material(st.ConnectionConfig(tls=tls))
        assert (
            f"tls key_file {str(key)!r} is accessible by group or others (mode {mode:04o}): refusing it, "
            "as ssh does; chmod 600 it"
        ) == str(caught.value)

    def test_public_files_may_be_world_readable(self, tmp_path: Path) -> None:
        """A CA and a certificate are public: 0644 is fine; the key 0600 too; all read as bytes."""
        tls = st.TlsConfig(
            ca_file=write(tmp_path / "ca.pem", CA, 0o644),
            cert_file=write(tmp_path / "c.pem", CERT, 0o644),
            key_file=write(tmp_path / "c.key", PEM),
            server_name="t.example",
        )
        material, api_key = connect_material(st.ConnectionConfig(tls=tls))
        assert (TlsMaterial(ca=CA, cert=CERT, key=PEM, server_name="t.example"), None) == (
            material,
            api_key,
        )

    def test_files_are_read_at_each_call(self, tmp_path: Path) -> None:
        """Each connect reads the files again: a replaced CA is the next connect's CA."""
        ca = write(tmp_path / "ca.pem", CA, 0o644)
        config = st.ConnectionConfig(tls=st.TlsConfig(ca_file=ca))
        first, _ = connect_material(config)
        write(ca, CERT, 0o644)
        second, _ = connect_material(config)
        assert [CA, CERT] == [m.ca for m in (first, second) if isinstance(m, TlsMaterial)]

    def test_a_file_that_is_not_pem_is_refused(self, tmp_path: Path) -> None:
        """A CA file without a PEM block (say, DER, or the wrong file): refused, naming it."""
        ca = write(tmp_path / "ca.der", b"0\x82\x01", 0o644)
        with pytest.raises(st.ConfigError, match=r"^tls ca_file '.*ca.der' is not PEM"):
            connect_material(st.ConnectionConfig(tls=st.TlsConfig(ca_file=ca)))

    def test_a_fifo_is_refused_without_hanging(self, tmp_path: Path) -> None:
        """A FIFO planted at the key's path is refused at once (never a blocking open)."""
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo, 0o600)
        with pytest.raises(st.ConfigError, match="is not a regular file"):
            read_api_key(fifo)

    def test_a_directory_or_missing_file_is_refused(self, tmp_path: Path) -> None:
        """A directory, a missing file: one line each."""
        with pytest.raises(st.ConfigError, match=r"is not a regular file|cannot be read"):
            read_api_key(tmp_path)
        with pytest.raises(st.ConfigError, match="cannot be read: No such file or directory"):
            read_api_key(tmp_path / "missing")

    def test_api_key_file_is_one_stripped_line(self, tmp_path: Path) -> None:
        """The key is the file's text without surrounding whitespace (an editor's newline)."""
        assert KEY == read_api_key(write(tmp_path / "k", f"  {KEY}\n"))

    @pytest.mark.parametrize("text", ["", "\n", "two\nlines", "caf\u00e9"])
    def test_api_key_file_that_is_not_one_ascii_line_is_refused(self, tmp_path: Path, text: str) -> None:
        """Empty, several lines, not ASCII: refused without echoing the content."""
        path = write(tmp_path / "k", text)
        with pytest.raises(st.ConfigError) as caught:
            read_api_key(path)
        assert "two" not in str(caught.value)

    def test_api_key_file_readable_by_others_is_refused(self, tmp_path: Path) -> None:
        """The API-key file follows the private key's rule."""
        with pytest.raises(st.ConfigError, match=r"api_key_file .* \(mode 0644\)"):
            read_api_key(write(tmp_path / "k", KEY, 0o644))

    def test_check_files_makes_paths_absolute(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """What the CLI hands a daemon (which works in its state dir) has absolute paths."""
        monkeypatch.chdir(tmp_path)
        write(tmp_path / "k", KEY)
        write(tmp_path / "ca.pem", CA, 0o644)
        config = check_files(st.ConnectionConfig(api_key_file="k", tls=st.TlsConfig(ca_file="ca.pem")))
        assert isinstance(config.tls, st.TlsConfig)
        assert (tmp_path / "k", tmp_path / "ca.pem") == (config.api_key_file, config.tls.ca_file)

    def test_only_file_settings_need_a_thread(self) -> None:
        """A connect without files reads nothing (no thread on the dev server's reconnect path)."""
        assert not reads_files(st.ConnectionConfig(tls=st.TlsConfig(ca_data=b"CA")))
        assert reads_files(st.ConnectionConfig(api_key_file="/k"))
        assert reads_files(st.ConnectionConfig(tls=st.TlsConfig(ca_file="/ca.pem")))


PROFILE: dict[str, Any] = {
    "address": "profile.example:7233",
    "namespace": "profile-ns",
    "api_key": KEY,
    "tls": {"server_name": "profile.example", "ca_file": Path("/profile/ca.pem")},
}


def external(
    flags: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    file: dict[str, Any] | None = None,
    profile: dict[str, Any] | None = None,
) -> st.ConnectionConfig:
    """The resolved connection of `up --external` (no address: the profile's) with a fake profile."""
    names: list[str | None] = []

    def load(name: str | None) -> dict[str, Any]:
        names.append(name)
        return PROFILE if profile is None else profile

    config = resolve(flags={"external": True, **(flags or {})}, env=env or {}, file=file, load_profile=load)
    assert 1 == len(names)
    assert config.connection is not None
    return config.connection


class TestPrecedence:
    def test_profile_alone(self) -> None:
        """Nothing of ours: address, namespace, API key and TLS all come from the profile."""
        connection = external()
        expected_tls = st.TlsConfig(ca_file="/profile/ca.pem", server_name="profile.example")
        assert ("profile.example:7233", "profile-ns", KEY, expected_tls) == (
            connection.address,
            connection.namespace,
            connection.api_key,
            connection.tls,
        )

    def test_external_address_and_namespace_beat_the_profile(self) -> None:
        """--external HOST:PORT and --namespace beat TEMPORAL_ADDRESS / the profile's."""
        connection = external({"external": "ours.example:7233", "namespaces": ["ours"]})
        assert ("ours.example:7233", "ours") == (connection.address, connection.namespace)

    def test_defaults_without_a_profile(self) -> None:
        """No profile, no TEMPORAL_*: 127.0.0.1:7233, namespace default, plaintext (the temporal CLI's)."""
        connection = external(profile={})
        assert ("127.0.0.1:7233", "default", False) == (
            connection.address,
            connection.namespace,
            connection.tls,
        )

    @pytest.mark.parametrize(
        ("flags", "env", "file", "expected"),
        [
            ({"tls_ca": "/flag.pem"}, {"STIGMER_TRIO_TLS_CA": "/env.pem"}, "/file.pem", "/flag.pem"),
            ({}, {"STIGMER_TRIO_TLS_CA": "/env.pem"}, "/file.pem", "/env.pem"),
            ({}, {}, "/file.pem", "/file.pem"),
            ({}, {}, None, "/profile/ca.pem"),
        ],
    )
    def test_ca_flags_env_file_profile(
        self, flags: dict[str, Any], env: dict[str, str], file: str | None, expected: str
    ) -> None:
        """The CA: flag > STIGMER_TRIO_TLS_CA > [connection.tls] ca > the profile's."""
        table = {"connection": {"tls": {"ca": file}}} if file else None
        tls = external(flags, env, table).tls
        assert isinstance(tls, st.TlsConfig)
        assert (Path(expected), "profile.example") == (tls.ca_file, tls.server_name)

    def test_our_client_pair_replaces_the_profiles_whole(self) -> None:
        """Our certificate and key replace the profile's pair (never our cert with its key)."""
        profile = {"tls": {"cert_file": Path("/p.pem"), "key_data": PEM}}
        tls = external({"tls_cert": "/c.pem", "tls_key": "/c.key"}, profile=profile).tls
        assert isinstance(tls, st.TlsConfig)
        assert (Path("/c.pem"), Path("/c.key"), None) == (tls.cert_file, tls.key_file, tls.key_data)

    def test_our_api_key_file_beats_temporal_api_key(self) -> None:
        """--api-key-file beats the profile's / TEMPORAL_API_KEY's key."""
        connection = external({"api_key_file": "/k"})
        assert (None, Path("/k")) == (connection.api_key, connection.api_key_file)

    def test_profile_name_is_ours_flag_env_file(self) -> None:
        """The profile's name comes from --profile > STIGMER_TRIO_PROFILE > [connection] profile."""
        names: list[str | None] = []
        for flags, env in (
            ({"profile": "a"}, {"STIGMER_TRIO_PROFILE": "b"}),
            ({}, {"STIGMER_TRIO_PROFILE": "b"}),
        ):
            resolve(
                flags={"external": True, **flags},
                env=env,
                file={"connection": {"profile": "c"}},
                load_profile=lambda name: names.append(name) or {},
            )
        resolve(
            flags={"external": True},
            env={},
            file={"connection": {"profile": "c"}},
            load_profile=lambda name: names.append(name) or {},
        )
        assert ["a", "b", "c"] == names

    def test_profile_tls_disabled_with_a_key_is_refused(self) -> None:
        """A profile that disables TLS but carries an API key: refused (the key would go in cleartext)."""
        with pytest.raises(st.ConfigError, match="cleartext"):
            external(profile={"api_key": KEY, "tls": {"disabled": True}})

    def test_tls_on_without_files_is_system_roots(self) -> None:
        """--tls (or [connection.tls] enabled = true) alone: TLS with the system roots."""
        assert external({"tls": True}, profile={}).tls is True
        assert external(file={"connection": {"tls": {"enabled": True}}}, profile={}).tls is True

    @pytest.mark.parametrize(
        ("env", "file", "message"),
        [
            ({"STIGMER_TRIO_TLS": "maybe"}, None, "STIGMER_TRIO_TLS must be true or false, got 'maybe'"),
            (
                {},
                {"connection": {"tls": {"cafile": "/x"}}},
                "[connection.tls]: unknown setting 'cafile' (known: ca, cert, enabled, key, server_name)",
            ),
            ({}, {"connection": {"tls": {"ca": 3}}}, "[connection.tls] ca must be a non-empty path, got 3"),
            ({}, {"connection": "x"}, "[connection] must be a table, got 'x'"),
        ],
    )
    def test_bad_values_are_one_line(self, env: dict[str, str], file: Any, message: str) -> None:
        """Bad connection settings: one line naming the setting and the value."""
        with pytest.raises(st.ConfigError) as caught:
            external(env=env, file=file, profile={})
        assert message == str(caught.value)


class TestDevServerMode:
    def test_temporal_environment_is_not_read(self) -> None:
        """Without --external the SDK's environment configuration is never loaded (TEMPORAL_ADDRESS set)."""
        config = resolve(
            flags={}, env={"TEMPORAL_ADDRESS": "x:1"}, load_profile=lambda name: pytest.fail("read")
        )
        assert config.connection is None

    @pytest.mark.parametrize(
        ("flags", "env", "named"),
        [
            ({"tls_ca": "/ca.pem"}, {}, "--tls-ca"),
            ({}, {"STIGMER_TRIO_API_KEY_FILE": "/k"}, "--api-key-file"),
        ],
    )
    def test_tls_settings_are_refused(self, flags: dict[str, Any], env: dict[str, str], named: str) -> None:
        """TLS settings against the loopback dev server are a mistake: refused, pointing at --external."""
        with pytest.raises(st.ConfigError, match=f"^{named} .* applies only to an external Temporal"):
            resolve(flags=flags, env=env)


class TestTemporalEnvironment:
    def test_variables_over_the_profile_paths_kept(self, tmp_path: Path) -> None:
        """The real SDK loader: TEMPORAL_ADDRESS beats the file's address; file paths stay paths (read at
        each connect), inline data becomes bytes."""
        toml = tmp_path / "temporal.toml"
        toml.write_text(
            '[profile.prod]\naddress = "file.example:1"\nnamespace = "ns"\n[profile.prod.tls]\n'
            'server_ca_cert_path = "/ca.pem"\nclient_cert_path = "/c.pem"\nclient_key_data = "KEYDATA"\n'
        )
        env = {"TEMPORAL_CONFIG_FILE": str(toml), "TEMPORAL_ADDRESS": "env.example:2"}
        loaded = load_temporal_profile("prod", env, environ={})
        expected = {
            "address": "env.example:2",
            "namespace": "ns",
            "tls": {"ca_file": Path("/ca.pem"), "cert_file": Path("/c.pem"), "key_data": b"KEYDATA"},
        }
        assert expected == loaded

    def test_missing_profile_is_one_line(self, tmp_path: Path) -> None:
        """A profile the file does not have: one ConfigError line naming it."""
        toml = tmp_path / "temporal.toml"
        toml.write_text('[profile.default]\naddress = "a:1"\n')
        with pytest.raises(st.ConfigError, match=r"^temporal profile 'nope': Profile 'nope' not found$"):
            load_temporal_profile("nope", {"TEMPORAL_CONFIG_FILE": str(toml)}, environ={})

    def test_default_file_location(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """temporal.toml at $XDG_CONFIG_HOME/temporalio (else ~/.config/temporalio) is found."""
        (tmp_path / "temporalio").mkdir()
        (tmp_path / "temporalio" / "temporal.toml").write_text(
            '[profile.default]\naddress = "xdg.example:1"\n'
        )
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
        assert {"address": "xdg.example:1"} == load_temporal_profile(None, {})

    def test_envconfig_is_imported_only_when_used(self, tmp_path: Path) -> None:
        """Nothing to read (no profile, no TEMPORAL_*, no temporal.toml): {} without importing
        temporalio.envconfig (0.2-0.3 s); `up --check` in dev-server mode with TEMPORAL_ADDRESS neither."""
        code = (
            "import sys\n"
            "from stigmer_trio._boundary._envprofile import load_temporal_profile\n"
            f"assert {{}} == load_temporal_profile(None, {{}}, {{'HOME': {str(tmp_path)!r}}})\n"
            "from stigmer_trio._cli._main import main\n"
            f"assert 0 == main(['up', '--check', '--state-dir', {str(tmp_path / 's')!r}], "
            "{'TEMPORAL_ADDRESS': 'x:1'})\n"
            "print(sorted(m for m in sys.modules if m.startswith('temporalio')))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
        )
        assert (0, "[]") == (result.returncode, result.stdout.splitlines()[-1]), result.stderr


class TestCli:
    def test_external_without_address(self) -> None:
        """`up --external` alone: the address comes from the profile or TEMPORAL_ADDRESS."""
        args = build_parser().parse_args(["up", "--external", "--profile", "prod", "--tls-ca", "ca.pem"])
        assert (True, "prod", "ca.pem") == (args.external, args.profile, args.tls_ca)

    def test_temporal_variables_travel_to_a_detached_daemon_hidden(self, tmp_path: Path) -> None:
        """Settings carry TEMPORAL_* (the daemon resolves what its parent did) and never show them."""
        env = {"TEMPORAL_API_KEY": KEY, "STIGMER_TRIO_PORT": "1", "PATH": "/bin"}
        settings = Settings.gather(argparse.Namespace(command="up"), env, {}, tmp_path)
        assert {"TEMPORAL_API_KEY": KEY, "STIGMER_TRIO_PORT": "1"} == settings.env
        assert KEY not in repr(settings)
