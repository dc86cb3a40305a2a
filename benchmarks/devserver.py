"""Dev-server runtime latency through the real CLI and the real `temporal` binary: prints a table.

    .venv/bin/python benchmarks/devserver.py [--rounds N] [--smoke]

Not a test. Real clock, a fresh temporary state dir and a free 127.0.0.1 port; every process it starts
is stopped in a `finally` (the CLI's `stop`, then a sweep for anything whose command line names the
temporary directory). Measurements (wall times, time.perf_counter):

1. cold `up --detach` -> ready: the whole CLI command, no daemon running (fresh db once, then existing db)
2. `up` while running (hot path), 3. `status --json` (hot path)
4. `stop` -> daemon and dev server exited (pidfds opened before `stop`; exit = pidfd readable)
5. SIGKILL of the dev server -> the daemon noticed: devserver.json removed or runtime.json's
   status.dev_server.pid null (inotify on the state dir; wake-up resolution ~0.1 ms)
6. SIGKILL -> healthy again: runtime.json ready with a NEW server pid AND our own probe (TCP accept, then
   temporalio Client.connect + check_health) succeeds
7. the floor, in the same run: the bare binary on a copy of the same db with the runtime's settings
   (`_common.start_dev_command` + `runtime_settings()`), spawn -> the same probe OK, and SIGKILL of the
   previous one -> reaped -> respawn -> probe OK; kill -> healthy is also printed as a ratio to it.

`--smoke` (CI): one round of each (~15 s); exits non-zero when anything breaks or a measurement got no
samples. Timing targets are printed (met / NO), never turned into the exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
from temporalio.client import Client

from _common import (
    Table,
    free_port,
    kill_popen,
    pct,
    popen_server,
    require,
    runtime_settings,
    start_dev_command,
)

PROBE_POLL = 0.001  # s between probe attempts (a refused TCP connect costs ~0.05 ms)
PROBE_TIMEOUT = 1.0  # s for one Client.connect / check_health
STABLE = 1.2  # s a server runs before it is killed: > reset_after, so every restart is attempt 1
CLI = [sys.executable, "-m", "stigmer_trio"]
CONFIG = """\
[dev_server]
stop_timeout = 5.0
ui = false

