"""An api_key never travels in cleartext: a runtime given one (default settings) against a plaintext
HTTP/2 listener on loopback sends TLS, never the bearer token; only an explicit opt-in sends it plain."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest

TOKEN = "sekrit-api-key-4711"

# The runtime in external mode, as an embedding program builds it, for two seconds of connect attempts.
CHILD = """
import sys, trio, stigmer_trio as st
async def main():
    connection = st.ConnectionConfig(address=sys.argv[1], api_key=sys.argv[2], {options})
    config = st.RuntimeConfig(state_dir=sys.argv[3], dev_server=None, connection=connection)
    async with st.open_runtime(config):
        await trio.sleep(2.0)
trio.run(main)
"""


class PlaintextH2:
    """A plaintext HTTP/2 server on 127.0.0.1: records each connection's first bytes and every
    request's headers (HPACK-decoded), answers nothing."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.first_bytes: list[bytes] = []
        self.headers: list[dict[bytes, bytes]] = []
        self.raw = bytearray()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._accept)]
        self.threads[0].start()

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for thread in list(self.threads):
            thread.join(5.0)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,))
            with self.lock:
                self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        server.initiate_connection()
        received = b""
        with conn:
            conn.settimeout(3.0)
            try:
                conn.sendall(server.data_to_send())
                while data := conn.recv(65536):
                    received += data
                    with self.lock:
                        self.raw += data
                    try:
                        events = server.receive_data(data)
                    except h2.exceptions.ProtocolError:
                        break  # not HTTP/2 (a TLS ClientHello)
                    for event in events:
                        if isinstance(event, h2.events.RequestReceived):
                            with self.lock:
                                self.headers.append({bytes(k): bytes(v) for k, v in event.headers})
                    conn.sendall(server.data_to_send())
            except OSError:
                pass
        if received:
            with self.lock:
                self.first_bytes.append(received[:5])


def run_runtime(listener: PlaintextH2, state_dir: Path, options: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(options=options), listener.address, TOKEN, str(state_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _, stderr = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert 0 == child.returncode, stderr.decode(errors="replace")[-2000:]
    assert TOKEN.encode() not in stderr  # nor does the key show in its logs


@pytest.fixture
def listener() -> Iterator[PlaintextH2]:
    server = PlaintextH2()
    yield server
    server.close()


def test_default_settings_never_send_the_key_in_cleartext(listener: PlaintextH2, tmp_path: Path) -> None:
    """With an api_key and default settings the client speaks TLS: the plaintext listener sees
    ClientHellos (0x16 0x03), no HTTP/2 request, and the token nowhere in its bytes."""
    run_runtime(listener, tmp_path, "")
    assert listener.first_bytes, "the runtime never tried to connect"
    assert all(first.startswith(b"\x16\x03") for first in listener.first_bytes), listener.first_bytes
    assert [] == listener.headers
    assert TOKEN.encode() not in listener.raw


def test_explicit_plaintext_opt_in_sends_it(listener: PlaintextH2, tmp_path: Path) -> None:
    """The listener does catch a bearer token: with tls=False, plaintext_api_key=True it arrives."""
    run_runtime(listener, tmp_path, "tls=False, plaintext_api_key=True")
    authorization = {h.get(b"authorization") for h in listener.headers}
    assert {f"Bearer {TOKEN}".encode()} == authorization
