"""ARCHIVED (finished; its finding is in docs/benchmarks.md, "Workflow round trips"). What each step of the
bridge's CPU work (issue 15) bought: CPU per workflow and throughput of 50-workflow bursts against the plain
SDK, on a quiet machine and with every core kept busy, in one run. Prints a table.

    .venv/bin/python benchmarks/archive/bridge_steps.py [--rounds 8] [--conc 50]

The bridge alone (no runtime tree: its idle work is measured by roundtrip.py), one tuned bare dev server,
the plain-SDK child (benchmarks/_sdk_child.py) as the peer. Each round, each step in a rotating order gets
a fresh loop, Client and Worker (its own task queue), 8 warm-up round trips, then per phase (quiet, busy)
one SDK burst and one of ours; ratios are medians of the per-burst ratios (ours / the SDK burst just
before). Busy = roundtrip.Burners: one spinning process per core, ours, SIGKILLed at the end.

  0  trio-asyncio 0.16 as it is: one Trio scheduler pass and one cancel scope per asyncio callback
  1  _aioloop's batched queue, one batch per turn, trio-asyncio's per-call callback check kept (rebuilt)
  2  + callbacks checked in debug mode only, as asyncio does
  3  + workflow activations in Trio's thread cache (ThreadCacheExecutor), no Trio task each: what
     make_worker does on the _aioloop loop
  4  + up to 4 batches per turn before Trio's scheduler runs again: _aioloop as it is
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/: the shared harness

import trio
import trio_asyncio
from temporalio.worker import Worker

from _common import Server, command_line, leave, machine_note, probe_ready, run_timed
from _sdk_child import SdkChild
from bench_workflows import BenchEcho, echo
from roundtrip import Burners
from stigmer_trio._boundary import _aioloop, _temporal


class OneBatchPerTurn(_aioloop.BatchedTrioEventLoop):
    """Steps 1-3: one batch per turn of the loop task (then a Trio scheduler pass), not up to four."""

    async def _main_loop_one(self, no_wait: bool = False) -> None:
        if not self._channel_drained:
            self._take_channel()
        if not no_wait:
            if self._runnable:
                await trio.lowlevel.cancel_shielded_checkpoint()
            else:
                await self._park()
        if not await self._run_batch() and no_wait:
            raise trio.WouldBlock


class AlwaysChecked(OneBatchPerTurn):
    """Step 1: the batched queue, every callback checked as trio-asyncio's call_soon does."""

    def call_soon(self, callback: Any, *args: Any, context: Any = None) -> Any:
        self._check_callback(callback, "call_soon")
        return super().call_soon(callback, *args, context=context)

    def call_soon_threadsafe(self, callback: Any, *args: Any, context: Any = None) -> Any:
        self._check_callback(callback, "call_soon_threadsafe")
        return super().call_soon_threadsafe(callback, *args, context=context)

    def call_at(self, when: float, callback: Any, *args: Any, context: Any = None) -> Any:
        self._check_callback(callback, "call_at")
        return super().call_at(when, callback, *args, context=context)


def opener(cls: type[_aioloop.BatchedTrioEventLoop]) -> Callable[[], Any]:
    @contextlib.asynccontextmanager
    async def open_loop() -> AsyncIterator[Any]:
        async with trio_asyncio.open_loop() as loop:
            _aioloop._adopt(loop)
            loop.__class__ = cls
            yield loop

    return open_loop


STEPS: dict[str, tuple[Callable[[], Any], bool]] = {
    "0 trio-asyncio 0.16 as it is": (trio_asyncio.open_loop, False),
    "1 batched queue (_aioloop), one batch per turn": (opener(AlwaysChecked), False),
    "2 + callbacks checked in debug mode only": (opener(OneBatchPerTurn), False),
    "3 + workflow activations in Trio's thread cache": (opener(OneBatchPerTurn), True),
    "4 + up to 4 batches per turn (_aioloop as it is)": (_aioloop.open_loop, True),
}
PHASES = ("quiet", "busy")


