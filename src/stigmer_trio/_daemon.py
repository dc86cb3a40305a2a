# The daemon process: `up` runs the runtime here until a signal stops it. Owns the process-wide things an
# embedding program must never get from the library: signal handling (SIGTERM / SIGINT / SIGHUP stop,
# SIGUSR1 stops leaving the dev server for the next daemon), logging setup, the working directory (the
# state dir) and the open files limit, gc.freeze once ready, one daemon per state dir (runtime.lock),
# runtime.json (written here and read back here, for `status`, `up`, `stop` and `demo`), and the
# daemon's side of the detach protocol (its verdict on a pipe; the settings it was handed). Rule: stdlib
# only at import (the CLI's hot paths read runtime.json through this module): trio, psutil and the
# runtime are imported inside the functions that run the daemon. Must never: touch argv or stdout (the
# CLI's), or exit the interpreter normally after temporalio ran (the caller leaves with os._exit; see
# `daemon_main`).
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path

from ._boundary._statefiles import (
    FileLock,
    PidRecord,
    UntrustedStateFile,
    ensure_state_dir,
    lock_is_held,
    read_pid_file,
    remove_pid_file,
    write_pid_file,
)
from ._core._layout import StateLayout

TYPE_CHECKING = False  # typing is not imported at run time: the CLI's hot paths stay lean
if TYPE_CHECKING:
    from typing import Any

    import trio

    from ._boundary._launch import Launch
    from ._boundary._sdnotify import SystemdNotifier
    from ._core._config import RuntimeConfig
    from ._core._events import Event, EventHook
    from ._observe._logfiles import RotatingLog
    from ._runtime import Runtime

__all__ = [
    "HANDOVER_SIGNAL",
    "SIGTERM",
    "DetachHandover",
    "configure_logging",
    "daemon_main",
    "daemon_record",
    "daemon_running",
    "devserver_record",
    "status_report",
    "take_detach_handover",
    "write_notification",
]

LOGGER = "stigmer_trio"  # the daemon's own log lines (the events log under "stigmer_trio.events")

# Signal numbers as plain ints: `signal` is not imported on the CLI's hot paths (a test checks them).
SIGTERM = 15  # graceful stop
HANDOVER_SIGNAL = 10  # SIGUSR1, `restart`: like SIGTERM, but a healthy dev server is left running
READY_WAIT = 30.0  # seconds the daemon waits for CONNECTED + workers before reporting "started"

# --- runtime.json: the reader -------------------------------------------------------------------------


def read_record(path: Path) -> PidRecord | None:
    """A pid file, or None: missing, corrupt, a planted symlink or unreadable all read as no record.
    A record that another uid owns or could have written (UntrustedStateFile) is refused, not ignored."""
    try:
        return read_pid_file(path)
    except UntrustedStateFile:
        raise
    except Exception:
        return None


def daemon_running(layout: StateLayout) -> bool:
    """Does a daemon hold this state dir's runtime.lock?"""
    return lock_is_held(layout.runtime_lock)


def daemon_record(layout: StateLayout) -> PidRecord | None:
    """runtime.json: the daemon's identity, `ready`, `address`, `namespace`, `workers` and its last
    status() document under `status`."""
    return read_record(layout.runtime_record)


def devserver_record(layout: StateLayout) -> PidRecord | None:
    """devserver.json: the dev server's identity, `address`, `ports`, `phase`, ..."""
    return read_record(layout.devserver_record)


def status_report(state_dir: Path, now: float | None = None) -> tuple[bool, dict[str, Any]]:
    """What the state files say: (running, the status document), without asking the daemon.

    The document has the shape of Runtime.status(); uptimes are recomputed for `now`. Not running but
    with a live devserver.lock: the orphaned server, marked `"orphaned": True`.
    """
    layout = StateLayout(state_dir)
    now = time.time() if now is None else now
    report: dict[str, Any] = {
        "running": False,
        "ready": False,
        "state_dir": str(state_dir),
        "address": None,
        "namespace": None,
        "daemon": None,
        "dev_server": None,
        "connection": None,
        "workers": [],
        "http": None,
        "ui": None,
    }
    if daemon_running(layout):
        daemon = daemon_record(layout)
        report["running"] = True
        if daemon is not None:
            document = daemon.extra.get("status")
            if isinstance(document, dict):  # the runtime's last status(): uptimes are recomputed
                report.update(document)
            report["ready"] = bool(daemon.extra.get("ready"))
            last = report["daemon"] if isinstance(report["daemon"], dict) else {}
            report["daemon"] = {
                **last,
                "pid": daemon.pid,
                "started_at": daemon.started_at,
                "uptime_s": round(now - daemon.started_at, 3),
                "last_error": last.get("last_error"),
            }
            server = report["dev_server"]
            if isinstance(server, dict):
                started = server.get("started_at")
                server["uptime_s"] = round(now - started, 3) if isinstance(started, int | float) else None
        return True, report
    if lock_is_held(layout.devserver_lock):
        orphan = devserver_record(layout)
        report["dev_server"] = {
            "pid": orphan.pid if orphan else None,
            "address": orphan.extra.get("address") if orphan else None,
            "restarts": 0,
            "adopted": False,
            "started_at": orphan.started_at if orphan else None,
            "uptime_s": round(now - orphan.started_at, 3) if orphan else None,
            "orphaned": True,
        }
    return False, report


