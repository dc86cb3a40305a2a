"""Many runtimes, one task queue: 3 daemons in external mode serve the same task queue of one server
(each through its own fault proxy); one is SIGKILLed mid-load, another's network is cut for 3 s.

The scenario is the scale-out benchmark's own (benchmarks/scaleout.py, its app benchmarks/scaleout_app.py)
with small counts, run once per module as a child process (it runs the daemons, the bare server and the
proxies; the load and the verification run in its own plain-asyncio SDK child); the tests below judge
its JSON figures, one behaviour each, and that nothing it started is left running.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from harness import Identity, Stack, clean_env, wait_gone

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
RUNTIMES = 3
WORKFLOWS = 156  # 13 s of starts: the faults land 10 s apart, both under load
HEARTBEAT_TIMEOUT = 2.0  # benchmarks/scaleout_app.py
TASK_TIMEOUT = 5.0  # the workflow task timeout of the starts, and the sticky timeout: the runtime's defaults


def leftovers(root: Path) -> list[Identity]:
    """Live processes whose command line names the run's directory (daemons, the bare server, children)."""
    found = (Identity.of(proc.pid) for proc in Stack(root, 0).ours())
    return [identity for identity in found if identity is not None]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("scaleout")
    root, out = base / "run", base / "figures.json"
    command = [
        sys.executable, str(BENCHMARKS / "scaleout.py"), "--runtimes", str(RUNTIMES),
        "--workflows", str(WORKFLOWS), "--rate", "12", "--batch", "0", "--kill-at", "2",
        "--cut-at", "12", "--cut", "3", "--root", str(root), "--json", str(out),
    ]  # fmt: skip
    try:
        done = subprocess.run(
            command, cwd=BENCHMARKS, capture_output=True, text=True, timeout=100, check=False, env=clean_env()
        )
        left = leftovers(root)  # before our own sweep: the run must have cleaned up after itself
    finally:
        for index in range(1, RUNTIMES + 1):
            Stack(root / f"d{index}", 0).cleanup()
        stray = leftovers(root)
        for identity in stray:
            identity.kill()
        wait_gone(stray)
    assert out.exists(), f"no figures (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    figures: dict[str, Any] = json.loads(out.read_text())
    figures["returncode"], figures["stdout"], figures["left"] = done.returncode, done.stdout, left
    return figures


def fault(run: dict[str, Any], kind: str) -> dict[str, Any]:
    found: dict[str, Any] = next(f for f in run["figures"]["faults"] if f["kind"] == kind)
    assert not found.get("skipped"), found
    return found


def test_every_workflow_completes_exactly_once(run: dict[str, Any]) -> None:
    """Each workflow id has one run, COMPLETED, through a plain SDK client; the run passed."""
    load = run["load"]
    assert (WORKFLOWS, WORKFLOWS) == (load["started"], load["completed"]), run["stdout"]
    assert ([], []) == (load["lost"], load["duplicates"])
    assert (0, []) == (run["returncode"], run["problems"]), run["stdout"]


def test_all_runtimes_served_the_queue(run: dict[str, Any]) -> None:
    """Temporal spread the activities over the three daemons: nothing but the task queue joins them."""
    per_daemon = run["figures"]["per_daemon"]
    assert {f"d{i}" for i in range(1, RUNTIMES + 1)} == set(per_daemon), per_daemon
    assert run["figures"]["ran_to_end"] >= WORKFLOWS * 3


def test_killed_runtimes_activities_complete_elsewhere(run: dict[str, Any]) -> None:
    """The SIGKILLed daemon's in-flight activities are retried and completed on the others, within the
    heartbeat timeout (2 s) + the retry interval (0.2 s) + the activity (0.2 s), with load slack."""
    killed = fault(run, "kill")
    assert killed["failover"], killed  # the victim had work in flight: it was retried
    assert killed["missing"] == 0, killed
    assert "d1" not in killed["completed_by"], killed
    assert max(killed["failover"]) <= HEARTBEAT_TIMEOUT + 2.0, killed["failover"]
    assert min(killed["failover"]) >= HEARTBEAT_TIMEOUT - 0.5, killed[
        "failover"
    ]  # no faster than the timeout


def test_cut_off_runtimes_activities_are_retried(run: dict[str, Any]) -> None:
    """The blackholed daemon's in-flight activities are retried (elsewhere, or on it once healed): a
    retry the server hands to one of its polls still open into the blackhole costs one more timeout."""
    cut = fault(run, "blackhole")
    assert cut["failover"], cut
    assert cut["missing"] == 0, cut
    assert max(cut["failover"]) <= 2 * HEARTBEAT_TIMEOUT + 2.5, cut["failover"]


def test_workflows_of_the_killed_runtime_continue(run: dict[str, Any]) -> None:
    """A workflow whose workflow task sat on the killed daemon continues on another one: after a sticky
    timeout (cached there) or a workflow task timeout (in flight there), 5 s each (the SDK's: 10 s); no
    sooner (the server cannot know the worker died). Then it waits for a poller of the normal queue:
    under load (the other runtimes and the server share 2 cores) that took up to 4 s, hence the slack."""
    tasks = fault(run, "kill")["workflow"]
    resumed = tasks["cached_resume"] + tasks["flying_resume"]
    assert resumed, tasks  # with 3 runtimes, the killed one had some workflow's task
    assert min(resumed) >= TASK_TIMEOUT - 0.5, tasks
    assert max(resumed) <= HEARTBEAT_TIMEOUT + 1.0 + TASK_TIMEOUT + 7.0, tasks
    assert all(how.split(", then ")[0].endswith("timeout") for how in tasks["how"]), tasks
    assert all(not how.endswith("scaleout-d1") for how in tasks["how"]), tasks


def test_nothing_left_running(run: dict[str, Any]) -> None:
    assert [] == run["left"]
    assert [] == run["orphans"]
