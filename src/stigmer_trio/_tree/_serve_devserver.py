# The dev-server child: ONE lifetime of `temporal server start-dev` per call of `DevServer.serve`.
# Owns: the binary look-up, devserver.lock / devserver.json, spawning (own session, lock fd inherited),
# adopting a healthy verified server left by a dead daemon, readiness, crash detection (waiting on the
# process: an event, not a poll), the hang probe loop and the bounded stop. Must never: loop on its own
# failures (the Supervisor restarts it), signal a process whose identity is not proven ours, or leave a
# server it spawned running when it is cancelled.
#
# The server writes straight to <state_dir>/logs/devserver.log (O_APPEND), not into a pipe: a Go program
# dies of SIGPIPE when its stdout/stderr pipe loses its reader, so a pipe would kill the server together
# with a SIGKILLed daemon, and a full pipe could stall it. The daemon bounds the file by rotating it
# (copy, then truncate: the server's O_APPEND writes carry on at the new end).
#
# Trust: a verified record (pid + create time + command line) proves the record is accurate, not that
# the process is ours. A server from a record is adopted, replaced or stopped only once `proof_problem`
# finds nothing: it holds this state dir's devserver.lock (handed over at spawn; the kernel says so, not
# the record), runs the binary its command line names, and that command line is a `server start-dev` we
# would spawn here (127.0.0.1, its Web UI too, the recorded port, its db in this state dir or the configured
# one). It is adopted only if this configuration would spawn exactly that command (the random side ports
# aside: http, metrics, and a Web UI port left to chance).
# Before a server is called ready, the socket listening on its port must be one of its own.
from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .._boundary._holdings import holds_file, listens_on
from .._boundary._launch import GATE, SHELL, Launch, ServerPlan, ServerProcess, spawn_server
from .._boundary._process import ProcessIdentity, Verdict, live_identity, stop_process_group_async
from .._boundary._statefiles import (
    FileLock,
    PidRecord,
    ensure_state_dir,
    read_pid_file,
    remove_pid_file,
    write_pid_file,
)
from .._boundary._tcp import accepts
from .._core._config import DevServerConfig
from .._core._errors import DevServerError, TemporalUnavailable
from .._core._events import EventHook, ServerExited, ServerListening, ServerReady
from .._core._layout import StateLayout
from .._observe._logfiles import RotatingLog

if TYPE_CHECKING:
    from .._boundary import _temporal
    from .._boundary._bridge import Bridge

__all__ = ["DevServer", "ServerInfo", "proof_problem"]

_POLL_READY = 0.002  # seconds between readiness attempts (connect fails in ~1 ms while nothing listens)
_ROTATE_CHECK = 1.0  # seconds between log size checks
_RETRY_PROBE = 0.01  # seconds between a failed health probe and the next
_LOCK_POLL = 0.01  # seconds between looks at a lock held by a process not (yet) provably ours
# How long such a holder may take to go: a launcher whose daemon died reads EOF and exits at once, a
# dying server lets go of the lock when it exits (its stop waits stop_timeout at most, but that is a
# server we can prove ours: only the unprovable ones wait here).
_UNPROVEN_WAIT = 2.0


