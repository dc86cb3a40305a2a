"""Outage -> first NEW workflow completed: the runtime (external mode) beside the plain SDK. Prints a table.

    .venv/bin/python benchmarks/reconnect.py [--outages 1,10,30] [--rounds 5] [--smoke]

Not a test. Real clock. One bare `temporal server start-dev` (127.0.0.1, free ports, persisted db, HOME in a
temp dir, eager workflow start enabled, the server's other defaults; `_common.Server`) that this script
SIGKILLs (whole process group) and respawns on the same ports and db. Two clients ride the same server
lifecycle:

* the runtime, in this process: `open_runtime(RuntimeConfig(dev_server=None, connection=ConnectionConfig(
  address=...), workers=[WorkerSpec("rt-q", ...)]))`, all other settings at their defaults;
* the plain SDK, in a child process (plain asyncio, no trio): a Client + Worker on "sdk-q", SDK defaults,
  started once and kept across every outage (its own recovery).

Each round: both complete a workflow (warm), SIGKILL the server, wait the outage (from the kill), respawn
it; at the respawn both start the same loop: execute a one-activity workflow with a new id, on any failure
(TemporalUnavailable / the SDK's RPCError) retry 5 ms later, until one completes. "Server ready" is our own
probe in this process: TCP accept, then a fresh Client.connect + check_health, retried every 2 ms.
Reported: completion - server ready (time.monotonic, system-wide, so the child's instants compare), and
per outage the runtime's figures as ratios to the plain SDK's (the peer of the same run).

`--smoke` (CI): one round of a 1 s outage (~15 s). Any run exits non-zero when a round did not recover
within 120 s, when anything raised, or when the runtime's series got no samples.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import trio
from temporalio.service import RPCError

import stigmer_trio as st
from _common import (
    Server,
    Table,
    command_line,
    leave,
    machine_note,
    pct,
    probe_ready,
    require,
    run_timed,
)
from _sdk_child import SdkChild
from bench_workflows import BenchEcho, echo

RT_QUEUE = "rt-q"
SDK_QUEUE = "sdk-q"
RETRY = 0.005  # s between attempts after a failure, both sides
ROUND_TIMEOUT = 120.0  # s for one round's recovery (both sides) before it is recorded as a failure
SETTLE = 0.5  # s between the warm workflows and the kill
EARLY = "#successful start began before the new Worker ran"
TARGET_MEDIAN_MS, TARGET_MAX_MS = 300.0, 600.0
RT_FIRST = "RUNTIME: ready -> first new workflow completed"
SDK_FIRST = "PLAIN SDK: ready -> first new workflow completed"


class Recorder:
    """Event hook: every runtime event with its time.monotonic()."""

    def __init__(self) -> None:
        self.events: list[tuple[float, st.Event]] = []

    def __call__(self, event: st.Event) -> None:
        self.events.append((time.monotonic(), event))

    def first(self, after: float, match: Any) -> float | None:
        for at, event in self.events:
            if at >= after and match(event):
                return at
        return None

    def count(self, start: float, end: float, match: Any) -> int:
        return sum(1 for at, event in self.events if start <= at <= end and match(event))


def is_state(new: str) -> Any:
    return lambda e: isinstance(e, st.ConnectionStateChanged) and e.new == new


def worker_down(e: Any) -> bool:
    return isinstance(e, st.WorkerStateChanged) and not e.running


def worker_up(e: Any) -> bool:
    return isinstance(e, st.WorkerStateChanged) and e.running


class Bench:
    def __init__(self, outages: list[float], rounds: int, max_delay: float | None = None) -> None:
        self.max_delay = max_delay
        self.outages = outages
        self.rounds = rounds
        self.root = Path(tempfile.mkdtemp(prefix="stigmer-reconnect-"))
        self.server = Server(self.root / "server", eager=True)
        self.recorder = Recorder()
        self.serial = itertools.count()
        # samples[outage][name] -> list of ms
        self.samples: dict[float, dict[str, list[float]]] = {o: {} for o in outages}
        self.notes: list[str] = []
        self.failures: list[str] = []

    def add(self, outage: float, name: str, seconds: float | None) -> None:
        if seconds is not None:
            self.samples[outage].setdefault(name, []).append(seconds * 1000)

    async def runtime_recover(self, rt: st.Runtime, prefix: str) -> dict[str, Any]:
        attempts = 0
        errors: dict[str, int] = {}
        while True:
            attempts += 1
            workflow_id = f"rt-{prefix}-{attempts}"
            call = time.monotonic()
            try:
                handle = await rt.start_workflow("BenchEcho", "x", id=workflow_id, task_queue=RT_QUEUE)
                started = time.monotonic()
                await trio_result(rt, handle)
                return {
                    "call": call,
                    "started": started,
                    "done": time.monotonic(),
                    "attempts": attempts,
                    "errors": errors,
                }
            except (st.TemporalUnavailable, RPCError) as exc:
                key = f"{type(exc).__name__}: {str(exc).split(':')[0][:60]}"
                errors[key] = errors.get(key, 0) + 1
                await trio.sleep(RETRY)

    async def warm(self, rt: st.Runtime, sdk: SdkChild) -> None:
        with trio.fail_after(60):
            await rt.wait_ready()

            async def runtime_side() -> None:
                await rt.execute_workflow(
                    "BenchEcho", "w", id=f"rt-warm-{next(self.serial)}", task_queue=RT_QUEUE
                )

            async def sdk_side() -> None:
                await sdk.request("seq", n=1)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(runtime_side)
                nursery.start_soon(sdk_side)

    async def one_round(self, rt: st.Runtime, sdk: SdkChild, outage: float, index: int) -> None:
        await self.warm(rt, sdk)
        await trio.sleep(SETTLE)
        epoch_before = rt.status()["connection"]["epoch"]
        killed = await self.server.kill()
        await trio.sleep(max(0.0, killed + outage - time.monotonic()))
        state_at_respawn = rt.state.value
        spawned = await self.server.spawn()
        prefix = f"{outage:g}-{index}"
        results: dict[str, Any] = {}

        async def probe() -> None:
            results["ready"], results["tries"] = await probe_ready(self.server.port)

        async def runtime_side() -> None:
            results["rt"] = await self.runtime_recover(rt, prefix)

        async def sdk_side() -> None:
            results["sdk"] = await sdk.request("recover", prefix=prefix, interval=RETRY)

        with trio.move_on_after(ROUND_TIMEOUT) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(probe)
                nursery.start_soon(runtime_side)
                nursery.start_soon(sdk_side)
        if scope.cancelled_caught:
            self.failures.append(
                f"outage {outage:g} s round {index}: not recovered within {ROUND_TIMEOUT:g} s: "
                f"{sorted(results)} done"
            )
            if "sdk" not in results:  # the child is stuck in its loop: its answer would confuse later rounds
                raise RuntimeError("the SDK child did not recover in time; stopping")
        ready = results.get("ready")
        if ready is None:
            return
        rt_result, sdk_result = results.get("rt"), results.get("sdk")
        self.add(outage, "server spawn -> ready (our probe)", ready - spawned)
        if rt_result:
            self.add(outage, RT_FIRST, rt_result["done"] - ready)
            self.add(outage, "  runtime: ready -> start_workflow accepted", rt_result["started"] - ready)
            self.add(
                outage,
                "  runtime: the successful start_workflow call took",
                rt_result["started"] - rt_result["call"],
            )
            connected = self.recorder.first(spawned, is_state("connected"))
            worker = self.recorder.first(connected or spawned, worker_up)
            self.add(outage, "  runtime: ready -> CONNECTED (new epoch)", connected and connected - ready)
            stopped = self.recorder.first(connected or spawned, worker_down)
            self.add(
                outage,
                "  runtime: CONNECTED -> old Worker shut down",
                stopped and connected and stopped - connected,
            )
            self.add(outage, "  runtime: ready -> new Worker running", worker and worker - ready)
            if worker is not None:
                early = int(rt_result["call"] < worker)
                self.samples[outage].setdefault(
                    "#successful start began before the new Worker ran", []
                ).append(early)
            down = self.recorder.first(killed, is_state("disconnected"))
            self.add(outage, "  runtime: SIGKILL -> DISCONNECTED noticed", down and down - killed)
            attempts = self.recorder.count(killed, ready, is_state("connecting"))
            self.samples[outage].setdefault("#connect attempts during outage", []).append(attempts)
            self.samples[outage].setdefault("#execute_workflow attempts", []).append(rt_result["attempts"])
            epoch_after = rt.status()["connection"]["epoch"]
            if epoch_after == epoch_before:
                self.notes.append(f"outage {outage:g} s round {index}: the runtime never changed epoch")
            if state_at_respawn == "connected":
                self.notes.append(
                    f"outage {outage:g} s round {index}: state still CONNECTED at the respawn (outage not "
                    "noticed yet)"
                )
        if sdk_result:
            self.add(outage, SDK_FIRST, sdk_result["done"] - ready)
            self.add(outage, "  plain SDK: ready -> start_workflow accepted", sdk_result["started"] - ready)
            self.add(
                outage,
                "  plain SDK: the successful start_workflow call took",
                sdk_result["started"] - sdk_result["call"],
            )
            self.samples[outage].setdefault("#sdk attempts", []).append(sdk_result["attempts"])
        print(
            f"# outage {outage:g} s round {index}: ready after {1000 * (ready - spawned):.0f} ms; runtime "
            f"{1000 * (rt_result['done'] - ready) if rt_result else float('nan'):.0f} ms; plain SDK "
            f"{1000 * (sdk_result['done'] - ready) if sdk_result else float('nan'):.0f} ms",
            file=sys.stderr,
            flush=True,
        )

    def connection_config(self) -> st.ConnectionConfig:
        connection = st.ConnectionConfig(address=self.server.address)
        if self.max_delay is None:
            return connection
        policy = attrs.evolve(
            connection.policy,
            initial_delay=min(connection.policy.initial_delay, self.max_delay),
            backoff=min(connection.policy.backoff, self.max_delay),
            max_delay=self.max_delay,
        )
        return attrs.evolve(connection, policy=policy)

    async def run(self) -> None:
        await self.server.spawn()
        async with trio_asyncio_loop():
            await probe_ready(self.server.port)
        sdk, _ = await SdkChild.start(self.server.address, SDK_QUEUE, self.root / "sdk-child.log")
        config = st.RuntimeConfig(
            state_dir=self.root / "runtime",
            dev_server=None,
            connection=self.connection_config(),
            workers=[st.WorkerSpec(RT_QUEUE, workflows=[BenchEcho], activities=[echo])],
        )
        self.connection = config.effective_connection()
        try:
            async with st.open_runtime(config, hooks=(self.recorder,)) as rt:
                for outage in self.outages:
                    for index in range(self.rounds):
                        await self.one_round(rt, sdk, outage, index)
                await self.warm(rt, sdk)  # still healthy after the last round
        finally:
            with trio.CancelScope(shield=True):
                await sdk.close()
                if self.server.proc is not None:
                    await self.server.kill()

    def table(self) -> str:
        table = Table("ms", "{:.0f}")
        everything: list[float] = []
        for outage in self.outages:
            samples = self.samples[outage]
            for name, values in samples.items():
                if name.startswith("#"):
                    continue
                target, met = "", None
                if name.startswith("RUNTIME"):
                    everything += values
                    target = f"p50 <= {TARGET_MEDIAN_MS:g}, max <= {TARGET_MAX_MS:g}"
                    met = pct(values, 0.5) <= TARGET_MEDIAN_MS and max(values) <= TARGET_MAX_MS
                table.row(f"outage {outage:g} s: {name}", values, target, met)
            table.ratios(
                f"outage {outage:g} s: ratio RUNTIME / PLAIN SDK, ready -> first new workflow",
                samples.get(RT_FIRST, []),
                samples.get(SDK_FIRST, []),
            )
            counts = []
            for name in ("#connect attempts during outage", "#execute_workflow attempts", "#sdk attempts"):
                if name in samples:
                    counts.append(f"{name[1:]} {min(samples[name])}-{max(samples[name])}")
            early = samples.get("#successful start began before the new Worker ran")
            if early:
                counts.append(
                    f"successful start began before the new Worker ran: {sum(early)} of {len(early)}"
                )
            if counts:
                table.text(f"outage {outage:g} s: counts (min-max)", ["; ".join(counts)])
        if everything:
            met = pct(everything, 0.5) <= TARGET_MEDIAN_MS and max(everything) <= TARGET_MAX_MS
            table.row(
                "ALL outages: RUNTIME ready -> first new workflow",
                everything,
                f"p50 <= {TARGET_MEDIAN_MS:g}, max <= {TARGET_MAX_MS:g}",
                met,
            )
        table.text("reference: the system we replace promises", ["", "< 30000"])
        return table.render()


def trio_asyncio_loop() -> Any:
    import trio_asyncio

    return trio_asyncio.open_loop()


async def trio_result(rt: st.Runtime, handle: Any) -> Any:
    """The result of a started workflow through the public API: the handle's asyncio `result()` on the
    runtime's bridge (execute_workflow does the same after its start, and also maps an RPC failure to
    TemporalUnavailable; here `runtime_recover` catches both)."""

    async def result(client: Any, handle: Any) -> Any:
        return await handle.result()

    return await rt.run_asyncio(result, handle)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outages", default="1,10,30", help="comma-separated outage lengths in seconds")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="CI: one round of a 1 s outage")
    parser.add_argument(
        "--max-delay",
        type=float,
        default=None,
        help="NOT the default: cap the runtime's reconnect backoff at this many seconds (to show its effect)",
    )
    args = parser.parse_args()
    try:
        outages = [float(part) for part in args.outages.split(",") if part.strip()]
    except ValueError:
        parser.error(f"--outages must be numbers, got {args.outages!r}")
    if not outages or any(o < 0 for o in outages) or args.rounds < 1:
        parser.error("--outages must be >= 0 and --rounds >= 1")
    if args.max_delay is not None and args.max_delay <= 0:
        parser.error("--max-delay must be > 0")
    if args.smoke:
        outages, args.rounds = [1.0], 1
    bench = Bench(outages, args.rounds, args.max_delay)

    def run() -> None:
        trio.run(bench.run)
        for outage in outages:
            require(bench.samples[outage], RT_FIRST, SDK_FIRST)

    code, elapsed, load_before = run_timed(run)
    print(bench.table())
    print()
    connection = getattr(bench, "connection", None)
    print(f"Command: `{command_line()}` ({elapsed:.0f} s wall). {machine_note(load_before)}")
    print(
        "Runtime: external mode, ConnectionConfig "
        + (
            "defaults"
            if bench.max_delay is None
            else f"defaults EXCEPT the backoff cap {bench.max_delay:g} s"
        )
        + (
            f" (health_interval {connection.health_interval:g} s, reconnect backoff "
            f"{connection.policy.backoff * 1000:g} ms x{connection.policy.multiplier:g} capped at "
            f"{connection.policy.max_delay:g} s)"
            if connection
            else ""
        )
        + ", WorkerSpec defaults; eager start (a local worker serves rt-q). Plain SDK: Client.connect + "
        "Worker defaults, start_workflow/result defaults (no eager). Server: bare binary with eager workflow "
        "start enabled (the server's other defaults), persisted db, SIGKILL of its process group."
    )
    print(
        "Start of both loops = the respawn; 'ready' = our probe (TCP accept + Client.connect + check_health "
        "every 2 ms, this process via trio-asyncio). start_workflow accepted = the start call returned."
    )
    for line in bench.notes + bench.failures:
        print(f"- {line}")
    shutil.rmtree(bench.root, ignore_errors=True)
    return 1 if bench.failures else code


if __name__ == "__main__":
    leave(main())
