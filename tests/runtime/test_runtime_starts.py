"""Runtime.start_workflow with a fake bridge: fail-fast vs maybe started, the task timeout default; and
the bridge's own mapping of temporalio's errors (on a trio-asyncio loop, with a fake Client)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import attrs
import pytest
import trio
import trio.testing
import trio_asyncio
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from stigmer_trio import (
    ConnectionConfig,
    ConnectionState,
    RuntimeConfig,
    TemporalUnavailable,
    WorkerSpec,
    WorkflowAlreadyStarted,
)
from stigmer_trio._boundary import _temporal as bridge
from stigmer_trio._core._config import STICKY_TIMEOUT, WORKFLOW_TASK_TIMEOUT
from stigmer_trio._runtime import Runtime, _open_runtime
from stigmer_trio._tree._build import build_tree
from stigmer_trio._tree._cell import ConnectionCell


@attrs.define
class FakeStarts:
    """Stands in for _temporal.start_workflow: records each call's options; `error` / `hang` on demand."""

    calls: list[dict[str, Any]] = attrs.Factory(list)
    error: BaseException | None = None
    hang: bool = False

    async def start_workflow(self, client: Any, workflow: Any, arg: Any, **options: Any) -> Any:
        self.calls.append(options)
        if self.hang:
            await trio.sleep_forever()
        if self.error is not None:
            raise self.error
        return f"handle-of-{options['id']}"


@pytest.fixture
def starts() -> FakeStarts:
    """The bridge a test's Runtime is built on (build_tree(bridge=...))."""
    return FakeStarts()


def make_runtime(tmp_path: Path, bridge: Any, **connection: Any) -> tuple[Runtime, ConnectionCell, list[str]]:
    """A Runtime on `bridge` over a connection cell the test drives by hand (no children run); the
    pokes it got."""
    config = RuntimeConfig(
        state_dir=tmp_path,
        dev_server=None,
        connection=ConnectionConfig(address="127.0.0.1:1", **connection),
        workers=[WorkerSpec("q")],
        outbox=None,
    )
    tree = build_tree(config, bridge=bridge)
    pokes: list[str] = []
    tree.cell.poke = pokes.append  # type: ignore[method-assign, assignment]
    return Runtime(tree), tree.cell, pokes


