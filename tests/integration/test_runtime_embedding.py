"""The runtime embedded in a Trio program, against the real binary: connection, workers, fail-fast.

Each scenario runs in a child process (tests/integration/apps/embed.py): temporalio can crash the
interpreter at exit after a Worker ran, so the child reports JSON lines and leaves with os._exit, and
the tests judge those lines. The child starts and kills only processes it spawned itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from children import Steps, run_scenario
from harness import free_port

pytestmark = pytest.mark.integration

APP = Path(__file__).parent / "apps" / "embed.py"


def scenario(name: str, tmp_path: Path) -> Steps:
    """Run one scenario; its report lines by step."""
    state = tmp_path / "state"
    state.mkdir()
    return run_scenario(APP, name, str(state), str(free_port()), state=state, timeout=100)


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


class TestOutbox:
    def test_queued_starts_survive_an_outage_and_a_kill_mid_drain_exactly_once(self, tmp_path: Path) -> None:
        """submit_workflow while Temporal is down returns at once (durable, PENDING); the server comes
        back and is SIGKILLed mid-drain, comes back again and is frozen (SIGSTOP 3 s) mid-drain, then
        thaws: every queued start ran once, to its result, under the run id the outbox recorded, and no
        id has a second run."""
        steps = scenario("outbox", tmp_path)
        queued = steps["queued"]
        n = queued["outbox"]["pending"]
        assert n == 120
        assert queued["state"] in ("connecting", "disconnected")
        assert (queued["again"], queued["outbox"]["started"]) == ("pending", 0)
        assert "'ob-0' is already queued" in queued["conflict"]
        drained = steps["drained"]
        assert 0 < drained["at_kill"]["started"] < n  # the kill really came mid-drain
        assert drained["at_kill"]["started"] < drained["at_freeze"]["started"] < n  # and the freeze
        assert drained["frozen_state"] != "connected"  # seen as lost while frozen
        assert (drained["outbox"]["pending"], drained["outbox"]["failed"], drained["outbox"]["started"]) == (
            0,
            0,
            n,
        )
        for id, outcome in drained["results"].items():
            assert outcome["result"] == f"hello {id.replace('ob-', 'n')}"
            assert drained["runs"][id] == [{"run_id": outcome["run_id"], "status": "COMPLETED"}], id
        assert drained["status"]["pending"] == 0
