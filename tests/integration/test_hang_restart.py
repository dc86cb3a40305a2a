"""A hung (SIGSTOPped) supervised dev server is replaced with exactly one new connection epoch.

The runtime, a worker and the server run in a child process (tests/integration/apps/freeze.py):
temporalio can crash the interpreter at exit after a Worker ran, so the child reports JSON lines and
leaves with os._exit. Once the server is condemned (hung), the connection must never attach to it
again: a SIGCONTed server answers during its shutdown, which used to become a short-lived extra epoch
and a second worker replacement (with task completions lost into it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from children import run_scenario
from harness import free_port

pytestmark = pytest.mark.integration

APP = Path(__file__).parent / "apps" / "freeze.py"


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    state = tmp_path_factory.mktemp("freeze") / "state"
    state.mkdir()
    freeze: dict[str, Any] = run_scenario(APP, str(state), str(free_port()), state=state, timeout=100)[
        "freeze"
    ]
    return freeze


def test_one_new_epoch(frozen: dict[str, Any]) -> None:
    """Exactly one CONNECTED after the freeze, epoch 2, and none in the seconds after it."""
    assert [2] == frozen["epochs"], frozen["states"]


def test_one_worker_replacement(frozen: dict[str, Any]) -> None:
    """The worker is replaced once: stopped on epoch 1, polling on epoch 2."""
    assert [[False, 1, "replaced"], [True, 2, "polling"]] == [w[1:] for w in frozen["workers"]]


def test_condemned_as_hung_and_replaced_once(frozen: dict[str, Any]) -> None:
    """One ServerExited for the frozen pid (hung), one ServerReady of a new pid, in that order."""
    assert 1 == len(frozen["exits"])
    at, pid, reason = frozen["exits"][0]
    assert frozen["frozen_pid"] == pid
    assert reason.startswith("hung:")
    assert 1 == len(frozen["readies"])
    ready_at, new_pid = frozen["readies"][0]
    assert new_pid != pid
    assert ready_at >= at


def test_never_connected_to_the_condemned_server(frozen: dict[str, Any]) -> None:
    """No CONNECTED between the freeze and the new server's ServerReady."""
    ready_at = frozen["readies"][0][0]
    assert [] == [s for s in frozen["states"] if s[1] == "connected" and s[0] < ready_at]


def test_hang_detected_within_its_bound(frozen: dict[str, Any]) -> None:
    """Declared hung within health_interval + failures * health_timeout (0.5 + 2 x 0.5 s), plus slack."""
    assert frozen["exits"][0][0] < 1.5 + 1.0


def test_work_goes_on(frozen: dict[str, Any]) -> None:
    """A workflow started before the freeze completes; a new one completes after; ready on epoch 2."""
    assert "slept 2" == frozen["nap"]
    assert "hello two" == frozen["after"]
    status = frozen["status"]
    assert (True, 2) == (status["ready"], status["connection"]["epoch"])
