"""The embedded runtime through real outages: a 30 s SIGKILL outage, a hung (SIGSTOP) server, a Worker
that fails for real and is restarted until its policy gives up.

Each scenario runs once per module in a child process (tests/integration/apps/embed.py): temporalio can
crash the interpreter at exit after a Worker ran, so the child reports JSON lines and leaves with
os._exit; the tests below judge those lines, one behaviour each. The child starts a bare
`temporal server start-dev` itself and kills only what it spawned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from children import Steps, run_scenario
from harness import free_port

pytestmark = pytest.mark.integration

APP = Path(__file__).parent / "apps" / "embed.py"
WORKER = "worker:broken-q"


def scenario(name: str, tmp_path_factory: pytest.TempPathFactory) -> Steps:
    """Run one scenario; its report lines by step."""
    state = tmp_path_factory.mktemp(name) / "state"
    state.mkdir()
    return run_scenario(APP, name, str(state), str(free_port()), state=state, timeout=100)


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Steps:
    return scenario("outage", tmp_path_factory)


@pytest.fixture(scope="module")
def hung(tmp_path_factory: pytest.TempPathFactory) -> Steps:
    return scenario("hung", tmp_path_factory)


@pytest.fixture(scope="module")
def midprobe(tmp_path_factory: pytest.TempPathFactory) -> Steps:
    return scenario("midprobe", tmp_path_factory)


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Steps:
    return scenario("broken", tmp_path_factory)


@pytest.mark.slow
class TestThirtySecondOutage:
    def test_workflow_completes_before_the_outage(self, outage: Steps) -> None:
        """Baseline: connected with a worker, a workflow completes."""
        assert "hello one" == outage["first"]["result"]

    def test_the_outage_lasts_thirty_seconds(self, outage: Steps) -> None:
        """The server stays dead for at least 30 s."""
        assert outage["outage"]["seconds"] >= 30.0

    def test_the_kill_is_detected_within_the_health_interval(self, outage: Steps) -> None:
        """health_interval=0.2: the state leaves CONNECTED well within 1 s of the SIGKILL."""
        assert outage["outage"]["detected"] < 1.0

    def test_start_in_flight_at_the_kill_is_bounded(self, outage: Steps) -> None:
        """A start issued before the kill is detected raises TemporalUnavailable within request_timeout."""
        inflight = outage["outage"]["inflight"]
        assert inflight["outcome"].startswith("unavailable"), inflight
        assert inflight["seconds"] < 5.0 + 1.0

    def test_every_start_fails_fast_while_down(self, outage: Steps) -> None:
        """Once detected, a start_workflow a second until 30 s: each raises TemporalUnavailable < 50 ms."""
        samples = outage["outage"]["samples"]
        assert len(samples) >= 25
        assert [] == [s for s in samples if s >= 0.05]

    def test_never_connected_while_down(self, outage: Steps) -> None:
        """Once detected, the state is never CONNECTED again while the server is dead."""
        assert 0 == outage["outage"]["connected"]
        assert "connected" not in outage["outage"]["states"]

    def test_reconnect_attempts_keep_going(self, outage: Steps) -> None:
        """With the 2 s backoff cap, 30 s down means at least 10 connect attempts."""
        assert outage["outage"]["connecting"] >= 10

    def test_reconnects_by_itself_with_a_new_epoch(self, outage: Steps) -> None:
        """Server restarted on its db: CONNECTED again, epoch 2, one reconnect, ready."""
        status = outage["back"]["status"]
        assert (True, "connected", 2, 1) == (
            status["ready"],
            status["connection"]["state"],
            status["connection"]["epoch"],
            status["connection"]["reconnects"],
        )

    def test_new_workflow_completes_soon_after_restart(self, outage: Steps) -> None:
        """A new workflow completes within 5 s of the restarted server listening."""
        assert "hello two" == outage["back"]["result"]
        assert outage["back"]["completed"] < 5.0

    def test_worker_runs_on_the_new_epoch(self, outage: Steps) -> None:
        """The worker was replaced for the new connection: running on epoch 2, not counted as a restart."""
        expected = [{"task_queue": "embed-q", "running": True, "restarts": 0, "epoch": 2}]
        assert expected == outage["back"]["status"]["workers"]


class TestHungServer:
    def test_leaves_connected_within_interval_plus_timeout(self, hung: Steps) -> None:
        """SIGSTOP: the state leaves CONNECTED within health_interval + health_timeout (+0.5 s)."""
        assert "hello one" == hung["first"]["result"]
        assert "disconnected" == hung["left"]["new"]
        assert hung["left"]["seconds"] < 1.5

    def test_starts_fail_fast_while_hung(self, hung: Steps) -> None:
        """Once detected, start_workflow raises TemporalUnavailable in < 50 ms."""
        assert hung["fail-fast"]["seconds"] < 0.05

    def test_closing_is_bounded(self, hung: Steps) -> None:
        """Leaving open_runtime with the server still stopped takes < 10 s (the SDK alone: 30 s)."""
        assert "closed" == hung["closed"]["state"]
        assert hung["closed"]["seconds"] < 10.0

    def test_worker_child_finishes_without_being_abandoned(self, hung: Steps) -> None:
        """Closing against a hung server: the worker child ends by itself, no ChildAbandoned."""
        assert [] == hung["closed"]["abandoned"]


class TestFailingWorker:
    @staticmethod
    def of_worker(broken: Steps, kind: str) -> list[dict[str, Any]]:
        return [e for e in broken["raised"]["events"] if e["type"] == kind and e.get("name") == WORKER]

    def test_worker_failure_is_a_child_exit(self, broken: Steps) -> None:
        """Each real Worker failure (on_fatal_error, Worker.run() raising) is a ChildExited of its own."""
        exits = self.of_worker(broken, "ChildExited")
        assert 3 == len(exits)
        assert [False] * 3 == [e["stopped"] for e in exits]
        assert all(e["error"].startswith("WorkerFailed:") for e in exits), exits
        assert all("Activity worker failed" in e["error"] for e in exits), exits

    def test_failed_worker_is_restarted(self, broken: Steps) -> None:
        """The runtime restarts the failed worker: one ChildRestartScheduled per allowed restart."""
        scheduled = self.of_worker(broken, "ChildRestartScheduled")
        assert [1, 2] == [e["attempt"] for e in scheduled]
        assert 3 == len(self.of_worker(broken, "ChildStarted"))

    def test_status_counts_the_restarts(self, broken: Steps) -> None:
        """status()["workers"][0]["restarts"] reads 1, then 2, as the restarted workers start."""
        assert [1, 2] == broken["raised"]["restarts_seen"]

    def test_restart_limit_is_not_wrapped_in_groups(self, broken: Steps) -> None:
        """`except RestartLimitExceeded` around open_runtime works: it comes out as itself."""
        assert "RestartLimitExceeded" == broken["raised"]["shape"]

    def test_restart_limit_raises_out_of_open_runtime(self, broken: Steps) -> None:
        """Past max_restarts=2 the runtime raises RestartLimitExceeded naming the worker child."""
        leaves = broken["raised"]["leaves"]
        assert [("RestartLimitExceeded", WORKER, 2)] == [
            (leaf["type"], leaf["child"], leaf["restarts"]) for leaf in leaves
        ]
        assert WORKER in leaves[0]["message"]
        assert leaves[0]["cause"].startswith("WorkerFailed(")


class TestKilledMidProbe:
    def test_kill_during_a_health_check_is_a_disconnect(self, midprobe: Steps) -> None:
        """A SIGKILL that lands on an in-flight health check: DISCONNECTED, the connection child lives on."""
        rounds = midprobe["rounds"]["rounds"]
        assert [("disconnected", [])] * 3 == [(r["first"], r["crashes"]) for r in rounds]
