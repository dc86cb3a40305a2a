"""The embedded runtime through network blips: a Temporal dev server that stays up, reached through
stigmer_trio.testing.FaultProxy, which resets, blackholes or delays the connections.

Each scenario runs once per module in a child process (tests/integration/apps/blips.py): temporalio can
crash the interpreter at exit after a Worker ran, so the child reports JSON lines and leaves with
os._exit; the tests below judge those lines, one behaviour each. The child starts a bare
`temporal server start-dev` itself and kills only what it spawned. Connection settings there:
health_interval 0.5 s, health_timeout 1 s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from children import Steps, run_scenario
from harness import free_port

pytestmark = pytest.mark.integration

APP = Path(__file__).parent / "apps" / "blips.py"
HEALTH_INTERVAL = 0.5  # as in blips.py
HEALTH_TIMEOUT = 1.0
LATENCY = 0.1
# heal -> CONNECTED: a connect attempt that ran out of connect_timeout (a blackhole accepts TCP and
# swallows) is retried at once and does not escalate the backoff, so the first attempt after the heal
# gets through. Measured 0.09-0.11 s after 3 s and 12 s blackholes (before: 1.7-2.0 s after 12 s, the
# backoff having reached its 2 s cap). One connect_timeout (1 s in blips.py) bounds it, plus slack.
HEAL_TO_CONNECTED = 1.0 + 0.5


def scenario(name: str, tmp_path_factory: pytest.TempPathFactory) -> Steps:
    """Run one scenario; its report lines by step."""
    state = tmp_path_factory.mktemp(name) / "state"
    state.mkdir()
    port = free_port()
    return run_scenario(APP, name, str(state), str(port), state=state, port=port, timeout=60)


@pytest.fixture(scope="module")
def reset(tmp_path_factory: pytest.TempPathFactory) -> Steps:
    return scenario("reset", tmp_path_factory)


@pytest.fixture(scope="module")
def blackhole(tmp_path_factory: pytest.TempPathFactory) -> Steps:
    return scenario("blackhole", tmp_path_factory)


@pytest.fixture(scope="module")
def long_blackhole(tmp_path_factory: pytest.TempPathFactory) -> Steps:
    return scenario("long", tmp_path_factory)


@pytest.fixture(scope="module")
def latency(tmp_path_factory: pytest.TempPathFactory) -> Steps:
    return scenario("latency", tmp_path_factory)


def connection(status: dict[str, Any]) -> tuple[bool, str, int, int]:
    c = status["connection"]
    return status["ready"], c["state"], c["epoch"], c["reconnects"]


@pytest.mark.parametrize(
    "name", ["reset", "blackhole", pytest.param("long_blackhole", marks=pytest.mark.slow), "latency"]
)
def test_no_child_exits_on_its_own(name: str, request: pytest.FixtureRequest) -> None:
    """Blips are the connection child's job: no child of the runtime exits or is restarted."""
    children = request.getfixturevalue(name)["children"]
    assert [] == children["crashed"]
    assert [0] == [w["restarts"] for w in children["status"]["workers"]]


class TestReset:
    ROUNDS = ("reset-0", "reset-1")  # the RST lands at two phases of the probe cycle

    def test_reset_closed_the_live_connection(self, reset: Steps) -> None:
        """Baseline: a workflow ran through the proxy, and reset() had a live connection to RST."""
        assert "hello first" == reset["first"]["result"]
        assert all(reset[r]["closed"] >= 1 for r in self.ROUNDS), [reset[r]["closed"] for r in self.ROUNDS]

    def test_recovered_within_one_probe_interval(self, reset: Steps) -> None:
        """reset -> CONNECTED with a successful probe within health_interval (+0.5 s slack)."""
        recovered = [reset[r]["recovered"] for r in self.ROUNDS]
        assert all(seconds < HEALTH_INTERVAL + 0.5 for seconds in recovered), recovered

    def test_connected_and_ready_after_reset(self, reset: Steps) -> None:
        """After each reset the runtime is CONNECTED and ready (the client redialled the proxy)."""
        for r in self.ROUNDS:
            ready, state, _, _ = connection(reset[r]["status"])
            assert (True, "connected") == (ready, state), reset[r]["transitions"]
            assert reset[r]["redialled"] >= 1

    def test_new_workflow_completes_after_reset(self, reset: Steps) -> None:
        """A workflow started after the reset completes within 5 s of it."""
        for round_, r in enumerate(self.ROUNDS):
            assert f"hello after-reset-{round_}" == reset[r]["greet"]["result"]
            assert reset[r]["greet"]["seconds"] < 5.0

    def test_workflow_started_before_reset_completes(self, reset: Steps) -> None:
        """A Nap(2 s) started just before the reset completes afterwards."""
        assert ["slept 2", "slept 2"] == [reset["nap-0"]["result"], reset["nap-1"]["result"]]