# --- runtime.json: the writer -------------------------------------------------------------------------


class StatusFile:
    """Keeps runtime.json current, atomically: the daemon's identity plus its last status() document
    (what `status` reports when the endpoint does not answer).

    While `serve` runs, events only mark it stale and a writer task rewrites it off the Trio thread,
    coalesced (one write for a burst of events) and without fsync: a restart says ~10 events, and 10
    writes with 2 fsyncs each on the Trio thread (more while the new server writes its db) were on the
    restart's critical path. Without the task (before it starts, after it stops) events write at once.
    """

    def __init__(self, config: RuntimeConfig, clock: Callable[[], float] = time.time) -> None:
        import psutil

        self.path = StateLayout(config.state_dir).runtime_record
        self.config = config
        self.clock = clock
        me = psutil.Process()
        # Who we are, as `stop` will verify it: pid + create time + our own command line, whatever
        # it is (`python -m stigmer_trio up ...` or an embedding program calling daemon_main).
        self.identity = (os.getpid(), me.create_time(), tuple(me.cmdline()))
        self.started_at = clock()
        self.last_error: str | None = None
        self.runtime: Runtime | None = None
        self._stale: trio.Event | None = None  # set: rewrite it (only while `serve` runs)
        self._writing: trio.Lock | None = None

    def record(self) -> PidRecord:
        pid, create_time, cmdline = self.identity
        live = self.runtime.status() if self.runtime is not None else None
        if live is not None and self.last_error is not None:
            live["daemon"]["last_error"] = self.last_error
        extra = {
            "state_dir": str(self.config.state_dir),
            "ready": bool(live and live["ready"]),
            "address": live["address"] if live else None,
            "namespace": live["namespace"] if live else None,
            "workers": live["workers"] if live else [],
            "status": live,
        }
        return PidRecord(pid, create_time, cmdline, self.started_at, extra)

    def write(self, *, durable: bool = True) -> None:
        """Rewrite it now, on this thread."""
        write_pid_file(self.path, self.record(), durable=durable)

    def mark(self) -> None:
        """Something `status` shows changed: rewrite it (soon, by the writer task, if it runs)."""
        if self._stale is None:
            self.write(durable=False)
        else:
            self._stale.set()

    async def flush(self) -> None:
        """Rewrite it now (off the Trio thread), after any write in flight."""
        import functools

        import trio

        if self._writing is None:
            self._writing = trio.Lock()
        write = functools.partial(write_pid_file, self.path, self.record(), durable=False)
        async with self._writing:
            await trio.to_thread.run_sync(write)

    async def serve(self) -> None:
        """The writer task: one rewrite per burst of changes, until cancelled."""
        import trio

        self._stale = trio.Event()
        try:
            while True:
                await self._stale.wait()
                self._stale = trio.Event()
                await self.flush()
        finally:
            self._stale = None

    def on_event(self, event: Event) -> None:
        """The hook: rewrite runtime.json when something `status` shows changed."""
        from ._core._events import (
            ChildExited,
            ChildRestartScheduled,
            ChildStarted,
            ConnectionStateChanged,
            RestartLimitExceeded,
            ServerExited,
            ServerReady,
            WorkerStateChanged,
        )
        from ._core._names import ChildName

        if isinstance(event, ChildStarted | ChildExited) and event.name not in (
            ChildName.HTTP,
            ChildName.DEVSERVER,
        ):
            return
        if isinstance(
            event,
            ServerReady
            | ServerExited
            | ChildRestartScheduled
            | ConnectionStateChanged
            | WorkerStateChanged
            | ChildStarted
            | ChildExited
            | RestartLimitExceeded,
        ):
            self.mark()


