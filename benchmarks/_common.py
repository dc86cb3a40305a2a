"""Shared helpers of reconnect.py, failfast.py and roundtrip.py; also the plain-SDK child process.

Two halves, kept apart on purpose:

* the plain-asyncio child (`python benchmarks/_common.py sdk-child ADDRESS TASK_QUEUE [--no-worker]`): a
  temporalio Client (+ Worker) with the SDK's defaults and no runtime, no trio, no trio-asyncio. It reads
  one JSON request per stdin line and answers one JSON line on stdout (see `_OPS`);
* the parent side (trio): the bare `temporal server start-dev`, the readiness probe, the child's handle,
  statistics and the Markdown table. trio is imported inside those functions only, so the child never
  imports it.

Every process started here is recorded in `STARTED` and killed by `kill_leftovers()` (its own pids and
process groups only). Clocks: `time.monotonic()` (CLOCK_MONOTONIC, system-wide on Linux) for instants
compared across processes, `time.perf_counter_ns()` for durations.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shlex
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import trio

HERE = Path(__file__).resolve().parent
TEMPORAL = Path(sys.executable).parent / "temporal"
EAGER_FLAG = ("--dynamic-config-value", "system.enableEagerWorkflowStart=true")

# pid -> True for a process-group leader we started (killed with killpg), False for a plain child.
STARTED: dict[int, bool] = {}


# --- small pure helpers ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of `values` (q in [0, 1]); nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def median(values: Sequence[float]) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def command_line() -> str:
    """The exact command that ran this script, relative to the repository when possible."""
    exe = sys.executable
    with contextlib.suppress(ValueError):
        exe = os.path.relpath(exe)
    return " ".join(shlex.quote(part) for part in [exe, *sys.argv])


def machine_note(load_before: tuple[float, float, float]) -> str:
    return (
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}; load average (1 min) "
        f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after (other work on the machine shows here)."
    )


class Table:
    """A Markdown table: measurement | n | p50 | p90 | p99 | max | target | met."""

    def __init__(self, unit: str, fmt: str = "{:.1f}") -> None:
        self.unit = unit
        self.fmt = fmt
        self.lines = [
            f"| measurement ({unit}) | n | p50 | p90 | p99 | max | target | met |",
            "|---|---|---|---|---|---|---|---|",
        ]

    def row(
        self, name: str, values: Sequence[float], target: str = "", met: bool | None = None, *, note: str = ""
    ) -> None:
        if not values:
            self.lines.append(f"| {name} | 0 | | | | | {target} | {note or 'no samples'} |")
            return
        cells = [self.fmt.format(pct(values, q)) for q in (0.5, 0.9, 0.99, 1.0)]
        verdict = "" if met is None else ("yes" if met else "**NO**")
        self.lines.append(f"| {name} | {len(values)} | {' | '.join(cells)} | {target} | {verdict} |")

    def text(self, name: str, cells: Iterable[str], target: str = "", met: bool | None = None) -> None:
        verdict = "" if met is None else ("yes" if met else "**NO**")
        cells = list(cells) + [""] * 6
        self.lines.append(f"| {name} | {' | '.join(cells[:5])} | {target} | {verdict} |")

    def render(self) -> str:
        return "\n".join(self.lines)


# --- process bookkeeping ---------------------------------------------------------------------------------
def forget(pid: int) -> None:
    STARTED.pop(pid, None)


def kill_leftovers() -> list[int]:
    """SIGKILL every process this run started and has not reaped yet, then reap it; the pids killed."""
    killed = []
    for pid, group in list(STARTED.items()):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        forget(pid)
    return killed


def run_timed(run: Callable[[], object]) -> tuple[int, float, tuple[float, float, float]]:
    """Protect stdout, then run: (exit code, wall seconds, load average before). A crash is printed."""
    protect_stdout()
    load_before = os.getloadavg()
    began = time.monotonic()
    code = 0
    try:
        run()
    except BaseException:
        traceback.print_exc()
        code = 1
    return code, time.monotonic() - began, load_before


def protect_stdout() -> None:
    """Keep stdout for our tables: the SDK's core (Rust) logs to fd 1, so fd 1 now goes to stderr."""
    saved = os.dup(1)
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = os.fdopen(saved, "w", buffering=1)


def leave(code: int) -> None:
    """Flush and leave without running interpreter teardown (temporalio can crash it after a Worker ran)."""
    kill_leftovers()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os._exit(code)


