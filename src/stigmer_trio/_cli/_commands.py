# The commands: status, logs, up (foreground, or detached: the parent's side of the detach protocol),
# stop, restart, demo. Each returns its exit code. Rule: what a command prints is decided here; the
# state files are read through _daemon, processes are signalled through _boundary/_process, Temporal is
# reached through _boundary/_temporal, and the hot paths stay stdlib only (heavy imports inside).
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from .._boundary._statefiles import lock_is_held
from .._core._layout import StateLayout
from .._daemon import (
    HANDOVER_SIGNAL,
    LOG_ENV,
    NOTIFY_ENV,
    SETTINGS_ENV,
    SIGTERM,
    STARTED_ENV,
    DetachHandover,
    daemon_record,
    daemon_running,
    devserver_record,
    status_report,
    take_detach_handover,
)
from ._common import EXIT_FAILURE, EXIT_NOT_RUNNING, EXIT_OK, PROG, UsageError, say
from ._settings import Settings, full_config

TYPE_CHECKING = False  # typing is not imported at run time: the hot paths stay lean
if TYPE_CHECKING:
    from typing import Any, NoReturn

    from .._core._config import RuntimeConfig
    from .._daemon import Notify

__all__ = ["demo", "detach_handover", "detached_daemon", "logs", "restart", "status", "stop", "up"]

DETACH_WAIT = 180.0  # seconds `up --detach` waits for the daemon's verdict
UP_TRIES = 3  # a daemon found starting that then dies is replaced by ours; at most this often
ORPHAN_WAIT = 2.0  # seconds a held devserver.lock may take to be provably ours (or to be let go)
RESTART_STOP_TIMEOUT = 15.0  # `restart`: the old daemon's graceful stop budget
KILL_WAIT = 5.0  # seconds `stop` waits for a daemon it had to SIGKILL to be gone
# When this command started (time.monotonic(): one clock for every process of the machine); the daemon
# reports its start-up phases from here (daemon.log "start-up phases").
STARTED = time.monotonic()


def mark_started(when: float) -> None:
    global STARTED
    STARTED = when


@contextlib.contextmanager
def _trusted(state_dir: Path, *subdirs: str) -> Iterator[StateLayout]:
    """The state dir's layout, once the dir (and `subdirs` of it) are ours alone: owned by our euid,
    not writable by group or others. That, or a state file found unusable inside the block (another
    uid's lock or record, an unreadable lock), is a one-line UsageError (exit 2)."""
    from .._boundary._statefiles import check_trusted_dir
    from .._core._errors import StateFileError

    try:
        check_trusted_dir(state_dir)
        for name in subdirs:
            check_trusted_dir(state_dir / name, f"state_dir's {name}/")
        yield StateLayout(state_dir)
    except StateFileError as exc:
        raise UsageError(str(exc)) from None