[dev_server.restart]
initial_delay = 0.0
jitter = 0.0
reset_after = 1.0
max_restarts = 1000
window = 60.0
"""

KILL_DETECTED = "SIGKILL server -> crash detected"
HEALTHY = "SIGKILL -> healthy again (ready + own probe OK)"
READYZ = "SIGKILL -> /readyz 200 again (polled every 10 ms)"
READYZ_POLL = 0.01  # s between /readyz requests after a SIGKILL (a probe's view, e.g. Kubernetes')
FLOOR_KILL = "FLOOR bare binary: SIGKILL -> reaped -> respawn -> probe OK"
FLOOR_BOOT = "FLOOR bare binary: spawn -> probe OK, db closed cleanly"
COLD = "cold `up --detach` -> ready, existing db"
# The daemon's start-up phases, as its daemon.log names them, in order
COLD_PHASES = (
    "daemon started",
    "lock taken",
    "server spawned",
    "imports done",
    "server listening",
    "server ready",
    "connected",
    "workers polling",
    "ready",
)
IMPORTS = "import stigmer_trio._boundary._temporal, stigmer_trio._tree._build"
IMPORTS_FLOOR = f"interpreter + the daemon's imports: python -c '{IMPORTS}'"
IMPORTS_FLOOR_ROW = f"FLOOR {IMPORTS_FLOOR}"
FLOOR_SPAWN = "  phase: spawn -> probe OK, after a SIGKILL"
MEASURED = (  # a run without samples in any of these is broken
    "cold `up --detach` -> ready, fresh db",
    "cold `up --detach` -> ready, existing db",
    "`up --detach` while running (hot path)",
    "`status --json` (running)",
    "`stop` -> daemon and server exited",
    KILL_DETECTED,
    HEALTHY,
    READYZ,
    FLOOR_KILL,
)

# inotify(7) event bits
IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x8, 0x40, 0x80, 0x100, 0x200
IN_MASK = IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class DirWatch:
    """Wakes on changes in one directory: inotify through ctypes, else a 0.2 ms sleep loop."""

    def __init__(self, directory: Path) -> None:
        self.fd: int | None = None
        self.late = 0  # predicates found true by the safety-net tick instead of an event
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd >= 0:
                if libc.inotify_add_watch(fd, os.fsencode(directory), IN_MASK) >= 0:
                    self.fd = fd
                else:
                    os.close(fd)
        except (OSError, AttributeError):
            self.fd = None
        self.method = (
            "inotify on the state dir (wake-up ~0.1 ms)"
            if self.fd is not None
            else "poll loop, 0.2 ms sleeps (inotify unavailable)"
        )

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _drain(self) -> bool:
        assert self.fd is not None
        got = False
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return got
            if not chunk:
                return got
            got = True

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> float:
        """perf_counter() at the wake-up after which `predicate` first held."""
        deadline = time.perf_counter() + timeout
        now = time.perf_counter()
        poller = None
        if self.fd is not None:
            poller = select.poll()
            poller.register(self.fd, select.POLLIN)
        event = True
        while not predicate():
            if now > deadline:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
            if poller is not None:
                ready = poller.poll(50)  # safety-net tick, should never be what wakes us
                now = time.perf_counter()
                event = bool(ready) and self._drain()
            else:
                time.sleep(0.0002)
                now = time.perf_counter()
        if not event:
            self.late += 1
        return now


def wait_exits(pidfds: dict[str, int], timeout: float) -> dict[str, float]:
    """perf_counter() at which each pidfd became readable (its process exited)."""
    poller = select.poll()
    by_fd = {fd: name for name, fd in pidfds.items()}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    done: dict[str, float] = {}
    deadline = time.perf_counter() + timeout
    while len(done) < len(by_fd):
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise TimeoutError(f"processes still alive after {timeout:g} s: {set(pidfds) - set(done)}")
        ready = poller.poll(max(1, int(remaining * 1000)))
        now = time.perf_counter()
        for fd, _ in ready:
            done.setdefault(by_fd[fd], now)
            poller.unregister(fd)
    return done


async def _health_once(address: str) -> bool:
    try:
        client = await asyncio.wait_for(Client.connect(address), PROBE_TIMEOUT)
        return bool(await client.service_client.check_health(timeout=timedelta(seconds=PROBE_TIMEOUT)))
    except Exception:
        return False


def readyz(url: str) -> int:
    """GET {url}/readyz over a plain socket (HTTP/1.0): the status code, 0 when it does not answer."""
    host, _, port = url.removeprefix("http://").rstrip("/").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT) as sock:
            sock.sendall(f"GET /readyz HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            head = sock.recv(64)
    except OSError:
        return 0
    match = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return int(match[1]) if match else 0


class ReadyzPoller:
    """Polls /readyz every READYZ_POLL s in a thread from start() on; `ready_at`: perf_counter() of the
    first 200 that followed a non-200 (the daemon noticed the kill, then was ready again)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ready_at: float | None = None
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="readyz", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        seen_down = False
        while not self._stop.is_set():
            code = readyz(self.url)
            now = time.perf_counter()
            self.polls += 1
            if code != 200:
                seen_down = True
            elif seen_down:
                self.ready_at = now
                return
            self._stop.wait(READYZ_POLL)

    def join(self, timeout: float) -> float:
        self._thread.join(timeout)
        self._stop.set()
        if self.ready_at is None:
            raise TimeoutError(f"{self.url}/readyz not 200 again within {timeout:g} s")
        return self.ready_at


def _tcp_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT):
            return True
    except OSError:
        return False