def _option(argv: Sequence[str], name: str) -> str | None:
    """The value after the first `name` in argv (None if absent or last)."""
    for index, arg in enumerate(argv[:-1]):
        if arg == name:
            return argv[index + 1]
    return None


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def proof_problem(
    identity: ProcessIdentity, record: PidRecord, layout: StateLayout, *, dbs: Sequence[Path] = ()
) -> str | None:
    """Why the live process `identity` (verified against `record`, its devserver.json) is not provably
    this state dir's dev server, or None when it is. `dbs`: where its db may be besides the state dir
    (the configured one). Reads /proc: call it in a thread from async code."""
    port = str(record.extra.get("address", "")).rpartition(":")[2]
    if not port.isdigit():
        return "devserver.json names no address"
    argv = list(identity.cmdline)
    if argv[:3] == [SHELL, "-c", GATE]:
        argv = argv[3:]  # its launcher, before the exec: same pid, the server's command line after the gate
    if not _same_file(f"/proc/{identity.pid}/exe", identity.cmdline[0] if identity.cmdline else ""):
        return "it does not run the binary its command line names"
    if argv[1:3] != ["server", "start-dev"]:
        return "its command line is not `temporal server start-dev`"
    if _option(argv, "--ip") != "127.0.0.1":
        return "it does not listen on 127.0.0.1 only"
    if "--headless" not in argv and _option(argv, "--ui-ip") != "127.0.0.1":
        return "its Web UI does not listen on 127.0.0.1 only"
    if _option(argv, "--port") != port:
        return f"its command line does not say --port {port}"
    db = _option(argv, "--db-filename")
    if db is not None:
        path = Path(db).resolve()
        if not (path.is_relative_to(layout.root.resolve()) or any(path == p.resolve() for p in dbs)):
            return f"its db {db!r} is neither in the state dir nor the configured one"
    if not holds_file(identity.pid, layout.devserver_lock):
        return f"it does not hold {str(layout.devserver_lock)!r}"
    return None


@attrs.frozen
class ServerInfo:
    """The server of the current lifetime: what `started()` hands to the supervisor."""

    pid: int
    address: str
    ports: dict[str, int]
    adopted: bool
    started_at: float  # wall clock, when it became ready (or was adopted)


def _last_error_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        lowered = line.lower()
        if "error" in lowered or "fatal" in lowered or "unable" in lowered:
            return line[:300]
    return lines[-1][:300] if lines else "(no output)"