# --- status --------------------------------------------------------------------------------------------
def status(state_dir: Path, *, as_json: bool) -> int:
    """LSB exit codes: 0 running and ready, 1 running but not ready, 3 not running. The live document
    from the endpoint when it answers, else what runtime.json last said."""
    from .._boundary._endpoint import get_json

    with _trusted(state_dir):
        running, report = status_report(state_dir)
    if running:
        endpoint = report.get("http")
        url = endpoint.get("url") if isinstance(endpoint, dict) else None
        live = get_json(url, "/status") if isinstance(url, str) else None
        if live is not None:
            report = live
    code = (EXIT_OK if report.get("ready") else EXIT_FAILURE) if running else EXIT_NOT_RUNNING
    if as_json:
        print(json.dumps(report))
        return code
    server = report["dev_server"]
    if report["running"]:
        daemon = report["daemon"] or {}
        if server and server.get("pid"):
            where = f"dev server {server['address']} (pid {server['pid']})"
        elif server:
            where = f"dev server {server['address']} (not running)"
        else:
            where = f"Temporal at {report.get('address')}"
        state = "running and ready" if report["ready"] else "running, not ready"
        print(f"{state}: {where}; daemon pid {daemon.get('pid')}; state dir {state_dir}")
        connection = report.get("connection") or {}
        if connection:
            error = f" ({connection['last_error']})" if connection.get("last_error") else ""
            print(
                f"  connection {connection.get('state')}{error}, epoch {connection.get('epoch')}, "
                f"reconnects {connection.get('reconnects')}"
            )
        for worker in report.get("workers") or []:
            running_now = "running" if worker.get("running") else "not running"
            print(f"  worker {worker.get('task_queue')}: {running_now}, restarts {worker.get('restarts')}")
        if server:
            print(
                f"  dev server restarts {server['restarts']}, adopted {server['adopted']}, "
                f"uptime {server['uptime_s']} s"
            )
        outbox = report.get("outbox")
        if isinstance(outbox, dict):
            age = outbox.get("oldest_pending_age_s")
            oldest = f", oldest pending {age} s" if age is not None else ""
            print(f"  outbox {outbox.get('pending')} pending, {outbox.get('failed')} failed{oldest}")
        http = report.get("http")
        if isinstance(http, dict):
            print(f"  endpoint {http.get('url')} (/healthz /readyz /status /metrics)")
        ui = report.get("ui")
        if isinstance(ui, dict):
            print(f"  web UI {ui.get('url')}")
    elif server:
        print(
            f"not running: but an orphaned dev server (pid {server['pid']}, {server['address']}) is alive; "
            f"`{PROG} up` adopts it if it is provably ours and runs this configuration's command (else "
            f"stops and replaces it), `{PROG} stop` stops it"
        )
    else:
        print(f"not running (state dir {state_dir})")
    return code


# --- logs ----------------------------------------------------------------------------------------------
def logs(state_dir: Path, *, lines: int | None, follow: bool, devserver: bool) -> int:
    if lines is not None and lines < 0:
        raise UsageError(f"--lines must be >= 0, got {lines!r}")
    from .._observe._logfiles import show_log

    with _trusted(state_dir, "logs") as layout:
        path = layout.devserver_log if devserver else layout.daemon_log
    try:
        found = show_log(path, lines=lines, follow=follow)
    except KeyboardInterrupt:
        return 130
    if not found:
        which = "dev server" if devserver else "daemon (only a detached daemon writes one)"
        say(f"no {which} log at {path}")
        return EXIT_FAILURE
    return EXIT_OK


# --- up ------------------------------------------------------------------------------------------------
def up(args: argparse.Namespace, env: Mapping[str, str], file: Mapping[str, Any], state_dir: Path) -> int:
    """Start the daemon (foreground, or detached: wait for its verdict) unless one runs already."""
    with _trusted(state_dir, "logs", "home"):
        return _up(args, env, file, state_dir)


def _up(args: argparse.Namespace, env: Mapping[str, str], file: Mapping[str, Any], state_dir: Path) -> int:
    settings = None
    for _ in range(UP_TRIES):
        if daemon_running(StateLayout(state_dir)):
            code = _already_running(state_dir, args.port)
            if code is not None:
                return code
            continue  # it stopped before it was ready: start ours
        if settings is None:
            settings = Settings.gather(args, env, file, state_dir)
            config = full_config(settings)  # every mistake is a usage error here, before any detach
        if not args.detach:
            _foreground(config, notify=None, log_path=None, started_at=STARTED)
        code = _detach(settings, config)
        if code is not None:
            return code
    say(f"daemons in {state_dir} keep stopping before they are ready; see `status` and logs/daemon.log")
    return EXIT_FAILURE


def restart(
    args: argparse.Namespace, env: Mapping[str, str], file: Mapping[str, Any], state_dir: Path
) -> int:
    """Stop the daemon leaving a healthy dev server running, then `up --detach`: the new one adopts it.
    The new settings are checked first: a mistake in them (exit 2) leaves the running daemon alone."""
    args.detach = True
    full_config(Settings.gather(args, env, file, state_dir))
    code = _stop(state_dir, RESTART_STOP_TIMEOUT, keep_server=True)
    if code != EXIT_OK:
        return code
    return up(args, env, file, state_dir)