# --- the detach protocol: the daemon's side ------------------------------------------------------------
# `up --detach` starts `python -m stigmer_trio up --state-dir DIR` in a new session with two pipes: on one
# it writes the resolved settings (JSON, then EOF), on the other it waits for the daemon's one-line
# verdict (ready / started / error / already-running). The daemon's stderr is logs/daemon.log.
NOTIFY_ENV = "STIGMER_TRIO_INTERNAL_NOTIFY_FD"  # the daemon writes its verdict here
SETTINGS_ENV = "STIGMER_TRIO_INTERNAL_SETTINGS_FD"  # the daemon reads its settings here
LOG_ENV = "STIGMER_TRIO_INTERNAL_LOG_FILE"  # the daemon's stderr is this file (it keeps it bounded)
STARTED_ENV = "STIGMER_TRIO_INTERNAL_STARTED"  # when `up` started: time.monotonic(), for the start-up log

if TYPE_CHECKING:
    Notify = Callable[[dict[str, Any]], None]  # receives the daemon's one verdict


class DetachHandover:
    """What a detached daemon was handed: its settings (JSON text), where to report, its log file."""

    __slots__ = ("log_path", "notify_fd", "settings", "started_at")

    def __init__(
        self, settings: str, notify_fd: int, log_path: Path | None, started_at: float | None = None
    ) -> None:
        self.settings = settings
        self.notify_fd = notify_fd
        self.log_path = log_path
        self.started_at = started_at


def take_detach_handover(environ: MutableMapping[str, str]) -> DetachHandover | None:
    """In a daemon started by `up --detach`: read the settings pipe to its end and take the handover out
    of the environment (no child of ours inherits it). None in any other process."""
    settings_fd = environ.pop(SETTINGS_ENV, None)
    notify_fd = environ.pop(NOTIFY_ENV, None)
    log_path = environ.pop(LOG_ENV, None)
    started = environ.pop(STARTED_ENV, None)
    if settings_fd is None or notify_fd is None:
        return None
    chunks = []
    with os.fdopen(int(settings_fd), "rb") as pipe:
        while chunk := pipe.read(65536):
            chunks.append(chunk)
    started_at = None
    with contextlib.suppress(TypeError, ValueError):
        started_at = float(started)  # type: ignore[arg-type]
    path = Path(log_path) if log_path else None
    return DetachHandover(b"".join(chunks).decode(), int(notify_fd), path, started_at)


def write_notification(fd: int) -> Notify:
    """A Notify that writes one JSON line to `fd` (the `up --detach` parent reads it), then closes it."""
    sent = False

    def notify(message: dict[str, Any]) -> None:
        nonlocal sent
        if sent:
            return
        sent = True
        try:
            os.write(fd, (json.dumps(message) + "\n").encode())
        except OSError:
            pass
        finally:
            os.close(fd)

    return notify


# --- running the daemon ---------------------------------------------------------------------------------