class Bench:
    def __init__(self, rounds: int, conc: int) -> None:
        self.rounds, self.conc = rounds, conc
        self.root = Path(tempfile.mkdtemp(prefix="stigmer-bridge-steps-"))
        self.server = Server(self.root / "server", tuned=True)
        self.serial = itertools.count()
        # (step, phase) -> per burst: (our CPU ms/wf, the SDK's, our workflows/s, the SDK's)
        self.bursts: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {
            (step, phase): [] for step in STEPS for phase in PHASES
        }
        self.burners = Burners()

    async def run(self) -> None:
        await self.server.spawn()
        async with trio_asyncio.open_loop():
            await probe_ready(self.server.port)
        sdk, _ = await SdkChild.start(self.server.address, "sdk-q", self.root / "sdk-child.log")
        try:
            await self.burners.start()
            for index in range(self.rounds):
                names = list(STEPS)
                for step in names[index % len(names) :] + names[: index % len(names)]:
                    await self.one_step(step, sdk)
                print(f"# round {index + 1}/{self.rounds}", file=sys.stderr, flush=True)
        finally:
            with trio.CancelScope(shield=True):
                await self.burners.stop()
                await sdk.close()
                await self.server.kill()

    async def one_step(self, step: str, sdk: SdkChild) -> None:
        opener, thread_cache = STEPS[step]
        queue = f"steps-{step[0]}"
        async with opener():
            client = await _temporal.connect(self.server.address, "default", timeout=10)
            executor = trio_asyncio.TrioExecutor(max_workers=200)
            worker = Worker(
                client,
                task_queue=queue,
                workflows=[BenchEcho],
                activities=[echo],
                workflow_task_executor=_aioloop.ThreadCacheExecutor() if thread_cache else executor,
                activity_executor=executor,
                sticky_queue_schedule_to_start_timeout=timedelta(seconds=10),
            )

            async def one() -> None:
                await trio_asyncio.aio_as_trio(client.execute_workflow)(
                    "BenchEcho",
                    "x",
                    id=f"{queue}-{next(self.serial)}",
                    task_queue=queue,
                    request_eager_start=False,
                )

            async with trio.open_nursery() as nursery:
                nursery.start_soon(_temporal.run_worker, worker)
                for _ in range(8):
                    await one()
                for phase in PHASES:
                    async with self.burners.busy() if phase == "busy" else contextlib.AsyncExitStack():
                        theirs = await sdk.request("burst", n=self.conc)
                        cpu, began = time.process_time(), time.perf_counter()
                        async with trio.open_nursery() as burst:
                            for _ in range(self.conc):
                                burst.start_soon(one)
                        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
                    self.bursts[step, phase].append(
                        (
                            cpu / self.conc * 1000,
                            theirs["cpu"] / self.conc * 1000,
                            self.conc / elapsed,
                            self.conc / (theirs["elapsed_ns"] / 1e9),
                        )
                    )
                with trio.fail_after(15):
                    await _temporal.shutdown_worker(worker)
                nursery.cancel_scope.cancel(reason="step measured")

    def table(self) -> str:
        med = statistics.median
        lines = [
            "| step | CPU ms/workflow quiet (ours / SDK) | CPU ratio quiet "
            "| CPU ms/workflow busy (ours / SDK) | CPU ratio busy "
            "| throughput ratio quiet | throughput ratio busy |",
            "|---|---|---|---|---|---|---|",
        ]
        for step in STEPS:
            quiet, busy = self.bursts[step, "quiet"], self.bursts[step, "busy"]
            lines.append(
                f"| {step} | {med(b[0] for b in quiet):.1f} / {med(b[1] for b in quiet):.1f} "
                f"| {med(b[0] / b[1] for b in quiet):.2f} "
                f"| {med(b[0] for b in busy):.1f} / {med(b[1] for b in busy):.1f} "
                f"| {med(b[0] / b[1] for b in busy):.2f} "
                f"| {med(b[2] / b[3] for b in quiet):.2f} | {med(b[2] / b[3] for b in busy):.2f} |"
            )
        return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="rounds (each step once per round)")
    parser.add_argument("--conc", type=int, default=50, help="workflows per burst")
    args = parser.parse_args()
    bench = Bench(args.rounds, args.conc)
    code, elapsed, load_before = run_timed(lambda: trio.run(bench.run))
    if code == 0:
        print(bench.table())
        print()
        print(f"Command: `{command_line()}` ({elapsed:.0f} s wall). {machine_note(load_before)}")
        busy = bench.burners.busy_cpu / max(bench.burners.busy_wall, 1e-9)
        print(
            f"{args.rounds} bursts of {args.conc} per step and phase; the burners got {busy:.2f} cores while "
            "busy. Ratios: medians of ours / the SDK burst just before."
        )
    shutil.rmtree(bench.root, ignore_errors=True)
    return code


if __name__ == "__main__":
    leave(main())
