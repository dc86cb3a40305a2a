# The pytest plugin of stigmer_trio.testing: fixtures for users' end-to-end tests against a real,
# supervised dev server, with faults on command. Owns: the session's server (a detached daemon on a
# temporary state dir, started on first use and stopped at session end), each test's runtimes and fault
# proxies, the faults, and the hard exit after a session in which a temporalio Worker ran. Rules: loaded
# into every pytest run of the environment, so it imports only pytest and the standard library at import
# time (trio, temporalio and the runtime are imported by the fixtures), and it is inert unless a test
# uses its fixtures: no hook changes anything for a session that did not. Must never signal a process it
# cannot prove is the session's own dev server (devserver.json + pidfd), or leave a process running.
from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ._boundary._process import ProcessIdentity
    from ._core._config import WorkerSpec
    from ._faultproxy import FaultProxy
    from ._runtime import Runtime

__all__ = ["TemporalFaults", "TemporalRuntimeFactory", "TemporalServer"]

HARD_EXIT_INI = "stigmer_trio_hard_exit"
_UP_TIMEOUT = 120.0  # seconds `up --detach` may take (it waits for the daemon's verdict itself)
_STOP_TIMEOUT = 60.0  # seconds `stop` may take
_SERVER_TIMEOUT = 30.0  # seconds a replaced dev server may take to be ready again
_POLL = 0.02  # seconds between looks at devserver.json while waiting for a server
# The session's daemon: no demo worker, no endpoint, no outbox; a dev server that tests may kill as
# often as they like (the default gives up after 5 restarts in 60 s).
_DAEMON_CONFIG = """\
demo_worker = false
http = "off"

[outbox]
enabled = false

[dev_server.restart]
max_restarts = 1000000
"""


# --- the hard exit ------------------------------------------------------------------------------------
# A process in which a temporalio Worker ran can crash at interpreter exit (after pytest has reported),
# turning a passed session into a failed one. A session whose tests ran a Worker through
# `temporal_runtime` therefore ends the process with pytest's own exit status from its last unconfigure
# hook: after the terminal summary, junitxml and the cache are written. Only the outermost session
# (pytester's in-process runs nest sessions in one process) and never with `stigmer_trio_hard_exit =
# false`.
_depth = 0
_worker_sessions: dict[pytest.Config, pytest.Session] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        HARD_EXIT_INI,
        type="bool",
        default=True,
        help="stigmer_trio: after a session in which temporal_runtime ran a temporalio Worker, end the "
        "process with pytest's exit status once it has reported (the SDK can crash an interpreter at exit)",
    )


def pytest_configure(config: pytest.Config) -> None:
    global _depth
    _depth += 1


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    global _depth
    _depth -= 1
    session = _worker_sessions.pop(config, None)
    if session is None or _depth > 0 or not config.getini(HARD_EXIT_INI):
        return
    status = int(session.exitstatus)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
    os._exit(status)


# --- the session's server -----------------------------------------------------------------------------
def _check_seconds(name: str, value: float) -> float:
    """`value` if it is a finite number >= 0, else ConfigError naming `name` and the value."""
    from ._boundary._process import check_timeout

    return check_timeout(name, value)


