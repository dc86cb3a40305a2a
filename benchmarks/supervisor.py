"""Supervisor restart latency, real clock: prints a table (not a test).

    .venv/bin/python benchmarks/supervisor.py [--rounds N] [--smoke]

1. task crash -> restarted: a child raises; time until its next run called started().
2. SIGKILL of a supervised subprocess -> crash detected (ChildExited) -> respawned (ChildStarted):
   the child waits on the process (pidfd), so detection is an event, not a poll.

Each against its floor measured in the same run, the same mechanism without the Supervisor: a bare loop
that calls the task again when it raises, and a bare trio loop that SIGKILLs `sleep`, awaits
proc.wait() and spawns the next one. The ratio rows are Supervisor / floor per column. `--smoke` (CI):
20 rounds (< 1 s); exits non-zero when anything breaks or a series got no samples.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import trio

from _common import Table, require
from stigmer_trio import ChildExited, ChildSpec, ChildStarted, Event, RestartPolicy, Supervisor

# Every restart immediate (no backoff), so the table shows the mechanism, not the policy.
IMMEDIATE = RestartPolicy(initial_delay=0.0, backoff=0.0, jitter=0.0, max_restarts=None)
SLEEP = ["sleep", "600"]


async def task_restart(rounds: int) -> list[float]:
    crash = trio.Event()
    crashed_at: list[float] = []
    samples: list[float] = []
    restarted = trio.Event()

    async def child(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal crash
        task_status.started()
        await crash.wait()
        crash = trio.Event()
        crashed_at.append(time.perf_counter())
        raise RuntimeError("crash on demand")

    def hook(event: Event) -> None:
        if isinstance(event, ChildStarted) and crashed_at:
            samples.append(time.perf_counter() - crashed_at[-1])
            restarted.set()

    sup = Supervisor([ChildSpec("task", child)], policy=IMMEDIATE, on_event=hook)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.serve)
        for _ in range(rounds):
            restarted = trio.Event()
            crash.set()
            await restarted.wait()
        nursery.cancel_scope.cancel(reason="benchmark done")
    return samples


async def process_restart(rounds: int) -> tuple[list[float], list[float]]:
    pids: list[int] = []
    detect: list[float] = []
    respawn: list[float] = []
    killed_at = 0.0
    respawned = trio.Event()

    async def child(*, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        proc = await trio.lowlevel.open_process(SLEEP, start_new_session=True)
        try:
            pids.append(proc.pid)
            task_status.started(proc.pid)
            await proc.wait()
            raise RuntimeError(f"process exited with {proc.returncode}")
        finally:
            if proc.returncode is None:
                proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()

    def hook(event: Event) -> None:
        now = time.perf_counter()
        if isinstance(event, ChildExited) and not event.stopped:
            detect.append(now - killed_at)
        elif isinstance(event, ChildStarted) and event.restarts > 0:
            respawn.append(now - killed_at)
            respawned.set()

    sup = Supervisor([ChildSpec("sleep", child)], policy=IMMEDIATE, on_event=hook)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.serve)
        for _ in range(rounds):
            respawned = trio.Event()
            killed_at = time.perf_counter()
            os.kill(pids[-1], signal.SIGKILL)
            await respawned.wait()
        nursery.cancel_scope.cancel(reason="benchmark done")
    return detect, respawn


async def task_floor(rounds: int) -> list[float]:
    """The floor of (1): a bare loop that starts the task again when it raises; raise -> started()."""
    crash = trio.Event()
    crashed_at: list[float] = []
    samples: list[float] = []

    async def child(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await crash.wait()
        crashed_at.append(time.perf_counter())
        raise RuntimeError("crash on demand")

    for _ in range(rounds + 1):
        crash = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(child)
                if crashed_at:
                    samples.append(time.perf_counter() - crashed_at[-1])
                if len(samples) == rounds:
                    nursery.cancel_scope.cancel(reason="benchmark done")
                else:
                    crash.set()
        except* RuntimeError:  # the crash on demand
            pass
    return samples


async def process_floor(rounds: int) -> tuple[list[float], list[float]]:
    """The floor of (2): bare trio, SIGKILL `sleep` -> proc.wait() returns -> the next one spawned."""
    detect: list[float] = []
    respawn: list[float] = []
    proc = await trio.lowlevel.open_process(SLEEP, start_new_session=True)
    try:
        for _ in range(rounds):
            killed = time.perf_counter()
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
            detect.append(time.perf_counter() - killed)
            proc = await trio.lowlevel.open_process(SLEEP, start_new_session=True)
            respawn.append(time.perf_counter() - killed)
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()
    return detect, respawn


async def main(rounds: int) -> None:
    samples: dict[str, list[float]] = {}
    samples["task"] = await task_restart(rounds)
    samples["task floor"] = await task_floor(rounds)
    samples["detect"], samples["respawn"] = await process_restart(rounds)
    samples["detect floor"], samples["respawn floor"] = await process_floor(rounds)
    require(samples, *samples)
    ms = {name: [s * 1000 for s in values] for name, values in samples.items()}
    table = Table("ms", "{:.3f}")
    table.row("task raises -> restarted (started() again)", ms["task"])
    table.row("  floor: bare loop, task raises -> started again", ms["task floor"])
    table.ratios("ratio task restart / floor", ms["task"], ms["task floor"])
    table.row("SIGKILL subprocess -> crash detected (ChildExited)", ms["detect"])
    table.row("  floor: bare trio, SIGKILL -> proc.wait() returns", ms["detect floor"])
    table.ratios("ratio crash detected / floor", ms["detect"], ms["detect floor"])
    table.row("SIGKILL subprocess -> respawned, started()", ms["respawn"])
    table.row("  floor: bare trio, SIGKILL -> wait() -> next spawned", ms["respawn floor"])
    table.ratios("ratio respawned / floor", ms["respawn"], ms["respawn floor"])
    table.text("reference: a 5 s polling design, kill -> detect", ["", "2810 (p50)"])
    print(table.render())
    print(
        f"\n{rounds} rounds each; {os.cpu_count()} cores, Python {sys.version.split()[0]}; load average "
        f"(1 min) {os.getloadavg()[0]:.2f}."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--smoke", action="store_true", help="CI: 20 rounds")
    arguments = parser.parse_args()
    trio.run(main, 20 if arguments.smoke else arguments.rounds)