async def _daemon(
    config: RuntimeConfig,
    status: StatusFile,
    notify: Notify,
    systemd: SystemdNotifier | None = None,
    spawned: Launch | None = None,
    phases: StartupPhases | None = None,
) -> int:
    import logging
    import signal

    import trio

    from ._core._errors import StigmerError, first_leaf
    from ._core._events import RestartLimitExceeded
    from ._runtime import open_runtime_spawned

    logger = logging.getLogger(LOGGER)
    began = trio.current_time()
    phases = phases or StartupPhases(None)
    phases.mark("trio.run")
    failure: BaseException | None = None

    stops = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)  # SIGHUP: the terminal closed
    with trio.open_signal_receiver(*stops) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    if signum == HANDOVER_SIGNAL and status.runtime is not None:
                        # `restart`: stop, but leave a healthy dev server running for the next daemon to
                        # adopt (its workers still shut down first, while the server is up).
                        status.runtime._keep_server_running()
                        logger.info("received %s: stopping, leaving the dev server running", signum)
                    else:
                        logger.info("received %s: stopping", signal.Signals(signum).name)
                    if systemd is not None:
                        systemd.stopping(f"stopping ({signal.Signals(signum).name})")
                    nursery.cancel_scope.cancel(reason=f"signal {signum}")
                    return

            async def run_tree() -> None:
                nonlocal failure
                try:
                    hooks: tuple[EventHook, ...] = (status.on_event, phases.on_event)
                    if systemd is not None:
                        hooks += (systemd.on_event,)
                    async with open_runtime_spawned(config, hooks, spawned) as runtime:
                        status.runtime = runtime
                        status.mark()
                        with trio.move_on_after(READY_WAIT):
                            await runtime.wait_ready(give_up_when_disconnected=True)
                        await status.flush()  # says ready before anyone is told so
                        elapsed = trio.current_time() - began
                        ready = runtime.status()["ready"]
                        phases.mark("ready" if ready else "started, not ready")
                        origin, steps = phases.origin, phases.line()
                        logger.info("start-up phases (ms from `up`, at monotonic %.6f s): %s", origin, steps)
                        ui = (runtime.status().get("ui") or {}).get("url")  # the dev server's Web UI
                        logger.info(
                            "%s after %.3f s%s",
                            "ready" if ready else "started, not ready",
                            elapsed,
                            f"; web UI {ui}" if ui else "",
                        )
                        notify(
                            {
                                "event": "ready" if ready else "started",
                                "pid": os.getpid(),
                                "address": runtime.status()["address"],
                                "http": runtime.http_url,
                                "ui": ui,
                                "elapsed": elapsed,
                            }
                        )
                        if systemd is not None:  # READY=1 also when only started: systemd must not
                            # kill a daemon that keeps reconnecting to a Temporal that is down
                            systemd.ready(
                                f"ready: Temporal at {runtime.status()['address']}"
                                if ready
                                else f"running, not ready: Temporal at {runtime.status()['address']} "
                                "does not answer; reconnecting"
                            )
                        runtime._prepare_endpoint()  # after the verdict: not on the critical path
                        _freeze_startup_objects()
                        await trio.sleep_forever()
                except* StigmerError as group:
                    failure = first_leaf(group)
                nursery.cancel_scope.cancel(reason="supervision tree ended")

            nursery.start_soon(stop_on_signal)
            nursery.start_soon(status.serve)
            nursery.start_soon(run_tree)
            if systemd is not None:  # WATCHDOG=1 from this loop: a wedged loop stops them
                nursery.start_soon(systemd.serve_watchdog)
    if failure is not None:
        status.last_error = str(failure)
        if not isinstance(failure, RestartLimitExceeded):  # that one was logged as an event already
            logger.error("%s", failure)
        if systemd is not None:
            systemd.stopping(f"failed: {failure}")
        with contextlib.suppress(Exception):
            status.write()
        await _stop_unclaimed(config, spawned)  # before the verdict: `up` returns with nothing running
        notify({"event": "error", "message": str(failure)})
        return 1
    return 0


async def _stop_unclaimed(config: RuntimeConfig, spawned: Launch | None) -> None:
    """Stop the early-spawned server if the tree never took it over (the runtime failed to start, say
    its endpoint's port was taken): nobody else would. Off the Trio thread (it waits for the exit)."""
    import trio

    server = config.dev_server
    if spawned is None or spawned.claimed or server is None:
        return
    from ._boundary._launch import stop_unclaimed

    layout = StateLayout(config.state_dir)
    await trio.to_thread.run_sync(stop_unclaimed, spawned, layout, server.stop_timeout)
    spawned.claimed = True  # stopped: the caller's safety net has nothing left to do


def _absolute_paths(config: RuntimeConfig) -> RuntimeConfig:
    """The config with its paths (state dir, dev server binary and db) absolute, for the chdir."""
    import attrs

    server = config.dev_server
    if server is not None:
        server = attrs.evolve(
            server,
            binary=server.binary and server.binary.absolute(),
            db_filename=server.db_filename and server.db_filename.absolute(),
        )
    return attrs.evolve(config, state_dir=config.state_dir.absolute(), dev_server=server)


def _raise_open_files_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit (a dev server, workers and the control endpoint's
    connections share it), logged once."""
    import logging
    import resource

    logger = logging.getLogger(LOGGER)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        logger.warning("open files limit stays %s (hard %s): %s", soft, hard, exc)
        return
    logger.info("open files limit raised from %s to %s (the hard limit)", soft, hard)


def _freeze_startup_objects() -> None:
    """The daemon owns its process: move everything start-up built (temporalio's object graph, the
    modules) out of the collector's way. Measured (benchmarks/http_endpoint.py): full collections went
    from ~27 ms to ~2.5 ms, and they are what a workflow's p99 feels."""
    import gc

    gc.collect()
    gc.freeze()