class TemporalServer:
    """The session's dev server: a stigmer_trio daemon (`up --detach`) on its own state dir and port.

    `address` is where it listens (127.0.0.1). The daemon's supervisor replaces the server whenever it
    dies or hangs; `temporal_faults` kills, freezes and restarts it.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_dir = root / "state"  # created (0700) by the daemon
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _cli(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STIGMER_TRIO_")}
        return subprocess.run(
            [sys.executable, "-m", "stigmer_trio", *args, "--state-dir", str(self.state_dir)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
            stdin=subprocess.DEVNULL,
        )

    def start(self) -> None:
        """`up --detach`: returns once the server is ready; RuntimeError with the daemon's words if not."""
        from ._boundary._launch import free_port

        config = self.root / "daemon.toml"
        config.write_text(_DAEMON_CONFIG)
        for _attempt in range(3):  # a free port can be taken by someone else before the server binds it
            self.port = free_port(ui=True)  # its daemon serves the Web UI at port + 1000
            result = self._cli(
                "up", "--detach", "--config", str(config), "--port", str(self.port), timeout=_UP_TIMEOUT
            )
            if result.returncode == 0:
                return
            if "in use" not in result.stdout + result.stderr:
                break
        words = (result.stderr or result.stdout).strip()
        failure = f"`python -m stigmer_trio up` failed (exit {result.returncode}): {words}"
        try:
            self.stop()  # nothing should be running: make sure
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            failure += f"; then {exc}"
        raise RuntimeError(f"temporal_server: {failure}")

    def stop(self) -> None:
        """`stop`: the daemon and its server; RuntimeError if that did not work."""
        result = self._cli("stop", timeout=_STOP_TIMEOUT)
        if result.returncode != 0:
            raise RuntimeError(
                f"temporal_server: `python -m stigmer_trio stop` failed (exit {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}"
            )

    def ready_server(self, exclude: int | None = None) -> ProcessIdentity | None:
        """The live, ready dev server devserver.json names and we can prove is ours (not pid `exclude`)."""
        from ._boundary._process import Verdict, live_identity
        from ._boundary._statefiles import read_pid_file
        from ._core._layout import StateLayout

        record = read_pid_file(StateLayout(self.state_dir).devserver_record)
        if record is None or record.extra.get("phase") != "ready" or record.pid == exclude:
            return None
        identity, verdict = live_identity(record)
        return identity if verdict is Verdict.SAME else None

    def daemon_log_tail(self, lines: int = 20) -> str:
        from ._core._layout import StateLayout

        try:
            text = StateLayout(self.state_dir).daemon_log.read_text(errors="replace")
        except OSError as exc:
            return f"(no daemon log: {exc})"
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="session")
def _stigmer_trio_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalServer]:
    server = TemporalServer(tmp_path_factory.mktemp("temporal_server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def temporal_server(_stigmer_trio_server: TemporalServer) -> str:
    """The address (127.0.0.1:PORT) of a supervised dev server shared by the whole session.

    Started once, on first use, by a stigmer_trio daemon on a temporary state dir (persistent db: a
    killed server loses nothing), and stopped at session end.
    """
    return _stigmer_trio_server.address


# --- one test's runtimes and faults -------------------------------------------------------------------
class _TestNetwork:
    """The fault proxies of one test's runtimes, and whether the test cut the network."""

    def __init__(self) -> None:
        self.proxies: list[FaultProxy] = []
        self.cut = False

    def add(self, proxy: FaultProxy) -> None:
        if self.cut:
            proxy.blackhole()
        self.proxies.append(proxy)

    def set_cut(self, cut: bool) -> None:
        self.cut = cut
        for proxy in self.proxies:
            if cut:
                proxy.blackhole()
            else:
                proxy.heal()


@pytest.fixture
def _stigmer_trio_network() -> _TestNetwork:
    return _TestNetwork()


def _task_queue_for(nodeid: str) -> str:
    """A task queue name of this test's own: its node id (made safe, the tail kept) and a short uuid."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", nodeid).strip("-")[-80:]
    return f"{name}-{uuid.uuid4().hex[:8]}"


class TemporalRuntimeFactory:
    """`temporal_runtime`: opens runtimes in external mode against the session's server, each through a
    fault proxy of its own, on this test's own task queue.

        async with temporal_runtime(workflows=[MyWorkflow], activities=[my_activity]) as rt:
            await rt.execute_workflow(MyWorkflow.run, id="x", task_queue=temporal_runtime.task_queue)
    """

    def __init__(
        self,
        server: TemporalServer,
        network: _TestNetwork,
        tmp_path: Path,
        task_queue: str,
        on_worker: Callable[[], None],
    ) -> None:
        self.server = server
        self.task_queue = task_queue  # this test's own task queue (unique per test)
        self._network = network
        self._tmp_path = tmp_path
        self._on_worker = on_worker
        self._opened = 0

    def __call__(
        self,
        *,
        workflows: Sequence[type] = (),
        activities: Sequence[Any] = (),
        workers: Iterable[WorkerSpec] = (),
        connection: Mapping[str, Any] | None = None,
        ready_timeout: float = 30.0,
        **config: Any,
    ) -> contextlib.AbstractAsyncContextManager[Runtime]:
        """A runtime, ready (connected, every worker polling) when the block starts.

        `workflows` / `activities`: one worker on `self.task_queue`. `workers`: more `WorkerSpec`s, on
        any queue. `connection`: ConnectionConfig settings (not `address`: the fault proxy's).
        `config`: RuntimeConfig settings (not `state_dir`, `dev_server`, `connection`, `workers`).
        """
        _check_seconds("ready_timeout", ready_timeout)
        return self._open(
            list(workflows), list(activities), list(workers), dict(connection or {}), ready_timeout, config
        )

    @contextlib.asynccontextmanager
    async def _open(
        self,
        workflows: list[type],
        activities: list[Any],
        workers: list[WorkerSpec],
        connection: dict[str, Any],
        ready_timeout: float,
        config: dict[str, Any],
    ) -> AsyncIterator[Runtime]:
        import trio

        import stigmer_trio as st

        from ._faultproxy import open_fault_proxy

        if workflows or activities:
            workers.insert(0, st.WorkerSpec(self.task_queue, workflows=workflows, activities=activities))
        self._opened += 1
        state_dir = self._tmp_path / f"stigmer-runtime-{self._opened}"
        async with open_fault_proxy(self.server.address) as proxy:
            runtime_config = st.RuntimeConfig(
                state_dir=state_dir,
                dev_server=None,
                connection=st.ConnectionConfig(address=proxy.address, **connection),
                workers=workers,
                **config,
            )
            if runtime_config.workers:
                self._on_worker()  # before any Worker runs: see the hard exit above
            self._network.add(proxy)
            try:
                async with st.open_runtime(runtime_config) as runtime:
                    with trio.move_on_after(ready_timeout) as waited:
                        await runtime.wait_ready()
                    if waited.cancelled_caught:
                        raise RuntimeError(
                            f"temporal_runtime: not ready within {ready_timeout:g} s "
                            f"(connection {runtime.state.name}; status {runtime.status()})"
                        )
                    yield runtime
            finally:
                self._network.proxies.remove(proxy)


@pytest.fixture
def temporal_runtime(
    request: pytest.FixtureRequest,
    _stigmer_trio_server: TemporalServer,
    _stigmer_trio_network: _TestNetwork,
    tmp_path: Path,
) -> TemporalRuntimeFactory:
    """A factory of runtimes against `temporal_server`: ``async with temporal_runtime(...) as rt``."""
    session, config = request.session, request.config

    def on_worker() -> None:
        _worker_sessions[config] = session

    return TemporalRuntimeFactory(
        _stigmer_trio_server, _stigmer_trio_network, tmp_path, _task_queue_for(request.node.nodeid), on_worker
    )


class TemporalFaults:
    """`temporal_faults`: faults of the session's server and this test's network; each method returns
    once its fault is in place. Async: call them from Trio tests."""

    def __init__(self, server: TemporalServer, network: _TestNetwork) -> None:
        self._server = server
        self._network = network
        self._thaw = threading.Event()
        self._thawers: list[threading.Thread] = []

    async def wait_server_ready(self, *, exclude: int | None = None) -> int:
        """Wait until a dev server (not pid `exclude`) is ready, proven ours; its pid. RuntimeError, with
        the daemon's last log lines, after 30 s."""
        return (await self._ready(exclude)).pid

    async def _ready(self, exclude: int | None = None) -> ProcessIdentity:
        import trio

        deadline = trio.current_time() + _SERVER_TIMEOUT
        while True:
            identity = await trio.to_thread.run_sync(self._server.ready_server, exclude)
            if identity is not None:
                return identity
            if trio.current_time() >= deadline:
                raise RuntimeError(
                    f"temporal_faults: no ready dev server within {_SERVER_TIMEOUT:g} s; the daemon's log "
                    f"ends:\n{self._server.daemon_log_tail()}"
                )
            await trio.sleep(_POLL)

    async def _signal_and_wait(self, sig: signal.Signals, wait: float) -> int:
        """Send `sig` to the ready server (proven ours through a pidfd), wait for it to exit; its pid."""
        import trio

        from ._boundary._process import signal_verified

        identity = await self._ready()
        exited = await trio.to_thread.run_sync(lambda: signal_verified(identity, sig, wait=wait))
        if not exited:
            raise RuntimeError(
                f"temporal_faults: the dev server (pid {identity.pid}) still runs {wait:g} s after {sig.name}"
            )
        return identity.pid

    async def kill_server(self) -> int:
        """SIGKILL the dev server; returns (its pid) once it is dead. The daemon starts a new one at once
        (`wait_server_ready()` waits for it)."""
        return await self._signal_and_wait(signal.SIGKILL, 10.0)

    async def restart_server(self) -> int:
        """Stop the dev server gracefully (SIGTERM) and wait until the daemon's new one is ready; its pid."""
        old = await self._signal_and_wait(signal.SIGTERM, 15.0)
        return await self.wait_server_ready(exclude=old)

    async def freeze_server(self, seconds: float) -> int:
        """SIGSTOP the dev server; returns (its pid) once it is stopped; SIGCONT `seconds` later, in the
        background (at the latest when the test ends). The daemon declares a server that stops answering
        hung within ~1.5 s and replaces it: a longer freeze ends in a kill and a new server."""
        import trio

        seconds = _check_seconds("seconds", seconds)
        identity = await self._ready()
        while not await trio.to_thread.run_sync(_stop_process, identity):
            identity = await self._ready(exclude=identity.pid)  # it died meanwhile: freeze its successor
        thawer = threading.Thread(
            target=_thaw_later, args=(identity, seconds, self._thaw), name="stigmer-trio-thaw", daemon=True
        )
        thawer.start()
        self._thawers.append(thawer)
        return identity.pid

    async def cut_network(self) -> None:
        """Blackhole every connection of this test's runtimes (current and new), until heal_network()."""
        self._network.set_cut(True)

    async def heal_network(self) -> None:
        """Undo cut_network(); connections that lost bytes are reset (the runtimes reconnect)."""
        self._network.set_cut(False)

    def close(self) -> None:
        """The test is over: thaw a frozen server now."""
        self._thaw.set()
        for thawer in self._thawers:
            thawer.join()


def _stop_process(identity: ProcessIdentity) -> bool:
    """SIGSTOP the process and wait until the kernel shows it stopped; False if it is gone."""
    import psutil

    from ._boundary._process import pin_verified

    with pin_verified(identity) as process:
        if process is None or not process.send(signal.SIGSTOP):
            return False
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                if psutil.Process(process.pid).status() == psutil.STATUS_STOPPED:
                    return True
            except psutil.NoSuchProcess:
                return False
            if process.exited():
                return False
            time.sleep(0.001)
        raise RuntimeError(f"temporal_faults: pid {process.pid} not stopped 5 s after SIGSTOP")


def _thaw_later(identity: ProcessIdentity, seconds: float, now: threading.Event) -> None:
    from ._boundary._process import signal_verified
    from ._core._errors import IdentityMismatch

    now.wait(seconds)
    with contextlib.suppress(IdentityMismatch):  # gone, and its pid reused: nothing of ours to thaw
        signal_verified(identity, signal.SIGCONT)


@pytest.fixture
def temporal_faults(
    _stigmer_trio_server: TemporalServer, _stigmer_trio_network: _TestNetwork
) -> Iterator[TemporalFaults]:
    """Faults on command: kill_server(), freeze_server(s), restart_server(), cut_network(), heal_network()."""
    faults = TemporalFaults(_stigmer_trio_server, _stigmer_trio_network)
    try:
        yield faults
    finally:
        faults.close()