# --- parent side (trio) ----------------------------------------------------------------------------------
class Server:
    """The bare `temporal server start-dev` on fixed 127.0.0.1 ports, persisted db, HOME in `root`."""

    def __init__(self, root: Path, *, eager: bool = True, tuned: bool = False) -> None:
        self.root = root
        self.home = root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.db = root / "temporal.db"
        self.log = root / "server.log"
        self.port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.eager = eager
        self.tuned = tuned  # the runtime's own dev-server settings (dynamic config + SQLite pragmas)
        self.proc: trio.Process | None = None
        self.spawns = 0

    def command(self) -> list[str]:
        command = [
            str(TEMPORAL), "server", "start-dev", "--headless", "--ip", "127.0.0.1",
            "--port", str(self.port), "--http-port", str(self.http_port),
            "--metrics-port", str(self.metrics_port), "--log-format", "json",
            "--db-filename", str(self.db), "--namespace", "default",
        ]  # fmt: skip
        if self.tuned:
            from stigmer_trio._config import DEFAULT_DYNAMIC_CONFIG, DEFAULT_SQLITE_PRAGMAS

            for setting in DEFAULT_DYNAMIC_CONFIG:
                command += ["--dynamic-config-value", setting]
            for pragma in DEFAULT_SQLITE_PRAGMAS:
                command += ["--sqlite-pragma", pragma]
        elif self.eager:
            command += EAGER_FLAG
        return command

    async def spawn(self) -> float:
        """Start it; time.monotonic() just before the spawn."""
        import subprocess

        import trio

        assert self.proc is None, "already running"
        env = {**os.environ, "HOME": str(self.home), "TEMPORAL_VERSION_CHECK_DISABLED": "1"}
        fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            began = time.monotonic()
            self.proc = await trio.lowlevel.open_process(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                env=env,
                start_new_session=True,
            )
        finally:
            os.close(fd)
        STARTED[self.proc.pid] = True
        self.spawns += 1
        return began

    async def kill(self) -> float:
        """SIGKILL its process group and reap it; time.monotonic() just before the signal."""
        assert self.proc is not None, "not running"
        proc, self.proc = self.proc, None
        began = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        forget(proc.pid)
        return began


async def tcp_accepts(port: int) -> bool:
    import trio

    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    try:
        await sock.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


async def probe_ready(port: int, *, interval: float = 0.002, limit: float = 60.0) -> tuple[float, int]:
    """Our own readiness probe, from trio: TCP accept, then a fresh Client.connect + check_health (through
    trio-asyncio, which must be open), retried every `interval`. (time.monotonic() when it passed, tries)."""
    import trio
    import trio_asyncio
    from temporalio.client import Client

    address = f"127.0.0.1:{port}"
    tries = 0
    with trio.fail_after(limit):
        while True:
            tries += 1
            if await tcp_accepts(port):
                try:
                    with trio.fail_after(1.0):
                        client = await trio_asyncio.aio_as_trio(Client.connect)(address)
                        healthy = await trio_asyncio.aio_as_trio(client.service_client.check_health)(
                            timeout=timedelta(seconds=1)
                        )
                    if healthy:
                        return time.monotonic(), tries
                except (Exception, trio.TooSlowError):
                    pass
            await trio.sleep(interval)


