"""The runtime's own scale: what a daemon costs as its workers grow (1, 10, 50 WorkerSpecs), against the
bare interpreter with the same imports (floor) and the plain SDK with the same Workers (peer), all in the
same run. Prints tables.

    cd benchmarks && ../.venv/bin/python scale.py [--smoke] [--workers 1,10,50] [--idle 5] [--settle 2]
        [--root DIR] [--keep]

Not a test: it measures and prints; it exits non-zero only if a daemon or a peer did not get ready, a
workflow on its last task queue did not complete, or a process was left behind (timing targets are
printed, never the exit code). Everything runs on 127.0.0.1 with free ports in a fresh temporary
directory (or `--root`, which must not exist yet).

The stack: ONE bare `temporal server start-dev` of ours (the runtime's own settings, in memory). For each
N, one after the other:
* daemon: `python -m stigmer_trio up --detach --state-dir S --external SERVER --worker scale_app:specs
  --no-demo` with SCALE_WORKERS=N (cwd benchmarks/): N WorkerSpecs on task queues scale-0 .. scale-N-1,
  each with a workflow, a sync and an async activity. "up -> ready" = the wall time of `up --detach`
  (it returns when the daemon reports ready: connected and every worker running);
* peer (the plain SDK): this script's `--sdk-child`: a plain asyncio process, one Client, N Workers with
  the SDK's defaults on the same task queues and the same application; "ready" = spawn -> every
  Worker's run() started (what the daemon's ready means for its workers);
* the same daemon with MALLOC_ARENA_MAX=2 (glibc's malloc arenas capped at 2): every thread that
  mallocs may get an arena of its own (up to 8 per core), and the SDK core adds 2 threads per Worker;
* floor: this script's `--floor-child`: the bare interpreter importing stigmer_trio, temporalio's client
  and worker, trio, trio-asyncio and the application, doing nothing.
Each then settles (`--settle` s) and sits idle for `--idle` s: RSS, threads and fds (psutil) after the
settle, idle CPU = CPU seconds over the idle window / its length (percent of one core). Then one
workflow on its LAST task queue (scale-N-1) must complete (the figures are of Workers that work). The
threads are also counted by name (/proc/PID/task/*/comm), which says who adds what per Worker.

Ratios: each figure over the floor's and over the peer's with the same N (per added Worker: the
difference to N=1 over N-1).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from _common import pct, run_root

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
CLI = [PYTHON, "-m", "stigmer_trio"]
READY_LIMIT = 60.0
WORKFLOW_LIMIT = 30.0
ARENA = "daemon, MALLOC_ARENA_MAX=2"
READY_TARGET_S = 2.0
FIGURES = (
    "rss_mb",
    "threads",
    "fds",
    "idle_cpu_pct",
    "ready_s",
)  # up -> ready with 50 workers (printed, never the exit code)


# --- the children ------------------------------------------------------------------------------------------
def floor_child() -> None:
    """The floor: the imports of a runtime with workers, then nothing until stdin closes."""
    import temporalio.client
    import temporalio.worker  # noqa: F401
    import trio  # noqa: F401
    import trio_asyncio  # noqa: F401

    import scale_app  # noqa: F401
    import stigmer_trio  # noqa: F401

    print("ready", flush=True)
    sys.stdin.read()
    os._exit(0)


def sdk_child(address: str, count: int) -> None:
    """The peer: one Client, `count` Workers with the SDK's defaults, on a plain asyncio loop."""
    import concurrent.futures

    from temporalio.client import Client
    from temporalio.worker import Worker

    import scale_app

    async def main() -> None:
        client = await Client.connect(address)
        workers = [
            Worker(
                client,
                task_queue=f"scale-{i}",
                workflows=[scale_app.ScaleWorkflow],
                activities=[scale_app.scale_sync, scale_app.scale_async],
                # the SDK requires an executor for sync activities: one per Worker, as its docs show
                activity_executor=concurrent.futures.ThreadPoolExecutor(),
            )
            for i in range(count)
        ]
        tasks = [asyncio.create_task(worker.run()) for worker in workers]
        await asyncio.sleep(0)  # every run() started
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        for task in tasks:
            task.cancel()
        os._exit(0)

    asyncio.run(main())


# --- the parent ------------------------------------------------------------------------------------------
def sample(pid: int) -> dict[str, Any]:
    """RSS (MB), threads, fds of a process and its descendants; thread names of the process itself."""
    import psutil

    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)]
    rss = threads = fds = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            rss += p.memory_info().rss
            threads += p.num_threads()
            fds += p.num_fds()
    names: collections.Counter[str] = collections.Counter()
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                names[Path(f"/proc/{pid}/task/{task}/comm").read_text().strip()] += 1
    return {"rss_mb": rss / 2**20, "threads": threads, "fds": fds, "names": dict(names)}


