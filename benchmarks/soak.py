"""Fault soak: a daemon under steady load and random faults loses nothing. Prints one table.

    cd benchmarks && ../.venv/bin/python soak.py [--smoke | --duration 540] [--seed N] [--external]
                                                 [--kinds K,K] [--json [FILE]]

Not a test: it measures, prints, and exits non-zero when something was lost, duplicated, orphaned or a
daemon did not come back. Everything runs on 127.0.0.1 with free ports and a fresh temporary directory.

The stack
* The daemon: `python -m stigmer_trio up --detach --state-dir S --port P --worker soak_app:spec --no-demo`
  (cwd benchmarks/, so `soak_app` imports). Its worker runs SoakWorkflow: activity -> 0.2 s timer ->
  activity (soak_app.py). `--external`: a bare `temporal server start-dev` of ours (own session, its db in
  the tmp dir), a fault proxy in this process in front of it (`stigmer_trio.testing.open_fault_proxy`),
  and the daemon runs `up --external PROXY` instead (no dev server of its own).
* The load, through the embedding API in this process: `open_runtime(RuntimeConfig(dev_server=None,
  connection=ConnectionConfig(address=<P, or the proxy>), workers=[]))` and 3 start loops at 3 starts/s
  each (open loop: a slow attempt makes its loop skip slots, it does not slow the others). Each attempt
  `rt.start_workflow("SoakWorkflow", id=<unique>)` is classified: OK (acknowledged), rejected fail-fast
  (TemporalUnavailable with `maybe_started` False), rejected in flight (`maybe_started` True: the id is
  "ambiguous" and checked at verification), other error (also checked). Before the runtime has the
  `maybe_started` attribute, an exception raised while the state was not CONNECTED at the call counts as
  fail-fast (the runtime refuses those before any I/O) and any other as in flight.
* The faults, one at a time, at random intervals of 2-6 s (from one injection to the next, and never
  before the previous fault's action finished), kinds drawn uniformly by a seeded `random.Random`:
  dev-server mode: SIGKILL the dev server; SIGSTOP it for 2-5 s then SIGCONT; SIGKILL the daemon then
  `up --detach` (the new daemon adopts the orphaned server); `restart`. External mode: proxy reset;
  proxy blackhole for 2-5 s then heal; SIGKILL the daemon then `up --detach`; `restart`. A process is
  signalled only once proven ours: its record is read from devserver.json / runtime.json, a pidfd is
  opened FIRST, then pid + create time + cmdline are verified (Verdict.SAME) and the pidfd must still be
  unreadable (alive); the signal goes through `signal.pidfd_send_signal`. A target that cannot be proven
  (no record, dead, another process) makes the fault "skipped" (counted, not timed).

How recovery is timed
* A checker task learns which acknowledged workflows closed and their server-side close time
  (`close_time`: wall clock of the same machine), at a bounded cost: every 0.5 s one visibility query
  (`WorkflowType = "SoakWorkflow" AND CloseTime >= <latest close seen - 15 s>`), and every 3 s a
  `describe()` of the 30 oldest still-pending ids (what visibility has not shown yet), both through
  `rt.run_asyncio`. (A first version described every pending id every 0.2 s: once a backlog formed,
  that polling became the server's main load and fed the backlog.) Polling cadence and visibility lag
  do not enter the figures: the close time is the server's.
* recovery of a fault = (the earliest close time of any COMPLETED workflow that closed after the
  injection) - (the injection instant: the signal, the proxy call, or the launch of the `restart`
  command; for SIGSTOP the stop). A workflow whose final workflow task was already in flight when the
  fault landed can therefore give a few milliseconds; and for `restart` the old daemon's graceful stop
  lets in-flight workflows finish first. So the table also gives "new work": the earliest close of a
  workflow whose start attempt began after the injection (it includes the workflow's own ~0.3-0.5 s).
  The targets (p90 <= 3 s, max <= 6 s) are judged on the first figure, as specified. `--json` adds per
  fault: `recovery_after_release_s` (from SIGCONT / heal), `first_ack_s` (the first acknowledged start
  after the fault) and `first_ack_latency_s`; and the event timelines of the 8 slowest workflows.
  The table also times the 0.2 s durable timer (TIMER_STARTED -> TIMER_FIRED, server times) in the
  histories of 40 acknowledged workflows spread over the run.

After the run
* drain: the load stops (it runs 8 s past the last fault), the checker runs until every acknowledged
  workflow was seen closed (bounded: 60 s, 40 s with --smoke); a final `status --json` must say ready;
  then the embedding runtime closes and `stop` stops the daemon.
* verification, in a CHILD process with plain asyncio and a plain temporalio Client (no trio, no
  runtime): in dev-server mode against a bare server of ours started on a COPY of the daemon's
  temporal.db (so durability across all those SIGKILLs is checked too), in external mode against the
  bare server directly. It describes every acknowledged, ambiguous, other-error and fail-fast id, lists
  all SoakWorkflow executions (visibility, after it settled) and counts runs per id; any anomaly is
  re-checked per id with `list_workflows('WorkflowId = "..."')` for up to 15 s. lost = acknowledged but
  missing or not COMPLETED; duplicates = ids with more than one run; "fail-fast ids that exist" must be 0.
* orphans = processes still alive after `stop` (and after our bare server was killed) whose command
  line names the state dir or the daemon's port(s). daemons not back = an `up --detach` / `restart`
  that did not exit 0, or a daemon not ready (runtime.json ready, same verified pid) within 30 s.
  A daemon that exits by itself (e.g. its dev-server restart limit, 5 in 60 s) is counted and its log
  quoted, then brought back with `up --detach` (that `up` is checked like the others).
* cleanup, also on failure or Ctrl-C: `stop`, then SIGKILL (via pidfd) only leftovers proven ours: a
  verified pid-file record, or a process of our uid, created after this soak began, whose command line
  names this run's mkdtemp state dir; then our bare server. The temporary directory is kept when the
  run failed (logs), removed otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import math
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _common import pct  # benchmarks/ is the working directory and sys.path[0]

SELF = Path(__file__).resolve()
HERE = SELF.parent
PYTHON = sys.executable
CLI = [PYTHON, "-m", "stigmer_trio"]
TASK_QUEUE = "soak"
WORKFLOW = "SoakWorkflow"
LOOPS = 3
STARTS_PER_LOOP = 3.0  # per second
FAULT_GAP = (2.0, 6.0)
HOLD = (2.0, 5.0)  # SIGSTOP / blackhole duration
LOAD_TAIL = 8.0  # the load runs this long past the last fault window
READY_LIMIT = 30.0
CHECK_INTERVAL = 0.5  # the checker's visibility query
LIST_OVERLAP = 15.0  # it asks for closes since (latest close seen - this)
SWEEP_INTERVAL = 3.0  # and describes the oldest pending ids this often
SWEEP_IDS = 30
TARGET_P90 = 3.0
TARGET_MAX = 6.0

DEV_KINDS = ("kill-server", "stop-server", "kill-daemon", "restart")
EXT_KINDS = ("proxy-reset", "proxy-blackhole", "kill-daemon", "restart")


# --- small helpers ---------------------------------------------------------------------------------------
def fmt(value: float) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.2f}"


def readable(fd: int) -> bool:
    """A pidfd polls readable once its process has exited."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def open_proven(path: Path) -> tuple[int | None, Any, str]:
    """(pidfd, record, why): a pidfd on the pid file's process, opened first and then proven ours
    (pid + create time + cmdline, and still alive); (None, record, reason) when it cannot be proven."""
    from stigmer_trio._boundary._process import Verdict, verify
    from stigmer_trio._boundary._statefiles import read_pid_file

    record = read_pid_file(path)
    if record is None:
        return None, None, f"no readable {path.name}"
    try:
        pidfd = os.pidfd_open(record.pid)
    except ProcessLookupError:
        return None, record, f"pid {record.pid} of {path.name} is gone"
    try:
        verdict = verify(record)
        if verdict is not Verdict.SAME or readable(pidfd):
            os.close(pidfd)
            why = "exited" if verdict is Verdict.SAME else verdict.name
            return None, record, f"pid {record.pid} of {path.name}: {why}"
    except BaseException:
        os.close(pidfd)
        raise
    return pidfd, record, ""