class StartupPhases:
    """When each step of the daemon's start-up happened, as ms from `up` (time.monotonic(), one clock for
    every process): logged once at ready as "start-up phases", which benchmarks/devserver.py reads."""

    def __init__(self, started_at: float | None) -> None:
        self.origin = time.monotonic() if started_at is None else started_at
        self.marks: dict[str, float] = {"daemon started": time.monotonic()}

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, time.monotonic())

    def on_event(self, event: Event) -> None:
        """The hook: the first ServerListening, ServerReady, CONNECTED and worker polling."""
        name = type(event).__name__
        if name == "ServerListening":
            self.mark("server listening")
        elif name == "ServerReady":
            self.mark("server ready")
        elif name == "ConnectionStateChanged" and getattr(event, "new", None) == "connected":
            self.mark("connected")
        elif name == "WorkerStateChanged" and getattr(event, "running", False):
            self.mark("workers polling")

    def line(self) -> str:
        steps = sorted(self.marks.items(), key=lambda item: item[1])
        return ", ".join(f"{name} {(at - self.origin) * 1000:.0f}" for name, at in steps)


def _spawn_early(config: RuntimeConfig) -> Launch | None:
    """Spawn the dev server now, before trio, trio-asyncio and temporalio are imported (~300 ms), so that
    it boots (~150 ms) while they load; the tree's dev-server child serves it (DevServer(spawned=...)).
    None when there is nothing to spawn here: external mode, or devserver.lock is held (a server of
    ours to adopt, or one not provably ours: the child decides, as it always does), or the spawn failed
    (a busy port, no binary: the child tries again and says why, through its events and policy)."""
    server = config.dev_server
    if server is None:
        return None
    import logging

    from ._boundary._launch import ServerPlan, spawn_server
    from ._observe._logfiles import RotatingLog

    layout = StateLayout(config.state_dir)
    lock = FileLock(layout.devserver_lock)
    try:
        for directory in (layout.logs, layout.home):
            ensure_state_dir(directory)
        if not lock.acquire():
            return None
        remove_pid_file(layout.devserver_record)  # nobody holds the lock: no server of ours lives
        log = RotatingLog(layout.devserver_log, server.log_max_bytes, server.log_backups)
        log_fd = log.open_for_writer()
        try:
            return spawn_server(ServerPlan(server, layout), lock, log_fd, log.size())
        finally:
            os.close(log_fd)
    except Exception as exc:  # the dev-server child meets it again and reports it
        logging.getLogger(LOGGER).debug("no early spawn of the dev server: %s", exc)
        return None
    finally:
        lock.release()  # the server holds it through its inherited fd


def _preload() -> None:
    """Import what the runtime needs (trio, trio-asyncio, the tree, hypercorn, temporalio through the
    bridge) while the early-spawned server boots; the collector stays off meanwhile (the imports
    allocate ~100k objects that live for good: ~5 % of their time went to collections)."""
    import gc

    gc.disable()
    try:
        from ._boundary import _temporal  # noqa: F401
        from ._tree import _build  # noqa: F401
    finally:
        gc.enable()


class _StopRequested(BaseException):
    """SIGTERM or SIGHUP arrived before the Trio run (and its signal receiver) began."""


class _StartupStop:
    """Until trio.run installs its own receiver, SIGTERM and SIGHUP raise _StopRequested in the main
    thread (SIGINT raises KeyboardInterrupt already), so a stop that comes while the early-spawned
    server boots and the imports run still goes through daemon_main's cleanup (which stops that
    server) instead of killing the process and orphaning it. While `held`, one is only noted and
    raised when released: the spawn then never loses the server it just started."""

    def __init__(self) -> None:
        self.held = False
        self.pending: int | None = None

    def __call__(self, signum: int, frame: object) -> None:
        if self.held:
            self.pending = signum
            return
        raise _StopRequested(signum)

    def release(self) -> None:
        self.held = False
        if self.pending is not None:
            raise _StopRequested(self.pending)


def _stop_on_signals_while_starting(handler: _StartupStop) -> dict[int, Any]:
    """Install `handler` for SIGTERM and SIGHUP; the previous handlers, to restore."""
    import signal

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        previous[int(signum)] = signal.signal(signum, handler)
    return previous


def _restore_signals(previous: dict[int, Any]) -> None:
    import signal

    for signum, handler in previous.items():
        signal.signal(signum, handler)