class TestStartErrors:
    async def test_not_connected_is_fail_fast_and_not_maybe_started(
        self, tmp_path: Path, starts: FakeStarts
    ) -> None:
        """Not CONNECTED: TemporalUnavailable(maybe_started=False), and no request was made."""
        runtime, _cell, _ = make_runtime(tmp_path, starts)
        with pytest.raises(TemporalUnavailable) as caught:
            await runtime.start_workflow("W", id="w", task_queue="q")
        assert (False, []) == (caught.value.maybe_started, starts.calls)

    async def test_request_meeting_unavailable_is_maybe_started(
        self, tmp_path: Path, starts: FakeStarts
    ) -> None:
        """A start that met UNAVAILABLE in flight keeps maybe_started=True and pokes the monitor."""
        runtime, cell, pokes = make_runtime(tmp_path, starts)
        cell.transition(ConnectionState.CONNECTED, "test", client="client-1")  # type: ignore[arg-type]
        starts.error = TemporalUnavailable("start workflow on x: UNAVAILABLE", maybe_started=True)
        with pytest.raises(TemporalUnavailable) as caught:
            await runtime.start_workflow("W", id="w", task_queue="q")
        assert (True, ["probe"]) == (caught.value.maybe_started, pokes)

    async def test_connection_lost_during_the_call_is_maybe_started(
        self, tmp_path: Path, starts: FakeStarts, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The connection drops while the start is in flight: it fails at once, maybe_started=True."""
        runtime, cell, _ = make_runtime(tmp_path, starts)
        cell.transition(ConnectionState.CONNECTED, "test", client="client-1")  # type: ignore[arg-type]
        starts.hang = True
        outcome: list[TemporalUnavailable] = []

        async def start() -> None:
            with pytest.raises(TemporalUnavailable) as caught:
                await runtime.start_workflow("W", id="w", task_queue="q")
            outcome.append(caught.value)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(start)
            await trio.sleep(1)
            dropped_at = trio.current_time()
            cell.transition(ConnectionState.DISCONNECTED, "health check failed")
        assert dropped_at == trio.current_time()
        assert outcome[0].maybe_started
        assert "the connection was lost during the call: health check failed" == str(outcome[0])

    async def test_already_started_passes_through(self, tmp_path: Path, starts: FakeStarts) -> None:
        """WorkflowAlreadyStarted is not a connection problem: raised as is, no probe."""
        runtime, cell, pokes = make_runtime(tmp_path, starts)
        cell.transition(ConnectionState.CONNECTED, "test", client="client-1")  # type: ignore[arg-type]
        starts.error = WorkflowAlreadyStarted("w", "W", "run-1")
        with pytest.raises(
            WorkflowAlreadyStarted, match="'w' of type 'W' was already started \\(run run-1\\)"
        ):
            await runtime.start_workflow("W", id="w", task_queue="q")
        assert [] == pokes


class TestTaskTimeout:
    async def test_default_applied(self, tmp_path: Path, starts: FakeStarts) -> None:
        """Without task_timeout, the start gets ConnectionConfig.workflow_task_timeout."""
        runtime, cell, _ = make_runtime(tmp_path, starts)
        cell.transition(ConnectionState.CONNECTED, "test", client="client-1")  # type: ignore[arg-type]
        await runtime.start_workflow("W", id="w", task_queue="q")
        assert timedelta(seconds=WORKFLOW_TASK_TIMEOUT) == starts.calls[0]["task_timeout"]

    async def test_configured_value_applied(self, tmp_path: Path, starts: FakeStarts) -> None:
        """A configured workflow_task_timeout is what the start gets."""
        runtime, cell, _ = make_runtime(tmp_path, starts, workflow_task_timeout=3.5)
        cell.transition(ConnectionState.CONNECTED, "test", client="client-1")  # type: ignore[arg-type]
        await runtime.start_workflow("W", id="w", task_queue="q")
        assert timedelta(seconds=3.5) == starts.calls[0]["task_timeout"]

    async def test_caller_wins(self, tmp_path: Path, starts: FakeStarts) -> None:
        """A task_timeout the caller passes (even None: the SDK's default) is left alone."""
        runtime, cell, _ = make_runtime(tmp_path, starts)
        cell.transition(ConnectionState.CONNECTED, "test", client="client-1")  # type: ignore[arg-type]
        await runtime.start_workflow("W", id="a", task_queue="q", task_timeout=timedelta(seconds=20))
        await runtime.start_workflow("W", id="b", task_queue="q", task_timeout=None)
        assert [timedelta(seconds=20), None] == [call["task_timeout"] for call in starts.calls]

    async def test_none_leaves_it_to_the_sdk(self, tmp_path: Path, starts: FakeStarts) -> None:
        """workflow_task_timeout=None: no task_timeout option at all."""
        runtime, cell, _ = make_runtime(tmp_path, starts, workflow_task_timeout=None)
        cell.transition(ConnectionState.CONNECTED, "test", client="client-1")  # type: ignore[arg-type]
        await runtime.start_workflow("W", id="w", task_queue="q")
        assert "task_timeout" not in starts.calls[0]


# --- the bridge itself, on a real trio-asyncio loop (real clock: nothing here sleeps) --------------------


@pytest.fixture
async def asyncio_loop() -> AsyncIterator[None]:
    async with trio_asyncio.open_loop():
        yield


class FakeClient:
    """The bits of temporalio's Client that _temporal.start_workflow touches; `error` is raised."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.service_client = SimpleNamespace(config=SimpleNamespace(target_host="127.0.0.1:1"))

    async def start_workflow(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error


async def bridge_start(error: BaseException) -> Any:
    client: Any = FakeClient(error)
    return await bridge.start_workflow(client, "W", "x", id="w", task_queue="q", timeout=5.0, eager=False)


class TestBridgeMapping:
    async def test_already_started_error_becomes_ours(self, asyncio_loop: None) -> None:
        """temporalio's WorkflowAlreadyStartedError -> st.WorkflowAlreadyStarted with id, type, run id."""
        with pytest.raises(WorkflowAlreadyStarted) as caught:
            await bridge_start(WorkflowAlreadyStartedError("w", "W", run_id="run-1"))
        error = caught.value
        assert ("w", "W", "run-1") == (error.workflow_id, error.workflow_type, error.run_id)
        assert isinstance(error.__cause__, WorkflowAlreadyStartedError)

    async def test_unavailable_start_is_maybe_started(self, asyncio_loop: None) -> None:
        """A start request that met UNAVAILABLE: TemporalUnavailable(maybe_started=True)."""
        with pytest.raises(TemporalUnavailable, match="UNAVAILABLE") as caught:
            await bridge_start(RPCError("transport error", RPCStatusCode.UNAVAILABLE, b""))
        assert caught.value.maybe_started

    async def test_probe_failure_is_not_a_start(self, asyncio_loop: None) -> None:
        """Other calls (a health check) that fail keep maybe_started=False."""

        async def failing() -> None:
            raise RPCError("transport error", RPCStatusCode.UNAVAILABLE, b"")

        with pytest.raises(TemporalUnavailable) as caught:
            await bridge._call(failing, timeout=1.0, what="health check of", address="127.0.0.1:1")
        assert not caught.value.maybe_started


class TestStickyTimeout:
    @staticmethod
    def built_options(spec: WorkerSpec) -> dict[str, Any]:
        """What the bridge's make_worker passes to temporalio's Worker for `spec`."""
        return bridge.worker_options(spec)

    def test_default_sticky_timeout(self) -> None:
        """The Worker gets sticky_queue_schedule_to_start_timeout = WorkerSpec.sticky_timeout (default)."""
        options = self.built_options(WorkerSpec("q"))
        assert timedelta(seconds=STICKY_TIMEOUT) == options["sticky_queue_schedule_to_start_timeout"]

    def test_configured_sticky_timeout(self) -> None:
        """A configured sticky_timeout is passed in seconds."""
        options = self.built_options(WorkerSpec("q", sticky_timeout=0.5))
        assert timedelta(seconds=0.5) == options["sticky_queue_schedule_to_start_timeout"]

    def test_options_override(self) -> None:
        """WorkerSpec.options may still set the SDK option itself."""
        spec = WorkerSpec("q", options={"sticky_queue_schedule_to_start_timeout": timedelta(seconds=9)})
        options = self.built_options(spec)
        assert timedelta(seconds=9) == options["sticky_queue_schedule_to_start_timeout"]


class TestBuildId:
    def test_default_build_id_is_ours_and_stable(self) -> None:
        """Without versioning options the Worker gets the runtime's build id: the same for every Worker
        of the process, a hex digest."""
        first = TestStickyTimeout.built_options(WorkerSpec("q"))["build_id"]
        assert first == TestStickyTimeout.built_options(WorkerSpec("other"))["build_id"]
        assert 32 == len(first)
        assert int(first, 16) >= 0

    @pytest.mark.parametrize(
        "option", [{"build_id": "v1"}, {"deployment_config": object()}, {"use_worker_versioning": True}]
    )
    def test_versioning_options_are_left_to_the_user(self, option: dict[str, Any]) -> None:
        """A spec that sets build_id, deployment_config or use_worker_versioning gets no build id of
        ours (the SDK refuses deployment_config beside a build_id)."""
        options = TestStickyTimeout.built_options(WorkerSpec("q", options=option))
        assert option.get("build_id") == options.get("build_id")

    def test_changes_when_a_module_file_changes(self, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        """The digest covers each loaded module file: touching one gives another id."""
        import importlib
        import os
        import sys

        from stigmer_trio._boundary import _buildid

        (tmp_path / "buildid_probe_mod.py").write_text("X = 1\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        importlib.import_module("buildid_probe_mod")
        try:
            monkeypatch.setattr(_buildid, "_memo", None)
            before = _buildid.build_id()
            os.utime(tmp_path / "buildid_probe_mod.py", ns=(1, 1))
            monkeypatch.setattr(_buildid, "_memo", None)
            assert before != _buildid.build_id()
        finally:
            del sys.modules["buildid_probe_mod"]


class TestValidatedOnce:
    def test_a_workflow_is_validated_once_per_process(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The Workers' runner validates a workflow definition in the sandbox the first time only (every
        reconnection builds new Workers); one that fails validation fails every time."""
        from temporalio import workflow
        from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

        from stigmer_trio._boundary._demo import StigmerDemo

        calls: list[object] = []

        def counting(self: SandboxedWorkflowRunner, defn: Any) -> None:  # the SDK's validation, counted
            calls.append(defn)
            if defn.name == "Broken":
                raise RuntimeError("does not validate")

        monkeypatch.setattr(SandboxedWorkflowRunner, "prepare_workflow", counting)
        monkeypatch.setattr(bridge, "_VALIDATED", {})
        demo = workflow._Definition.must_from_class(StigmerDemo)
        broken = SimpleNamespace(name="Broken")
        for _ in range(3):
            bridge._ValidatedOnce().prepare_workflow(demo)
            with pytest.raises(RuntimeError, match="does not validate"):
                bridge._ValidatedOnce().prepare_workflow(broken)  # type: ignore[arg-type]
        assert [demo, broken, broken, broken] == calls

    def test_a_runner_of_the_users_own_is_kept(self) -> None:
        """WorkerSpec.options' workflow_runner is not replaced (make_worker only sets a default)."""
        runner = object()
        options = {**bridge.worker_options(WorkerSpec("q", options={"workflow_runner": runner}))}
        options.setdefault("workflow_runner", bridge._ValidatedOnce())
        assert runner is options["workflow_runner"]


# --- a graceful stop: workers shut down while the connection (and so the server) is still up -------------


@attrs.define
class FakeStack:
    """A fake bridge for a whole runtime in external mode: always up; Workers run until shut down."""

    order: list[tuple[str, str]] = attrs.Factory(list)  # (what, connection state at that moment)
    cell: ConnectionCell | None = None
    stops: dict[int, trio.Event] = attrs.Factory(dict)
    shutdown_hangs: bool = False

    def state(self) -> str:
        return self.cell.state.value if self.cell is not None else "?"

    async def connect(self, address: str, namespace: str, **kwargs: Any) -> Any:
        return "client"

    async def check_health(self, client: Any, *, timeout: float) -> None:
        pass

    async def describe_namespace(self, client: Any, namespace: str, *, timeout: float) -> None:
        pass

    async def tcp_accepts(self, address: str) -> bool:
        return True

    def make_worker(self, client: Any, spec: WorkerSpec, on_fatal_error: Any) -> int:
        self.stops[len(self.stops)] = trio.Event()
        return len(self.stops) - 1

    async def run_worker(self, worker: int) -> None:
        await self.stops[worker].wait()

    async def shutdown_worker(self, worker: int) -> None:
        self.order.append(("shutdown_worker", self.state()))
        if self.shutdown_hangs:
            await trio.sleep_forever()  # inside the worker's shielded cleanup: only its own bound
        self.stops[worker].set()


class TestGracefulStop:
    async def test_shutdown_timeout_bounds_leaving_open_runtime(
        self, tmp_path: Path, autojump_clock: trio.testing.MockClock
    ) -> None:
        """RuntimeConfig.shutdown_timeout is the root shutdown deadline: a Worker whose shutdown ignores
        cancellation (its own budget: 60 + 2 s) holds up leaving open_runtime for exactly 3 s; it and
        the children not yet stopped at the deadline are abandoned (their cleanup goes on)."""
        from stigmer_trio import ChildAbandoned

        fake = FakeStack(shutdown_hangs=True)  # the Worker's own bound: 60 + 2 s
        events: list[Any] = []
        config = RuntimeConfig(
            state_dir=tmp_path,
            dev_server=None,
            connection=ConnectionConfig(address="127.0.0.1:1"),
            workers=[WorkerSpec("a", graceful_shutdown_timeout=60.0)],
            shutdown_timeout=3.0,
            outbox=None,  # its db threads would let the autojump clock run on
        )
        async with _open_runtime(config, (events.append,), fake) as rt:
            await rt.wait_ready()
            left_at = trio.current_time()
        assert 3.0 == trio.current_time() - left_at
        abandoned = [ChildAbandoned("worker:a", "runtime", 3.0), ChildAbandoned("connection", "runtime", 0.0)]
        assert abandoned == [e for e in events if isinstance(e, ChildAbandoned)]

    async def test_workers_shut_down_before_the_connection_closes(self, tmp_path: Path) -> None:
        """Leaving open_runtime: every Worker.shutdown() (which sends ShutdownWorker, releasing its sticky
        queue) runs while the connection is still CONNECTED; the connection closes after."""
        fake = FakeStack()

        def record(event: Any) -> None:
            if type(event).__name__ == "ConnectionStateChanged" and event.new == "closed":
                fake.order.append(("connection closed", event.old))

        config = RuntimeConfig(
            state_dir=tmp_path,
            dev_server=None,
            connection=ConnectionConfig(address="127.0.0.1:1"),
            workers=[WorkerSpec("a"), WorkerSpec("b")],
        )
        async with _open_runtime(config, (record,), fake) as rt:
            fake.cell = rt._cell
            with trio.fail_after(5):
                await rt.wait_ready()
        expected = [
            ("shutdown_worker", "connected"),
            ("shutdown_worker", "connected"),
            ("connection closed", "connected"),
        ]
        assert expected == fake.order