def _already_running(state_dir: Path, port: int | None = None, wait: bool = True) -> int | None:
    """Say where the running daemon is; while it is still starting, wait (bounded) until it is ready.
    None: it stopped (or died) before it was ready; the caller starts a daemon of its own."""
    daemon = daemon_record(StateLayout(state_dir))
    if wait and (daemon is None or not daemon.extra.get("ready")):
        return _wait_for_other_daemon(state_dir, time.monotonic(), port)
    if daemon is None:
        print(f"already running (state dir {state_dir})")
        return EXIT_OK
    address = daemon.extra.get("address")
    ui = (daemon.extra.get("status") or {}).get("ui")
    web = f", web UI {ui.get('url')}" if isinstance(ui, dict) else ""
    print(f"already running: daemon pid {daemon.pid}, address {address}{web}")
    if port is not None and isinstance(address, str) and not address.endswith(f":{port}"):
        say(f"note: the running daemon keeps its own settings (address {address}); `restart` to apply --port")
    return EXIT_OK


def _wait_for_other_daemon(state_dir: Path, began: float, port: int | None = None) -> int | None:
    """A daemon runs (or won the race) but is not ready yet: wait until it is ready (its exit code) or
    gone (None: it stopped or died, say killed mid-start; the caller may start its own)."""
    layout = StateLayout(state_dir)
    while time.monotonic() - began < DETACH_WAIT:
        if not daemon_running(layout):
            return None
        record = daemon_record(layout)
        if record is not None and record.extra.get("ready"):
            return _already_running(state_dir, port, wait=False)
        time.sleep(0.02)
    say(f"another daemon in {state_dir} is not ready after {DETACH_WAIT:g} s")
    return EXIT_FAILURE


def detach_handover() -> DetachHandover | None:
    """In a daemon started by `up --detach`: what its parent handed over (taken out of os.environ)."""
    return take_detach_handover(os.environ)


def detached_daemon(handover: DetachHandover) -> NoReturn:
    """The detached daemon: the settings its parent resolved (not this process's argv), then the daemon."""
    from .._daemon import write_notification

    notify = write_notification(handover.notify_fd)
    try:
        config = full_config(Settings.from_json(handover.settings))
    except UsageError as exc:  # the parent resolved the same settings: only a changed world gets here
        say(f"error: {exc}")
        notify({"event": "error", "message": str(exc)})
        sys.stderr.flush()
        os._exit(2)
    _foreground(config, notify=notify, log_path=handover.log_path, started_at=handover.started_at)


def _foreground(
    config: RuntimeConfig, *, notify: Notify | None, log_path: Path | None, started_at: float | None
) -> NoReturn:
    """Run the daemon in this process (`notify`: the detach protocol's verdict pipe, if detached;
    `log_path`: our stderr's file, kept bounded; `started_at`: when the command that started it did,
    time.monotonic()); leaves with os._exit."""
    from .._daemon import configure_logging, daemon_main
    from .._observe._logfiles import RotatingLog

    log_file = None
    if log_path is not None:
        log_file = RotatingLog(log_path, config.log_max_bytes, config.log_backups)
    configure_logging(log_format=config.log_format, log_file=log_file)

    def report(message: dict[str, Any]) -> None:
        if message.get("event") == "already-running":
            _already_running(config.state_dir)

    notify = notify or report
    code = EXIT_FAILURE
    try:
        code = daemon_main(config, notify, started_at=started_at)
    except BaseException:  # a bug, not a user mistake: show it before leaving with os._exit
        import traceback

        traceback.print_exc()
        notify({"event": "error", "message": "the daemon crashed; see logs/daemon.log"})
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # temporalio can crash the interpreter at exit after a clean shutdown


class _Daemon:
    """The daemon `up --detach` started: forked (the usual way) or a new interpreter (subprocess)."""

    def __init__(self, pid: int, popen: Any = None) -> None:
        self.pid = pid
        self._popen = popen
        self.returncode: int | None = None

    def wait(self, timeout: float) -> int | None:
        """Its exit code once it exited (reaped), or None if it still runs after `timeout` seconds."""
        if self._popen is not None:
            import subprocess

            with contextlib.suppress(subprocess.TimeoutExpired):
                self.returncode = self._popen.wait(timeout=timeout)
            return self.returncode
        deadline = time.monotonic() + timeout
        while self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
            elif time.monotonic() >= deadline:
                break
            else:
                time.sleep(0.01)
        return self.returncode