class Bench:
    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.root = Path(tempfile.mkdtemp(prefix="stigmer-bench-"))
        self.state = self.root / "state"
        self.state.mkdir(mode=0o700)
        self.config = self.root / "config.toml"
        self.config.write_text(CONFIG)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self.watch = DirWatch(self.state)
        self.bare: list[subprocess.Popen[bytes]] = []
        self.samples: dict[str, list[float]] = {}
        self.notes: list[str] = []
        self.load_before = os.getloadavg()
        self.bytecode_unset = False  # PYTHONDONTWRITEBYTECODE was taken out of the environment (main)

    # --- helpers -----------------------------------------------------------------------------------
    def add(self, name: str, seconds: float) -> None:
        self.samples.setdefault(name, []).append(seconds)

    def cli(self, *args: str, expect: int = 0) -> tuple[float, str]:
        began = time.perf_counter()
        done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=240, check=False)
        elapsed = time.perf_counter() - began
        if done.returncode != expect:
            raise RuntimeError(
                f"`{' '.join(args)}` exited {done.returncode} (wanted {expect}): "
                f"{done.stdout.strip()} {done.stderr.strip()}"
            )
        return elapsed, done.stdout

    def up_args(self) -> list[str]:
        state, port, config = str(self.state), str(self.port), str(self.config)
        return ["up", "--detach", "--state-dir", state, "--port", port, "--config", config]

    def runtime(self) -> dict[str, Any]:
        return read_json(self.state / "runtime.json") or {}

    def server_of_runtime(self, runtime: dict[str, Any] | None = None) -> dict[str, Any]:
        """runtime.json's `status.dev_server` (the daemon's last status() document), or {}."""
        status = (self.runtime() if runtime is None else runtime).get("status")
        server = status.get("dev_server") if isinstance(status, dict) else None
        return server if isinstance(server, dict) else {}

    def log_size(self) -> int:
        try:
            return (self.state / "logs" / "daemon.log").stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int) -> str:
        with open(self.state / "logs" / "daemon.log", "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def probe_until_healthy(self, timeout: float = 30.0) -> float:
        deadline = time.perf_counter() + timeout
        while True:
            if _tcp_accepts(self.port) and self.loop.run_until_complete(_health_once(self.address)):
                return time.perf_counter()
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{self.address} not healthy within {timeout:g} s")
            time.sleep(PROBE_POLL)

    # --- 1-4: the CLI --------------------------------------------------------------------------------
    def cold_up(self, label: str) -> None:
        offset = self.log_size()
        launched = time.monotonic()  # CLOCK_MONOTONIC: the daemon's phases are on the same clock
        elapsed, out = self.cli(*self.up_args())
        if not out.startswith("running:"):
            raise RuntimeError(f"cold up printed {out!r}")
        self.add(label, elapsed)
        line = re.search(
            r"start-up phases \(ms from `up`, at monotonic ([\d.]+) s\): (.*)", self.log_since(offset)
        )
        if line is None or not label.endswith("existing db"):
            return
        origin = float(line[1]) - launched  # the CLI process started -> its `up` command began
        marks = {
            name: origin + float(ms) / 1000
            for name, ms in re.findall(r"([a-z.,` ]+?) (\d+)(?:, |$)", line[2])
        }
        for name in COLD_PHASES:
            if name in marks:
                self.add(f"  phase: CLI started -> {name}", marks[name])
        self.add("  phase: CLI started -> `up` began (interpreter start, CLI imports)", origin)

    def import_floor(self) -> None:
        """The floors of a cold start, in the same run: an interpreter start, and one that also imports
        what the daemon imports (trio, the tree, temporalio through the bridge)."""
        for what, code in (("interpreter start: python -c pass", "pass"), (IMPORTS_FLOOR, IMPORTS)):
            began = time.perf_counter()
            subprocess.run([sys.executable, "-P", "-c", code], check=True)
            self.add(f"FLOOR {what}", time.perf_counter() - began)

    def hot_paths(self) -> None:
        elapsed, out = self.cli(*self.up_args())
        if not out.startswith("already running"):
            raise RuntimeError(f"hot up printed {out!r}")
        self.add("`up --detach` while running (hot path)", elapsed)
        elapsed, out = self.cli("status", "--json", "--state-dir", str(self.state))
        report = json.loads(out)
        if not (report["running"] and report["ready"]):
            raise RuntimeError(f"status says {report}")
        self.add("`status --json` (running)", elapsed)

    def stop(self, record: bool = True) -> None:
        pids = {"daemon": self.runtime().get("pid"), "server": self.server_of_runtime().get("pid")}
        pidfds: dict[str, int] = {}
        for name, pid in pids.items():
            if isinstance(pid, int):
                with contextlib.suppress(ProcessLookupError):
                    pidfds[name] = os.pidfd_open(pid)
        try:
            began = time.perf_counter()
            proc = subprocess.Popen(
                [*CLI, "stop", "--state-dir", str(self.state)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            pidfds["stop"] = os.pidfd_open(proc.pid)
            exits = wait_exits(pidfds, 60.0)
            out, err = proc.communicate(timeout=60)
        finally:
            for fd in pidfds.values():
                os.close(fd)
        if proc.returncode != 0:
            raise RuntimeError(f"stop exited {proc.returncode}: {out.decode()} {err.decode()}")
        if record:
            self.add("`stop` command returns", exits["stop"] - began)
            gone = max(exits.get("daemon", began), exits.get("server", began))
            self.add("`stop` -> daemon and server exited", gone - began)
        for name, pid in pids.items():  # exited; now check nobody left a zombie behind for long
            if isinstance(pid, int) and name in pidfds and not self._reaped(pid, 2.0):
                self.notes.append(f"{name} pid {pid} still a zombie 2 s after `stop`")

    @staticmethod
    def _reaped(pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    return True  # pid reused already
            except psutil.NoSuchProcess:
                return True
            time.sleep(0.001)
        return False

    # --- 5-6: SIGKILL of the supervised server -------------------------------------------------------
    def kill_round(self) -> None:
        time.sleep(STABLE)
        record = read_json(self.state / "devserver.json")
        server = self.server_of_runtime()
        old = server.get("pid")
        if record is None or old is None or record.get("pid") != old or not self.runtime().get("ready"):
            raise RuntimeError(
                f"not ready before the kill: devserver.json {record}, runtime.json status.dev_server "
                f"{server} (runtime.json keys: {sorted(self.runtime())})"
            )
        restarts = int(server.get("restarts", 0))
        offset = self.log_size()
        devserver_json = self.state / "devserver.json"

        def detected() -> bool:
            return not devserver_json.exists() or self.server_of_runtime().get("pid") is None

        def scheduled() -> bool:
            return int(self.server_of_runtime().get("restarts", 0)) > restarts

        def ready() -> bool:
            runtime = self.runtime()
            pid = self.server_of_runtime(runtime).get("pid")
            return bool(runtime.get("ready")) and pid not in (None, old)

        url = self.runtime().get("status", {}).get("http", {}).get("url")
        if not isinstance(url, str) or readyz(url) != 200:
            raise RuntimeError(f"the daemon's endpoint {url!r} does not say ready before the kill")
        poller = ReadyzPoller(url)
        killed = time.perf_counter()
        os.kill(old, signal.SIGKILL)
        poller.start()
        t_detect = self.watch.wait_until(detected, 30.0, "the crash to be noticed")
        t_sched = self.watch.wait_until(scheduled, 30.0, "the restart to be scheduled")
        t_ready = self.watch.wait_until(ready, 30.0, "runtime.json ready with a new pid")
        t_healthy = self.probe_until_healthy()
        t_readyz = poller.join(30.0)
        self.add(READYZ, t_readyz - killed)
        self.add(KILL_DETECTED, t_detect - killed)
        self.add("SIGKILL -> restart scheduled (runtime.json restarts+1)", t_sched - killed)
        self.add("SIGKILL -> runtime.json ready, new pid", t_ready - killed)
        self.add(HEALTHY, t_healthy - killed)
        match = re.search(
            r"dev server started at \S+ \(pid \d+\), ready after ([\d.]+) s", self.log_since(offset)
        )
        if match:
            self.add("  phase: respawned server spawn -> ready (daemon.log)", float(match[1]))
        self.add("  phase: runtime.json ready -> own probe OK", t_healthy - t_ready)

    # --- 7: the floor ---------------------------------------------------------------------------------
    def floor(self) -> None:
        floor_dir = self.root / "floor"
        (floor_dir / "home").mkdir(parents=True, mode=0o700)
        for db in self.state.glob("temporal.db*"):
            shutil.copy2(db, floor_dir / db.name)
        dynamic_config, sqlite_pragmas = runtime_settings()
        command = start_dev_command(
            port=self.port,
            http_port=free_port(),
            metrics_port=free_port(),
            db=floor_dir / "temporal.db",
            dynamic_config=dynamic_config,
            sqlite_pragmas=sqlite_pragmas,
        )
        previous: subprocess.Popen[bytes] | None = None
        for _ in range(self.rounds + 1):
            killed = 0.0
            if previous is not None:
                time.sleep(STABLE)
                killed = time.perf_counter()
                kill_popen(previous)  # SIGKILL its group, reaped
                self.bare.remove(previous)
            spawned = time.perf_counter()
            proc = popen_server(command, floor_dir / "home", floor_dir / "server.log")
            self.bare.append(proc)
            healthy = self.probe_until_healthy()
            if previous is None:
                self.add(FLOOR_BOOT, healthy - spawned)
            else:
                self.add(FLOOR_KILL, healthy - killed)
                self.add("  phase: SIGKILL -> reaped", spawned - killed)
                self.add(FLOOR_SPAWN, healthy - spawned)
            previous = proc

    # --- the run ------------------------------------------------------------------------------------
    def run(self, only: str | None = None) -> None:
        self.cold_up("cold `up --detach` -> ready, fresh db")
        self.hot_paths()
        self.stop()
        if only != "kill":
            for _ in range(self.rounds):
                self.cold_up("cold `up --detach` -> ready, existing db")
                self.hot_paths()
                self.stop()
            for _ in range(self.rounds):
                self.import_floor()
        if only != "cold":
            self.cli(*self.up_args())
            for _ in range(self.rounds):
                self.kill_round()
            self.stop(record=False)
        self.floor()

    def cleanup(self) -> None:
        """Stop everything this run started; never raises. Ctrl-C / SIGTERM are ignored meanwhile."""
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        for proc in self.bare:
            kill_popen(proc)
        try:
            subprocess.run(
                [*CLI, "stop", "--state-dir", str(self.state)], capture_output=True, timeout=60, check=False
            )
        except subprocess.TimeoutExpired:
            print("cleanup: `stop` timed out", file=sys.stderr)
        for _ in range(3):  # again: a daemon killed mid-start may have spawned a server meanwhile
            leftovers = []
            for proc in psutil.process_iter(["pid", "cmdline"]):
                cmdline = proc.info["cmdline"] or []
                if proc.pid != os.getpid() and any(str(self.root) in arg for arg in cmdline):
                    leftovers.append(proc)
                    with contextlib.suppress(psutil.Error):
                        proc.kill()
            if not leftovers:
                break
            psutil.wait_procs(leftovers, timeout=5)
            for proc in leftovers:
                print(f"cleanup: killed leftover pid {proc.pid}", file=sys.stderr)
            time.sleep(0.2)
        self.watch.close()
        with contextlib.suppress(RuntimeError):
            self.loop.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # --- the table ----------------------------------------------------------------------------------
    def table(self) -> str:
        def ms(name: str) -> list[float]:
            return [s * 1000 for s in self.samples.get(name, [])]

        def p50(name: str) -> float:
            return pct(ms(name), 0.5)

        bound = 1.25 * p50(FLOOR_KILL)
        targets: dict[str, tuple[str, Callable[[list[float]], bool]]] = {
            "`up --detach` while running (hot path)": ("p50 <= 100", lambda v: pct(v, 0.5) <= 100),
            "`status --json` (running)": ("p50 <= 100", lambda v: pct(v, 0.5) <= 100),
            "`stop` -> daemon and server exited": ("p50 <= 1500", lambda v: pct(v, 0.5) <= 1500),
            KILL_DETECTED: ("p90 <= 20", lambda v: pct(v, 0.9) <= 20),
            COLD: ("p50 <= 500", lambda v: pct(v, 0.5) <= 500),
        }
        if FLOOR_KILL in self.samples:
            targets[READYZ] = (f"p50 <= 1.25 x floor = {bound:.0f}", lambda v: pct(v, 0.5) <= bound)
        table = Table("ms")
        for name in self.samples:
            target, check = targets.get(name, ("", None))
            table.row(name, ms(name), target, None if check is None else check(ms(name)))
        if COLD in self.samples and FLOOR_BOOT in self.samples and IMPORTS_FLOOR_ROW in self.samples:
            # The floor of a cold start: the server's boot overlapped with one interpreter start and
            # the daemon's imports; whichever is longer (each median, measured in this run).
            floor = max(p50(FLOOR_BOOT), p50(IMPORTS_FLOOR_ROW))
            table.row("FLOOR cold start: max(server boot, interpreter + imports)", [floor], "", None)
            table.ratios("ratio: cold `up --detach` -> ready / FLOOR cold start", ms(COLD), [floor])
        if FLOOR_KILL in self.samples and READYZ in self.samples:
            table.ratios(
                "ratio: SIGKILL -> /readyz 200 / FLOOR SIGKILL -> respawn -> probe OK",
                ms(READYZ),
                ms(FLOOR_KILL),
                "p50 <= 1.25x",
                p50(READYZ) / p50(FLOOR_KILL) <= 1.25,
            )
        if FLOOR_KILL in self.samples and HEALTHY in self.samples:
            table.ratios(
                "ratio: SIGKILL -> healthy (runtime.json) / FLOOR SIGKILL -> respawn -> probe OK",
                ms(HEALTHY),
                ms(FLOOR_KILL),
            )
            table.ratios(
                "ratio: SIGKILL -> healthy / FLOOR spawn -> probe OK alone", ms(HEALTHY), ms(FLOOR_SPAWN)
            )
        table.text(
            "reference: a 5 s polling design: kill -> detect; restart", ["", "2810; < 7000", "", "", "4990"]
        )
        return table.render()

    def describe(self) -> str:
        return "\n".join(
            [
                f"rounds {self.rounds}; {os.cpu_count()} cores; python {sys.version.split()[0]}; "
                f"state dir {self.state} (real clock, time.perf_counter); port {self.port}; load average "
                f"(1 min) {self.load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after.",
                "Bytecode caches: on for every command and floor"
                + (
                    " (PYTHONDONTWRITEBYTECODE was set here: unset for them)." if self.bytecode_unset else "."
                ),
                "Daemon config: [dev_server] ui = false (headless, like the floor); [dev_server.restart] "
                "initial_delay 0, jitter 0, reset_after 1.0, "
                f"max_restarts 1000; each server ran {STABLE:g} s (> reset_after) before its SIGKILL, "
                "so every restart is attempt 1 = immediate.",
                "Detection = SIGKILL until devserver.json disappears or runtime.json "
                f"status.dev_server.pid is null; watched by {self.watch.method}; predicates met without "
                f"an event: {self.watch.late}.",
                "Probe (ours and the floor's) = TCP accept, then a fresh temporalio Client.connect + "
                f"check_health, retried every {PROBE_POLL * 1000:g} ms; the daemon's own readiness polls "
                "TCP every 2 ms, then connects and checks health on the server's own listener.",
                "Floor = the bare binary on a copy of the same db, same port, the runtime's dev-server "
                "settings (DevServerConfig defaults: dynamic config, SQLite pragmas), HOME in a temp "
                f"dir, also killed after {STABLE:g} s. `stop` exit = pidfd readable (opened before `stop`).",
                *self.notes,
            ]
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="CI: one round of each")
    parser.add_argument(
        "--only", choices=("cold", "kill"), help="only the cold starts, or only the SIGKILL rounds (+ floor)"
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.smoke:
        args.rounds = 1
    # Start-up is measured as a user runs it: Python caches the bytecode of the modules it compiles.
    # (An environment with PYTHONDONTWRITEBYTECODE=1 makes every start compile the package's modules from
    # source, ~40-60 ms, in the measured commands and in the import floor alike.) The first, fresh-db
    # `up` writes the caches; the existing-db rounds and the floors use them.
    bytecode_unset = os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    bench = Bench(args.rounds)
    bench.bytecode_unset = bytecode_unset
    code = 0
    try:
        bench.run(args.only)
        require(bench.samples, *(m for m in MEASURED if not args.only or m in bench.samples))
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        bench.cleanup()
    if bench.samples:
        print(bench.table())
        print()
        print(bench.describe())
    return code


if __name__ == "__main__":
    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)  # temporalio can crash the interpreter at exit
