"""TLS against a real TLS endpoint: a TLS-terminating proxy (tlsproxy.py: Trio, ALPN h2) in front of a
bare dev server, certificates from trustme test CAs. The runtime connects with the right CA (and a client
certificate for mTLS); a wrong CA or a missing client certificate stays DISCONNECTED with a clear
last_error while calls fail fast; rotated certificate files are used at the next reconnect; and the real
daemon (`up --external --profile`, the SDK's temporal.toml) never writes or prints a key.

A connection without a Worker runs in this process (no Worker ever ran here, see children.py); the
daemon test drives the real CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from harness import TEMPORAL, Stack, free_port, wait_for
from tlsproxy import open_tls_proxy, server_context, write_client_files

import stigmer_trio as st

pytestmark = pytest.mark.integration

CONNECTED_WITHIN = 15.0  # generous: a TLS connect to a loopback proxy takes milliseconds
STAYS_DOWN = 2.0  # seconds a refused runtime is watched: several connect attempts at 50 ms-2 s backoff
API_KEY = "stigmer-test-api-key-8f3e1c"


@pytest.fixture(scope="module")
def server_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A bare in-memory dev server on a free port for this module (killed, with its group, at the end)."""
    home = tmp_path_factory.mktemp("tls-server-home")
    port = free_port()
    command = [str(TEMPORAL), "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "HOME": str(home), "TEMPORAL_VERSION_CHECK_DISABLED": "1"}
    with open(home / "server.log", "wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=log, env=env, start_new_session=True)
    try:
        wait_for(lambda: _accepts(port), 30.0, f"the dev server on port {port} listens")
        yield port
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # our child, not reaped yet: its pid and group are ours
        server.wait(10)


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def cas() -> tuple[trustme.CA, trustme.CA]:
    return trustme.CA(), trustme.CA()


@pytest.fixture
def runtime_factory(tmp_path: Path) -> Any:
    """config(connection) -> an embedded runtime's config in external mode (no workers, no outbox)."""

    def config(connection: st.ConnectionConfig) -> st.RuntimeConfig:
        return st.RuntimeConfig(
            state_dir=tmp_path / "state", dev_server=None, connection=connection, outbox=None
        )

    return config


def connection(address: str, tls: Any, **options: Any) -> st.ConnectionConfig:
    return st.ConnectionConfig(
        address=address, tls=tls, health_interval=0.2, health_timeout=1.0, connect_timeout=2.0, **options
    )


async def wait_state(rt: st.Runtime, state: st.ConnectionState, seconds: float, epoch: int = 0) -> None:
    with trio.fail_after(seconds):
        while not (rt.state is state and rt.status()["connection"]["epoch"] > epoch):
            await trio.sleep(0.02)


async def fail_fast(rt: st.Runtime) -> float:
    """start_workflow while not CONNECTED: raises TemporalUnavailable; how long that took (s)."""
    began = time.perf_counter()
    with pytest.raises(st.TemporalUnavailable):
        await rt.start_workflow("Nothing", None, id="never", task_queue="nowhere")
    return time.perf_counter() - began


async def stays_down(rt: st.Runtime) -> str:
    """Watch a refused runtime for STAYS_DOWN s: never CONNECTED, and start_workflow fails fast (< 50 ms)
    while so; its last_error."""
    with trio.move_on_after(STAYS_DOWN):
        await wait_state(rt, st.ConnectionState.CONNECTED, STAYS_DOWN * 2)
    status = rt.status()["connection"]
    assert (0, "disconnected") == (status["epoch"], status["state"]), status
    assert await fail_fast(rt) < 0.05
    last_error: str = status["last_error"]
    return last_error


def tls_files(directory: Path, ca: trustme.CA, client: trustme.CA | None = None) -> st.TlsConfig:
    return st.TlsConfig(**write_client_files(ca, directory, client=client))


class TestServerAuthentication:
    async def test_connects_with_the_right_ca(
        self, server_port: int, cas: tuple[trustme.CA, trustme.CA], runtime_factory: Any, tmp_path: Path
    ) -> None:
        """The CA that issued the proxy's certificate: CONNECTED over TLS, ALPN h2 negotiated."""
        ca, _ = cas
        context = server_context(ca, ("127.0.0.1", "localhost"), client_ca=None)
        async with open_tls_proxy(server_port, context) as proxy:
            tls = tls_files(tmp_path / "client", ca)
            async with st.open_runtime(runtime_factory(connection(proxy.address, tls))) as rt:
                await wait_state(rt, st.ConnectionState.CONNECTED, CONNECTED_WITHIN)
            assert proxy.handshakes >= 1
            assert {"h2"} == set(proxy.alpn)
            assert [] == proxy.failures

    async def test_server_name_names_the_certificate(
        self, server_port: int, cas: tuple[trustme.CA, trustme.CA], runtime_factory: Any, tmp_path: Path
    ) -> None:
        """A certificate for temporal.test only, reached at 127.0.0.1: refused without server_name (the
        last_error says which setting), CONNECTED with it."""
        ca, _ = cas
        async with open_tls_proxy(server_port, server_context(ca, ("temporal.test",), None)) as proxy:
            files = write_client_files(ca, tmp_path / "client")
            without = st.TlsConfig(ca_file=files["ca_file"])
            async with st.open_runtime(runtime_factory(connection(proxy.address, without))) as rt:
                with trio.fail_after(CONNECTED_WITHIN):
                    while not rt.status()["connection"]["last_error"]:
                        await trio.sleep(0.02)
                last_error = rt.status()["connection"]["last_error"]
            assert last_error.endswith(
                "(the server's certificate does not name this host: tls server_name)"
            ), last_error
            tls = st.TlsConfig(ca_file=files["ca_file"], server_name="temporal.test")
            async with st.open_runtime(runtime_factory(connection(proxy.address, tls))) as rt:
                await wait_state(rt, st.ConnectionState.CONNECTED, CONNECTED_WITHIN)

    async def test_wrong_ca_stays_disconnected_and_fails_fast(
        self, server_port: int, cas: tuple[trustme.CA, trustme.CA], runtime_factory: Any, tmp_path: Path
    ) -> None:
        """A CA that did not issue the server's certificate: never CONNECTED, last_error says why, and
        start_workflow raises TemporalUnavailable at once."""
        ca, other = cas
        async with open_tls_proxy(server_port, server_context(ca, ("127.0.0.1",), None)) as proxy:
            tls = tls_files(tmp_path / "client", other)
            async with st.open_runtime(runtime_factory(connection(proxy.address, tls))) as rt:
                last_error = await stays_down(rt)
            assert f"connect to {proxy.address}: " in last_error
            assert last_error.endswith(
                "InvalidCertificate(UnknownIssuer) }))"
                " (the server's certificate is not signed by a CA we trust: tls ca_file / --tls-ca)"
            ), last_error
            assert proxy.failures  # the proxy saw the client give up on the handshake
            assert 0 == proxy.handshakes


class TestMutualTls:
    async def test_connects_with_a_client_certificate(
        self, server_port: int, cas: tuple[trustme.CA, trustme.CA], runtime_factory: Any, tmp_path: Path
    ) -> None:
        """The proxy requires a client certificate issued by its client CA: given one, CONNECTED."""
        ca, client_ca = cas
        async with open_tls_proxy(server_port, server_context(ca, ("127.0.0.1",), client_ca)) as proxy:
            tls = tls_files(tmp_path / "client", ca, client=client_ca)
            async with st.open_runtime(runtime_factory(connection(proxy.address, tls))) as rt:
                await wait_state(rt, st.ConnectionState.CONNECTED, CONNECTED_WITHIN)
            assert [] == proxy.failures

    async def test_missing_client_certificate_stays_disconnected_and_fails_fast(
        self, server_port: int, cas: tuple[trustme.CA, trustme.CA], runtime_factory: Any, tmp_path: Path
    ) -> None:
        """No client certificate for a proxy that requires one: never CONNECTED, a clear last_error,
        calls fail fast; the proxy refused the handshake for want of a certificate."""
        ca, client_ca = cas
        async with open_tls_proxy(server_port, server_context(ca, ("127.0.0.1",), client_ca)) as proxy:
            tls = tls_files(tmp_path / "client", ca)
            async with st.open_runtime(runtime_factory(connection(proxy.address, tls))) as rt:
                last_error = await stays_down(rt)
            assert last_error.startswith(f"connect to {proxy.address}: "), last_error
            assert last_error.endswith(
                "(the server closed the connection after the TLS handshake: it may require a client "
                "certificate (mTLS), and none was given: tls cert_file and key_file / --tls-cert and "
                "--tls-key)"
            ), last_error
            assert any("certificate" in why.lower() for why in proxy.failures), proxy.failures


class TestRotation:
    async def test_rotated_files_are_used_at_the_next_reconnect(
        self, server_port: int, cas: tuple[trustme.CA, trustme.CA], runtime_factory: Any, tmp_path: Path
    ) -> None:
        """mTLS under CA 1, CONNECTED; then the proxy's certificate and client CA move to CA 2, the
        client's CA, certificate and key files are replaced in place and the proxy cuts every connection:
        the old material cannot pass, and the runtime is CONNECTED again on a new epoch."""
        old, new = cas
        async with open_tls_proxy(server_port, server_context(old, ("127.0.0.1",), old)) as proxy:
            tls = tls_files(tmp_path / "client", old, client=old)
            async with st.open_runtime(runtime_factory(connection(proxy.address, tls))) as rt:
                await wait_state(rt, st.ConnectionState.CONNECTED, CONNECTED_WITHIN)
                epoch = rt.status()["connection"]["epoch"]
                assert tls == tls_files(tmp_path / "client", new, client=new)  # the same paths
                proxy.context = server_context(new, ("127.0.0.1",), new)
                assert proxy.reset() >= 1
                await wait_state(rt, st.ConnectionState.CONNECTED, CONNECTED_WITHIN, epoch=epoch)
            # the old material was tried against the new proxy and refused: only the new files pass
            assert any("unknown ca" in why.lower() for why in proxy.failures), proxy.failures


class TestFiles:
    async def test_unsafe_key_file_is_refused_until_fixed(
        self, server_port: int, cas: tuple[trustme.CA, trustme.CA], runtime_factory: Any, tmp_path: Path
    ) -> None:
        """A client key readable by others: DISCONNECTED, last_error names the file and its mode; once
        chmod 600, the next attempt reads it again and connects (the files are read at each attempt)."""
        ca, client_ca = cas
        async with open_tls_proxy(server_port, server_context(ca, ("127.0.0.1",), client_ca)) as proxy:
            tls = tls_files(tmp_path / "client", ca, client=client_ca)
            assert tls.key_file is not None
            tls.key_file.chmod(0o644)
            async with st.open_runtime(runtime_factory(connection(proxy.address, tls))) as rt:
                await trio.sleep(0.5)
                last_error = rt.status()["connection"]["last_error"]
                assert f"tls key_file {str(tls.key_file)!r} is accessible by group or others (mode 0644)" in (
                    last_error
                )
                assert 0 == proxy.handshakes  # no TLS was attempted (only the backoff's TCP probes)
                tls.key_file.chmod(0o600)
                await wait_state(rt, st.ConnectionState.CONNECTED, CONNECTED_WITHIN)


class TestDaemon:
    @staticmethod
    def profile(tmp_path: Path, address: str, files: dict[str, Path]) -> Path:
        """A temporal.toml with profile "prod": the proxy's address, its CA and a client certificate."""
        path = tmp_path / "temporal.toml"
        path.write_text(
            f'[profile.prod]\naddress = "{address}"\nnamespace = "default"\n'
            f"[profile.prod.tls]\n"
            f'server_ca_cert_path = "{files["ca_file"]}"\n'
            f'client_cert_path = "{files["cert_file"]}"\n'
            f'client_key_path = "{files["key_file"]}"\n'
        )
        return path

    async def test_profile_and_api_key_file_and_no_secret_anywhere(
        self, server_port: int, cas: tuple[trustme.CA, trustme.CA], stack: Stack, tmp_path: Path
    ) -> None:
        """`up --external --profile prod --api-key-file F` (address, CA and client certificate from the
        SDK's temporal.toml): ready through the mTLS proxy; neither the API key nor the private key
        appears in `status`, `status --json`, runtime.json or the daemon's log."""
        ca, client_ca = cas
        async with open_tls_proxy(server_port, server_context(ca, ("127.0.0.1",), client_ca)) as proxy:
            files = write_client_files(ca, tmp_path / "client", client=client_ca)
            key_file = tmp_path / "api.key"
            key_file.touch(mode=0o600)
            key_file.write_text(API_KEY + "\n")
            env = {"TEMPORAL_CONFIG_FILE": str(self.profile(tmp_path, proxy.address, files))}
            args = [*stack.up_args("--external", "--profile", "prod", "--api-key-file", str(key_file))]
            result = await trio.to_thread.run_sync(lambda: stack.cli(*args, env=env))
            assert 0 == result.returncode, (result.stdout, result.stderr, stack.daemon_log())
            plain = await trio.to_thread.run_sync(stack.cli, "status", "--state-dir", str(stack.state_dir))
            code, report = await trio.to_thread.run_sync(stack.status)
            assert (0, proxy.address, "connected") == (code, report["address"], report["connection"]["state"])
            stopped = await trio.to_thread.run_sync(stack.stop)
            assert 0 == stopped.returncode
        private_key = files["key_file"].read_text().splitlines()[1]  # a line of the key's base64 body
        seen = {
            "up": result.stdout + result.stderr,
            "status": plain.stdout + plain.stderr,
            "status --json": json.dumps(report),
            "daemon.log": stack.daemon_log(),
            "state files": "".join(
                p.read_text(errors="replace") for p in stack.state_dir.glob("*.json") if p.is_file()
            ),
        }
        assert report  # the JSON status was read while running (runtime.json is removed at stop)
        leaks = {where for where, text in seen.items() if API_KEY in text or private_key in text}
        assert set() == leaks

    def test_unsafe_api_key_file_is_one_line_exit_2(self, stack: Stack, tmp_path: Path) -> None:
        """--api-key-file readable by others: one line naming the file and its mode, exit 2, no state."""
        key_file = tmp_path / "api.key"
        key_file.write_text(API_KEY)
        key_file.chmod(0o640)
        result = stack.up("--external", "127.0.0.1:7233", "--api-key-file", str(key_file))
        assert 2 == result.returncode
        expected = (
            f"stigmer_trio: error: api_key_file {str(key_file)!r} is accessible by group or others "
            "(mode 0640): refusing it, as ssh does; chmod 600 it\n"
        )
        assert ("", expected) == (result.stdout, result.stderr)
        assert not stack.state_dir.exists()
        assert API_KEY not in result.stderr

    def test_runtime_json_while_running_has_no_key(self, stack: Stack, tmp_path: Path) -> None:
        """runtime.json of a running daemon given TEMPORAL_API_KEY has neither the key nor its name's
        value (the daemon is left DISCONNECTED: nothing listens at the address)."""
        env = {"TEMPORAL_API_KEY": API_KEY, "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}"}
        result = stack.cli(*stack.up_args("--external"), env=env)
        assert 0 == result.returncode, (result.stdout, result.stderr, stack.daemon_log())
        runtime_json = wait_for(lambda: stack.record("runtime.json"), 10.0, "runtime.json written")
        assert API_KEY not in json.dumps(runtime_json)
        assert API_KEY not in result.stdout + result.stderr + stack.daemon_log()
        assert 0 == stack.stop().returncode
