"""The plain-SDK child process of the peer comparisons, and the parent's handle on it.

    python benchmarks/_sdk_child.py ADDRESS TASK_QUEUE [--no-worker]

The child: a temporalio Client (+ Worker on TASK_QUEUE running bench_workflows.BenchEcho) with the SDK's
defaults, on a plain asyncio loop: no runtime, no trio, no trio-asyncio; what a user of the SDK runs
without stigmer_trio. It reads one JSON request per stdin line and answers one JSON line on stdout (see
`child_main`): `seq` (n sequential round trips), `burst` (n at once), `recover` (retry until one
completes), `start` (one start_workflow, timed until it returns or raises), `quit`.

The parent side (`SdkChild`, trio, imported inside its methods) starts it in its own session, records it
in `_common.STARTED` (so `_common.kill_leftovers` can end it) and speaks the protocol. Instants compared
across the two processes are time.monotonic() (CLOCK_MONOTONIC, system-wide on Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _common import STARTED, forget

if TYPE_CHECKING:
    import trio

HERE = Path(__file__).resolve().parent


# --- the parent's handle (trio) --------------------------------------------------------------------------
class SdkChild:
    """The parent's handle on a plain-asyncio SDK child (see `child_main`)."""

    def __init__(self, proc: trio.Process, log: Path) -> None:
        self.proc = proc
        self.log = log
        self._buffer = bytearray()

    @classmethod
    async def start(
        cls,
        address: str,
        task_queue: str,
        log: Path,
        *,
        worker: bool = True,
        limit: float = 60.0,
        program: Sequence[str] = (),
    ) -> tuple[SdkChild, dict[str, Any]]:
        """Spawn `PROGRAM ADDRESS TASK_QUEUE` (PROGRAM: this module's child by default; another one may
        speak the same line protocol) and wait for its "ready"."""
        import subprocess

        import trio

        program = program or (sys.executable, str(HERE / "_sdk_child.py"))
        command = [*program, address, task_queue]
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


# --- the child (asyncio only) -------------------------------------------------------------------------
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


async def serve_requests(ops: dict[str, Callable[..., Any]], emit: Callable[[dict[str, Any]], None]) -> None:
    """The child's side of the line protocol: one JSON request per stdin line ({"op": NAME, **kwargs}),
    answered by `emit(await ops[NAME](**kwargs))` (or {"error"}, an unknown op too), until EOF or "quit"."""
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        request = json.loads(line)
        name = request.pop("op")
        if name == "quit":
            break
        try:
            emit(await ops[name](**request))
        except Exception as exc:
            emit({"error": f"{type(exc).__name__}: {exc}"})


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
    await serve_requests(ops, _emit)
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
    if len(sys.argv) >= 3:
        _child_entry(sys.argv[1:])
    sys.exit("usage: _sdk_child.py ADDRESS TASK_QUEUE [--no-worker]")
