"""The runtime embedded in a Trio program, against the real binary: connection, workers, fail-fast.

Each scenario runs in a child process (tests/integration/apps/embed.py): temporalio can crash the
interpreter at exit after a Worker ran, so the child reports JSON lines and leaves with os._exit, and
the tests judge those lines. The child starts and kills only processes it spawned itself.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

pytestmark = pytest.mark.integration

APP = Path(__file__).parent / "apps" / "embed.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def scenario(name: str, tmp_path: Path) -> dict[str, dict[str, Any]]:
    """Run one scenario; its report lines by step. Fails with the child's traceback on an error."""
    port = free_port()
    state = tmp_path / "state"
    state.mkdir()
    result = subprocess.run(
        [sys.executable, str(APP), name, str(state), str(port)],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    steps = {}
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            steps[record["step"]] = record
    assert "error" not in steps, steps["error"]["traceback"]
    assert "done" in steps, (result.stdout[-2000:], result.stderr[-2000:])
    leftovers = [
        p for p in psutil.process_iter(["cmdline"]) if str(state) in " ".join(p.info["cmdline"] or [])
    ]
    assert [] == leftovers
    return steps


class TestExternalMode:
    def test_runtime_started_before_temporal(self, tmp_path: Path) -> None:
        """Nothing listens: open_runtime returns, calls fail fast; Temporal starts later: a workflow runs."""
        steps = scenario("external", tmp_path)
        assert steps["opened"]["state"] in ("connecting", "disconnected")
        assert steps["fail-fast"]["seconds"] < 0.05  # no network I/O: microseconds in practice
        assert steps["client"]["raised"]
        status = steps["connected"]["status"]
        assert (True, "connected", 1) == (
            status["ready"],
            status["connection"]["state"],
            status["connection"]["epoch"],
        )
        assert [{"task_queue": "embed-q", "running": True, "restarts": 0, "epoch": 1}] == status["workers"]
        assert "hello trio" == steps["workflow"]["result"]
        assert "closed" == steps["closed"]["state"]


class TestDevServerCrash:
    def test_sigkill_under_load(self, tmp_path: Path) -> None:
        """SIGKILL of the dev server: DISCONNECTED, fail-fast, back with a new epoch; no start hangs,
        every successful start is visible, and a workflow started before the kill completes."""
        steps = scenario("devserver", tmp_path)
        assert "hello one" == steps["first"]["result"]
        outcomes = steps["concurrent"]["outcomes"]
        assert 50 == len(outcomes)
        assert all(o.split(":")[0] in ("ok", "unavailable") for o in outcomes), outcomes
        transitions = [tuple(t) for t in steps["back"]["transitions"]]
        assert ("disconnected", 1) in transitions
        assert ("connected", 2) == transitions[-1]
        assert steps["fail-fast"]["seconds"] is not None
        assert steps["fail-fast"]["seconds"] < 0.05
        status = steps["back"]["status"]
        assert (True, 2, 1) == (
            status["ready"],
            status["connection"]["epoch"],
            status["connection"]["reconnects"],
        )
        assert 2 == status["workers"][0]["epoch"]  # the worker was replaced for the new connection
        assert "hello two" == steps["second"]["result"]
        assert "slept 3" == steps["pre-kill"]["result"]  # persisted db: survived the crash
        assert steps["visible"]["started"] == steps["visible"]["visible"]