def send(pidfd: int, sig: signal.Signals) -> bool:
    try:
        signal.pidfd_send_signal(pidfd, sig)
        return True
    except ProcessLookupError:
        return False


def own_leftovers(
    names: Iterable[str], not_before: float, ports: Iterable[int] = (), created_before: float = math.inf
) -> list[Any]:
    """psutil processes (not us, our uid, created at or after `not_before`) whose cmdline names one of
    `names` (substring), or names one of `ports` (an argument equal to it or ending in ':PORT') and was
    created before `created_before` (a port can be reused by someone else once we released it)."""
    import psutil

    names = [n for n in names if n]
    port_args = {str(p) for p in ports}
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "create_time", "uids"]):
        try:
            if proc.pid == os.getpid():
                continue
            cmdline = proc.info["cmdline"] or []
            created = proc.info["create_time"]
            named = any(name in arg for arg in cmdline for name in names) or (
                created < created_before
                and any(arg in port_args or arg.rpartition(":")[2] in port_args for arg in cmdline)
            )
            if not named or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            uids = proc.info["uids"]
            if uids is None or uids.real != os.getuid() or created < not_before - 1.0:
                continue
            found.append(proc)
        except psutil.Error:
            continue
    return found


def kill_process(proc: Any) -> bool:
    """SIGKILL a psutil process through a pidfd opened before re-checking its create time."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        return False
    try:
        import psutil

        try:
            if psutil.Process(proc.pid).create_time() != proc.create_time() or readable(pidfd):
                return False
        except psutil.Error:
            return False
        return send(pidfd, signal.SIGKILL)
    finally:
        os.close(pidfd)


TIMER_SAMPLE = 40  # workflows whose durable timer (soak_app: 0.2 s) is timed from their history
STORM_RESTARTS = 1000  # the dev server's restart limit within 60 s during the soak


# --- the soak (trio) -------------------------------------------------------------------------------------
class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.external: bool = args.external
        self.kinds: tuple[str, ...] = args.kinds or (EXT_KINDS if args.external else DEV_KINDS)
        self.seed: int = args.seed
        self.rng = random.Random(args.seed)
        self.duration: float = args.duration
        self.drain_limit = 40.0 if args.smoke else 60.0
        self.began_wall = time.time()
        self.root = Path(tempfile.mkdtemp(prefix="stigmer-soak-"))
        self.state = self.root / "state"
        self.client_state = self.root / "client"
        from _common import free_port

        self.port = free_port()  # dev-server mode: the daemon's dev server; external: our bare server
        self.proxy_address: str | None = None
        self.server: Any = None  # _common.Server (external mode: the bare one; then the verifier's)
        # results
        self.attempts = 0
        self.classes: Counter[str] = Counter()
        self.acked: dict[str, float] = {}  # id -> wall time of the start attempt
        self.ambiguous: dict[str, float] = {}
        self.failfast: list[str] = []
        self.other: dict[str, str] = {}
        self.other_kinds: Counter[str] = Counter()
        self.pending: set[str] = set()
        self.closed: dict[str, tuple[str, float | None]] = {}  # id -> (status, close time)
        self.faults: list[dict[str, Any]] = []
        self.daemon_events: list[dict[str, Any]] = []
        self.not_back: list[dict[str, Any]] = []
        self.self_exits: list[dict[str, Any]] = []
        self.superseded = 0
        self.ups = 0
        self.final_status: dict[str, Any] | None = None
        self.drain_left = 0
        self.drain_seconds = math.nan
        self.verification: dict[str, Any] = {}
        self.orphans: list[dict[str, Any]] = []
        self.cleanup_notes: list[str] = []
        self.stop_output = ""
        self.stopped_wall = math.inf
        self.load_before = os.getloadavg()
        self.wall = math.nan
        self.loads: list[float] = []
        # coordination
        self.daemon_gen = 0
        self.expected_exit_gen = 0  # daemons of generations <= this one were stopped or killed by us
        self.t0 = time.monotonic()
        self.daemon_lock: Any = None
        self.watch_scope: Any = None
        self.nursery: Any = None
        self.load_done = False

    def task_timeout(self) -> dict[str, float]:
        """`--timeouts S`: the workflow task timeout of the starts (the daemon's worker gets the same
        sticky timeout through SOAK_STICKY_TIMEOUT, see soak_app.py); else the runtime's defaults."""
        return {} if self.args.timeouts is None else {"workflow_task_timeout": self.args.timeouts}

    # --- the CLI --------------------------------------------------------------------------------------
    def up_options(self) -> list[str]:
        where = ["--external", str(self.proxy_address)] if self.external else ["--port", str(self.port)]
        # The dev server's restart limit (5 in 60 s by default: a crash loop gives up) is raised: this is
        # a deliberate storm of ~8 server faults a minute, and giving up is not what it measures.
        config = self.root / "soak.toml"
        if not config.exists():
            config.write_text(f"[dev_server.restart]\nmax_restarts = {STORM_RESTARTS}\nwindow = 60.0\n")
        return [
            "--state-dir", str(self.state), "--config", str(config), *where,
            "--worker", "soak_app:spec", "--no-demo",
        ]  # fmt: skip

    async def cli(self, *args: str, limit: float = 90.0) -> tuple[int, str]:
        import trio

        with trio.move_on_after(limit):
            done = await trio.run_process(
                [*CLI, *args], cwd=HERE, capture_stdout=True, capture_stderr=True, check=False
            )
            out = (done.stdout + done.stderr).decode(errors="replace").strip()
            return done.returncode, out
        return -1, f"`{' '.join(args[:1])}` did not return within {limit:g} s"

    async def bring_up(self, command: str, cause: str) -> bool:
        """`up --detach` or `restart` (the caller holds daemon_lock); then watch the new daemon."""
        args = ["up", "--detach", *self.up_options()] if command == "up" else ["restart", *self.up_options()]
        began = time.monotonic()
        self.ups += 1
        code, out = await self.cli(*args)
        event = {"command": command, "cause": cause, "rc": code, "seconds": time.monotonic() - began}
        self.daemon_events.append(event)
        self.daemon_gen += 1
        if self.watch_scope is not None:
            self.watch_scope.cancel(reason="a new daemon generation")
            self.watch_scope = None
        if code != 0:
            self.not_back.append(
                {
                    **event,
                    "why": f"exit {code}: {out[-600:]}",
                    "log": tail(self.state / "logs" / "daemon.log"),
                }
            )
            return False
        import trio

        scope = trio.CancelScope()
        self.watch_scope = scope
        self.nursery.start_soon(self.watch_daemon, self.daemon_gen, began, scope)
        return True

    async def watch_daemon(self, gen: int, launched: float, scope: Any) -> None:
        """Ready within READY_LIMIT s of the launch (else: not back); then wait for it to exit: an exit
        we did not cause is a self-exit, logged and followed by `up --detach`."""
        import trio

        from stigmer_trio._boundary._statefiles import read_pid_file

        pidfd, record, ready = None, None, False
        with scope:
            try:
                deadline = launched + READY_LIMIT
                while not ready:
                    if pidfd is None:
                        pidfd, record, _why = open_proven(self.state / "runtime.json")
                    if pidfd is not None and readable(pidfd):
                        break  # exited before it was ever ready: reported as a self-exit below
                    data = read_pid_file(self.state / "runtime.json")
                    if pidfd is not None and data is not None and data.pid == record.pid:
                        ready = bool(data.extra.get("ready"))
                    if not ready and time.monotonic() > deadline:
                        self.not_back.append(
                            {
                                "gen": gen,
                                "why": f"not ready within {READY_LIMIT:g} s",
                                "log": tail(self.state / "logs" / "daemon.log"),
                            }
                        )
                        return
                    if not ready:
                        await trio.sleep(0.05)
                await trio.lowlevel.wait_readable(pidfd)
            finally:
                if scope.cancel_called and not ready:
                    self.superseded += 1
                if pidfd is not None:
                    with contextlib.suppress(Exception):
                        trio.lowlevel.notify_closing(pidfd)
                    os.close(pidfd)
        if scope.cancelled_caught or gen <= self.expected_exit_gen:
            return
        # the daemon exited and nobody here asked it to
        self.self_exits.append(
            {
                "gen": gen,
                "pid": record.pid if record else None,
                "t_mono": time.monotonic() - self.t0,
                "log": tail(self.state / "logs" / "daemon.log"),
            }
        )
        if self.load_done:
            return
        async with self.daemon_lock:
            if gen == self.daemon_gen:
                await self.bring_up("up", "self-exit")

    def _was_ready(self, record: Any) -> bool:
        from stigmer_trio._boundary._statefiles import read_pid_file

        data = read_pid_file(self.state / "runtime.json")
        return bool(record and data and data.pid == record.pid and data.extra.get("ready"))

    # --- the load ----------------------------------------------------------------------------------------
    async def start_loop(self, rt: Any, loop: int) -> None:
        import trio

        import stigmer_trio as st

        period = 1.0 / STARTS_PER_LOOP
        slot = trio.current_time() + loop * period / LOOPS
        n = 0
        while not self.load_done:
            await trio.sleep_until(slot)
            slot = max(slot + period, trio.current_time())
            if self.load_done:
                break
            wid = f"soak-{self.seed}-{loop}-{n}"
            n += 1
            self.attempts += 1
            began = time.time()
            connected = rt.state is st.ConnectionState.CONNECTED  # no checkpoint before the call
            try:
                with trio.fail_after(30):
                    await rt.start_workflow(WORKFLOW, wid, id=wid, task_queue=TASK_QUEUE)
            except st.TemporalUnavailable as exc:
                maybe = getattr(exc, "maybe_started", None)
                if maybe is None:
                    maybe = connected
                if maybe:
                    self.classes["in flight"] += 1
                    self.ambiguous[wid] = began
                else:
                    self.classes["fail-fast"] += 1
                    self.failfast.append(wid)
            except trio.TooSlowError:
                self.classes["other"] += 1
                self.other[wid] = "no answer within 30 s"
                self.other_kinds["TooSlowError"] += 1
            except Exception as exc:
                self.classes["other"] += 1
                self.other[wid] = f"{type(exc).__name__}: {exc}"[:300]
                self.other_kinds[type(exc).__name__] += 1
            else:
                self.classes["ok"] += 1
                self.acked[wid] = began
                self.pending.add(wid)

    async def checker(self, rt: Any, stop: Any) -> None:
        """Learn which acknowledged workflows closed, with their server close time, at a bounded cost:
        every CHECK_INTERVAL one visibility query for executions closed since (latest close seen -
        LIST_OVERLAP); every SWEEP_INTERVAL a describe() of the SWEEP_IDS oldest pending ids (whatever
        the query missed: visibility lags behind). Never one RPC per pending id per tick: a backlog
        must not turn the soak's own polling into the server's main load."""
        import trio

        import stigmer_trio as st

        next_sweep = trio.current_time() + SWEEP_INTERVAL
        since = self.began_wall
        while not stop.is_set():
            with trio.move_on_after(CHECK_INTERVAL):
                await stop.wait()
            if not self.pending or rt.state is not st.ConnectionState.CONNECTED:
                continue
            results: list[tuple[str, str | None, float | None]] = []
            try:
                with trio.fail_after(10):
                    results += await rt.run_asyncio(closed_since, since)
                    if trio.current_time() >= next_sweep:
                        next_sweep = trio.current_time() + SWEEP_INTERVAL
                        oldest = sorted(self.pending, key=self.acked.__getitem__)[:SWEEP_IDS]
                        results += await rt.run_asyncio(describe_many, oldest)
            except (st.TemporalUnavailable, trio.TooSlowError):
                pass
            for wid, status, close in results:
                if wid in self.pending and status is not None and status != "RUNNING":
                    self.closed[wid] = (status, close)
                    self.pending.discard(wid)
                    if close is not None:
                        since = max(since, close - LIST_OVERLAP)

    # --- the faults --------------------------------------------------------------------------------------
    async def faults_loop(self, until: float, proxy: Any) -> None:
        import trio

        kinds = self.kinds
        last = time.monotonic()
        while True:
            at = last + self.rng.uniform(*FAULT_GAP)
            kind = self.rng.choice(kinds)
            hold = self.rng.uniform(*HOLD)
            if at >= until:
                return
            await trio.sleep(max(0.0, at - time.monotonic()))
            last = time.monotonic()
            fault: dict[str, Any] = {"n": len(self.faults), "kind": kind, "t_mono": last - self.t0}
            self.faults.append(fault)
            try:
                await self.inject(kind, hold, fault, proxy)
            except Exception as exc:
                fault["skipped"] = f"failed: {type(exc).__name__}: {exc}"
            fault["action_s"] = time.monotonic() - last

    def mark(self, fault: dict[str, Any]) -> None:
        fault["t_wall"] = time.time()
        fault["t_mono"] = time.monotonic() - self.t0

    async def inject(self, kind: str, hold: float, fault: dict[str, Any], proxy: Any) -> None:
        import trio

        if kind in ("kill-server", "stop-server"):
            pidfd, record, why = open_proven(self.state / "devserver.json")
            if pidfd is None:
                fault["skipped"] = why
                return
            fault["pid"] = record.pid
            try:
                sig = signal.SIGKILL if kind == "kill-server" else signal.SIGSTOP
                self.mark(fault)
                if not send(pidfd, sig):
                    fault["skipped"] = "exited before the signal"
                    fault.pop("t_wall")
                    return
                if kind == "stop-server":
                    fault["hold_s"] = hold
                    await trio.sleep(hold)
                    fault["cont"] = send(pidfd, signal.SIGCONT)  # False: the daemon replaced it meanwhile
            finally:
                os.close(pidfd)
        elif kind in ("proxy-reset", "proxy-blackhole"):
            self.mark(fault)
            await maybe_await(proxy.reset() if kind == "proxy-reset" else proxy.blackhole())
            if kind == "proxy-blackhole":
                fault["hold_s"] = hold
                await trio.sleep(hold)
                await maybe_await(proxy.heal())
        elif kind == "kill-daemon":
            async with self.daemon_lock:
                pidfd, record, why = open_proven(self.state / "runtime.json")
                if pidfd is None:
                    fault["skipped"] = why
                    return
                fault["pid"] = record.pid
                try:
                    self.expected_exit_gen = self.daemon_gen
                    if self.watch_scope is not None:
                        self.watch_scope.cancel(reason="killing the daemon on purpose")
                        self.watch_scope = None
                    self.mark(fault)
                    if not send(pidfd, signal.SIGKILL):
                        fault["skipped"] = "exited before the signal"
                        fault.pop("t_wall")
                    with trio.move_on_after(10):
                        await trio.lowlevel.wait_readable(pidfd)
                finally:
                    with contextlib.suppress(Exception):
                        trio.lowlevel.notify_closing(pidfd)
                    os.close(pidfd)
                fault["up_ok"] = await self.bring_up("up", kind)
        elif kind == "restart":
            async with self.daemon_lock:
                self.expected_exit_gen = self.daemon_gen
                if self.watch_scope is not None:
                    self.watch_scope.cancel(reason="restarting the daemon on purpose")
                    self.watch_scope = None
                self.mark(fault)
                fault["up_ok"] = await self.bring_up("restart", kind)
        else:
            raise AssertionError(kind)

    # --- the run -----------------------------------------------------------------------------------------
    async def run(self) -> None:
        """The whole soak; SIGTERM interrupts it like Ctrl-C (then `cleanup` runs)."""
        import trio

        async def on_sigterm() -> None:
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    raise KeyboardInterrupt("SIGTERM")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(on_sigterm)
            await self.soak()
            nursery.cancel_scope.cancel(reason="the soak is over")

    async def soak(self) -> None:
        import trio

        self.daemon_lock = trio.Lock()
        self.t0 = time.monotonic()
        async with contextlib.AsyncExitStack() as stack:
            proxy = None
            if self.external:
                from _common import Server, tcp_accepts
                from stigmer_trio.testing import open_fault_proxy

                self.server = Server(self.root / "bare", tuned=True)
                self.server.port = self.port
                self.server.address = f"127.0.0.1:{self.port}"
                await self.server.spawn()
                with trio.fail_after(30):
                    await poll(lambda: tcp_accepts(self.port), 0.02)
                proxy = await stack.enter_async_context(open_fault_proxy(self.server.address))
                self.proxy_address = proxy.address
            await self.main_phase(proxy)
            code, out = await self.cli("stop", "--state-dir", str(self.state), limit=60)  # proxy still up
            self.stop_output = f"exit {code}: {out}"
            self.stopped_wall = time.time()
        await self.finish_phase()

    async def main_phase(self, proxy: Any) -> None:
        import trio

        import stigmer_trio as st

        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            async with self.daemon_lock:
                if not await self.bring_up("up", "initial"):
                    raise RuntimeError(f"the first `up --detach` failed: {self.not_back[-1]['why']}")
            address = self.proxy_address if self.external else f"127.0.0.1:{self.port}"
            config = st.RuntimeConfig(
                state_dir=self.client_state,
                dev_server=None,
                connection=st.ConnectionConfig(address=str(address), **self.task_timeout()),
                workers=[],
            )
            async with st.open_runtime(config) as rt:
                with trio.fail_after(60):
                    await rt.wait_connected()
                    await poll(lambda: self._was_ready(read_record(self.state / "runtime.json")), 0.05)
                began = time.monotonic()
                fault_until = began + self.duration - LOAD_TAIL
                stop_checker = trio.Event()
                async with trio.open_nursery() as work:
                    work.start_soon(self.checker, rt, stop_checker)
                    work.start_soon(self.sample_load)
                    async with trio.open_nursery() as load:
                        for loop in range(LOOPS):
                            load.start_soon(self.start_loop, rt, loop)
                        await self.faults_loop(fault_until, proxy)
                        await trio.sleep(max(0.0, began + self.duration - time.monotonic()))
                        self.load_done = True
                    drain_began = time.monotonic()
                    with trio.move_on_after(self.drain_limit):
                        await poll(lambda: not self.pending, 0.1)
                    self.drain_seconds = time.monotonic() - drain_began
                    self.drain_left = len(self.pending)
                    stop_checker.set()
                async with self.daemon_lock:
                    self.expected_exit_gen = self.daemon_gen
                    if self.watch_scope is not None:
                        self.watch_scope.cancel(reason="the soak is over")
                        self.watch_scope = None
                give_up = time.monotonic() + READY_LIMIT
                while True:  # the last daemon must say ready (exit 0) within READY_LIMIT s
                    code, out = await self.cli("status", "--json", "--state-dir", str(self.state))
                    try:
                        self.final_status = {"rc": code, **json.loads(out)}
                    except ValueError:
                        self.final_status = {"rc": code, "output": out[-600:]}
                    if code == 0:
                        break
                    if time.monotonic() > give_up:
                        self.not_back.append(
                            {
                                "why": f"final `status` not ready after {READY_LIMIT:g} s: {out[-300:]}",
                                "log": tail(self.state / "logs" / "daemon.log"),
                            }
                        )
                        break
                    await trio.sleep(0.5)
            nursery.cancel_scope.cancel(reason="the soak is over")

    async def sample_load(self) -> None:
        import trio

        while not self.load_done:
            self.loads.append(os.getloadavg()[0])
            await trio.sleep(10)

    async def finish_phase(self) -> None:
        import trio

        from _common import Server, tcp_accepts

        # verification
        if self.external:
            address = self.server.address
        else:
            verify_root = self.root / "verify"
            verify_root.mkdir()
            for db in self.state.glob("temporal.db*"):
                shutil.copy2(db, verify_root / db.name)
            self.server = Server(verify_root, tuned=True)
            await self.server.spawn()
            with trio.fail_after(30):
                await poll(lambda: tcp_accepts(self.server.port), 0.02)
            address = self.server.address
        request, answer, log = self.write_request()
        try:
            done = await trio.run_process(
                [PYTHON, str(SELF), "--verify-child", address, str(request), str(answer)],
                stdout=log,
                stderr=log,
                check=False,
            )
        finally:
            os.close(log)
        self.verification = read_answer(answer, done.returncode, self.root)
        await self.server.kill()
        self.server = None
        # orphans: anything still alive that names the state dir or the daemon's port(s)
        await trio.sleep(0.5)
        ports = [self.port]
        if self.proxy_address:
            ports.append(int(self.proxy_address.rpartition(":")[2]))
        for proc in own_leftovers([str(self.state)], self.began_wall, ports, self.stopped_wall):
            with contextlib.suppress(Exception):
                self.orphans.append({"pid": proc.pid, "cmdline": " ".join(proc.cmdline())[:300]})

    def write_request(self) -> tuple[Path, Path, int]:
        """The verification child's input file, its answer path, and a log fd for its output."""
        request = self.root / "verify-in.json"
        ids = {
            "acked": sorted(self.acked),
            "ambiguous": sorted(self.ambiguous),
            "other": sorted(self.other),
            "failfast": self.failfast,
            "slow": self.slowest(8),
            "sample": sorted(self.acked)[:: max(1, len(self.acked) // TIMER_SAMPLE)][:TIMER_SAMPLE],
        }
        request.write_text(json.dumps(ids))
        log = os.open(self.root / "verify.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return request, self.root / "verify-out.json", log

    def slowest(self, n: int) -> list[str]:
        """The ids of the n acknowledged workflows that took longest from start attempt to close."""
        latency = [
            (close - self.acked[wid], wid)
            for wid, (_status, close) in self.closed.items()
            if close is not None and wid in self.acked
        ]
        return [wid for _, wid in sorted(latency, reverse=True)[:n]]

    # --- cleanup (sync: also after a crash or Ctrl-C) -----------------------------------------------------
    def cleanup(self) -> None:
        from _common import kill_leftovers

        with contextlib.suppress(Exception):
            done = subprocess.run(
                [*CLI, "stop", "--state-dir", str(self.state)],
                cwd=HERE,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if "not running" not in done.stdout:
                self.cleanup_notes.append(f"cleanup `stop`: exit {done.returncode}: {done.stdout.strip()}")
        for name in ("runtime.json", "devserver.json"):
            pidfd, record, _ = open_proven(self.state / name)
            if pidfd is not None:
                send(pidfd, signal.SIGKILL)
                os.close(pidfd)
                self.cleanup_notes.append(f"killed proven {name} pid {record.pid}")
        for proc in own_leftovers([str(self.root)], self.began_wall):  # names this run's mkdtemp dir
            if self.server is not None and self.server.proc is not None and proc.pid == self.server.proc.pid:
                continue  # ours by construction, killed below with its group
            if kill_process(proc):
                self.cleanup_notes.append(f"killed leftover pid {proc.pid}")
        for pid in kill_leftovers():
            self.cleanup_notes.append(f"killed our bare server pid {pid}")

    # --- the report ----------------------------------------------------------------------------------------
    def recoveries(self) -> None:
        completions = sorted(
            (close, self.acked.get(wid, math.inf))
            for wid, (status, close) in self.closed.items()
            if status == "COMPLETED" and close is not None
        )
        for fault in self.faults:
            t = fault.get("t_wall")
            if t is None or fault.get("skipped"):
                continue
            fault["recovery_s"] = next((close - t for close, _ in completions if close > t), None)
            if fault["recovery_s"] is not None and "hold_s" in fault:  # from SIGCONT / heal instead
                fault["recovery_after_release_s"] = fault["recovery_s"] - fault["hold_s"]
            fault["recovery_new_s"] = next(
                (close - t for close, started in completions if close > t and started > t), None
            )
            # where "new work" waited: the first acknowledged start after the fault, and its latency
            first = min(((began, wid) for wid, began in self.acked.items() if began > t), default=None)
            if first is not None:
                fault["first_ack_s"] = first[0] - t
                _status, close = self.closed.get(first[1], ("", None))
                fault["first_ack_latency_s"] = None if close is None else close - first[0]

    def failures(self) -> list[str]:
        v = self.verification
        problems = []
        if v.get("lost"):
            problems.append(f"lost {len(v['lost'])}")
        if v.get("duplicates"):
            problems.append(f"duplicates {len(v['duplicates'])}")
        if self.orphans:
            problems.append(f"orphans {len(self.orphans)}")
        if self.not_back:
            problems.append(f"daemons not back {len(self.not_back)}")
        return problems

    def table(self) -> str:
        self.recoveries()
        v = self.verification
        injected = [f for f in self.faults if not f.get("skipped")]
        skipped = [f for f in self.faults if f.get("skipped")]
        kinds = self.kinds
        rows = [
            "| measurement | count / n | p50 (s) | p90 (s) | max (s) | target | met |",
            "|---|---|---|---|---|---|---|",
        ]

        def count(name: str, value: int, target: str = "", good: bool | None = None) -> None:
            verdict = "" if good is None else ("yes" if good else "**NO**")
            rows.append(f"| {name} | {value} | | | | {target} | {verdict} |")

        def dist(name: str, values: list[float], missing: int, judge: bool) -> None:
            note = f" ({missing} without a completion)" if missing else ""
            p90, top = pct(values, 0.9), max(values) if values else math.nan
            target, verdict = "", ""
            if judge:
                target = f"p90 <= {TARGET_P90:g}, max <= {TARGET_MAX:g}"
                good = bool(values) and not missing and p90 <= TARGET_P90 and top <= TARGET_MAX
                verdict = "yes" if good else "**NO**"
            rows.append(
                f"| {name}{note} | {len(values)} | {fmt(pct(values, 0.5))} | {fmt(p90)} | {fmt(top)} "
                f"| {target} | {verdict} |"
            )

        count("faults injected", len(injected))
        for kind in kinds:
            count(f"  {kind}", sum(1 for f in injected if f["kind"] == kind))
        count("faults skipped (target not proven ours / gone)", len(skipped))
        count("start attempts", self.attempts)
        count("  OK (acknowledged)", self.classes["ok"])
        count("  rejected fail-fast", self.classes["fail-fast"])
        count("  rejected in flight (ambiguous)", self.classes["in flight"])
        count(f"  other errors {dict(self.other_kinds) or ''}", self.classes["other"])
        count("lost (acknowledged, missing or not COMPLETED)", len(v.get("lost", [])), "0", not v.get("lost"))
        count("duplicates (ids with > 1 run)", len(v.get("duplicates", [])), "0", not v.get("duplicates"))
        count("ambiguous ids that started", v.get("ambiguous_started", 0))
        count("ambiguous ids never started", v.get("ambiguous_missing", 0))
        count("other-error ids that started", v.get("other_started", 0))
        count("fail-fast ids that exist", v.get("failfast_started", 0), "0", not v.get("failfast_started"))
        count("orphans after stop", len(self.orphans), "0", not self.orphans)
        count("daemons not back (of ups)", len(self.not_back), "0", not self.not_back)
        count("  `up --detach` / `restart` runs", self.ups)
        count("daemon exits on its own (then revived)", len(self.self_exits))
        count("unclosed after drain", self.drain_left, "0", self.drain_left == 0)
        latencies = [
            close - self.acked[wid]
            for wid, (status, close) in self.closed.items()
            if status == "COMPLETED" and close is not None and wid in self.acked
        ]
        dist("workflow latency: start attempt -> COMPLETED", latencies, 0, False)
        timers = (v or {}).get("timer_s", [])
        dist(f"the 0.2 s timer: started -> fired ({len(timers)} sampled)", timers, 0, False)
        for new in (False, True):
            key = "recovery_new_s" if new else "recovery_s"
            label = "recovery, new work" if new else "recovery: fault -> next COMPLETED"
            values = [f[key] for f in injected if f.get(key) is not None]
            dist(label, values, sum(1 for f in injected if f.get(key) is None), not new)
            for kind in kinds:
                mine = [f for f in injected if f["kind"] == kind]
                values = [f[key] for f in mine if f.get(key) is not None]
                dist(f"  {kind}", values, sum(1 for f in mine if f.get(key) is None), False)
        return "\n".join(rows)

    def raw(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "external": self.external,
            "duration": self.duration,
            "wall_s": self.wall,
            "attempts": self.attempts,
            "classes": dict(self.classes),
            "other_errors": self.other,
            "faults": self.faults,
            "daemon_events": self.daemon_events,
            "not_back": self.not_back,
            "self_exits": self.self_exits,
            "superseded_ready_checks": self.superseded,
            "final_status": self.final_status,
            "drain_s": self.drain_seconds,
            "drain_left": self.drain_left,
            "verification": self.verification,
            "orphans": self.orphans,
            "cleanup": self.cleanup_notes,
            "stop": self.stop_output,
            "root": str(self.root),
        }


def read_answer(answer: Path, returncode: int, root: Path) -> dict[str, Any]:
    if returncode != 0 or not answer.exists():
        raise RuntimeError(f"verification child failed (rc {returncode}); see {root}/verify.log")
    result: dict[str, Any] = json.loads(answer.read_text())
    return result


async def poll(predicate: Callable[[], Any], interval: float) -> None:
    """Return once `predicate()` (or what it returns, awaited when awaitable) is true."""
    import trio

    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return
        await trio.sleep(interval)


def read_record(path: Path) -> Any:
    from stigmer_trio._boundary._statefiles import read_pid_file

    return read_pid_file(path)


async def maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


# --- asyncio side: describe through the runtime, and the verification child --------------------------------
async def closed_since(client: Any, since: float) -> list[tuple[str, str | None, float | None]]:
    """(id, status name, close time) of every SoakWorkflow execution closed at or after `since`."""
    stamp = datetime.fromtimestamp(since, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    query = f'WorkflowType = "{WORKFLOW}" AND CloseTime >= "{stamp}"'
    return [
        (w.id, w.status.name if w.status else None, w.close_time.timestamp() if w.close_time else None)
        async for w in client.list_workflows(query, page_size=1000, rpc_timeout=timedelta(seconds=5))
    ]


async def describe_many(client: Any, ids: list[str]) -> list[tuple[str, str | None, float | None]]:
    """(id, status name or None when unknown, close time or None) for each id, concurrently."""

    async def one(wid: str) -> tuple[str, str | None, float | None]:
        try:
            desc = await client.get_workflow_handle(wid).describe(rpc_timeout=timedelta(seconds=2))
        except Exception:
            return wid, None, None
        status = desc.status.name if desc.status is not None else None
        close = desc.close_time.timestamp() if desc.close_time is not None else None
        return wid, status, close

    return list(await asyncio.gather(*(one(wid) for wid in ids)))


async def verify_main(address: str, ids: dict[str, list[str]]) -> dict[str, Any]:
    from temporalio.api.enums.v1 import EventType
    from temporalio.client import Client
    from temporalio.service import RPCError, RPCStatusCode

    deadline = time.monotonic() + 60
    while True:
        try:
            client = await asyncio.wait_for(Client.connect(address), 5)
            await client.count_workflows()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
    limit = asyncio.Semaphore(32)

    async def describe(wid: str) -> str | None:
        async with limit:
            for _ in range(20):
                try:
                    desc = await client.get_workflow_handle(wid).describe()
                    return desc.status.name if desc.status is not None else "UNKNOWN"
                except RPCError as exc:
                    if exc.status == RPCStatusCode.NOT_FOUND:
                        return None
                    await asyncio.sleep(0.5)
            raise RuntimeError(f"describe {wid} kept failing")

    async def runs_of(wid: str) -> list[str]:
        async with limit:
            return [
                w.status.name if w.status else "UNKNOWN"
                async for w in client.list_workflows(f'WorkflowId = "{wid}"')
            ]

    everything = [*ids["acked"], *ids["ambiguous"], *ids["other"], *ids["failfast"]]
    statuses = dict(zip(everything, await asyncio.gather(*(describe(w) for w in everything)), strict=True))
    # visibility settles: the count of our executions stops changing for 1 s
    query = f'WorkflowType = "{WORKFLOW}"'
    last, stable_since = -1, time.monotonic()
    settle_deadline = time.monotonic() + 20
    while time.monotonic() < settle_deadline:
        now = (await client.count_workflows(query)).count
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= 1.0:
            break
        await asyncio.sleep(0.2)
    runs: dict[str, list[str]] = {}
    async for w in client.list_workflows(query, page_size=1000):
        runs.setdefault(w.id, []).append(w.status.name if w.status else "UNKNOWN")

    def good(wid: str) -> bool:
        return statuses.get(wid) == "COMPLETED" and runs.get(wid) == ["COMPLETED"]

    suspects = [w for w in ids["acked"] if not good(w)]
    recheck_deadline = time.monotonic() + 15
    while suspects and time.monotonic() < recheck_deadline:
        await asyncio.sleep(1.0)
        for wid, found in zip(suspects, await asyncio.gather(*(runs_of(w) for w in suspects)), strict=True):
            runs[wid] = found
        suspects = [w for w in suspects if not good(w)]
    for wid in [w for w, r in runs.items() if len(r) > 1]:
        runs[wid] = await runs_of(wid)  # confirm a duplicate per id
    lost = [
        {"id": w, "describe": statuses.get(w), "runs": runs.get(w, [])}
        for w in ids["acked"]
        if not (statuses.get(w) == "COMPLETED" and runs.get(w, []) and all(s == "COMPLETED" for s in runs[w]))
    ]
    known = set(everything)
    timelines = {}
    for wid in ids.get("slow", []):  # where the slowest workflows waited: their history, event by event
        events = [e async for e in client.get_workflow_handle(wid).fetch_history_events()]
        if events:
            first = events[0].event_time.ToDatetime().timestamp()
            timelines[wid] = [
                (round(e.event_time.ToDatetime().timestamp() - first, 3), EventType.Name(e.event_type))
                for e in events
            ]
    timer_s = []
    for wid in ids.get("sample", []):  # the durable timer: TIMER_STARTED -> TIMER_FIRED, server times
        started = fired = None
        async for e in client.get_workflow_handle(wid).fetch_history_events():
            if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
                started = e.event_time.ToDatetime().timestamp()
            elif e.event_type == EventType.EVENT_TYPE_TIMER_FIRED:
                fired = e.event_time.ToDatetime().timestamp()
        if started is not None and fired is not None:
            timer_s.append(round(fired - started, 4))
    result = {
        "address": address,
        "acked": len(ids["acked"]),
        "lost": lost,
        "duplicates": [{"id": w, "runs": r} for w, r in runs.items() if len(r) > 1],
        "ambiguous_started": sum(1 for w in ids["ambiguous"] if statuses.get(w) is not None),
        "ambiguous_missing": sum(1 for w in ids["ambiguous"] if statuses.get(w) is None),
        "ambiguous_statuses": dict(Counter(str(statuses.get(w)) for w in ids["ambiguous"])),
        "other_started": sum(1 for w in ids["other"] if statuses.get(w) is not None),
        "failfast_started": sum(1 for w in ids["failfast"] if statuses.get(w) is not None),
        "failfast_started_ids": [w for w in ids["failfast"] if statuses.get(w) is not None][:20],
        "listed_executions": sum(len(r) for r in runs.values()),
        "unknown_ids": sorted(set(runs) - known)[:20],
        "slow_timelines": timelines,
        "timer_s": timer_s,
    }
    return result


def verify_child(argv: list[str]) -> None:
    code = 0
    try:
        ids = json.loads(Path(argv[1]).read_text())
        result = asyncio.run(verify_main(argv[0], ids))
        Path(argv[2]).write_text(json.dumps(result))
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the SDK can crash the interpreter at exit


# --- entry point -------------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=540.0, help="seconds of load and faults (540)")
    parser.add_argument("--smoke", action="store_true", help="short run: 90 s (>= 15 faults, < 3 min wall)")
    parser.add_argument("--external", action="store_true", help="external mode through the fault proxy")
    parser.add_argument("--seed", type=int, default=1, help="the fault sequence's random seed (1)")
    parser.add_argument("--json", nargs="?", const="-", metavar="FILE", help="dump raw results (- = stdout)")
    parser.add_argument(
        "--timeouts",
        type=float,
        metavar="S",
        help="sticky and workflow task timeouts (default: the runtime's; 10 = the SDK's, for a before/after)",
    )
    parser.add_argument(
        "--kinds",
        type=lambda text: tuple(text.split(",")),
        metavar="K,K",
        help="only these fault kinds, comma-separated (default: all of the mode's)",
    )
    args = parser.parse_args()
    if args.kinds is not None:
        allowed = EXT_KINDS if args.external else DEV_KINDS
        wrong = [k for k in args.kinds if k not in allowed]
        if wrong or not args.kinds:
            parser.error(f"--kinds: {','.join(wrong) or '(none)'} not among {','.join(allowed)}")
    if args.timeouts is not None:
        if not args.timeouts > 0:
            parser.error(f"--timeouts must be > 0, got {args.timeouts!r}")
        os.environ["SOAK_STICKY_TIMEOUT"] = str(args.timeouts)  # read by soak_app.py in the daemon
    if args.smoke and "--duration" not in sys.argv:
        args.duration = 90.0
    if args.duration < LOAD_TAIL + 10:
        parser.error(f"--duration must be >= {LOAD_TAIL + 10:g}")

    import trio

    from _common import command_line, leave, protect_stdout

    protect_stdout()
    soak = Soak(args)
    code = 1
    began = time.monotonic()
    try:
        trio.run(soak.run)
        code = 0
    except BaseException:
        traceback.print_exc()
        soak.cleanup_notes.append("the soak crashed or was interrupted: see the traceback on stderr")
    finally:
        soak.cleanup()
    soak.wall = time.monotonic() - began
    try:
        mode = "external (bare server + fault proxy)" if soak.external else "dev server (supervised)"
        timeouts = "the runtime's defaults" if args.timeouts is None else f"{args.timeouts:g} s"
        print(f"\nSoak, {mode}: {command_line()}")
        print(
            f"duration {soak.duration:g} s, seed {soak.seed}, wall {soak.wall:.1f} s; {LOOPS} loops x "
            f"{STARTS_PER_LOOP:g} starts/s; faults every {FAULT_GAP[0]:g}-{FAULT_GAP[1]:g} s; sticky and "
            f"workflow task timeouts {timeouts}\n"
        )
        print(soak.table())
        print()
        loads = ", ".join(f"{x:.1f}" for x in soak.loads)
        print(
            f"{os.cpu_count()} cores; load average (1 min) {soak.load_before[0]:.2f} before, "
            f"{os.getloadavg()[0]:.2f} after, during: {loads} (other engineers' tests share this machine)."
        )
        print(
            f"drain {fmt(soak.drain_seconds)} s; final status: "
            f"{json.dumps({k: (soak.final_status or {}).get(k) for k in ('rc', 'ready')})}; "
            f"stop: {soak.stop_output[:200]}; ready checks superseded by the next fault: {soak.superseded}"
        )
        v = soak.verification
        if v:
            print(
                f"verified {v.get('acked')} acknowledged ids against {v.get('address')}; listed executions "
                f"{v.get('listed_executions')}; ambiguous statuses {v.get('ambiguous_statuses')}; "
                f"unknown ids {v.get('unknown_ids')}"
            )
            for item in v.get("lost", [])[:10]:
                print(f"  LOST {item}")
            for item in v.get("duplicates", [])[:10]:
                print(f"  DUPLICATE {item}")
        for item in soak.not_back:
            print(f"DAEMON NOT BACK: {item.get('why')}\n  daemon.log ends:\n{indent(item.get('log', ''))}")
        for item in soak.self_exits:
            print(f"DAEMON EXITED ON ITS OWN (gen {item['gen']}, pid {item['pid']}):\n{indent(item['log'])}")
        for item in soak.orphans:
            print(f"ORPHAN pid {item['pid']}: {item['cmdline']}")
        for note in soak.cleanup_notes:
            print(f"cleanup: {note}")
        problems = soak.failures()
        if code == 0 and problems:
            code = 1
        print(f"verdict: {'FAIL: ' + ', '.join(problems) if problems else ('OK' if code == 0 else 'ERROR')}")
        if args.json:
            text = json.dumps(soak.raw(), indent=1, default=str)
            if args.json == "-":
                print(text)
            else:
                Path(args.json).write_text(text)
        if code == 0:
            shutil.rmtree(soak.root, ignore_errors=True)
        else:
            print(f"kept {soak.root} (logs: state/logs/daemon.log, state/logs/devserver.log, verify.log)")
    except BaseException:
        traceback.print_exc()
        code = code or 1
    leave(code)
    return code


def indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--verify-child":
        verify_child(sys.argv[2:])
    main()