def _single_threaded() -> bool:
    """Is this process one thread (the kernel's view: threads a C library started count too)? Only
    then is fork safe."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def _fork_daemon(config: RuntimeConfig, verdict: tuple[int, int], log_fd: int, log_path: Path) -> _Daemon:
    """Fork the daemon: it keeps everything this command already imported and resolved (its settings,
    the --worker modules), and no second interpreter starts (~50-100 ms less to ready). The child starts
    a new session, its stdin is /dev/null, its stdout and stderr the daemon log; it never returns."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return _Daemon(pid)
    try:  # the daemon: whatever happens, it leaves through os._exit, never back into the CLI
        os.setsid()
        verdict_read, verdict_write = verdict
        os.close(verdict_read)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        while "" in sys.path:  # the cwd, relative: the daemon moves to its state dir
            sys.path.remove("")
        from .._daemon import write_notification

        notify = write_notification(verdict_write)
    except BaseException:
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        os._exit(EXIT_FAILURE)
    _foreground(config, notify=notify, log_path=log_path, started_at=STARTED)


def _exec_daemon(settings: Settings, verdict_write: int, log_fd: int, log_path: Path) -> tuple[_Daemon, int]:
    """Start the daemon as a new interpreter (when this process has threads, which fork would not copy):
    its settings go on a pipe (returned: the caller writes them), its verdict comes back on another."""
    import subprocess

    settings_read, settings_write = os.pipe()
    try:
        # Its command line names the state dir (so it can be told apart, as before); its settings are
        # on the pipe, not in argv. `-P`: nothing is imported from the current directory (the daemon
        # loads --worker modules from it, then moves to the state dir: see __main__.py).
        daemon = subprocess.Popen(
            [sys.executable, "-P", "-m", "stigmer_trio", "up", "--state-dir", str(settings.state_dir)],
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            start_new_session=True,
            pass_fds=(verdict_write, settings_read),
            env={
                **os.environ,
                NOTIFY_ENV: str(verdict_write),
                SETTINGS_ENV: str(settings_read),
                LOG_ENV: str(log_path),
                STARTED_ENV: repr(STARTED),
            },
        )
    finally:
        os.close(settings_read)
    return _Daemon(daemon.pid, daemon), settings_write