class SdkChild:
    """The parent's handle on a plain-asyncio SDK child (see `child_main`)."""

    def __init__(self, proc: trio.Process, log: Path) -> None:
        self.proc = proc
        self.log = log
        self._buffer = bytearray()

    @classmethod
    async def start(
        cls, address: str, task_queue: str, log: Path, *, worker: bool = True, limit: float = 60.0
    ) -> tuple[SdkChild, dict[str, Any]]:
        import subprocess

        import trio

        command = [sys.executable, str(HERE / "_common.py"), "sdk-child", address, task_queue]
        if not worker:
            command.append("--no-worker")
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = await trio.lowlevel.open_process(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=fd, start_new_session=True
            )
        finally:
            os.close(fd)
        STARTED[proc.pid] = True
        child = cls(proc, log)
        with trio.fail_after(limit):
            hello = await child.receive()
        if hello.get("event") != "ready":
            raise RuntimeError(f"SDK child did not start: {hello}; log {log}")
        return child, hello

    async def receive(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.proc.stdout.receive_some(65536)
            if not chunk:
                tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
                raise RuntimeError(f"SDK child exited (rc {self.proc.returncode}); its log ends:\n{tail}")
            self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        try:
            message: dict[str, Any] = json.loads(line)
        except ValueError:
            raise RuntimeError(f"SDK child wrote {line[:500]!r}; its log: {self.log}") from None
        return message

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all((json.dumps({"op": op, **fields}) + "\n").encode())
        answer = await self.receive()
        if "error" in answer:
            raise RuntimeError(f"SDK child {op}: {answer['error']}")
        return answer

    async def close(self, limit: float = 15.0) -> None:
        """Ask it to shut its Worker down and leave; SIGKILL it if it does not within `limit` s."""
        import trio

        with trio.move_on_after(limit):
            with contextlib.suppress(Exception):
                await self.request("quit")
            await self.proc.wait()
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        forget(self.proc.pid)


def await_all(*fns: Callable[[], Any]) -> Callable[[], Any]:
    """An async function running every async `fn` concurrently (trio); returns their results in order."""

    async def run() -> list[Any]:
        import trio

        results: list[Any] = [None] * len(fns)

        async def one(index: int, fn: Callable[[], Any]) -> None:
            results[index] = await fn()

        async with trio.open_nursery() as nursery:
            for index, fn in enumerate(fns):
                nursery.start_soon(one, index, fn)
        return results

    return run


# --- the plain-SDK child (asyncio only) ------------------------------------------------------------------
_PROTOCOL: Any = None  # the child's answers go here (the original stdout); fd 1 itself goes to stderr


def _emit(message: dict[str, Any]) -> None:
    out = _PROTOCOL or sys.stdout
    out.write(json.dumps(message) + "\n")
    out.flush()


class _Child:
    def __init__(self, client: Any, task_queue: str) -> None:
        self.client = client
        self.task_queue = task_queue
        self.serial = 0

    def next_id(self, prefix: str) -> str:
        self.serial += 1
        return f"sdk-{os.getpid()}-{prefix}-{self.serial}"

    async def run_one(self, prefix: str, eager: bool) -> None:
        await self.client.execute_workflow(
            "BenchEcho", "x", id=self.next_id(prefix), task_queue=self.task_queue, request_eager_start=eager
        )

    async def op_seq(self, n: int, eager: bool = False) -> dict[str, Any]:
        """`n` sequential round trips: the latency of each (ns) and the CPU this process used."""
        latencies = []
        cpu = time.process_time()
        for _ in range(n):
            began = time.perf_counter_ns()
            await self.run_one("seq", eager)
            latencies.append(time.perf_counter_ns() - began)
        return {"lat_ns": latencies, "cpu": time.process_time() - cpu}

    async def op_burst(self, n: int, eager: bool = False) -> dict[str, Any]:
        """`n` round trips at once: wall time for all of them (ns) and the CPU this process used."""
        cpu = time.process_time()
        began = time.perf_counter_ns()
        await asyncio.gather(*(self.run_one("burst", eager) for _ in range(n)))
        return {"elapsed_ns": time.perf_counter_ns() - began, "cpu": time.process_time() - cpu}

    async def op_recover(self, prefix: str, interval: float = 0.005) -> dict[str, Any]:
        """Try execute_workflow (SDK defaults) until one completes, `interval` s after each failure."""
        attempts = 0
        errors: dict[str, int] = {}
        began = time.monotonic()
        while True:
            attempts += 1
            call = time.monotonic()
            try:
                handle = await self.client.start_workflow(
                    "BenchEcho", "x", id=self.next_id(prefix), task_queue=self.task_queue
                )
                started = time.monotonic()
                await handle.result()
                return {
                    "began": began,
                    "call": call,
                    "started": started,
                    "done": time.monotonic(),
                    "attempts": attempts,
                    "errors": errors,
                }
            except Exception as exc:
                name = type(exc).__name__
                errors[name] = errors.get(name, 0) + 1
                await asyncio.sleep(interval)

    async def op_start(self) -> dict[str, Any]:
        """One start_workflow with the SDK's defaults: how long it took and what it raised."""
        began = time.monotonic()
        try:
            await self.client.start_workflow(
                "BenchEcho", "x", id=self.next_id("start"), task_queue=self.task_queue
            )
            error = None
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        return {"seconds": time.monotonic() - began, "raised": error}


async def _connect(address: str, limit: float = 30.0) -> Any:
    from temporalio.client import Client

    deadline = time.monotonic() + limit
    while True:
        try:
            return await asyncio.wait_for(Client.connect(address), 5.0)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.01)


async def child_main(address: str, task_queue: str, with_worker: bool) -> None:
    from temporalio.worker import Worker

    from bench_workflows import BenchEcho, echo

    client = await _connect(address)
    worker = None
    worker_task = None
    if with_worker:
        worker = Worker(client, task_queue=task_queue, workflows=[BenchEcho], activities=[echo])
        worker_task = asyncio.create_task(worker.run())
    child = _Child(client, task_queue)
    ops: dict[str, Callable[..., Any]] = {
        "seq": child.op_seq,
        "burst": child.op_burst,
        "recover": child.op_recover,
        "start": child.op_start,
    }
    _emit({"event": "ready", "pid": os.getpid(), "worker": with_worker})
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        request = json.loads(line)
        op = request.pop("op")
        if op == "quit":
            break
        try:
            _emit(await ops[op](**request))
        except Exception as exc:
            _emit({"error": f"{type(exc).__name__}: {exc}"})
    if worker is not None and worker_task is not None:
        with contextlib.suppress(Exception, asyncio.TimeoutError):
            await asyncio.wait_for(worker.shutdown(), 10.0)
        worker_task.cancel()
    _emit({"event": "bye"})


def _child_entry(argv: list[str]) -> None:
    global _PROTOCOL
    # Anything else that writes to fd 1 (the SDK's core, warnings) must not corrupt the protocol.
    _PROTOCOL = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    address, task_queue = argv[0], argv[1]
    with_worker = "--no-worker" not in argv[2:]
    code = 0
    try:
        asyncio.run(child_main(address, task_queue, with_worker))
    except BaseException as exc:
        _emit({"event": "failed", "error": f"{type(exc).__name__}: {exc}"})
        code = 1
    with contextlib.suppress(Exception):
        _PROTOCOL.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # temporalio can crash the interpreter at exit after a Worker ran


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "sdk-child":
        _child_entry(sys.argv[2:])
    sys.exit("usage: _common.py sdk-child ADDRESS TASK_QUEUE [--no-worker]")