class DevServer:
    """The dev-server child of the runtime's supervision tree. `serve` is one server lifetime.

    `spawned` hands the first lifetime a server that is already running (the daemon spawns one with
    _boundary/_launch.spawn_server before its heavy imports, to boot meanwhile): it is served like one
    this class spawned, from its readiness on, and every later lifetime spawns its own. Whoever
    spawned it must have done what spawning does here: taken devserver.lock and passed it to the
    server (inherited fd), written devserver.json naming it (phase "booting", `spawned.identity`, and
    the launcher's command line) before letting it exec, and started it with `command(spawned.ports)`;
    otherwise the next daemon cannot prove the server ours.
    """

    def __init__(
        self,
        config: DevServerConfig,
        state_dir: Path,
        *,
        on_event: EventHook | None = None,
        clock: Callable[[], float] = time.time,
        spawned: Launch | None = None,
        bridge: Bridge | None = None,
    ) -> None:
        self.config = config
        self._bridge = bridge  # Temporal for the readiness and health probes (None: the real one)
        self.paths = StateLayout(state_dir)
        self._plan = ServerPlan(config, self.paths, clock)
        self.log = RotatingLog(self.paths.devserver_log, config.log_max_bytes, config.log_backups)
        self._spawned = spawned
        self._emit = on_event or (lambda event: None)
        self._clock = clock
        self.info: ServerInfo | None = None
        self._log_offset = 0  # where the current server's output starts in the log
        # Set by the daemon's `restart` handover: when this lifetime is cancelled, a server that is ready
        # and healthy is left running (its record kept) for the next daemon to adopt.
        self.keep_running = False

    def _temporal_bridge(self) -> Bridge:
        from .._boundary._bridge import temporal_bridge

        return self._bridge or temporal_bridge()

    async def _answers(self, pid: int) -> bool:
        """Is `pid` what listens on the configured port (the kernel's answer, ~0.1-3 ms in a thread)?
        Always, with a fake bridge: what it answers with is no socket."""
        if self._bridge is not None:
            return True
        return await trio.to_thread.run_sync(listens_on, pid, self.config.port)

    # --- one lifetime ----------------------------------------------------------------------------------
    async def serve(self, *, task_status: trio.TaskStatus[ServerInfo] = trio.TASK_STATUS_IGNORED) -> None:
        """One lifetime: start (or adopt) a server, call started(info) once it is ready, then raise
        DevServerError when it exits or hangs (never returns on its own).

        Raises DevServerError when it cannot start one (binary missing, start_timeout passed, a lock held
        by a process not provably ours) and PortInUse when another process holds the port. Cancelled,
        it stops its server (SIGTERM, stop_timeout, SIGKILL; at once for a hung one) in a shielded
        scope, within 2 * stop_timeout, unless `keep_running` asks it to leave a healthy one running.
        """
        for directory in (self.paths.root, self.paths.logs, self.paths.home):
            ensure_state_dir(directory)
        spawned, self._spawned = self._spawned, None
        if spawned is not None:
            spawned.claimed = True
            await self._serve_own(spawned, task_status)
            return
        give_up = trio.current_time() + _UNPROVEN_WAIT
        while True:
            lock = FileLock(self.paths.devserver_lock)
            if lock.acquire():
                # Nobody holds the lock, so no server of ours lives: any pid file is stale. Never signal it.
                remove_pid_file(self.paths.devserver_record)
                try:
                    launch = await self._spawn(lock)
                finally:
                    lock.release()  # the server holds the lock through its inherited fd
                await self._serve_own(launch, task_status)
                return
            lock.release()
            record = read_pid_file(self.paths.devserver_record)
            what = "no readable devserver.json"
            if record is not None:
                identity, verdict = live_identity(record)
                what = f"pid {record.pid}: {verdict}"
                if verdict is Verdict.SAME and identity.cmdline == record.cmdline:
                    problem = await trio.to_thread.run_sync(self._proof_problem, identity, record)
                    if problem is not None:
                        raise DevServerError(
                            f"{str(self.paths.devserver_lock)!r} is held by pid {record.pid}, named by "
                            f"devserver.json but not provably our dev server ({problem}); not touching it"
                        )
                    if self._same_settings(record):
                        await self._adopt(record, task_status)
                        return
                    await self._replace(record, identity)
                    give_up = trio.current_time() + _UNPROVEN_WAIT
                    continue  # its lock is free now: spawn the right one
            # Held, but not (yet) by a server we can prove ours. Transient when its daemon died at the
            # worst instant: a launcher that never got its "go" exits as soon as it reads EOF, a server
            # that is exiting lets go of the lock as it dies. Give that a moment, never a signal.
            if trio.current_time() >= give_up:
                raise DevServerError(
                    f"{str(self.paths.devserver_lock)!r} is held by a process that cannot be verified as "
                    f"our dev server ({what}); not touching it"
                )
            await trio.sleep(_LOCK_POLL)

    def _proof_problem(self, identity: ProcessIdentity, record: PidRecord) -> str | None:
        """`proof_problem` with this configuration's db (blocking: /proc reads)."""
        dbs = [self.config.db_filename] if self.config.db_filename is not None else []
        return proof_problem(identity, record, self.paths, dbs=dbs)

    def _same_settings(self, record: PidRecord) -> bool:
        """Was the recorded server started with the command this configuration would spawn? Its
        random side ports aside: a configured (or derived) http/metrics/ui port must match, one left
        to chance may be any."""
        recorded = record.extra.get("ports")
        if not isinstance(recorded, dict):
            return False
        try:
            return tuple(self.command(self.ports(recorded))) == record.cmdline
        except (KeyError, TypeError, ValueError, DevServerError):
            return False

    def ports(self, side: Mapping[str, Any] | None = None) -> dict[str, int]:
        """The ports a server of this configuration runs on (see ServerPlan.ports)."""
        return self._plan.ports(side)

    async def _replace(self, record: PidRecord, identity: ProcessIdentity) -> None:
        """Stop a server of ours that this configuration would not have spawned (say, an in-memory one
        found by a persistent runtime): adopting it would keep the wrong settings (its workflows would
        vanish at its next restart). Said first (ServerExited), then stopped, within 2 * stop_timeout."""
        address = str(record.extra.get("address", self.config.address))
        why = "configuration changed: it was started with other settings (its command line differs)"
        self._emit(ServerExited(address, record.pid, None, f"{why}; replacing it"))
        with trio.CancelScope(shield=True):
            await stop_process_group_async(
                identity, timeout=self.config.stop_timeout, kill_timeout=self.config.stop_timeout
            )
            remove_pid_file(self.paths.devserver_record)

    def _left_running(self, *, ready: bool, kill: bool, alive: bool) -> bool:
        """Leave the server running at this stop? Only a ready, healthy, live one, on a handover."""
        if not (self.keep_running and ready and alive and not kill):
            return False
        self.info = None
        return True

    def command(self, ports: dict[str, int]) -> list[str]:
        """The server's command line on `ports` for this configuration (see ServerPlan.command)."""
        return self._plan.command(ports)

    def _record(self, identity: ProcessIdentity, ports: dict[str, int], **extra: object) -> PidRecord:
        return self._plan.record(identity, ports, **extra)

    async def _spawn(self, lock: FileLock) -> Launch:
        """Spawn the server behind its launcher (_boundary/_launch.spawn_server, in a thread): it execs
        only once its record is written."""
        log_fd = await trio.to_thread.run_sync(self.log.open_for_writer)  # may copy max_bytes
        try:
            # Shielded: once the thread has spawned it, the server is handed back whatever happens
            # meanwhile; a cancellation reaches the caller's next checkpoint, inside _serve_own's stop.
            with trio.CancelScope(shield=True):
                offset = self.log.size()
                launch = await trio.to_thread.run_sync(spawn_server, self._plan, lock, log_fd, offset)
        finally:
            os.close(log_fd)
        return launch

    async def _serve_own(self, launch: Launch, task_status: trio.TaskStatus[ServerInfo]) -> None:
        proc, identity, ports = launch.proc, launch.identity, launch.ports
        address = f"127.0.0.1:{ports['grpc']}"
        self._log_offset = launch.log_offset
        reason = "stopped by the runtime"
        kill = False  # a hung or failed server gets SIGKILL at once: a grace period helps nobody
        try:
            try:
                client = await self._wait_ready(address, proc, launch.spawned_at)
            except DevServerError as exc:
                reason, kill = f"failed to start: {exc}", True
                raise
            ready_after = time.monotonic() - launch.spawned_at
            self.info = ServerInfo(proc.pid, address, ports, adopted=False, started_at=self._clock())
            record = self._record(identity, ports, phase="ready")
            write_pid_file(self.paths.devserver_record, record, durable=False)
            self._emit(ServerReady(address, proc.pid, adopted=False, ready_after=ready_after))
            task_status.started(self.info)
            hung = await self._watch(client, proc.wait)
            if hung is None:
                reason = f"exited with code {proc.returncode}"
                raise DevServerError(f"the dev server (pid {proc.pid}) {reason}")
            reason, kill = f"hung: {hung}", True
            raise DevServerError(f"the dev server (pid {proc.pid}) stopped answering health checks ({hung})")
        finally:
            with trio.CancelScope(shield=True):
                if self._left_running(ready=self.info is not None, kill=kill, alive=proc.returncode is None):
                    self._emit(ServerExited(address, proc.pid, None, "left running for the next daemon"))
                else:
                    await self._condemn_and_stop(proc, address, reason, kill=kill)

    async def _condemn_and_stop(self, proc: ServerProcess, address: str, reason: str, *, kill: bool) -> None:
        # Condemned before it is stopped: said first, so that nobody attaches to it while it dies (a
        # SIGCONTed server answers during its shutdown).
        self.info = None
        alive = proc.returncode is None
        if alive:
            self._emit(ServerExited(address, proc.pid, None, reason))
        await self._stop_own(proc, kill=kill)
        remove_pid_file(self.paths.devserver_record)
        if not alive:
            self._emit(ServerExited(address, proc.pid, proc.returncode, reason))

    async def _wait_ready(self, address: str, proc: ServerProcess, spawned_at: float) -> _temporal.Client:
        """Ready = TCP accept AND check_health AND the listener is `proc`'s own (see _ready_checks),
        within start_timeout of the spawn (`spawned_at`, time.monotonic()): a server spawned before the
        daemon's imports has had that much of its time already."""
        temporal = self._temporal_bridge()  # imported here, not at start-up: the server boots meanwhile
        config = self.config
        last = "no answer yet"
        announced = False
        with trio.move_on_after(max(0.0, spawned_at + config.start_timeout - time.monotonic())):
            while True:
                if proc.poll() is not None:
                    output = _last_error_line(self.log.tail(self._log_offset))
                    raise DevServerError(
                        f"the dev server exited with code {proc.returncode} while starting: {output}"
                    )
                try:
                    listening = False
                    with trio.move_on_after(config.health_timeout):
                        listening = await accepts("127.0.0.1", config.port)
                    if not listening:
                        raise OSError(f"nothing accepts TCP at {address} yet")
                    if not announced:  # the connection child connects while it boots, beside our checks
                        announced = True
                        self._emit(ServerListening(address, proc.pid))
                    client, owned = await self._ready_checks(temporal, address, proc.pid)
                    if owned:
                        return client
                    last = f"another process answers at {address}"
                except (OSError, TemporalUnavailable) as exc:
                    last = str(exc)
                await trio.sleep(_POLL_READY)
        raise DevServerError(
            f"the dev server was not ready within start_timeout={config.start_timeout:g} s (last: {last})"
        )

    async def _ready_checks(self, temporal: Bridge, address: str, pid: int) -> tuple[_temporal.Client, bool]:
        """Connect to a server that accepts TCP and check its health, and meanwhile ask the kernel
        whether `pid` owns the listener (a thread): the client, and whether it does. The owner check
        runs beside the RPCs, not after them: it is on every (re)start's critical path. Its namespaces
        are not described here: the server registers every --namespace before it serves (asserted by
        tests/integration/test_devserver_parts.py), and right after a boot a DescribeNamespace takes
        10-20 ms longer than the health check; the hang probe describes them every health_interval."""
        config = self.config
        owned = False
        failure: OSError | TemporalUnavailable | None = None

        async def owner() -> None:
            nonlocal owned
            owned = await self._answers(pid)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(owner)
            try:
                client = await temporal.connect(address, config.namespaces[0], timeout=config.health_timeout)
                await temporal.check_health(client, timeout=config.health_timeout)
            except (OSError, TemporalUnavailable) as exc:
                failure = exc
                nursery.cancel_scope.cancel(reason="the server did not answer")
        if failure is not None:
            raise failure
        return client, owned

    async def _watch(self, client: _temporal.Client, wait_exit: Callable[[], object]) -> str | None:
        """Run until the server exits (None) or fails `failures_to_restart` probes in a row (why).

        This probe asks whether the process is hung (then it is killed and replaced); the connection
        child probes the runtime's own client on the same server, a different question with a
        different answer (calls fail fast, reconnect): both are needed, see its `_watch`.
        """
        temporal = self._temporal_bridge()  # imported here, not at start-up: the server boots meanwhile
        config = self.config
        hung: str | None = None

        async with trio.open_nursery() as nursery:

            async def probe_loop() -> None:
                nonlocal hung
                failures = 0
                while True:
                    # After a failed probe the next one comes at once (almost): a hang is declared
                    # within health_interval + failures_to_restart * health_timeout of its start.
                    await trio.sleep(config.health_interval if failures == 0 else _RETRY_PROBE)
                    try:
                        await temporal.probe(client, config.namespaces, timeout=config.health_timeout)
                        failures = 0
                    except TemporalUnavailable as exc:
                        failures += 1
                        if failures >= config.failures_to_restart:
                            hung = f"{failures} failed health checks, last: {exc}"
                            nursery.cancel_scope.cancel(reason="dev server hung")
                            return

            async def rotate_loop() -> None:
                while True:
                    await trio.sleep(_ROTATE_CHECK)
                    if self.log.size() > self.log.max_bytes:
                        await trio.to_thread.run_sync(self.log.rotate_if_needed)

            nursery.start_soon(probe_loop)
            nursery.start_soon(rotate_loop)
            await wait_exit()  # type: ignore[misc]
            nursery.cancel_scope.cancel(reason="dev server exited")
        return hung

    async def _stop_own(self, proc: ServerProcess, *, kill: bool = False) -> None:
        """SIGTERM the group (and SIGCONT, should it be stopped), wait stop_timeout, SIGKILL the group;
        with `kill`, SIGKILL the group at once (a hung server: SQLite's WAL survives a kill).

        Safe without an identity check: it is our own child and not yet reaped, so its pid (and group
        id) cannot have been reused.
        """
        if proc.returncode is not None:
            return
        for sig in (signal.SIGKILL,) if kill else (signal.SIGTERM, signal.SIGCONT):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
        with trio.move_on_after(self.config.stop_timeout):
            await proc.wait()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    # --- adoption --------------------------------------------------------------------------------------
    async def _adopt(self, record: PidRecord, task_status: trio.TaskStatus[ServerInfo]) -> None:
        """Take over a verified server of ours whose daemon died: ready (or, if it was still booting,
        ready within start_timeout) and what answers on its port, else stop it and fail this lifetime.
        The caller has proven it ours and spawned with this configuration's command."""
        temporal = self._temporal_bridge()  # imported here, not at start-up: the server boots meanwhile
        config = self.config
        identity = ProcessIdentity.of_record(record)
        address = config.address  # the recorded one: its command line is this configuration's
        ports = {str(k): int(v) for k, v in dict(record.extra.get("ports", {})).items()}
        booting = record.extra.get("phase") == "booting"
        began = trio.current_time()
        try:
            pidfd = os.pidfd_open(record.pid)
        except ProcessLookupError:
            raise DevServerError(f"the dev server to adopt (pid {record.pid}) exited meanwhile") from None
        reason = "stopped by the runtime"
        stop, kill = True, False
        try:
            deadline = began + config.start_timeout
            while True:
                try:
                    with trio.fail_after(config.start_timeout):
                        client = await temporal.connect(
                            address, config.namespaces[0], timeout=config.health_timeout
                        )
                        await temporal.probe(client, config.namespaces, timeout=config.health_timeout)
                    break
                except (TemporalUnavailable, trio.TooSlowError) as exc:
                    # A server found booting (its daemon died before it was ready) gets its start_timeout.
                    if booting and trio.current_time() < deadline and not _exited(pidfd):
                        await trio.sleep(_POLL_READY)
                        continue
                    reason, kill = f"unhealthy when found: {exc}", True
                    raise DevServerError(
                        f"found our dev server (pid {record.pid}) but it is unhealthy ({exc}); replacing it"
                    ) from None
            if not await self._answers(record.pid):
                reason, kill = f"another process answers at {address}", True
                raise DevServerError(
                    f"found our dev server (pid {record.pid}) but another process answers at {address}; "
                    "replacing it"
                )
            self.info = ServerInfo(record.pid, address, ports, adopted=True, started_at=self._clock())
            if booting:
                ready_record = self._record(identity, ports, phase="ready")
                write_pid_file(self.paths.devserver_record, ready_record, durable=False)
            self._emit(
                ServerReady(address, record.pid, adopted=True, ready_after=trio.current_time() - began)
            )
            task_status.started(self.info)

            async def wait_exit() -> None:
                await trio.lowlevel.wait_readable(pidfd)

            hung = await self._watch(client, wait_exit)
            if hung is None:
                stop = False
                reason = "exited"
                raise DevServerError(f"the adopted dev server (pid {record.pid}) exited")
            reason, kill = f"hung: {hung}", True
            raise DevServerError(f"the adopted dev server (pid {record.pid}) stopped answering ({hung})")
        finally:
            with trio.CancelScope(shield=True):
                alive = not _exited(pidfd)
                if stop and self._left_running(ready=self.info is not None, kill=kill, alive=alive):
                    self._emit(ServerExited(address, record.pid, None, "left running for the next daemon"))
                else:
                    self.info = None
                    if stop:  # condemned first: nobody may attach to it while it dies
                        self._emit(ServerExited(address, record.pid, None, reason))
                        await stop_process_group_async(
                            identity,
                            timeout=0.0 if kill else config.stop_timeout,
                            kill_timeout=config.stop_timeout,
                        )
                    remove_pid_file(self.paths.devserver_record)
                    if not stop:
                        self._emit(ServerExited(address, record.pid, None, reason))
                os.close(pidfd)


def _exited(pidfd: int) -> bool:
    """A pidfd polls readable once its process has exited."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))
