"""A graceful stop releases the worker's sticky queue; duplicate starts; the runtime's task timeout.

One scenario in a child process (tests/integration/apps/handover.py; temporalio can crash the
interpreter at exit after a Worker ran): a workflow cached on the worker of a runtime that leaves
open_runtime, another cached on a daemon's worker stopped by SIGTERM; both workers had a 10 s sticky
timeout, and a new runtime's worker on the same queue runs their next task. The control: a daemon
whose worker (sticky timeout 1 s) is SIGKILLed makes its workflow wait that 1 s. The child starts a bare
`temporal server start-dev` itself and kills only what it spawned.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from children import Steps, run_scenario
from harness import free_port

pytestmark = pytest.mark.integration

APP = Path(__file__).parent / "apps" / "handover.py"


@pytest.fixture(scope="module")
def handover(tmp_path_factory: pytest.TempPathFactory) -> Steps:
    state = tmp_path_factory.mktemp("handover") / "state"
    state.mkdir()
    return run_scenario(APP, "main", str(state), str(free_port()), state=state, timeout=110)


class TestGracefulStopHandsOver:
    def test_closing_the_runtime_is_quick(self, handover: Steps) -> None:
        """Leaving open_runtime with a workflow cached on its worker takes well under the bound."""
        assert handover["first"]["closed_in"] < 3.0

    def test_next_task_runs_on_the_new_worker_at_once_after_open_runtime_exit(self, handover: Steps) -> None:
        """Runtime A closed: the signal's workflow task starts on B in < 1 s (10 s without ShutdownWorker)."""
        step = handover["handover-exit-1"]
        assert "handed over" == step["result"]
        assert step["signal_to_started"] < 1.0, step
        assert step["seconds"] < 1.0, step

    def test_daemon_sigterm_exits_cleanly(self, handover: Steps) -> None:
        """The daemon stops on SIGTERM with exit code 0, within its workers' bounded shutdown."""
        assert 0 == handover["daemon"]["returncode"]
        assert handover["daemon"]["stopped_in"] < 10.0

    def test_next_task_runs_on_the_new_worker_at_once_after_daemon_sigterm(self, handover: Steps) -> None:
        """The daemon's worker released its sticky queue too: < 1 s on B (10 s without it)."""
        step = handover["handover-sigterm-1"]
        assert "handed over" == step["result"]
        assert step["signal_to_started"] < 1.0, step
        assert step["seconds"] < 1.0, step

    def test_control_sigkill_waits_out_the_sticky_timeout(self, handover: Steps) -> None:
        """The control: a SIGKILLed worker (sticky_timeout 1 s) sends no ShutdownWorker; the task waits
        the whole sticky timeout, then times out to the normal queue."""
        assert -9 == handover["control"]["returncode"]
        step = handover["handover-sigkill-1"]
        assert "handed over" == step["result"]
        assert 1.0 <= step["signal_to_started"] < 3.0, step
        assert ["TIMEOUT_TYPE_SCHEDULE_TO_START"] == step["timeouts"]

    def test_no_sticky_timeout_was_waited_out(self, handover: Steps) -> None:
        """No workflow task timed out on the way: the server knew the sticky queue was gone."""
        assert [] == handover["handover-exit-1"]["timeouts"]
        assert [] == handover["handover-sigterm-1"]["timeouts"]


class TestDuplicateStarts:
    def test_running_duplicate_raises_workflow_already_started(self, handover: Steps) -> None:
        """A second start of a running id raises st.WorkflowAlreadyStarted naming the running run."""
        first = handover["first"]
        expected = {
            "raised": "WorkflowAlreadyStarted",
            "workflow_id": "exit-1",
            "workflow_type": "Handover",
            "run_id": first["run_id"],
        }
        assert expected == {k: v for k, v in first["duplicate"].items() if k != "message"}

    def test_use_existing_returns_the_running_run(self, handover: Steps) -> None:
        """id_conflict_policy=USE_EXISTING: no error, a handle to the run already running."""
        first = handover["first"]
        assert {"raised": None, "run_id": first["run_id"]} == first["use_existing"]

    def test_reject_duplicate_after_close_names_the_old_run(self, handover: Steps) -> None:
        """id_reuse_policy=REJECT_DUPLICATE after the run closed: WorkflowAlreadyStarted, old run id."""
        after = handover["after-close"]
        assert ("WorkflowAlreadyStarted", after["first_run_id"]) == (
            after["reject_duplicate"]["raised"],
            after["reject_duplicate"]["run_id"],
        )

    def test_both_policies_make_a_retry_exactly_once(self, handover: Steps) -> None:
        """USE_EXISTING + REJECT_DUPLICATE after the run closed: refused too, naming the old run."""
        after = handover["after-close"]
        assert ("WorkflowAlreadyStarted", after["first_run_id"]) == (
            after["both_policies"]["raised"],
            after["both_policies"]["run_id"],
        )

    def test_default_policy_after_close_starts_a_second_run(self, handover: Steps) -> None:
        """The default ALLOW_DUPLICATE: a retry after the first run closed is a new run."""
        after = handover["after-close"]
        assert after["default"]["raised"] is None
        assert after["default"]["run_id"] not in (None, after["first_run_id"])


class TestWorkflowTaskTimeout:
    def test_runtime_default_is_applied(self, handover: Steps) -> None:
        """A start through the runtime gets ConnectionConfig.workflow_task_timeout; an explicit one wins."""
        from stigmer_trio._core._config import WORKFLOW_TASK_TIMEOUT

        assert {"default": WORKFLOW_TASK_TIMEOUT, "explicit": 7.0} == handover["first"]["task_timeouts"]
