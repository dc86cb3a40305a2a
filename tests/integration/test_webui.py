"""The dev server's Web UI, served by default: where `up`, `status` and /status say it is, what the
flags change, and the workflow list rendered in a real browser (headless Chromium) with the demo
workflow in it.

Real daemon (`up --detach`), real temporal binary, real Chromium (Debian's `chromium`; .ci/run installs
it when missing). A missing browser fails the test, it is never skipped.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psutil
import pytest
from harness import TEMPORAL, Stack, free_port, http_get, wait_for

from stigmer_trio._boundary._process import ProcessIdentity
from stigmer_trio._boundary._statefiles import PidRecord
from stigmer_trio._core._layout import StateLayout
from stigmer_trio._tree._serve_devserver import proof_problem

pytestmark = pytest.mark.integration

# How Chromium runs here (as root, offline): no sandbox, no GPU, nothing fetched in the background, a new
# empty profile each time. The UI renders client-side: the virtual time budget lets its scripts run.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=15000", "--dump-dom",
)  # fmt: skip
RENDER_TRIES = 4  # the UI may still be fetching the list when the budget ends: load it again


def chromium() -> str:
    """The browser, or the test fails saying how to get it."""
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("chromium is not installed: `apt-get install -y chromium` (.ci/run does it as root)")
    return found


def rendered(url: str, tmp_path: Path) -> str:
    """The DOM of `url` once headless Chromium has run its scripts."""
    with tempfile.TemporaryDirectory(dir=tmp_path) as profile:
        result = subprocess.run(
            [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    assert 0 == result.returncode, result.stderr[-2000:]
    return result.stdout


def get(url: str, path: str) -> tuple[int, str]:
    code, body = http_get(url, path)
    return code, body.decode(errors="replace")


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def workflow_ids(address: str, home: Path) -> list[str]:
    """The workflow ids the server lists (through the temporal CLI, not the UI)."""
    home.mkdir(exist_ok=True)
    result = subprocess.run(
        [str(TEMPORAL), "workflow", "list", "--address", address, "--output", "json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"HOME": str(home), "PATH": "/usr/bin:/bin", "TEMPORAL_VERSION_CHECK_DISABLED": "1"},
    )
    assert 0 == result.returncode, result.stderr
    listed: Any = json.loads(result.stdout or "[]")
    return [item["execution"]["workflowId"] for item in listed]


class TestBrowser:
    def test_the_demo_workflow_is_in_the_rendered_workflow_list(self, stack: Stack, tmp_path: Path) -> None:
        """Default settings: the UI at the gRPC port + 1000, printed by `up` and `status`; after `demo`,
        Chromium renders the UI's workflow list with the demo's workflow id in it (which the page's
        HTML alone does not contain: the list is the UI's own rendering of the server's data)."""
        chromium()
        result = stack.up()
        assert 0 == result.returncode, (result.stdout, result.stderr, stack.daemon_log())
        ui = f"http://127.0.0.1:{stack.port + 1000}"
        assert f", web UI {ui}, ready in " in result.stdout
        code, report = stack.status()
        assert (0, {"url": ui}) == (code, report["ui"])
        text = stack.cli("status", "--state-dir", str(stack.state_dir)).stdout
        assert f"\n  web UI {ui}\n" in text
        assert report["ui"] == json.loads(get(report["http"]["url"], "/status")[1])["ui"]
        demo = stack.cli("demo", "--state-dir", str(stack.state_dir))
        assert 0 == demo.returncode, demo.stderr
        [workflow_id] = workflow_ids(stack.address, tmp_path / "home")
        page = f"{ui}/namespaces/default/workflows"
        code, html = get(ui, "/namespaces/default/workflows")
        assert 200 == code
        assert workflow_id not in html
        for _ in range(RENDER_TRIES):
            dom = rendered(page, tmp_path)
            if workflow_id in dom:
                break
        assert workflow_id in dom, dom[-3000:]


class TestSettings:
    def test_no_ui_is_headless(self, stack: Stack) -> None:
        """--no-ui: a headless server (nothing at port + 1000), `ui` null, no UI line anywhere."""
        result = stack.up("--no-ui")
        assert 0 == result.returncode, (result.stdout, result.stderr)
        assert "web UI" not in result.stdout
        code, report = stack.status()
        assert (0, None) == (code, report["ui"])
        assert "--headless" in (stack.record("devserver.json") or {}).get("cmdline", [])
        assert not listening(stack.port + 1000)
        assert "web UI" not in stack.cli("status", "--state-dir", str(stack.state_dir)).stdout

    def test_ui_port_zero_is_a_free_port_kept_over_a_restart(self, stack: Stack) -> None:
        """--ui-port 0: a free port, which answers; `restart` adopts the server (a side port chosen by
        chance is no reason to replace it) and reports the same UI."""
        report = stack.start("--ui-port", "0")
        url = report["ui"]["url"]
        assert f"http://127.0.0.1:{stack.port + 1000}" != url
        assert 200 == get(url, "/")[0]
        result = stack.cli(
            "restart", "--state-dir", str(stack.state_dir), "--port", str(stack.port), "--ui-port", "0"
        )
        assert 0 == result.returncode, (result.stdout, result.stderr)
        code, again = stack.status()
        assert (0, report["dev_server"]["pid"], True, url) == (
            code, again["dev_server"]["pid"], again["dev_server"]["adopted"], again["ui"]["url"]
        )  # fmt: skip

    def test_ui_port_in_use_names_the_flag(self, stack: Stack) -> None:
        """A UI port that another process holds: `up` fails (exit 1) in one line naming the port,
        --ui-port and --no-ui; nothing is left running."""
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", free_port()))
            holder.listen()
            taken = holder.getsockname()[1]
            result = stack.up("--ui-port", str(taken))
        assert 1 == result.returncode, result.stdout
        assert 1 == result.stderr.count("\n"), result.stderr
        assert f"the Web UI's port {taken} on 127.0.0.1 is already in use" in result.stderr
        assert "--ui-port N" in result.stderr
        assert "--no-ui" in result.stderr
        assert [] == stack.servers()

    def test_external_mode_has_no_ui(self, stack: Stack) -> None:
        """--external: no dev server, so no UI (`ui` null), whatever --ui-port says."""
        result = stack.up("--external", f"127.0.0.1:{free_port()}", "--ui-port", "9")
        assert 0 == result.returncode, (result.stdout, result.stderr)
        code, report = stack.status()
        assert (1, None, None) == (code, report["dev_server"], report["ui"])


def test_the_ui_and_its_api_answer_soon_after_ready(stack: Stack) -> None:
    """Once `up --detach` says ready, the UI's pages answer at once, and its API (the server's
    namespaces, through the UI's own connection to the server, which retries after the dial it made
    while the server was booting) within a few seconds (measured: 0.35-0.70 s)."""
    report = stack.start()
    ui = f"http://127.0.0.1:{stack.port + 1000}"
    assert {"url": ui} == report["ui"]
    assert 200 == get(ui, "/")[0]

    def namespaces() -> str | None:
        code, body = get(ui, "/api/v1/namespaces")
        return body if code == 200 else None

    body = wait_for(namespaces, 5.0, "the UI's API lists the namespaces")
    assert "default" in [item["namespaceInfo"]["name"] for item in json.loads(body)["namespaces"]]


class TestProof:
    @pytest.mark.parametrize(
        ("ui", "problem"),
        [
            (["--ui-ip", "0.0.0.0", "--ui-port", "8233"], "its Web UI does not listen on 127.0.0.1 only"),
            (["--ui-port", "8233"], "its Web UI does not listen on 127.0.0.1 only"),
            (["--headless"], "it does not hold"),
            (["--ui-ip", "127.0.0.1", "--ui-port", "8233"], "it does not hold"),
        ],
    )
    def test_a_server_whose_ui_listens_beyond_loopback_is_not_ours(
        self, tmp_path: Path, ui: list[str], problem: str
    ) -> None:
        """We only ever spawn a UI bound to 127.0.0.1 (or none): a recorded server whose command line
        binds it anywhere else is not provably ours, whatever else matches (the next check here, the
        lock, fails for all: this test process holds none)."""
        me = psutil.Process()
        argv = (me.exe(), "server", "start-dev", "--ip", "127.0.0.1", "--port", "7233", *ui)
        identity = ProcessIdentity(me.pid, me.create_time(), argv)
        record = PidRecord(me.pid, me.create_time(), argv, 0.0, {"address": "127.0.0.1:7233"})
        found = proof_problem(identity, record, StateLayout(tmp_path))
        assert found is not None
        assert found.startswith(problem), found
