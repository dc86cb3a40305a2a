"""A program that embeds the runtime, run by the integration tests in a child process.

temporalio can crash the interpreter at exit after a Worker ran, so this script reports what it saw as
JSON lines on stdout and leaves with os._exit: the test judges the lines, never a lucky exit code.

    python embed.py external  STATE_DIR PORT      runtime first, Temporal (bare binary) started later
    python embed.py devserver STATE_DIR PORT      SIGKILL the supervised dev server under load
    python embed.py outage    STATE_DIR PORT      SIGKILL a bare server, 30 s down, restart it on its db
    python embed.py hung      STATE_DIR PORT      SIGSTOP a bare server: detection, fail-fast, bounded close
    python embed.py broken    STATE_DIR PORT      a Worker that fails for real: restarts, then the limit
    python embed.py midprobe  STATE_DIR PORT      SIGKILL a bare server while health checks are in flight
    python embed.py outbox    STATE_DIR PORT      queue while down; SIGKILL, then SIGSTOP it mid-drain
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from temporalio import activity

sys.path.insert(0, str(Path(__file__).parent))

from child import child_main, report
from workflows import Greet, Nap, greet

import stigmer_trio as st

QUEUE = "embed-q"


def worker_spec() -> st.WorkerSpec:
    return st.WorkerSpec(QUEUE, workflows=[Greet, Nap], activities=[greet], graceful_shutdown_timeout=1.0)


async def fail_fast(rt: st.Runtime, workflow_id: str) -> float:
    """Seconds one start_workflow took to raise TemporalUnavailable (raises AssertionError if it did not)."""
    began = time.perf_counter()
    try:
        await rt.start_workflow("Greet", "x", id=workflow_id, task_queue=QUEUE)
    except st.TemporalUnavailable:
        return time.perf_counter() - began
    raise AssertionError("start_workflow succeeded while Temporal was down")


async def external(state_dir: Path, port: int) -> None:
    config = st.RuntimeConfig(
        state_dir=state_dir,
        dev_server=None,
        connection=st.ConnectionConfig(address=f"127.0.0.1:{port}", health_interval=0.2),
        workers=[worker_spec()],
    )
    async with st.open_runtime(config) as rt:
        report(step="opened", state=rt.state.value)
        report(step="fail-fast", seconds=await fail_fast(rt, "before-temporal"), state=rt.state.value)
        try:
            rt.client()
            report(step="client", raised=False)
        except st.TemporalUnavailable as exc:
            report(step="client", raised=True, message=str(exc))
        home = state_dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        binary = str(Path(sys.executable).parent / "temporal")
        command = [binary, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port)]
        env = {**os.environ, "HOME": str(home), "TEMPORAL_VERSION_CHECK_DISABLED": "1"}
        with open(state_dir / "bare.log", "wb") as log:
            server = await trio.lowlevel.open_process(
                command, stdout=log, stderr=log, env=env, start_new_session=True
            )
        try:
            began = time.perf_counter()
            with trio.fail_after(30):
                await rt.wait_ready()
            report(step="connected", seconds=time.perf_counter() - began, status=rt.status())
            with trio.fail_after(30):
                result = await rt.execute_workflow("Greet", "trio", id="after-temporal", task_queue=QUEUE)
            report(step="workflow", result=result)
        finally:
            os.killpg(server.pid, signal.SIGKILL)
            with trio.CancelScope(shield=True):
                await server.wait()
    report(step="closed", state=rt.state.value)


async def devserver(state_dir: Path, port: int) -> None:
    config = st.RuntimeConfig(
        state_dir=state_dir,
        dev_server=st.DevServerConfig(port=port),
        connection=st.ConnectionConfig(address=f"127.0.0.1:{port}", health_interval=0.2),
        workers=[worker_spec()],
    )
    async with st.open_runtime(config) as rt:
        with trio.fail_after(30):
            await rt.wait_ready()
        with trio.fail_after(30):
            first = await rt.execute_workflow("Greet", "one", id="first", task_queue=QUEUE)
        report(step="first", result=first)
        await rt.start_workflow("Nap", 3.0, id="pre-kill", task_queue=QUEUE)
        server_pid = rt.status()["dev_server"]["pid"]

        outcomes: list[str] = []

        async def start(index: int) -> None:
            try:
                with trio.fail_after(10):  # "none hangs": the runtime's own request_timeout is 5 s
                    await rt.start_workflow("Greet", f"c{index}", id=f"during-{index}", task_queue=QUEUE)
                outcomes.append(f"ok:{index}")
            except st.TemporalUnavailable:
                outcomes.append(f"unavailable:{index}")
            except trio.TooSlowError:
                outcomes.append(f"hung:{index}")

        transitions: list[tuple[str, int]] = []
        reconnected = trio.Event()
        down_fail_fast: list[float] = []

        async def watch() -> None:
            async for event in rt.events():
                if isinstance(event, st.ConnectionStateChanged):
                    transitions.append((event.new, event.epoch))
                    if event.new == "disconnected" and not down_fail_fast:
                        down_fail_fast.append(await fail_fast(rt, "while-down"))
                    if event.new == "connected" and event.epoch >= 2:
                        reconnected.set()

        began = time.perf_counter()
        async with trio.open_nursery() as watchers:
            watchers.start_soon(watch)
            await trio.sleep(0)  # the watcher subscribes before the kill
            os.kill(server_pid, signal.SIGKILL)
            async with trio.open_nursery() as nursery:
                for index in range(50):
                    nursery.start_soon(start, index)
            report(step="concurrent", outcomes=outcomes)
            with trio.fail_after(30):
                await reconnected.wait()
                await rt.wait_ready()
            watchers.cancel_scope.cancel()
        report(step="back", seconds=time.perf_counter() - began, status=rt.status(), transitions=transitions)
        report(step="fail-fast", seconds=down_fail_fast[0] if down_fail_fast else None)
        with trio.fail_after(30):
            again = await rt.execute_workflow("Greet", "two", id="second", task_queue=QUEUE)
        report(step="second", result=again)

        async def result_of(client: Any, workflow_id: str) -> Any:
            return await client.get_workflow_handle(workflow_id).result()

        async def exists(client: Any, workflow_id: str) -> bool:
            await client.get_workflow_handle(workflow_id).describe()
            return True

        with trio.fail_after(30):
            report(step="pre-kill", result=await rt.run_asyncio(result_of, "pre-kill"))
            started = [int(o.split(":")[1]) for o in outcomes if o.startswith("ok:")]
            visible = [await rt.run_asyncio(exists, f"during-{i}") for i in started]
        report(step="visible", started=len(started), visible=sum(visible))


# --- outages of a bare `temporal server start-dev` the scenario starts itself ------------------------------

OUTAGE = 30.0  # seconds the server stays dead in the `outage` scenario
BROKEN_QUEUE = "broken-q"

Spawn = Callable[[Path | None], Awaitable[trio.Process]]


@contextlib.asynccontextmanager
async def bare_servers(state_dir: Path, port: int) -> AsyncIterator[Spawn]:
    """Yields spawn(db): start a bare dev server on `port` (in its own process group). On the way out
    every server spawned here that has not been reaped is sent SIGKILL (and SIGCONT, if it was stopped)."""
    home = state_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    binary = str(Path(sys.executable).parent / "temporal")
    env = {**os.environ, "HOME": str(home), "TEMPORAL_VERSION_CHECK_DISABLED": "1"}
    spawned: list[trio.Process] = []

    async def spawn(db: Path | None) -> trio.Process:
        command = [binary, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port)]
        if db is not None:
            command += ["--db-filename", str(db)]
        with open(state_dir / f"bare-{len(spawned)}.log", "wb") as log:
            process = await trio.lowlevel.open_process(
                command, stdout=log, stderr=log, env=env, start_new_session=True
            )
        spawned.append(process)
        return process

    try:
        yield spawn
    finally:
        with trio.CancelScope(shield=True):
            for process in spawned:
                if process.returncode is None:  # not reaped: the pid (and its group) is still ours
                    os.killpg(process.pid, signal.SIGKILL)
                    os.killpg(process.pid, signal.SIGCONT)
                    await process.wait()


async def wait_port(port: int) -> None:
    """Until 127.0.0.1:port accepts a TCP connection."""
    while True:
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            await trio.sleep(0.01)
        else:
            await stream.aclose()
            return


class Recorder:
    """An event hook: every event with the trio time it was emitted at."""

    def __init__(self) -> None:
        self.events: list[tuple[float, Any]] = []

    def __call__(self, event: Any) -> None:
        self.events.append((trio.current_time(), event))

    def transitions(self, since: float = -math.inf, until: float = math.inf) -> list[tuple[float, Any]]:
        return [
            (at, e)
            for at, e in self.events
            if isinstance(e, st.ConnectionStateChanged) and since <= at <= until
        ]


async def wait_for(predicate: Callable[[], bool], seconds: float) -> None:
    with trio.fail_after(seconds):
        while not predicate():
            await trio.sleep(0.005)


def external_config(state_dir: Path, port: int, workers: list[st.WorkerSpec], **connection: Any) -> Any:
    return st.RuntimeConfig(
        state_dir=state_dir,
        dev_server=None,
        connection=st.ConnectionConfig(address=f"127.0.0.1:{port}", **connection),
        workers=workers,
    )


async def outage(state_dir: Path, port: int) -> None:
    db = state_dir / "temporal.db"
    recorder = Recorder()
    config = external_config(state_dir, port, [worker_spec()], health_interval=0.2)
    async with bare_servers(state_dir, port) as spawn:
        server = await spawn(db)
        async with st.open_runtime(config, hooks=(recorder,)) as rt:
            await outage_body(rt, recorder, spawn, server, db, port)


async def outage_body(
    rt: st.Runtime, recorder: Recorder, spawn: Spawn, server: trio.Process, db: Path, port: int
) -> None:
    with trio.fail_after(30):
        await rt.wait_ready()
        first = await rt.execute_workflow("Greet", "one", id="before-outage", task_queue=QUEUE)
    report(step="first", result=first, status=rt.status())

    inflight: dict[str, Any] = {}

    async def start_at_the_kill() -> None:
        """A start issued while the runtime still believes it is CONNECTED (before detection)."""
        began = trio.current_time()
        try:
            await rt.start_workflow("Greet", "x", id="at-the-kill", task_queue=QUEUE)
            inflight["outcome"] = "started"
        except st.TemporalUnavailable as exc:
            inflight["outcome"] = f"unavailable: {exc}"
        inflight["seconds"] = trio.current_time() - began

    killed = trio.current_time()
    os.killpg(server.pid, signal.SIGKILL)
    await server.wait()
    samples: list[float] = []
    states: set[str] = set()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(start_at_the_kill)
        await wait_for(lambda: rt.state is not st.ConnectionState.CONNECTED, 10)
        detected = next(at for at, e in recorder.transitions(killed) if e.old == "connected")
        while trio.current_time() - killed < OUTAGE:
            states.add(rt.state.value)
            if len(samples) < (trio.current_time() - killed) // 1.0 + 1:  # one start per second
                samples.append(await fail_fast(rt, f"during-outage-{len(samples)}"))
            await trio.sleep(0.02)
        states.add(rt.state.value)
    restarted = trio.current_time()
    during = recorder.transitions(killed, restarted)
    report(
        step="outage",
        seconds=restarted - killed,
        detected=detected - killed,
        inflight=inflight,
        samples=samples,
        states=sorted(states),
        connecting=sum(1 for _, e in during if e.new == "connecting"),
        connected=sum(1 for _, e in during if e.new == "connected"),
    )

    await spawn(db)
    await wait_port(port)
    listening = trio.current_time()

    def back() -> bool:
        status = rt.status()
        return status["ready"] and status["workers"][0]["epoch"] >= 2

    await wait_for(back, 30)
    reconnected = next(
        at for at, e in recorder.transitions(restarted) if e.new == "connected" and e.epoch >= 2
    )
    with trio.fail_after(30):
        result = await rt.execute_workflow("Greet", "two", id="after-outage", task_queue=QUEUE)
    done = trio.current_time()
    report(
        step="back",
        result=result,
        listening=listening - restarted,
        reconnected=reconnected - listening,
        completed=done - listening,
        status=rt.status(),
    )


async def hung(state_dir: Path, port: int) -> None:
    recorder = Recorder()
    config = external_config(state_dir, port, [worker_spec()], health_interval=0.5, health_timeout=0.5)
    async with bare_servers(state_dir, port) as spawn:
        server = await spawn(None)
        async with st.open_runtime(config, hooks=(recorder,)) as rt:
            with trio.fail_after(30):
                await rt.wait_ready()
                first = await rt.execute_workflow("Greet", "one", id="before-hang", task_queue=QUEUE)
            report(step="first", result=first)

            stopped = trio.current_time()
            os.killpg(server.pid, signal.SIGSTOP)
            await wait_for(lambda: rt.state is not st.ConnectionState.CONNECTED, 10)
            left_at, left = next((at, e) for at, e in recorder.transitions(stopped) if e.old == "connected")
            report(step="left", seconds=left_at - stopped, new=left.new, reason=left.reason)
            report(step="fail-fast", seconds=await fail_fast(rt, "while-hung"), state=rt.state.value)
            closing = trio.current_time()
        closed = trio.current_time()
        report(
            step="closed",
            seconds=closed - closing,
            state=rt.state.value,
            abandoned=[e.name for at, e in recorder.events if isinstance(e, st.ChildAbandoned)],
            server_running=server.returncode is None,
        )
    # leaving bare_servers: SIGKILL + SIGCONT to the stopped server's group


@activity.defn(name="greet")
async def broken_greet(name: str) -> str:
    """The SDK's fatal path for activities: a broken executor fails the whole Worker (on_fatal_error,
    then Worker.run() raises RuntimeError('Activity worker failed'))."""
    raise concurrent.futures.BrokenExecutor(f"executor broken while greeting {name}")


async def broken(state_dir: Path, port: int) -> None:
    recorder = Recorder()
    spec = st.WorkerSpec(
        BROKEN_QUEUE,
        workflows=[Greet],
        activities=[broken_greet],
        graceful_shutdown_timeout=1.0,
        policy=st.RestartPolicy(max_restarts=2, window=60, jitter=0),
    )
    config = external_config(state_dir, port, [spec], health_interval=0.2)
    runtimes: list[st.Runtime] = []
    restarts_seen: list[int] = []

    def snapshot(event: Any) -> None:  # the worker's restart count as each restarted worker starts
        if isinstance(event, st.ChildStarted) and event.restarts > 0 and runtimes:
            restarts_seen.append(runtimes[0].status()["workers"][0]["restarts"])

    async with bare_servers(state_dir, port) as spawn:
        await spawn(None)
        began = trio.current_time()
        try:
            async with st.open_runtime(config, hooks=(recorder, snapshot)) as rt:
                runtimes.append(rt)
                with trio.fail_after(30):
                    await rt.wait_ready()
                report(step="ready", status=rt.status())
                await rt.start_workflow("Greet", "doomed", id="doomed", task_queue=BROKEN_QUEUE)
                with trio.fail_after(60):
                    await trio.sleep_forever()
        except BaseException as exc:  # expected: RestartLimitExceeded, inside exception group(s)
            raised = exc
        else:
            raised = None
        ended = trio.current_time()

    def leaves(exc: BaseException) -> list[BaseException]:
        if isinstance(exc, BaseExceptionGroup):
            return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
        return [exc]

    def shape(exc: BaseException) -> str:
        if isinstance(exc, BaseExceptionGroup):
            return f"{type(exc).__name__}[{', '.join(shape(inner) for inner in exc.exceptions)}]"
        return type(exc).__name__

    def describe(at: float, event: Any) -> dict[str, Any]:
        fields: dict[str, Any] = {"at": at - began, "type": type(event).__name__}
        for name in ("name", "task_queue", "running", "reason", "attempt", "delay", "stopped", "child"):
            if hasattr(event, name):
                fields[name] = getattr(event, name)
        if isinstance(event, st.ChildExited | st.RestartLimitExceeded) and event.error is not None:
            fields["error"] = f"{type(event.error).__name__}: {event.error}"
        return fields

    worker_events = [
        describe(at, e)
        for at, e in recorder.events
        if getattr(e, "name", getattr(e, "child", None)) == f"worker:{BROKEN_QUEUE}"
        or isinstance(e, st.WorkerStateChanged)
    ]
    report(
        step="raised",
        seconds=ended - began,
        shape=shape(raised) if raised is not None else None,
        leaves=[
            {
                "type": type(leaf).__name__,
                "child": getattr(leaf, "child", None),
                "restarts": getattr(leaf, "restarts", None),
                "message": str(leaf),
                "cause": repr(leaf.__cause__),
            }
            for leaf in (leaves(raised) if raised is not None else [])
        ],
        restarts_seen=restarts_seen,
        final=runtimes[0].status() if runtimes else None,
        events=worker_events,
    )


async def midprobe_round(state_dir: Path, port: int) -> dict[str, Any]:
    """Health checks back to back (health_interval=1 ms), so the SIGKILL lands on one in flight."""
    recorder = Recorder()
    config = external_config(state_dir, port, [], health_interval=0.001)
    async with bare_servers(state_dir, port) as spawn:
        server = await spawn(None)
        async with st.open_runtime(config, hooks=(recorder,)) as rt:
            await wait_for(lambda: rt.state is st.ConnectionState.CONNECTED, 30)
            await trio.sleep(0.2)
            killed = trio.current_time()
            os.killpg(server.pid, signal.SIGKILL)
            await server.wait()
            await wait_for(lambda: any(e.old == "connected" for _, e in recorder.transitions(killed)), 10)
            await trio.sleep(0.3)  # a crashed connection child's exit is reported by now
    first = next(e for _, e in recorder.transitions(killed) if e.old == "connected")
    crashes = [
        f"{type(e.error).__name__}: {e.error}"
        for at, e in recorder.events
        if at >= killed and isinstance(e, st.ChildExited) and e.name == "connection" and not e.stopped
    ]
    return {"first": first.new, "reason": first.reason, "crashes": crashes}


async def midprobe(state_dir: Path, port: int) -> None:
    """Up to three rounds, stopping at the first whose connection child crashed."""
    rounds: list[dict[str, Any]] = []
    while len(rounds) < 3 and not any(r["crashes"] for r in rounds):
        rounds.append(await midprobe_round(state_dir, port))
    report(step="rounds", rounds=rounds)


OUTBOX_N = 120


async def outbox(state_dir: Path, port: int) -> None:
    """Queued starts through Temporal being down, coming back, being SIGKILLed mid-drain, and frozen
    mid-drain: every one is started once and completes once (a second run would show in the workflow's
    run list)."""
    db = state_dir / "temporal.db"
    config = external_config(state_dir, port, [worker_spec()], health_interval=0.2)
    async with bare_servers(state_dir, port) as spawn, st.open_runtime(config) as rt:
        began = time.perf_counter()
        for n in range(OUTBOX_N):
            await rt.submit_workflow(Greet.run, f"n{n}", id=f"ob-{n}", task_queue=QUEUE)
        submitted = time.perf_counter() - began
        again = await rt.submit_workflow(Greet.run, "n0", id="ob-0", task_queue=QUEUE)
        try:
            await rt.submit_workflow(Greet.run, "other", id="ob-0", task_queue=QUEUE)
            conflict = None
        except st.SubmissionConflict as exc:
            conflict = str(exc)
        report(
            step="queued",
            seconds=submitted,
            state=rt.state.value,
            outbox=await rt.outbox_status(),
            again=again.state.value,
            conflict=conflict,
        )
        server = await spawn(db)
        with trio.fail_after(30):
            await wait_for(lambda: rt.state is st.ConnectionState.CONNECTED, 30)
            # SIGKILL while the drain is under way: some starts have been sent, others not.
            while (await rt.outbox_status())["started"] < OUTBOX_N // 4:
                await trio.sleep(0.001)
        os.killpg(server.pid, signal.SIGKILL)
        await server.wait()
        at_kill = await rt.outbox_status()
        server = await spawn(db)
        # Then frozen mid-drain (SIGSTOP, 3 s: the connection is lost, the starts in flight are given
        # up and sit unanswered in the server's socket): when it thaws, it answers them late, and the
        # drain sends them again with their request ids.
        with trio.fail_after(30):
            while (await rt.outbox_status())["started"] < OUTBOX_N // 2:
                await trio.sleep(0.001)
        os.killpg(server.pid, signal.SIGSTOP)
        at_freeze = await rt.outbox_status()
        await trio.sleep(3.0)
        frozen_state = rt.state.value
        os.killpg(server.pid, signal.SIGCONT)
        with trio.fail_after(60):
            for n in range(OUTBOX_N):
                await rt.wait_started(f"ob-{n}")
        await rt.wait_connected()
        client = rt.client()

        async def runs(workflow_id: str) -> list[dict[str, Any]]:
            async def listing(client: Any) -> list[dict[str, Any]]:
                found = []
                async for execution in client.list_workflows(f"WorkflowId = '{workflow_id}'"):
                    found.append({"run_id": execution.run_id, "status": execution.status.name})
                return found

            return await rt.run_asyncio(listing)

        results: dict[str, Any] = {}
        with trio.fail_after(60):
            for n in range(OUTBOX_N):
                submission = await rt.submission(f"ob-{n}")
                assert submission is not None
                handle = client.get_workflow_handle(f"ob-{n}", run_id=submission.run_id)
                result = await rt.run_asyncio(lambda _client, h=handle: h.result())
                results[f"ob-{n}"] = {"result": result, "run_id": submission.run_id}
            # Visibility is eventually consistent: wait until every run is listed as closed.
            listed: dict[str, list[dict[str, Any]]] = {}
            while True:
                listed = {id: await runs(id) for id in results}
                if all(r and all(x["status"] != "RUNNING" for x in r) for r in listed.values()):
                    break
                await trio.sleep(0.2)
        report(
            step="drained",
            at_kill=at_kill,
            at_freeze=at_freeze,
            frozen_state=frozen_state,
            outbox=await rt.outbox_status(),
            results=results,
            runs=listed,
            status=rt.status()["outbox"],
        )
        del client


if __name__ == "__main__":
    scenarios = {"external": external, "devserver": devserver, "outage": outage, "hung": hung}
    scenarios |= {"broken": broken, "midprobe": midprobe, "outbox": outbox}
    child_main(lambda: trio.run(scenarios[sys.argv[1]], Path(sys.argv[2]), int(sys.argv[3])))
