"""Network blips between the runtime and a Temporal server that stays up, run by the integration tests in
a child process (tests/integration/test_network_blips.py).

The runtime runs in external mode against a bare `temporal server start-dev` through
stigmer_trio.testing.FaultProxy, which resets, blackholes or delays the connections. temporalio can crash
the interpreter at exit after a Worker ran, so this script reports what it saw as JSON lines on stdout
and leaves with os._exit: the test judges the lines, never a lucky exit code.

    python blips.py reset     STATE_DIR PORT    RST every connection, twice
    python blips.py blackhole STATE_DIR PORT    swallow every byte for BLACKHOLE seconds, then heal
    python blips.py long      STATE_DIR PORT    the same for LONG_BLACKHOLE s (connect_timeout 1 s): the
                                                reconnect backoff reaches its 2 s cap before the heal
    python blips.py latency   STATE_DIR PORT    +0.1 s on every chunk for LATENT seconds

Times are trio.current_time() seconds, taken by a task reading rt.events().
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).parent))

from child import child_main, report
from embed import bare_servers
from workflows import Greet, Nap, greet

import stigmer_trio as st
from stigmer_trio.testing import FaultProxy, open_fault_proxy

QUEUE = "blips-q"
HEALTH_INTERVAL = 0.5
HEALTH_TIMEOUT = 1.0
BLACKHOLE = 3.0  # seconds the blackhole lasts (longer than detection: interval + timeout)
LONG_BLACKHOLE = 12.0  # with connect_timeout 1 s: ~8 timed-out connects, the backoff at its 2 s cap
LATENT = 3.0  # seconds of latency(LATENCY): several probes and a workflow
LATENCY = 0.1


def worker_spec() -> st.WorkerSpec:
    return st.WorkerSpec(QUEUE, workflows=[Greet, Nap], activities=[greet], graceful_shutdown_timeout=1.0)


class Timeline:
    """Every runtime event with the trio time it reached a reader of rt.events()."""

    def __init__(self) -> None:
        self.events: list[tuple[float, Any]] = []
        self.changed = trio.Event()

    async def watch(
        self, rt: st.Runtime, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        events = rt.events()
        task_status.started()
        async for event in events:
            self.events.append((trio.current_time(), event))
            self.changed.set()
            self.changed = trio.Event()

    def transitions(self, since: float) -> list[tuple[float, st.ConnectionStateChanged]]:
        return [(at, e) for at, e in self.events if at >= since and isinstance(e, st.ConnectionStateChanged)]

    def health(self, since: float) -> list[tuple[float, st.HealthChecked]]:
        return [(at, e) for at, e in self.events if at >= since and isinstance(e, st.HealthChecked)]

    def first(self, since: float, new: str) -> float | None:
        return next((at for at, e in self.transitions(since) if e.new == new), None)

    async def wait(self, predicate: Callable[[], bool], seconds: float) -> None:
        """Until `predicate()` after some event; on a timeout, report every event seen, then raise."""
        began = trio.current_time()
        try:
            with trio.fail_after(seconds):
                while not predicate():
                    await self.changed.wait()
        except trio.TooSlowError:
            report(step="timeline", events=[[round(at - began, 4), repr(e)] for at, e in self.events])
            raise

    def describe(self, since: float) -> list[list[Any]]:
        """[seconds since `since`, old, new, epoch, reason] per connection transition."""
        return [[round(at - since, 4), e.old, e.new, e.epoch, e.reason] for at, e in self.transitions(since)]


async def fail_fast(rt: st.Runtime, workflow_id: str) -> float | None:
    """Seconds one start_workflow took to raise TemporalUnavailable; None if it started a workflow."""
    began = time.perf_counter()
    try:
        await rt.start_workflow("Greet", "x", id=workflow_id, task_queue=QUEUE)
    except st.TemporalUnavailable:
        return time.perf_counter() - began
    return None


async def result_of(rt: st.Runtime, workflow_id: str, seconds: float) -> Any:
    async def get(client: Any) -> Any:
        return await client.get_workflow_handle(workflow_id).result()

    with trio.fail_after(seconds):
        return await rt.run_asyncio(get)


async def greet_after(rt: st.Runtime, name: str, since: float) -> dict[str, Any]:
    """Execute a Greet; its result and seconds from `since` to its completion."""
    with trio.fail_after(20):
        result = await rt.execute_workflow("Greet", name, id=name, task_queue=QUEUE)
    return {"result": result, "seconds": trio.current_time() - since}


@contextlib.asynccontextmanager
async def stack(
    state_dir: Path, port: int, **connection: Any
) -> AsyncIterator[tuple[st.Runtime, FaultProxy, Timeline]]:
    """Server, proxy in front of it, runtime through the proxy (ready, first workflow done), timeline."""
    timeline = Timeline()
    async with bare_servers(state_dir, port) as spawn, open_fault_proxy(f"127.0.0.1:{port}") as proxy:
        await spawn(None)  # in memory: the server stays up through every fault here
        config = st.RuntimeConfig(
            state_dir=state_dir,
            dev_server=None,
            connection=st.ConnectionConfig(
                address=proxy.address,
                health_interval=HEALTH_INTERVAL,
                health_timeout=HEALTH_TIMEOUT,
                **connection,
            ),
            workers=[worker_spec()],
        )
        async with st.open_runtime(config) as rt, trio.open_nursery() as nursery:
            await nursery.start(timeline.watch, rt)
            with trio.fail_after(30):
                await rt.wait_ready()
                first = await rt.execute_workflow("Greet", "first", id="first", task_queue=QUEUE)
            report(step="first", result=first, connections=proxy.connections)
            yield rt, proxy, timeline
            crashed = [
                f"{e.name}: {type(e.error).__name__}: {e.error}"
                for _, e in timeline.events
                if isinstance(e, st.ChildExited) and not e.stopped
            ]
            report(step="children", crashed=crashed, status=rt.status())
            nursery.cancel_scope.cancel(reason="scenario over")


def back_on_a_new_epoch(rt: st.Runtime, epoch: int) -> Callable[[], bool]:
    def back() -> bool:
        status = rt.status()
        return bool(status["ready"]) and status["connection"]["epoch"] > epoch

    return back


def recovered(rt: st.Runtime, timeline: Timeline, since: float) -> Callable[[], bool]:
    """Ready, and since `since` either a successful probe (the client redialled by itself, same epoch)
    or a CONNECTED transition (the probe failed: a new epoch)."""

    def back() -> bool:
        seen = any(e.ok for _, e in timeline.health(since)) or timeline.first(since, "connected") is not None
        return bool(rt.status()["ready"]) and seen

    return back


async def reset(state_dir: Path, port: int) -> None:
    async with stack(state_dir, port) as (rt, proxy, timeline):
        for round_ in range(2):
            nap = f"nap-before-reset-{round_}"
            await rt.start_workflow("Nap", 2.0, id=nap, task_queue=QUEUE)
            await trio.sleep(HEALTH_INTERVAL * (0.3 + 0.4 * round_))  # two phases of the probe cycle
            accepted = proxy.accepted
            at = trio.current_time()
            closed = proxy.reset()
            await timeline.wait(recovered(rt, timeline, at), 15)
            left = timeline.first(at, "disconnected")
            connected = timeline.first(at, "connected")
            probe = next((t for t, e in timeline.health(at) if e.ok), None)
            greeted = await greet_after(rt, f"after-reset-{round_}", at)
            report(
                step=f"reset-{round_}",
                closed=closed,
                redialled=proxy.accepted - accepted,
                left=None if left is None else left - at,
                connected=None if connected is None else connected - at,
                probe_ok=None if probe is None else probe - at,
                recovered=(connected if left is not None else probe) - at,
                probes=[[round(t - at, 4), e.ok, e.error] for t, e in timeline.health(at)],
                greet=greeted,
                transitions=timeline.describe(at),
                status=rt.status(),
            )
            report(
                step=f"nap-{round_}", result=await result_of(rt, nap, 20), seconds=trio.current_time() - at
            )


async def blackhole(state_dir: Path, port: int, lasts: float = BLACKHOLE, **connection: Any) -> None:
    async with stack(state_dir, port, **connection) as (rt, proxy, timeline):
        await rt.start_workflow("Nap", 2.0, id="nap-before-blackhole", task_queue=QUEUE)
        epoch = rt.status()["connection"]["epoch"]
        at = trio.current_time()
        proxy.blackhole()
        await timeline.wait(lambda: rt.state is not st.ConnectionState.CONNECTED, 10)
        left = timeline.first(at, "disconnected")
        rejected = await fail_fast(rt, "while-blackholed")
        states = set()
        while trio.current_time() - at < lasts:
            states.add(rt.state.value)
            await trio.sleep(0.01)
        healed = trio.current_time()
        proxy.heal()
        await timeline.wait(back_on_a_new_epoch(rt, epoch), 20)
        ready = trio.current_time()
        connected = timeline.first(healed, "connected")
        probes = timeline.health(at)
        report(
            step="blackhole",
            left=None if left is None else left - at,
            left_to=next((e.new for _, e in timeline.transitions(at)), None),
            fail_fast=rejected,
            states=sorted(states),
            lasted=healed - at,
            attempts=sum(1 for _, e in timeline.transitions(at) if e.new == "connecting"),
            accepted=proxy.accepted,
            connected=None if connected is None else connected - healed,
            ready=ready - healed,
            failed_probe=next(([t - at, e.seconds, e.error] for t, e in probes if not e.ok), None),
            transitions=timeline.describe(at),
            status=rt.status(),
        )
        report(step="greet", **await greet_after(rt, "after-blackhole", healed))
        result = await result_of(rt, "nap-before-blackhole", 20)
        report(step="nap", result=result, seconds=trio.current_time() - healed)


async def long(state_dir: Path, port: int) -> None:
    await blackhole(state_dir, port, LONG_BLACKHOLE, connect_timeout=1.0)


async def latency(state_dir: Path, port: int) -> None:
    async with stack(state_dir, port) as (rt, proxy, timeline):
        await rt.start_workflow("Nap", 1.0, id="nap-before-latency", task_queue=QUEUE)
        at = trio.current_time()
        proxy.latency(LATENCY)
        greeted = await greet_after(rt, "during-latency", at)
        nap = await result_of(rt, "nap-before-latency", 20)
        await trio.sleep(max(0.0, LATENT - (trio.current_time() - at)))
        proxy.heal()
        probes = timeline.health(at)
        report(
            step="latency",
            lasted=trio.current_time() - at,
            greet=greeted,
            nap=nap,
            transitions=timeline.describe(at),
            probes=[[e.ok, e.seconds] for _, e in probes],
            status=rt.status(),
        )


if __name__ == "__main__":
    scenarios = {"reset": reset, "blackhole": blackhole, "long": long, "latency": latency}
    child_main(lambda: trio.run(scenarios[sys.argv[1]], Path(sys.argv[2]), int(sys.argv[3])))