def cpu_seconds(pid: int) -> float:
    import psutil

    total = 0.0
    proc = psutil.Process(pid)
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = p.cpu_times()
            total += times.user + times.system
    return total


async def one_workflow(address: str, task_queue: str) -> None:
    from temporalio.client import Client

    client = await Client.connect(address)
    await asyncio.wait_for(
        client.execute_workflow("ScaleWorkflow", "x", id=f"scale-{uuid.uuid4()}", task_queue=task_queue),
        WORKFLOW_LIMIT,
    )


class Scale:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.began_wall = time.time()
        self.root = run_root(args.root, "stigmer-scale-")
        self.server: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.results: dict[tuple[str, int], dict[str, Any]] = {}  # the medians over the rounds
        self.rounds: dict[tuple[str, int], list[dict[str, Any]]] = collections.defaultdict(list)
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.orphans: list[str] = []
        self.daemon_dirs: list[Path] = []
        self.round = 0

    def start_server(self) -> None:
        """The bare server, ready and still alive 1 s later. A dev server has been seen to panic while
        it starts its internal worker service, after its frontend answered: then one more try."""
        from _common import free_port, kill_popen, popen_server, runtime_settings, start_dev_command

        dynamic_config, _ = runtime_settings()
        home = self.root / "home"
        home.mkdir()
        for attempt in (1, 2):
            port = free_port()
            command = start_dev_command(
                port=port,
                http_port=free_port(),
                metrics_port=free_port(),
                db=None,
                dynamic_config=dynamic_config,
            )
            self.server = popen_server(command, home, self.root / f"server-{attempt}.log")
            self.address = f"127.0.0.1:{port}"
            deadline = time.monotonic() + READY_LIMIT
            while self.server.poll() is None:
                try:
                    asyncio.run(self._health())
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
            time.sleep(1.0)
            if self.server.poll() is None and self.server_alive():
                return
            kill_popen(self.server)
            self.notes.append(
                f"the bare server (try {attempt}) died or never got ready; see server-{attempt}.log"
            )
        raise RuntimeError(f"the bare server did not stay up; see {self.root}/server-*.log")

    def server_alive(self) -> bool:
        try:
            asyncio.run(self._health())
            return True
        except Exception:
            return False

    async def _health(self) -> None:
        from temporalio.client import Client

        client = await asyncio.wait_for(Client.connect(self.address), 2)
        await client.workflow_service.get_system_info(
            __import__("temporalio.api.workflowservice.v1", fromlist=["x"]).GetSystemInfoRequest()
        )

    def measure(self, kind: str, pid: int, ready_s: float) -> dict[str, Any]:
        time.sleep(self.args.settle)
        figures = sample(pid)
        before, began = cpu_seconds(pid), time.monotonic()
        time.sleep(self.args.idle)
        figures["idle_cpu_pct"] = 100 * (cpu_seconds(pid) - before) / (time.monotonic() - began)
        figures["ready_s"] = ready_s
        figures["pid"] = pid
        return figures

    def keep(self, kind: str, count: int, figures: dict[str, Any]) -> None:
        self.rounds[(kind, count)].append(figures)

    def run_floor(self, count: int) -> None:
        from _common import STARTED, forget

        began = time.monotonic()
        proc = subprocess.Popen(
            [PYTHON, __file__, "--floor-child"], cwd=HERE, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        STARTED[proc.pid] = False
        try:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != b"ready":
                raise RuntimeError("the floor child did not start")
            self.keep("floor", count, self.measure("floor", proc.pid, time.monotonic() - began))
        finally:
            self._end_child(proc)
            forget(proc.pid)

    def run_peer(self, count: int) -> None:
        from _common import STARTED, forget

        began = time.monotonic()
        proc = subprocess.Popen(
            [PYTHON, __file__, "--sdk-child", self.address, str(count)],
            cwd=HERE,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(self.root / f"sdk-{count}.log", "ab"),  # noqa: SIM115 (the child owns it)
        )
        STARTED[proc.pid] = False
        try:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != b"ready":
                self.problems.append(f"the SDK peer with {count} Workers did not get ready")
                return
            self.keep("sdk", count, self.measure("sdk", proc.pid, time.monotonic() - began))
            self.check_workflow("sdk", count)
        finally:
            self._end_child(proc)
            forget(proc.pid)

    def _end_child(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()  # our own child, not reaped yet: its pid cannot have been reused
            proc.wait()
            self.notes.append(f"killed child pid {proc.pid} (did not exit on stdin EOF)")

    def run_daemon(self, count: int, kind: str = "daemon", env: dict[str, str] | None = None) -> None:
        from stigmer_trio._boundary._statefiles import read_pid_file

        state = self.root / f"daemon{'-arena' if env else ''}-{count}-r{self.round}"
        self.daemon_dirs.append(state)
        began = time.monotonic()
        done = subprocess.run(
            [*CLI, "up", "--detach", "--state-dir", str(state), "--external", self.address,
             "--worker", "scale_app:specs", "--no-demo"],
            cwd=HERE, capture_output=True, timeout=READY_LIMIT + 30, check=False,
            env={**os.environ, **(env or {}), "SCALE_WORKERS": str(count)},
        )  # fmt: skip
        ready_s = time.monotonic() - began
        out = (done.stdout + done.stderr).decode(errors="replace").strip()
        if done.returncode != 0 or "ready in" not in out:
            self.problems.append(f"the daemon with {count} workers did not get ready: {out[-300:]}")
            return
        record = read_pid_file(state / "runtime.json")
        assert record is not None
        try:
            self.keep(kind, count, self.measure(kind, record.pid, ready_s))
            self.check_workflow(kind, count)
        finally:
            stop = subprocess.run(
                [*CLI, "stop", "--state-dir", str(state)],
                cwd=HERE,
                capture_output=True,
                timeout=60,
                check=False,
            )
            if stop.returncode != 0:
                self.problems.append(f"`stop` of the daemon with {count} workers failed: {stop.stdout!r}")

    def check_workflow(self, kind: str, count: int) -> None:
        try:
            asyncio.run(one_workflow(self.address, f"scale-{count - 1}"))
        except Exception as exc:
            self.problems.append(
                f"{kind} with {count} workers: a workflow on scale-{count - 1} failed: {exc!r}"
            )

    def run(self) -> None:
        self.start_server()
        for round_ in range(self.args.rounds):
            self.round = round_
            for count in self.args.workers:
                self.run_floor(count)
                self.run_peer(count)
                self.run_daemon(count)
                self.run_daemon(count, ARENA, {"MALLOC_ARENA_MAX": "2"})
                if self.server is not None and self.server.poll() is not None:
                    raise RuntimeError(
                        f"the bare server died (exit {self.server.returncode}); see {self.root}"
                    )
        for key, samples in self.rounds.items():
            median = {k: pct([s[k] for s in samples], 0.5) for k in FIGURES}
            spread = {k: (min(s[k] for s in samples), max(s[k] for s in samples)) for k in FIGURES}
            self.results[key] = {**median, "spread": spread, "n": len(samples), "names": samples[-1]["names"]}

    def cleanup(self) -> None:
        from _common import kill_leftovers
        from soak import kill_process, open_proven, own_leftovers, send

        for state in self.daemon_dirs:
            pidfd, record, _ = open_proven(state / "runtime.json")
            if pidfd is not None:
                with contextlib.suppress(Exception):
                    subprocess.run([*CLI, "stop", "--state-dir", str(state)], cwd=HERE, capture_output=True,
                                   timeout=60, check=False)  # fmt: skip
                if send(pidfd, __import__("signal").SIGKILL):
                    self.orphans.append(f"daemon pid {record.pid} still running after `stop` (killed)")
                os.close(pidfd)
        for pid in kill_leftovers():
            if self.server is None or pid != self.server.pid:
                self.orphans.append(f"child pid {pid} (killed)")
        time.sleep(0.3)
        import psutil

        ancestors = {p.pid for p in psutil.Process().parents()}
        for proc in own_leftovers([str(self.root), "scale.py --sdk-child", "scale.py --floor-child"],
                                  self.began_wall):  # fmt: skip
            if proc.pid in ancestors or proc.pid == os.getpid():
                continue
            with contextlib.suppress(Exception):
                self.orphans.append(f"pid {proc.pid}: {' '.join(proc.cmdline())[:200]}")
            kill_process(proc)

    # --- the tables -----------------------------------------------------------------------------------------
    def tables(self) -> str:
        lines = [
            "| N | what | rounds | RSS MB (min-max) | threads | fds | idle CPU % | ready s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for count in self.args.workers:
            for kind in ("floor", "sdk", "daemon", ARENA):
                f = self.results.get((kind, count))
                if f is None:
                    lines.append(f"| {count} | {kind} | 0 | | | | | missing |")
                    continue
                low, high = f["spread"]["rss_mb"]
                lines.append(
                    f"| {count} | {kind} | {f['n']} | {f['rss_mb']:.1f} ({low:.0f}-{high:.0f}) | "
                    f"{f['threads']:g} | {f['fds']:g} | {f['idle_cpu_pct']:.2f} | {f['ready_s']:.2f} |"
                )
        lines += ["", "Ratios (x / floor, x / SDK peer, same N):", ""]
        lines += ["| N | x | RSS | threads | fds | idle CPU | ready |", "|---|---|---|---|---|---|---|"]
        for count in self.args.workers:
            floor, sdk = self.results.get(("floor", count)), self.results.get(("sdk", count))
            for kind in ("daemon", ARENA):
                daemon = self.results.get((kind, count))
                if daemon is None or floor is None or sdk is None:
                    continue
                cells = []
                for key in ("rss_mb", "threads", "fds", "idle_cpu_pct", "ready_s"):
                    cells.append(f"{_ratio(daemon[key], floor[key])} / {_ratio(daemon[key], sdk[key])}")
                lines.append(f"| {count} | {kind} | {' | '.join(cells)} |")
        first, last = self.args.workers[0], self.args.workers[-1]
        if last > first:
            lines += ["", f"Per added Worker (N={first} -> N={last}):", "",
                      "| what | RSS MB | threads | fds |", "|---|---|---|---|"]  # fmt: skip
            for kind in ("floor", "sdk", "daemon", ARENA):
                a, b = self.results.get((kind, first)), self.results.get((kind, last))
                if a is None or b is None:
                    continue
                per = [(b[k] - a[k]) / (last - first) for k in ("rss_mb", "threads", "fds")]
                lines.append(f"| {kind} | {per[0]:.2f} | {per[1]:.2f} | {per[2]:.2f} |")
        lines += ["", "Threads by name (N: name x count):", ""]
        for kind in ("sdk", "daemon"):
            for count in self.args.workers:
                f = self.results.get((kind, count))
                if f is not None:
                    names = ", ".join(f"{n} x{c}" for n, c in sorted(f["names"].items(), key=lambda i: -i[1]))
                    lines.append(f"* {kind} N={count}: {names}")
        daemon = self.results.get(("daemon", last))
        if daemon is not None:
            met = daemon["ready_s"] <= READY_TARGET_S
            lines += ["", f"target: daemon up -> ready with N={last} <= {READY_TARGET_S:g} s: "
                      f"{daemon['ready_s']:.2f} s, {'met' if met else 'NOT met'}"]  # fmt: skip
        return "\n".join(lines)


def _ratio(value: float, floor: float) -> str:
    return f"{value / floor:.2f}x" if floor else "-"


def counts(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values) or values != sorted(set(values)):
        raise argparse.ArgumentTypeError(f"expected increasing positive integers, got {text!r}")
    return values


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value <= 600:
        raise argparse.ArgumentTypeError(f"expected seconds in (0, 600], got {text!r}")
    return value


def main() -> int:
    if sys.argv[1:2] == ["--floor-child"]:
        floor_child()
    if sys.argv[1:2] == ["--sdk-child"]:
        sdk_child(sys.argv[2], int(sys.argv[3]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="N = 1,3, short windows (CI, seconds)")
    parser.add_argument("--workers", type=counts, default=[1, 10, 50], help="worker counts (1,10,50)")
    parser.add_argument("--idle", type=seconds, default=5.0, help="idle CPU window, s (5)")
    parser.add_argument("--settle", type=seconds, default=2.0, help="s after ready before sampling (2)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the tables give medians (3)")
    parser.add_argument("--root", type=Path, help="the run's directory (must not exist; default: a mkdtemp)")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory even when it passed")
    args = parser.parse_args()
    if args.smoke:
        for name, value in {"workers": [1, 3], "idle": 0.5, "settle": 0.5, "rounds": 1}.items():
            if f"--{name}" not in sys.argv:
                setattr(args, name, value)
    if not 1 <= args.rounds <= 20:
        parser.error(f"--rounds must be in 1..20, got {args.rounds}")
    if args.root is not None and args.root.exists():
        parser.error(f"--root must not exist yet, got {str(args.root)!r}")

    from _common import command_line, leave, machine_note, run_timed

    run = Scale(args)
    code, wall, load_before = run_timed(run.run)
    run.cleanup()
    print(f"\nThe runtime's scale with its workers: {command_line()}")
    print(f"wall {wall:.1f} s; {machine_note(load_before)}\n")
    print(run.tables())
    for note in run.notes:
        print(f"cleanup: {note}")
    for orphan in run.orphans:
        print(f"LEFTOVER {orphan}")
    problems = run.problems + [f"{len(run.orphans)} process(es) left behind"] * bool(run.orphans)
    for problem in run.problems:
        print(f"PROBLEM {problem}")
    if problems:
        code = 1
    print(f"verdict: {'FAIL: ' + '; '.join(problems) if problems else ('OK' if code == 0 else 'ERROR')}")
    if code == 0 and not args.keep and args.root is None:
        import shutil

        shutil.rmtree(run.root, ignore_errors=True)
    else:
        print(f"run directory: {run.root}")
    leave(code)
    return code


if __name__ == "__main__":
    main()