def _detach(settings: Settings, config: RuntimeConfig) -> int | None:
    """The parent's side of the detach protocol: start the daemon in a new session (a fork of this
    process; a new interpreter if this one has threads), wait for its verdict on a pipe; print where it
    runs or why it failed. None: it found another daemon starting, which then stopped before it was
    ready (try again)."""
    state_dir = settings.state_dir
    layout = StateLayout(state_dir)
    layout.logs.mkdir(mode=0o700, parents=True, exist_ok=True)
    verdict_read, verdict_write = os.pipe()
    began = time.monotonic()
    try:
        log_fd = os.open(layout.daemon_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:  # a symlink planted at the log (ELOOP), ...: one line, nothing started
        for fd in (verdict_read, verdict_write):
            os.close(fd)
        say(f"refusing to open the daemon log {str(layout.daemon_log)!r}: {exc.strerror}; remove it")
        return EXIT_FAILURE
    settings_write = None
    try:
        if _single_threaded():
            daemon = _fork_daemon(config, (verdict_read, verdict_write), log_fd, layout.daemon_log)
        else:
            daemon, settings_write = _exec_daemon(settings, verdict_write, log_fd, layout.daemon_log)
    finally:
        os.close(verdict_write)
        os.close(log_fd)
    if settings_write is not None:
        with os.fdopen(settings_write, "wb") as pipe, contextlib.suppress(BrokenPipeError):
            pipe.write(settings.to_json().encode())  # a daemon that died first: its exit code tells
    with os.fdopen(verdict_read, "rb") as pipe:
        line = _read_line(pipe, DETACH_WAIT)
    message: dict[str, Any] = {}
    if line:
        try:
            message = json.loads(line)
        except ValueError:
            message = {}
    event = message.get("event")
    if event == "started":
        print(
            f"running, not ready yet: Temporal at {message.get('address')} does not answer; daemon pid "
            f"{message.get('pid')} keeps reconnecting (see `{PROG} status`)"
        )
        return EXIT_OK
    if event == "ready":
        elapsed = time.monotonic() - began
        endpoint = f", endpoint {message['http']}" if message.get("http") else ""
        ui = f", web UI {message['ui']}" if message.get("ui") else ""
        print(
            f"running: dev server {message.get('address')}, daemon pid {message.get('pid')}"
            f"{endpoint}{ui}, ready in {elapsed:.2f} s"
        )
        return EXIT_OK
    if event == "already-running":
        daemon.wait(DETACH_WAIT)
        return _wait_for_other_daemon(state_dir, began)
    if event == "error":
        daemon.wait(2.0)  # it leaves at once after its verdict: return with nothing of it running
        say(f"the daemon failed: {message.get('message')}")
        return EXIT_FAILURE
    daemon.wait(2.0)  # EOF without a verdict: let it finish exiting
    if daemon.returncode is None:
        say(f"the daemon (pid {daemon.pid}) did not report within {DETACH_WAIT:g} s; see {layout.daemon_log}")
    else:
        say(f"the daemon exited with code {daemon.returncode} before it was ready; see {layout.daemon_log}")
    return EXIT_FAILURE


def _read_line(pipe: Any, timeout: float) -> bytes:
    import select

    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([pipe], [], [], remaining)
        if not ready:
            break
        chunk = os.read(pipe.fileno(), 4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0]


# --- demo ----------------------------------------------------------------------------------------------
def demo(state_dir: Path, name: str) -> int:
    """Run the demo workflow through the running daemon's demo worker; print result and latency."""
    from .._core._names import DEMO_TASK_QUEUE

    with _trusted(state_dir) as layout:
        record = daemon_record(layout) if daemon_running(layout) else None
    if record is None or not record.extra.get("ready"):
        say(f"no ready daemon in {state_dir}: start one with `{PROG} up --detach` first")
        return EXIT_NOT_RUNNING
    workers = record.extra.get("workers") or []
    if not any(w.get("task_queue") == DEMO_TASK_QUEUE and w.get("running") for w in workers):
        say("the running daemon has no demo worker (started with --no-demo)")
        return EXIT_FAILURE
    address = str(record.extra.get("address"))
    namespace = record.extra.get("namespace") or "default"
    code = EXIT_OK
    try:
        from .._boundary._temporal import run_demo_client

        result, seconds = run_demo_client(address, namespace, name)
        print(f"{result}  ({seconds * 1000:.1f} ms round trip via {address})")
    except Exception as exc:
        say(f"the demo workflow failed: {type(exc).__name__}: {exc}")
        code = EXIT_FAILURE
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # temporalio can crash the interpreter at exit


# --- stop ----------------------------------------------------------------------------------------------
def stop(state_dir: Path, timeout: float) -> int:
    """Stop the daemon and its dev server (or an orphaned one)."""
    return _stop(state_dir, timeout)


def _stop(state_dir: Path, timeout: float, *, keep_server: bool = False) -> int:
    """Stop the daemon (and its dev server, or an orphaned one). `keep_server` (the `restart`
    handover): the daemon leaves a healthy dev server running for the next daemon to adopt."""
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout < 0
    ):
        raise UsageError(f"--timeout must be a finite number >= 0, got {timeout!r}")
    with _trusted(state_dir) as layout:
        return _stop_trusted(layout, timeout, keep_server)


def _stop_trusted(layout: StateLayout, timeout: float, keep_server: bool) -> int:
    daemon_up = daemon_running(layout)
    server_up = lock_is_held(layout.devserver_lock)
    if not daemon_up and not server_up:
        print("not running")
        return EXIT_OK
    began = time.monotonic()
    stopped: list[str] = []
    if daemon_up:
        code, daemon = _stop_daemon(layout, timeout, keep_server)
        if code != EXIT_OK:
            return code
        if daemon is not None:
            stopped.append(daemon)
    if not keep_server:
        code, orphan = _stop_orphan(layout, timeout)
        if code != EXIT_OK:
            return code
        if orphan is not None:
            stopped.append(orphan)
    if not stopped:
        print("not running")
        return EXIT_OK
    print(f"stopped {', '.join(stopped)} in {time.monotonic() - began:.2f} s")
    return EXIT_OK