def daemon_main(config: RuntimeConfig, notify: Notify, *, started_at: float | None = None) -> int:
    """Run the daemon in this process until stopped; returns the exit code (0 stopped by a signal or
    already running elsewhere, 1 the tree failed, 130 interrupted).

    One daemon per state dir (runtime.lock). `notify` receives one dict: ready / started / error /
    already-running. SIGTERM, SIGINT and SIGHUP stop it gracefully (RuntimeConfig.shutdown_timeout
    bounds the tree's stop); SIGUSR1 too, leaving a healthy dev server running for the next daemon to
    adopt. The daemon owns its process: its working directory becomes the state dir (the config's
    paths are made absolute first) and its soft RLIMIT_NOFILE is raised to the hard limit.
    Under systemd ($NOTIFY_SOCKET) it sends READY=1, STATUS=, WATCHDOG=1 and STOPPING=1 (see
    _boundary/_sdnotify.py) and takes systemd's variables out of the environment.
    Start-up: the dev server is spawned first, then trio and temporalio are imported while it boots;
    `started_at` (time.monotonic() of the `up` command) is where the logged start-up phases count from.
    The caller must leave with os._exit(code): temporalio can crash the interpreter at exit.
    """
    from ._boundary._sdnotify import SystemdNotifier

    phases = StartupPhases(started_at)
    systemd = SystemdNotifier.from_environ(os.environ)
    config = _absolute_paths(config)
    ensure_state_dir(config.state_dir)
    os.chdir(config.state_dir)  # hold no user directory; relative paths in a worker's code mean the state dir
    _raise_open_files_limit()
    lock = FileLock(StateLayout(config.state_dir).runtime_lock)
    if not lock.acquire():
        lock.release()
        if systemd is not None:
            systemd.status(f"another daemon runs in {config.state_dir}: exiting")
        notify({"event": "already-running"})
        return 0
    launch = None
    status = None
    stopper = _StartupStop()
    previous = _stop_on_signals_while_starting(stopper)
    try:
        phases.mark("lock taken")
        stopper.held = True
        launch = _spawn_early(config)
        stopper.release()  # a stop during the spawn is raised here, with the server in hand
        if launch is not None:
            phases.mark("server spawned")
        _preload()
        phases.mark("imports done")
        import trio

        status = StatusFile(config)
        status.write()
        _restore_signals(previous)  # from here on the Trio run's receiver handles them (_daemon)
        return trio.run(_daemon, config, status, notify, systemd, launch, phases)
    except _StopRequested:  # SIGTERM / SIGHUP before the tree ran: stopped, gracefully
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        _restore_signals(previous)
        server = config.dev_server
        if launch is not None and not launch.claimed and server is not None:
            from ._boundary._launch import stop_unclaimed  # the tree never took it: nobody else stops it

            stop_unclaimed(launch, StateLayout(config.state_dir), server.stop_timeout)
        if status is not None:
            remove_pid_file(status.path)
        lock.release()


# --- logging --------------------------------------------------------------------------------------------
# Loggers of other libraries the daemon's log takes in, at this level: temporalio's Python loggers and
# "temporalio.core", where _temporal.sdk_runtime forwards sdk-core's own logs. Without a handler of
# ours their warnings reached daemon.log as bare lines through logging.lastResort (no time, no level).
# WARNING (30; `logging` is not imported on the hot paths): the level lastResort showed; their INFO
# lines (each Worker shutdown) would be noise.
FOREIGN_LOGGERS = {"temporalio": 30}


def configure_logging(
    stream: Any = None, *, log_format: str = "text", log_file: RotatingLog | None = None
) -> None:
    """The daemon's logging: one handler, text or JSON lines, on the "stigmer_trio" logger and on
    temporalio's (FOREIGN_LOGGERS); with `log_file` (the detached daemon's stderr is that file) it is
    kept under its size bound. Text lines are ``time LEVEL message``; a record of another library's
    logger also names its logger."""
    import logging

    from ._observe._logfiles import RotatingStreamHandler
    from ._observe._logs import JsonFormatter

    ours = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    foreign = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")

    class TextFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            if record.name == LOGGER or record.name.startswith(f"{LOGGER}."):
                return ours.format(record)
            return foreign.format(record)

    handler = RotatingStreamHandler(log_file, stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    levels = {LOGGER: logging.INFO, **FOREIGN_LOGGERS}
    for name, level in levels.items():
        root = logging.getLogger(name)
        root.handlers[:] = [handler]
        root.setLevel(level)
        root.propagate = False
