"""Temporal's official Trio sample (samples-python `trio_async`, copied with its MIT licence into
tests/integration/apps/trio_async/) runs unchanged as a worker of the runtime: its async activity awaits
Trio through trio_asyncio.trio_as_aio, its sync one calls trio.from_thread.run. In a child process
(tests/integration/apps/trio_sample.py): a Worker ran there."""

from __future__ import annotations

from pathlib import Path

import pytest
from children import run_scenario
from harness import free_port

pytestmark = pytest.mark.integration

APP = Path(__file__).parent / "apps" / "trio_sample.py"
HELLO = ["Hello, Temporal! (from asyncio)", "Hello, Temporal! (from thread)"]  # the sample's README


def test_trio_sample_runs_as_a_worker_of_the_runtime(tmp_path: Path) -> None:
    """The sample's workflow completes through the batched bridge and through the runtime, from the
    facade and from the sample's own starter call; its activities' Trio code ran."""
    state = tmp_path / "state"
    state.mkdir()
    port = free_port()
    steps = run_scenario(APP, str(state), str(port), state=state, timeout=120, port=port)
    assert "fatal" not in steps
    bridge = steps["bridge"]
    assert (HELLO, "BatchedTrioEventLoop", "ThreadCacheExecutor") == (
        bridge["result"],
        bridge["loop"],
        bridge["workflow_executor"],
    )
    runtime = steps["runtime"]
    assert (HELLO, HELLO) == (runtime["facade"], runtime["starter"])
    assert [{"task_queue": "trio-async-task-queue", "running": True, "restarts": 0, "epoch": 1}] == runtime[
        "workers"
    ]