def _stop_daemon(layout: StateLayout, timeout: float, keep_server: bool) -> tuple[int, str | None]:
    """Stop the daemon holding runtime.lock, once proven ours while a pidfd pins it: runtime.json (in
    our trusted state dir) names it, it runs as our uid with that start time and command line, and it
    is the process holding runtime.lock (/proc/locks). Whatever command line started it (the record
    says which), nothing but that proof is relied on. Retried briefly: a daemon that just took its lock
    writes its record next. None: it died meanwhile (only its server may be left)."""
    import signal

    from .._boundary._process import pin_verified
    from .._boundary._statefiles import lock_holder_pids
    from .._core._errors import IdentityMismatch

    give_up = time.monotonic() + ORPHAN_WAIT
    while True:
        record = daemon_record(layout)
        why = "runtime.json is missing"
        if record is not None:
            try:
                with pin_verified(record) as daemon:
                    holders = lock_holder_pids(layout.runtime_lock)
                    if daemon is None:
                        why = f"pid {record.pid} has exited"
                    elif holders is not None and daemon.pid not in holders:
                        why = f"its holder is not pid {daemon.pid}, which runtime.json names"
                    else:
                        if daemon.send(HANDOVER_SIGNAL if keep_server else SIGTERM) and not daemon.wait(
                            timeout
                        ):
                            say(
                                f"the daemon (pid {daemon.pid}) did not stop within {timeout:g} s: killing it"
                            )
                            daemon.send(signal.SIGKILL)
                            daemon.wait(KILL_WAIT)
                        return EXIT_OK, f"daemon pid {daemon.pid}"
            except IdentityMismatch as exc:
                why = str(exc)
        if not daemon_running(layout):
            return EXIT_OK, None  # it died meanwhile: only its server may be left
        if time.monotonic() >= give_up:
            say(f"{layout.runtime_lock} held, not verifiable as our daemon ({why}); not touching it")
            return EXIT_FAILURE, None
        time.sleep(0.01)


def _stop_orphan(layout: StateLayout, timeout: float) -> tuple[int, str | None]:
    """Stop a dev server whose daemon is gone, proven ours by devserver.json (or, the instant before it
    execs, by its launcher's command line there) and by what the state dir implies: it holds
    devserver.lock, runs the binary its command line names, and that is a `server start-dev` on
    127.0.0.1 and the recorded port with its db in the state dir or where the record says (the CLI does
    not know the daemon's configuration). A lock whose holder cannot be proven ours is left alone; held
    without a record is transient (a launcher whose daemon died exits on its own)."""
    from .._boundary._process import Verdict, live_identity, stop_process_group
    from .._boundary._statefiles import remove_pid_file
    from .._core._errors import IdentityMismatch
    from .._tree._serve_devserver import proof_problem

    give_up = time.monotonic() + ORPHAN_WAIT
    while lock_is_held(layout.devserver_lock):
        record = devserver_record(layout)
        problem = None
        if record is not None:
            identity, verdict = live_identity(record)
            if verdict is Verdict.SAME:
                db = record.extra.get("db")  # the CLI does not know the configured db: the record's
                dbs = [Path(db)] if isinstance(db, str) else []
                problem = proof_problem(identity, record, layout, dbs=dbs)
            if verdict is Verdict.SAME and problem is None:
                try:
                    stop_process_group(identity, timeout=min(timeout, 10.0) or 0.1)
                except IdentityMismatch as exc:
                    say(str(exc))
                    return EXIT_FAILURE, None
                remove_pid_file(layout.devserver_record)
                return EXIT_OK, f"dev server pid {record.pid}"
        if time.monotonic() >= give_up:
            why = "devserver.json is missing" if record is None else f"pid {record.pid} is {verdict.value}"
            if problem is not None and record is not None:
                why = f"pid {record.pid} is not provably our dev server ({problem})"
            say(f"{layout.devserver_lock} is held but {why}: cannot verify, not touching it")
            return EXIT_FAILURE, None
        time.sleep(0.01)
    return EXIT_OK, None
