"""Scale-out: N daemons in external mode serve ONE task queue of ONE server; one is SIGKILLed mid-load,
another has its network cut; every workflow completes exactly once. Prints tables.

    cd benchmarks && ../.venv/bin/python scaleout.py [--smoke] [--workflows 300] [--rate 10] [--runtimes 3]
        [--batch 300] [--repeat] [--initial-ms 200] [--kill-at 5] [--cut-at 15] [--cut 10] [--json FILE]
        [--root DIR] [--keep]

Not a test: it measures, prints, and exits non-zero on any lost or duplicated workflow, a victim
activity that never completed elsewhere, or a process left running. Everything runs on 127.0.0.1 with
free ports in a fresh temporary directory (or `--root`, which must not exist yet).

The stack
* ONE bare `temporal server start-dev` of ours (`_common.Server`, the runtime's own settings), and in
  this process one fault proxy per daemon in front of it (`stigmer_trio.testing.open_fault_proxy`): a
  proxy per daemon cuts one daemon's network and no other's.
* N daemons: `python -m stigmer_trio up --detach --state-dir S_i --external PROXY_i --worker
  scaleout_app:spec --no-demo` (cwd benchmarks/), each with its own state dir, no dev server of its own,
  all serving the task queue "scaleout". Nothing coordinates them but Temporal.
* The workflow (scaleout_app.py): `steps` activities in sequence, each ~`ms` ms, heartbeating, heartbeat
  timeout 2 s, retry initial interval `--initial-ms` (200 ms; the SDK's default is 1 s). Each attempt
  logs its start and end (daemon, workflow id, step, attempt, wall time) to its daemon's JSON-lines file;
  the workflow's result names the daemon and attempt of every step the server accepted. The Worker's
  identity is `scaleout-<daemon>`, so each workflow task in a history names the daemon that ran it.
* The load and the verification run in a CHILD process with plain asyncio and a plain temporalio Client
  connected straight to the server (no proxy, no trio, no runtime), `task_timeout` 5 s (the runtime's
  ConnectionConfig.workflow_task_timeout default; the SDK's is 10 s).

The phases
1. throughput with 1, 2, ... N runtimes: the daemons come up one by one; after each, `--batch` workflows
   are started at once (64 starts in flight) and awaited. workflows/s = batch / (first start -> last
   result); the CPU seconds the server and the daemons used meanwhile (psutil) say where the limit is.
   `--repeat`: then again with N-1, ... 1 (daemons stopped one by one), for the order's effect.
2. faults with all N up: `--workflows` workflows started at `--rate`/s (paced, from one instant t0).
   At t0 + `--kill-at`, daemon 1 is SIGKILLed (a pidfd opened first, then pid + create time + cmdline proven
   ours); at t0 + `--cut-at`, daemon 2's proxy blackholes for `--cut` s (10; every byte both ways swallowed),
   then heals. Each fault waits (<= 10 s) until its victim has an activity in flight, so it always has one.
3. verification (the child): every workflow id must have exactly one run, COMPLETED (describe + a
   visibility listing after it settled); the histories give each workflow task's times and daemon.

The figures
* failover = (completion of the retry of each activity retried after the fault, and before the next
  one: those in flight on the victim, also those dispatched to it that it never began) - (the fault
  instant): from the activity logs. Target <= heartbeat timeout + 1 s. Expected: the server times
  the attempt out 2 s after its last heartbeat (sent when it started, <= the fault), the retry waits the
  initial interval, then runs ~ms: <= 2 + 0.2 + 0.2 s. The SDK's default interval (1 s) adds 0.8 s.
* workflows whose workflow task sat on the victim (the last workflow task started before the fault ran
  there: cached on its sticky queue, or in flight): fault -> their next workflow task started anywhere
  (a cached one waits the sticky timeout, WorkerSpec.sticky_timeout, 5 s; one in flight the workflow
  task timeout, 5 s), and that task's scheduled -> started.
* attempts vs completions: an activity interrupted on a victim is retried elsewhere (expected); one that
  finished on the blackholed victim but whose completion was swallowed ran twice to the end.
* leftovers: after `stop` of every daemon and the server's kill, no process naming this run's directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import shutil
import signal
import sys
import time
import traceback
from collections import Counter, defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

from _common import Table, pct, run_root  # benchmarks/ is the working directory and sys.path[0]

SELF = Path(__file__).resolve()
HERE = SELF.parent
PYTHON = sys.executable
CLI = [PYTHON, "-m", "stigmer_trio"]
WORKFLOW = "ScaleoutWorkflow"
TASK_QUEUE = "scaleout"
HEARTBEAT_TIMEOUT = 2.0  # scaleout_app.HEARTBEAT_TIMEOUT (not imported: it imports temporalio)
TASK_TIMEOUT = 5.0  # the starts' workflow task timeout: the runtime's default
READY_LIMIT = 30.0
DRAIN_LIMIT = 90.0
FAILOVER_TARGET = HEARTBEAT_TIMEOUT + 1.0


# --- the parent (trio) -------------------------------------------------------------------------------------
class Daemon:
    def __init__(self, root: Path, index: int) -> None:
        self.name = f"d{index}"
        self.state = root / self.name
        self.log = root / f"activities-{self.name}.jsonl"
        self.proxy: Any = None
        self.up = False
        self.killed = False

    @property
    def identity(self) -> str:
        return f"scaleout-{self.name}"

    def pid(self) -> int | None:
        from stigmer_trio._boundary._statefiles import read_pid_file

        record = read_pid_file(self.state / "runtime.json")
        return None if record is None else record.pid


class Scaleout:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.began_wall = time.time()
        self.root = run_root(args.root, "stigmer-scaleout-")
        self.daemons = [Daemon(self.root, i + 1) for i in range(args.runtimes)]
        self.server: Any = None
        self.throughput: list[dict[str, Any]] = []
        self.faults: list[dict[str, Any]] = []
        self.load: dict[str, Any] = {}
        self.notes: list[str] = []
        self.orphans: list[str] = []
        self.stops: list[str] = []

    # --- the CLI and the daemons -----------------------------------------------------------------------
    async def cli(
        self, *args: str, env: dict[str, str] | None = None, limit: float = 90.0
    ) -> tuple[int, str]:
        import trio

        with trio.move_on_after(limit):
            done = await trio.run_process(
                [*CLI, *args],
                cwd=HERE,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env={**os.environ, **(env or {})},
            )
            return done.returncode, (done.stdout + done.stderr).decode(errors="replace").strip()
        return -1, f"`{args[0]}` did not return within {limit:g} s"

    async def bring_up(self, daemon: Daemon) -> None:
        import trio

        code, out = await self.cli(
            "up", "--detach", "--state-dir", str(daemon.state), "--external", daemon.proxy.address,
            "--worker", "scaleout_app:spec", "--no-demo",
            env={"SCALEOUT_NAME": daemon.name, "SCALEOUT_LOG": str(daemon.log)},
        )  # fmt: skip
        if code != 0:
            raise RuntimeError(f"`up` of {daemon.name} failed (exit {code}): {out[-600:]}")
        daemon.up = True
        deadline = trio.current_time() + READY_LIMIT
        while True:
            code, out = await self.cli("status", "--state-dir", str(daemon.state))
            if code == 0:
                return
            if trio.current_time() > deadline:
                raise RuntimeError(f"{daemon.name} not ready within {READY_LIMIT:g} s: {out[-300:]}")
            await trio.sleep(0.2)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system) so far of the server and of each live daemon."""
        import psutil

        pids = {"server": self.server.proc.pid}
        for daemon in self.daemons:
            pid = daemon.pid() if daemon.up and not daemon.killed else None
            if pid is not None:
                pids[daemon.name] = pid
        spent = {}
        for name, pid in pids.items():
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(pid).cpu_times()
                spent[name] = times.user + times.system
        return spent

    # --- the load child --------------------------------------------------------------------------------
    async def child(self, request: dict[str, Any], tag: str) -> dict[str, Any]:
        import trio

        path = self.root / f"{tag}-in.json"
        answer = self.root / f"{tag}-out.json"
        path.write_text(json.dumps(request))
        fd = os.open(self.root / f"{tag}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            done = await trio.run_process(
                [PYTHON, str(SELF), "--client-child", str(path), str(answer)],
                stdout=fd,
                stderr=fd,
                check=False,
            )
        finally:
            os.close(fd)
        if done.returncode != 0 or not answer.exists():
            raise RuntimeError(f"the client child failed (rc {done.returncode}); see {self.root}/{tag}.log")
        result: dict[str, Any] = json.loads(answer.read_text())
        return result

    def request(self, prefix: str, count: int, rate: float, t0: float) -> dict[str, Any]:
        return {
            "address": self.server.address,
            "prefix": prefix,
            "count": count,
            "rate": rate,  # 0: all at once
            "t0": t0,
            "args": [self.args.steps, self.args.ms, self.args.initial_ms],
            "histories": rate > 0,
            "drain": DRAIN_LIMIT,
        }

    # --- the phases ------------------------------------------------------------------------------------
    async def run(self) -> None:
        import trio

        from _common import Server, tcp_accepts
        from soak import poll
        from stigmer_trio.testing import open_fault_proxy

        self.server = Server(self.root / "server", tuned=True)
        await self.server.spawn()
        with trio.fail_after(30):
            await poll(lambda: tcp_accepts(self.server.port), 0.02)
        async with contextlib.AsyncExitStack() as stack:
            for daemon in self.daemons:
                daemon.proxy = await stack.enter_async_context(open_fault_proxy(self.server.address))
            try:
                for daemon in self.daemons:  # throughput with 1, 2, ... N runtimes
                    await self.bring_up(daemon)
                    if self.args.batch:
                        await self.throughput_phase()
                if self.args.batch and self.args.repeat:  # and again with N-1, ... 1 (a later, bigger db)
                    for daemon in reversed(self.daemons[1:]):
                        await self.take_down(daemon)
                        await self.throughput_phase()
                    for daemon in self.daemons[1:]:
                        await self.bring_up(daemon)
                await self.fault_phase()
            finally:
                for daemon in self.daemons:  # the proxies are still up: a graceful stop can hand over
                    if daemon.up:
                        code, out = await self.cli("stop", "--state-dir", str(daemon.state), limit=60)
                        self.stops.append(
                            f"{daemon.name}: exit {code}: {out.splitlines()[-1] if out else ''}"
                        )
        await self.server.kill()

    async def take_down(self, daemon: Daemon) -> None:
        code, out = await self.cli("stop", "--state-dir", str(daemon.state), limit=60)
        if code != 0:
            raise RuntimeError(f"`stop` of {daemon.name} failed (exit {code}): {out[-600:]}")
        daemon.up = False

    async def throughput_phase(self) -> None:
        live = sum(1 for d in self.daemons if d.up)
        before = self.cpu_seconds()
        tag = f"tp{len(self.throughput)}-{live}"
        result = await self.child(self.request(f"{tag}-", self.args.batch, 0.0, time.time()), tag)
        after = self.cpu_seconds()
        span = result["last_result"] - result["first_start"]
        self.throughput.append(
            {
                "runtimes": live,
                "workflows": self.args.batch,
                "completed": result["completed"],
                "seconds": span,
                "per_s": result["completed"] / span if span > 0 else math.nan,
                "cpu": {name: after[name] - before.get(name, 0.0) for name in after},
                "lost": result["lost"],
                "duplicates": result["duplicates"],
                "latency": result["latency"],
            }
        )

    async def fault_phase(self) -> None:
        import trio

        args = self.args
        t0 = time.time() + 2.0  # the child connects meanwhile
        faults = []
        if len(self.daemons) >= 2:
            faults.append(("kill", self.daemons[0], t0 + args.kill_at))
            faults.append(("blackhole", self.daemons[1], t0 + args.cut_at))
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def load() -> None:
                try:
                    self.load = await self.child(self.request("fo-", args.workflows, args.rate, t0), "faults")
                finally:
                    done.set()

            nursery.start_soon(load)
            for kind, victim, at in faults:
                await trio.sleep(max(0.0, at - time.time()))
                nursery.start_soon(self.inject, kind, victim)
                await trio.sleep(0.05)
            await done.wait()

    async def inject(self, kind: str, victim: Daemon) -> None:
        import trio

        from soak import open_proven, send

        fault: dict[str, Any] = {"kind": kind, "victim": victim.name}
        self.faults.append(fault)
        with trio.move_on_after(10.0):  # a victim with nothing in flight would prove nothing
            while not in_flight(read_log(victim.log), time.time()):  # noqa: ASYNC110 (a file)
                await trio.sleep(0.01)
        if kind == "kill":
            pidfd, _record, why = open_proven(victim.state / "runtime.json")
            if pidfd is None:
                fault["skipped"] = why
                return
            try:
                fault["t"] = time.time()
                if not send(pidfd, signal.SIGKILL):
                    fault["skipped"] = "exited before the signal"
                    return
                victim.killed = True
                with trio.move_on_after(10):
                    await trio.lowlevel.wait_readable(pidfd)
            finally:
                with contextlib.suppress(Exception):
                    trio.lowlevel.notify_closing(pidfd)
                os.close(pidfd)
        else:
            fault["t"] = time.time()
            victim.proxy.blackhole()
            await trio.sleep(self.args.cut)
            victim.proxy.heal()
            fault["healed"] = time.time()

    # --- cleanup (sync: also after a crash or Ctrl-C) --------------------------------------------------
    def cleanup(self) -> None:
        import subprocess

        from _common import kill_leftovers
        from soak import kill_process, open_proven, own_leftovers, send

        for daemon in self.daemons:
            with contextlib.suppress(Exception):
                subprocess.run(
                    [*CLI, "stop", "--state-dir", str(daemon.state)],
                    cwd=HERE, capture_output=True, timeout=60, check=False,
                )  # fmt: skip
            pidfd, record, _ = open_proven(daemon.state / "runtime.json")
            if pidfd is not None:
                send(pidfd, signal.SIGKILL)
                os.close(pidfd)
                self.notes.append(f"killed proven daemon {daemon.name} pid {record.pid}")
        for pid in kill_leftovers():
            self.notes.append(f"killed our bare server pid {pid}")
        time.sleep(0.3)
        import psutil

        ancestors = {p.pid for p in psutil.Process().parents()}  # e.g. a `timeout` wrapping this run
        for proc in own_leftovers([str(self.root)], self.began_wall):
            if proc.pid in ancestors:
                continue
            with contextlib.suppress(Exception):
                self.orphans.append(f"pid {proc.pid}: {' '.join(proc.cmdline())[:200]}")
            kill_process(proc)

    # --- the figures -----------------------------------------------------------------------------------
    def analyse(self) -> dict[str, Any]:
        logs = {d.name: read_log(d.log) for d in self.daemons}
        records = [r for rows in logs.values() for r in rows if r["wid"].startswith("fo-")]
        starts = [r for r in records if r["event"] == "start"]
        dones = [r for r in records if r["event"] == "done"]
        done_keys = Counter((r["wid"], r["step"]) for r in dones)
        out: dict[str, Any] = {
            "activities": self.load.get("completed", 0) * self.args.steps,
            "attempts": len(starts),
            "retries": sum(1 for r in starts if r["attempt"] > 1),
            "ran_to_end": len(dones),
            "ran_to_end_twice": sum(1 for n in done_keys.values() if n > 1),
            "per_daemon": dict(Counter(r["daemon"] for r in dones)),
            "unseen_attempts": unseen_attempts(starts),
            "faults": [],
        }
        histories = self.load.get("histories", {})
        instants = sorted(f["t"] for f in self.faults if "t" in f)
        for fault in self.faults:
            if "t" not in fault:
                out["faults"].append({**fault, "failover": [], "missing": 0, "workflow": {}})
                continue
            t, victim = fault["t"], fault["victim"]
            end = next((x for x in instants if x > t), math.inf)
            # every activity retried after this fault (and before the next): the victim's in-flight ones,
            # including those dispatched to it that it never began (no log line); -> its retry's completion
            retried = {(r["wid"], r["step"]) for r in starts if r["attempt"] > 1 and t < r["t"] < end}
            failover, where, unbegun = [], Counter(), 0
            for key in sorted(retried):
                ends = [r for r in dones if (r["wid"], r["step"]) == key and r["attempt"] > 1 and r["t"] > t]
                if ends:
                    first = min(ends, key=lambda r: r["t"])
                    failover.append(first["t"] - t)
                    where[first["daemon"]] += 1
                if not any(r["wid"] == key[0] and r["step"] == key[1] and r["attempt"] == 1 for r in starts):
                    unbegun += 1
            flying = in_flight(logs[victim], t)
            missing = sum(
                1
                for wid, step, attempt in flying
                if not any((r["wid"], r["step"]) == (wid, step) and r["attempt"] > attempt for r in dones)
            )
            healed = fault.get("healed")
            back = [
                r["t"] - healed for r in logs[victim] if r["event"] == "start" and healed and r["t"] > healed
            ]
            out["faults"].append(
                {
                    **fault,
                    "back_after_heal": min(back, default=None),
                    "in_flight": len(flying),
                    "retried": len(retried),
                    "unbegun": unbegun,
                    "failover": failover,
                    "missing": missing,
                    "completed_by": dict(where),
                    "workflow": workflow_tasks(histories, f"scaleout-{victim}", t),
                }
            )
        return out

    def failures(self, figures: dict[str, Any]) -> list[str]:
        problems = []
        load = self.load
        if load.get("lost"):
            problems.append(f"lost {len(load['lost'])}")
        if load.get("duplicates"):
            problems.append(f"duplicated {len(load['duplicates'])}")
        if load.get("completed", 0) != self.args.workflows:
            problems.append(f"completed {load.get('completed', 0)} of {self.args.workflows}")
        for phase in self.throughput:
            if phase["lost"] or phase["duplicates"] or phase["completed"] != phase["workflows"]:
                problems.append(f"throughput phase with {phase['runtimes']}: lost/duplicated/incomplete")
        for fault in figures["faults"]:
            if fault.get("skipped"):
                problems.append(f"{fault['kind']} skipped: {fault['skipped']}")
            elif fault["missing"] or not fault["failover"]:
                problems.append(
                    f"{fault['kind']}: {len(fault['failover'])} activities retried after it; of the "
                    f"{fault['in_flight']} in flight on the victim, {fault['missing']} never completed"
                )
        if self.orphans:
            problems.append(f"leftover processes {len(self.orphans)}")
        return problems

    def tables(self, figures: dict[str, Any]) -> str:
        lines = []
        if self.throughput:
            lines += [
                f"Throughput: {self.args.batch} workflows started at once ({self.args.steps} activities of "
                f"{self.args.ms} ms each), first start -> last result; CPU seconds used meanwhile:",
                "",
                "| runtimes | completed | seconds | workflows/s | p50 latency (s) | p99 latency (s) "
                "| server CPU s (cores) | daemons CPU s (cores) | CPU ms per workflow: server / daemons |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for p in self.throughput:
                server = p["cpu"].get("server", math.nan)
                daemons = sum(v for k, v in p["cpu"].items() if k != "server")
                s = p["seconds"]
                lines.append(
                    f"| {p['runtimes']} | {p['completed']}/{p['workflows']} | {s:.2f} | {p['per_s']:.1f} "
                    f"| {pct(p['latency'], 0.5):.2f} | {pct(p['latency'], 0.99):.2f} "
                    f"| {server:.1f} ({server / s:.2f}) | {daemons:.1f} ({daemons / s:.2f}) "
                    f"| {1000 * server / p['workflows']:.0f} / {1000 * daemons / p['workflows']:.0f} |"
                )
            lines.append("")
        load = self.load
        lines.append(
            f"Faults: {self.args.workflows} workflows at {self.args.rate:g}/s, {len(self.daemons)} runtimes; "
            f"d1 SIGKILLed {self.args.kill_at:g} s into the starts, d2's network blackholed at "
            f"{self.args.cut_at:g} s for {self.args.cut:g} s; activity retry initial interval "
            f"{self.args.initial_ms} ms, heartbeat timeout {HEARTBEAT_TIMEOUT:g} s:"
        )
        lines.append("")
        counts = Table("count")
        counts.text(
            "workflows started / COMPLETED with one run",
            [f"{load.get('started', 0)} / {load.get('completed', 0)}"],
        )
        counts.text("lost (not COMPLETED)", [str(len(load.get("lost", [])))], "0", not load.get("lost"))
        counts.text(
            "duplicated (> 1 run)", [str(len(load.get("duplicates", [])))], "0", not load.get("duplicates")
        )
        counts.text("activities (workflows x steps)", [str(figures["activities"])])
        counts.text("activity attempts started", [str(figures["attempts"])])
        counts.text("  retries (attempt > 1)", [str(figures["retries"])])
        counts.text("activities run to the end", [str(figures["ran_to_end"])])
        counts.text("  run to the end twice (completion lost)", [str(figures["ran_to_end_twice"])])
        counts.text("attempts dispatched that no daemon started", [str(figures["unseen_attempts"])])
        counts.text("activities run per daemon", [json.dumps(figures["per_daemon"], sort_keys=True)])
        counts.text("leftover processes", [str(len(self.orphans))], "0", not self.orphans)
        lines += [counts.render(), ""]
        timing = Table("s", "{:.2f}")
        for fault in figures["faults"]:
            label = f"{fault['kind']} {fault['victim']}"
            if fault.get("skipped"):
                timing.row(f"{label}: skipped ({fault['skipped']})", [])
                continue
            values = fault["failover"]
            by = json.dumps(fault["completed_by"], sort_keys=True)
            timing.row(
                f"{label}: failover, fault -> retried activity completed ({fault['in_flight']} seen in "
                f"flight there, {fault['unbegun']} dispatched but never begun, {fault['missing']} never "
                f"completed; completed by {by})",
                values,
                f"<= {FAILOVER_TARGET:g}",
                bool(values) and not fault["missing"] and max(values) <= FAILOVER_TARGET,
            )
            if fault.get("back_after_heal") is not None:
                timing.row(f"{label}: heal -> the victim began an activity again", [fault["back_after_heal"]])
            wf = fault["workflow"]
            timing.row(f"{label}: workflow cached there, fault -> it continues", wf["cached_resume"])
            timing.row(f"{label}:   that workflow task: first scheduled -> started", wf["cached_wait"])
            timing.row(f"{label}: workflow task in flight there, fault -> it continues", wf["flying_resume"])
            for how, n in sorted(wf["how"].items()):
                timing.text(f"{label}:   {how}", [str(n)])
        timing.row("workflow latency: start -> result", load.get("latency", []))
        lines.append(timing.render())
        return "\n".join(lines)


def read_log(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    return rows


def in_flight(rows: list[dict[str, Any]], t: float) -> list[tuple[str, str, int]]:
    """(workflow id, step, attempt) of the attempts one daemon's log shows started before `t`, not ended."""
    started = {(r["wid"], r["step"], r["attempt"]) for r in rows if r["event"] == "start" and r["t"] < t}
    ended = {(r["wid"], r["step"], r["attempt"]) for r in rows if r["event"] == "done" and r["t"] < t}
    return sorted(started - ended)


def unseen_attempts(records: list[dict[str, Any]]) -> int:
    """Attempts the server dispatched that no daemon ever started: below an activity's last attempt, no
    log line (the task went to a poll of a dead or cut-off worker that the server still held)."""
    seen: dict[tuple[str, str], set[int]] = defaultdict(set)
    for r in records:
        seen[(r["wid"], r["step"])].add(r["attempt"])
    return sum(max(attempts) - len(attempts) for attempts in seen.values())


def workflow_tasks(histories: dict[str, list[list[Any]]], victim: str, t: float) -> dict[str, Any]:
    """The workflows whose last workflow task started before `t` ran on `victim` and had not closed:
    cached there (that task had completed: the next one goes to its sticky queue) or in flight there.
    For each: fault -> the start of the next workflow task that completed (`resume`), that task's wait
    from its first scheduling (`wait`), and how it waited: sticky timeouts (scheduled on a sticky queue
    nobody polls), workflow task timeouts (started by a worker that never answered), or neither.
    Events: [time, type, identity]."""
    found: dict[str, Any] = {"cached_resume": [], "cached_wait": [], "flying_resume": [], "how": Counter()}
    for events in histories.values():
        before = [e for e in events if e[0] < t]
        if any(e[1] == "WORKFLOW_EXECUTION_COMPLETED" for e in before):
            continue
        started = [e for e in before if e[1] == "WORKFLOW_TASK_STARTED"]
        if not started or started[-1][2] != victim:
            continue
        cached = any(e[1] == "WORKFLOW_TASK_COMPLETED" and e[0] >= started[-1][0] for e in before)
        after = [e for e in events if e[0] >= t]
        done = next(
            (
                e
                for e, nxt in itertools.pairwise(after)
                if e[1] == "WORKFLOW_TASK_STARTED" and nxt[1] == "WORKFLOW_TASK_COMPLETED"
            ),
            None,
        )
        if done is None:
            continue
        # the chain of the task that completed: its first scheduling (after the previous completed task,
        # perhaps before the fault) -> [timed out -> scheduled again]* -> started -> completed
        end = events.index(done)
        begin = max((i for i in range(end) if events[i][1] == "WORKFLOW_TASK_COMPLETED"), default=0)
        chain = events[begin : end + 1]
        scheduled = next((e for e in chain if e[1] == "WORKFLOW_TASK_SCHEDULED"), None)
        waits = []
        for e, nxt in itertools.pairwise(chain):
            if nxt[1] == "WORKFLOW_TASK_TIMED_OUT":  # started into the void, or never started in time
                waits.append("task timeout" if e[1] == "WORKFLOW_TASK_STARTED" else "sticky timeout")
        how = " + ".join(waits) if waits else "no timeout"
        found["how"][f"{'cached' if cached else 'in flight'}: {how}, then {done[2]}"] += 1
        if cached:
            found["cached_resume"].append(done[0] - t)
            if scheduled is not None:
                found["cached_wait"].append(done[0] - scheduled[0])
        else:
            found["flying_resume"].append(done[0] - t)
    return found


# --- the client child (plain asyncio, plain temporalio Client) ----------------------------------------------
async def child_main(request: dict[str, Any]) -> dict[str, Any]:
    from temporalio.client import Client, WorkflowFailureError
    from temporalio.service import RPCError, RPCStatusCode

    deadline = time.monotonic() + 30
    while True:
        try:
            client = await asyncio.wait_for(Client.connect(request["address"]), 5)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
    ids = [f"{request['prefix']}{i}" for i in range(request["count"])]
    began: dict[str, float] = {}
    ended: dict[str, float] = {}
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    gate = asyncio.Semaphore(64)

    async def one(wid: str, at: float) -> None:
        if at > time.time():
            await asyncio.sleep(at - time.time())
        try:
            async with gate:
                began[wid] = time.time()
                handle = await client.start_workflow(
                    WORKFLOW,
                    args=request["args"],
                    id=wid,
                    task_queue=TASK_QUEUE,
                    task_timeout=timedelta(seconds=TASK_TIMEOUT),
                )
            results[wid] = await handle.result()
            ended[wid] = time.time()
        except (RPCError, WorkflowFailureError) as exc:
            errors[wid] = f"{type(exc).__name__}: {exc}"[:300]

    t0, rate = request["t0"], request["rate"]
    tasks = [asyncio.ensure_future(one(wid, t0 + (i / rate if rate else 0.0))) for i, wid in enumerate(ids)]
    window = len(ids) / rate if rate else 0.0
    await asyncio.wait(tasks, timeout=max(0.0, t0 - time.time()) + window + request["drain"])
    for task in tasks:
        task.cancel()
    # verification: one run per id, COMPLETED (describe, then visibility once it settled)
    statuses: dict[str, str | None] = {}

    async def describe(wid: str) -> None:
        async with gate:
            try:
                desc = await client.get_workflow_handle(wid).describe()
                statuses[wid] = desc.status.name if desc.status is not None else "UNKNOWN"
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
                statuses[wid] = None

    await asyncio.gather(*(describe(w) for w in ids))
    query = f'WorkflowType = "{WORKFLOW}"'
    runs: dict[str, list[str]] = defaultdict(list)
    settle = time.monotonic() + 20
    last, stable = -1, time.monotonic()
    while time.monotonic() < settle:
        runs.clear()
        async for w in client.list_workflows(query, page_size=1000):
            if w.id.startswith(request["prefix"]):
                runs[w.id].append(w.status.name if w.status else "UNKNOWN")
        now = sum(len(r) for r in runs.values())
        if now != last:
            last, stable = now, time.monotonic()
        elif all(r == ["COMPLETED"] for r in runs.values()) and time.monotonic() - stable >= 1.0:
            break
        await asyncio.sleep(0.3)
    completed = [w for w in ids if statuses.get(w) == "COMPLETED" and runs.get(w) == ["COMPLETED"]]
    histories: dict[str, list[list[Any]]] = {}
    if request["histories"]:
        from temporalio.api.enums.v1 import EventType

        async def history(wid: str) -> None:
            async with gate:
                events = []
                async for e in client.get_workflow_handle(wid).fetch_history_events():
                    attrs = e.workflow_task_started_event_attributes
                    events.append(
                        [
                            e.event_time.ToDatetime().timestamp(),
                            EventType.Name(e.event_type).removeprefix("EVENT_TYPE_"),
                            attrs.identity if e.HasField("workflow_task_started_event_attributes") else "",
                        ]
                    )
                histories[wid] = events

        await asyncio.gather(*(history(w) for w in ids))
    return {
        "started": len(began),
        "completed": len(completed),
        "lost": [w for w in ids if w not in completed][:50],
        "duplicates": [w for w, r in runs.items() if len(r) > 1][:50],
        "errors": dict(list(errors.items())[:20]),
        "first_start": min(began.values(), default=math.nan),
        "last_result": max(ended.values(), default=math.nan),
        "latency": [ended[w] - began[w] for w in ended],
        "results": results,
        "histories": histories,
    }


def client_child(argv: list[str]) -> None:
    code = 0
    try:
        request = json.loads(Path(argv[0]).read_text())
        Path(argv[1]).write_text(json.dumps(asyncio.run(child_main(request))))
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the SDK can crash the interpreter at exit


# --- entry point -------------------------------------------------------------------------------------------
def positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
        return value

    return parse


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts, seconds (CI)")
    parser.add_argument("--runtimes", type=positive(int), default=3, help="daemons (3)")
    parser.add_argument(
        "--workflows", type=positive(int), default=300, help="workflows of the fault phase (300)"
    )
    parser.add_argument("--rate", type=positive(float), default=10.0, help="their starts per second (10)")
    parser.add_argument(
        "--batch", type=int, default=300, help="workflows per throughput phase (300; 0: none)"
    )
    parser.add_argument(
        "--repeat", action="store_true", help="throughput again with N-1 ... 1 runtimes (order effects)"
    )
    parser.add_argument("--steps", type=positive(int), default=3, help="activities per workflow (3)")
    parser.add_argument("--ms", type=positive(int), default=200, help="milliseconds per activity (200)")
    parser.add_argument("--initial-ms", type=positive(int), default=200, help="retry initial interval (200)")
    parser.add_argument("--cut", type=positive(float), default=10.0, help="seconds of the blackhole (10)")
    parser.add_argument("--kill-at", type=positive(float), default=5.0, help="s after the first start (5)")
    parser.add_argument("--cut-at", type=positive(float), default=15.0, help="s after the first start (15)")
    parser.add_argument("--root", type=Path, help="the run's directory (must not exist; default: a mkdtemp)")
    parser.add_argument("--json", metavar="FILE", help="write the raw figures to FILE")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory even when it passed")
    args = parser.parse_args()
    if args.batch < 0:
        parser.error(f"--batch must be >= 0, got {args.batch}")
    if args.smoke:
        smoke = {"workflows": 96, "rate": 12.0, "batch": 20, "cut": 3.0, "kill_at": 1.0, "cut_at": 6.0}
        for name, value in smoke.items():
            if f"--{name.replace('_', '-')}" not in sys.argv:
                setattr(args, name, value)
    if args.root is not None and args.root.exists():
        parser.error(f"--root must not exist yet, got {str(args.root)!r}")

    import trio

    from _common import command_line, leave, machine_note, protect_stdout

    protect_stdout()
    load_before = os.getloadavg()
    run = Scaleout(args)
    code = 0
    began = time.monotonic()
    try:
        trio.run(run.run)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        run.cleanup()
    try:
        figures = run.analyse()
        print(f"\nScale-out, {args.runtimes} runtimes in external mode, one server: {command_line()}")
        print(f"wall {time.monotonic() - began:.1f} s; {machine_note(load_before)}\n")
        print(run.tables(figures))
        for note in [*run.stops, *run.notes]:
            print(f"cleanup: {note}")
        for orphan in run.orphans:
            print(f"LEFTOVER {orphan}")
        for wid in run.load.get("lost", [])[:10]:
            print(f"LOST {wid}")
        for wid in run.load.get("duplicates", [])[:10]:
            print(f"DUPLICATED {wid}")
        problems = run.failures(figures)
        if problems:
            code = 1
        print(f"verdict: {'FAIL: ' + ', '.join(problems) if problems else ('OK' if code == 0 else 'ERROR')}")
        if args.json:
            raw = {
                "throughput": run.throughput,
                "figures": figures,
                "load": {k: v for k, v in run.load.items() if k not in ("histories", "results")},
                "orphans": run.orphans,
                "problems": problems,
                "code": code,
            }
            Path(args.json).write_text(json.dumps(raw, indent=1, default=str))
        if code == 0 and not args.keep and args.root is None:
            shutil.rmtree(run.root, ignore_errors=True)
        else:
            print(f"kept {run.root} (d*/logs/daemon.log, activities-*.jsonl, *.log)")
    except BaseException:
        traceback.print_exc()
        code = code or 1
    leave(code)
    return code


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--client-child":
        client_child(sys.argv[2:])
    main()