class TestBlackhole:
    def test_detected_within_interval_plus_timeout(self, blackhole: Steps) -> None:
        """blackhole -> DISCONNECTED within health_interval + health_timeout (+0.5 s)."""
        report = blackhole["blackhole"]
        assert "disconnected" == report["left_to"]
        assert report["left"] < HEALTH_INTERVAL + HEALTH_TIMEOUT + 0.5

    def test_fails_fast_while_blackholed(self, blackhole: Steps) -> None:
        """Once detected, start_workflow raises TemporalUnavailable in < 50 ms (no waiting on the void)."""
        fail_fast = blackhole["blackhole"]["fail_fast"]
        assert fail_fast is not None
        assert fail_fast < 0.05

    def test_never_connected_while_blackholed(self, blackhole: Steps) -> None:
        """The proxy accepts TCP all along, yet no attempt counts as CONNECTED until heal()."""
        assert "connected" not in blackhole["blackhole"]["states"]

    def test_connected_again_promptly_after_heal(self, blackhole: Steps) -> None:
        """heal -> CONNECTED on a new epoch within the documented reconnect bound."""
        report = blackhole["blackhole"]
        assert report["connected"] < HEAL_TO_CONNECTED
        assert (True, "connected", 2, 1) == connection(report["status"])

    def test_worker_runs_on_the_new_epoch(self, blackhole: Steps) -> None:
        """The worker was replaced for the new connection: running on epoch 2."""
        expected = [{"task_queue": "blips-q", "running": True, "restarts": 0, "epoch": 2}]
        assert expected == blackhole["blackhole"]["status"]["workers"]

    def test_new_workflow_completes_after_heal(self, blackhole: Steps) -> None:
        """A workflow started after heal() completes within 5 s of it."""
        assert "hello after-blackhole" == blackhole["greet"]["result"]
        assert blackhole["greet"]["seconds"] < 5.0

    def test_workflow_started_before_blackhole_completes(self, blackhole: Steps) -> None:
        """A Nap(2 s) started before the blackhole (its timer fired during it) completes after heal()."""
        assert "slept 2" == blackhole["nap"]["result"]
        assert blackhole["nap"]["seconds"] < 10.0


@pytest.mark.slow
class TestLongBlackhole:
    """12 s with connect_timeout 1 s: timed-out connects push the backoff to its 2 s cap."""

    def test_keeps_trying_while_blackholed(self, long_blackhole: Steps) -> None:
        """Connect attempts go on through the blackhole (each times out); never CONNECTED."""
        report = long_blackhole["blackhole"]
        assert report["attempts"] >= 5
        assert "connected" not in report["states"]

    def test_connected_after_heal_within_the_backoff_cap(self, long_blackhole: Steps) -> None:
        """heal -> CONNECTED within the documented bound even with the backoff at its cap."""
        report = long_blackhole["blackhole"]
        assert report["connected"] < HEAL_TO_CONNECTED
        assert (True, "connected", 2, 1) == connection(report["status"])

    def test_workflows_complete_after_heal(self, long_blackhole: Steps) -> None:
        """A new workflow and the Nap started before the blackhole both complete."""
        assert "hello after-blackhole" == long_blackhole["greet"]["result"]
        assert "slept 2" == long_blackhole["nap"]["result"]


class TestLatency:
    def test_latency_disconnects_nothing(self, latency: Steps) -> None:
        """+0.1 s per chunk for 3 s, health_timeout 1 s: no state change, still epoch 1."""
        report = latency["latency"]
        assert [] == report["transitions"]
        assert (True, "connected", 1, 0) == connection(report["status"])

    def test_probes_pass_and_see_the_delay(self, latency: Steps) -> None:
        """Every probe under latency succeeds and takes >= 2 x 0.1 s (request and answer both delayed)."""
        probes = latency["latency"]["probes"]
        assert len(probes) >= 3
        assert all(ok for ok, _ in probes), probes
        assert min(seconds for _, seconds in probes) >= 2 * LATENCY - 0.005

    def test_workflows_complete_under_latency(self, latency: Steps) -> None:
        """A workflow started under latency completes, and so does one started just before it."""
        report = latency["latency"]
        assert "hello during-latency" == report["greet"]["result"]
        assert report["greet"]["seconds"] < 10.0
        assert "slept 1" == report["nap"]
