# The command line: argparse, exit codes and output. Rule: the only module that touches argv, the
# environment and stdout/stderr. Its hot paths (--help, --version, `status`, `up` when a daemon already
# runs, `stop` when nothing runs) are stdlib only: trio, temporalio, attrs and psutil are imported
# inside the code paths that really start or stop something.
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ._statefiles import (
    PidRecord,
    default_state_dir,
    lock_is_held,
    read_pid_file,
    remove_pid_file,
)
from ._version import __version__

TYPE_CHECKING = False  # typing is not imported at run time: the hot paths stay lean
if TYPE_CHECKING:
    from typing import Any, NoReturn

PROG = "stigmer_trio"

# Exit codes. status follows LSB: 0 running and ready, 1 running but not ready, 3 not running.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3

NOTIFY_ENV = "STIGMER_TRIO_INTERNAL_NOTIFY_FD"
LOG_ENV = "STIGMER_TRIO_INTERNAL_LOG_FILE"  # set for the detached daemon: its stderr is this file
DETACH_WAIT = 180.0  # seconds `up --detach` waits for the daemon's verdict


class UsageError(Exception):
    """A user mistake: one line on stderr, exit code 2, nothing touched."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit code 2 (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see '{PROG} --help')\n")


def _add_location(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML config file (flags > environment > file)")
    parser.add_argument("--state-dir", metavar="DIR", help="lock, pid, db and log files (default: XDG state)")


def _add_up_options(parser: argparse.ArgumentParser) -> None:
    _add_location(parser)
    parser.add_argument("--detach", action="store_true", help="run the daemon in the background")
    parser.add_argument("--port", type=int, metavar="N", help="dev server gRPC port on 127.0.0.1 (7233)")
    parser.add_argument(
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="namespace to create (repeatable)",
    )
    parser.add_argument("--binary", metavar="PATH", help="the temporal executable (default: next to python)")
    parser.add_argument(
        "--start-timeout", type=float, metavar="S", help="seconds a server may take to be ready"
    )
    parser.add_argument(
        "--in-memory",
        action="store_const",
        const=False,
        dest="persist",
        help="no db file: state dies with it",
    )
    parser.add_argument(
        "--external",
        metavar="HOST:PORT",
        help="no dev server: connect to this Temporal (scale out: many runtimes, one task queue)",
    )
    parser.add_argument(
        "--worker",
        action="append",
        dest="workers",
        metavar="MODULE:ATTR",
        help="a WorkerSpec, or a zero-argument callable returning one or a list (repeatable)",
    )
    parser.add_argument(
        "--no-demo", action="store_const", const=False, dest="demo_worker", help="no built-in demo worker"
    )
    parser.add_argument(
        "--http",
        metavar="HOST:PORT|off",
        help="control endpoint /healthz /readyz /status /metrics (default 127.0.0.1, a free port)",
    )
    parser.add_argument(
        "--http-allow-remote",
        action="store_const",
        const=True,
        dest="http_allow_remote",
        help="allow --http on a non-loopback address (the endpoint has no authentication)",
    )
    parser.add_argument("--log-format", choices=("text", "json"), help="daemon log lines (text)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description=(
            "Keep a Temporal stack alive: a supervised, persistent local Temporal dev server under one "
            "Trio supervision tree."
        ),
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_up_options(commands.add_parser("up", help="start the runtime (foreground unless --detach)"))
    stop = commands.add_parser("stop", help="stop the runtime and its dev server")
    _add_location(stop)
    stop.add_argument("--timeout", type=float, default=15.0, metavar="S", help="graceful stop budget (15)")
    restart = commands.add_parser("restart", help="stop, then start the runtime in the background")
    _add_up_options(restart)
    demo = commands.add_parser("demo", help="run the built-in demo workflow through the daemon's worker")
    _add_location(demo)
    demo.add_argument("--name", default="stigmer", help="who to greet")
    status = commands.add_parser("status", help="is the runtime running and ready? (exit 0 / 1 / 3)")
    _add_location(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    logs = commands.add_parser("logs", help="print the daemon's log (logs/daemon.log) or the dev server's")
    _add_location(logs)
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing what is appended")
    logs.add_argument("--devserver", action="store_true", help="the dev server's log instead")
    logs.add_argument("-n", "--lines", type=int, metavar="N", help="only the last N lines")
    return parser


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


# --- configuration (stdlib part: enough for the hot paths) ----------------------------------------------
def _load_toml(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    import tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise UsageError(f"config file {path!r} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path!r} is not valid TOML: {exc}") from None


def _state_dir(args: argparse.Namespace, env: Mapping[str, str], file: Mapping[str, Any]) -> Path:
    raw = args.state_dir or env.get("STIGMER_TRIO_STATE_DIR") or file.get("state_dir")
    if raw is None:
        return default_state_dir(env)
    if not isinstance(raw, str) or not raw:
        raise UsageError(f"state_dir must be a path, got {raw!r}")
    path = Path(raw).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise UsageError(f"state_dir {str(path)!r} is not a directory")
    return path


def _record(state_dir: Path, name: str) -> PidRecord | None:
    try:
        return read_pid_file(state_dir / name)
    except Exception:  # a planted symlink or unreadable file: report as no record here
        return None


def _daemon_running(state_dir: Path) -> bool:
    return lock_is_held(state_dir / "runtime.lock")


# --- status --------------------------------------------------------------------------------------------
def status_report(state_dir: Path, now: float | None = None) -> tuple[int, dict[str, Any]]:
    """The status JSON and the LSB exit code, from the state files alone (stdlib only)."""
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
    }
    if _daemon_running(state_dir):
        daemon = _record(state_dir, "runtime.json")
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
        return (EXIT_OK if report["ready"] else EXIT_FAILURE), report
    if lock_is_held(state_dir / "devserver.lock"):
        orphan = _record(state_dir, "devserver.json")
        report["dev_server"] = {
            "pid": orphan.pid if orphan else None,
            "address": orphan.extra.get("address") if orphan else None,
            "restarts": 0,
            "adopted": False,
            "started_at": orphan.started_at if orphan else None,
            "uptime_s": round(now - orphan.started_at, 3) if orphan else None,
            "orphaned": True,
        }
    return EXIT_NOT_RUNNING, report


def endpoint_status(report: dict[str, Any], timeout: float = 1.0) -> dict[str, Any] | None:
    """GET /status from the running daemon's endpoint; None when there is none or it does not answer.

    A plain socket and HTTP/1.0 (the answer is one JSON body with a Content-Length, then close):
    http.client or urllib would import ssl and email, ~15 ms of a ~60 ms command.
    """
    import socket

    endpoint = report.get("http")
    url = endpoint.get("url") if isinstance(endpoint, dict) else None
    if not isinstance(url, str) or not url.startswith("http://"):
        return None
    host, _, port = url[len("http://") :].rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.sendall(f"GET /status HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        if lines[0].split(b" ")[1:2] != [b"200"]:
            return None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length" and int(value) != len(body):
                return None  # cut short
        document = json.loads(body)
    except (OSError, ValueError, IndexError):
        return None
    return document if isinstance(document, dict) else None


def _status(args: argparse.Namespace, state_dir: Path) -> int:
    code, report = status_report(state_dir)
    if report["running"]:
        live = endpoint_status(report)
        if live is not None:
            report = live
            code = EXIT_OK if report.get("ready") else EXIT_FAILURE
    if args.json:
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
            running = "running" if worker.get("running") else "not running"
            print(f"  worker {worker.get('task_queue')}: {running}, restarts {worker.get('restarts')}")
        if server:
            print(
                f"  dev server restarts {server['restarts']}, adopted {server['adopted']}, "
                f"uptime {server['uptime_s']} s"
            )
        http = report.get("http")
        if isinstance(http, dict):
            print(f"  endpoint {http.get('url')} (/healthz /readyz /status /metrics)")
    elif server:
        print(
            f"not running: but an orphaned dev server (pid {server['pid']}, {server['address']}) is alive; "
            f"`{PROG} up` adopts it, `{PROG} stop` stops it"
        )
    else:
        print(f"not running (state dir {state_dir})")
    return code


# --- logs ----------------------------------------------------------------------------------------------
def _logs(args: argparse.Namespace, state_dir: Path) -> int:
    if args.lines is not None and args.lines < 0:
        raise UsageError(f"--lines must be >= 0, got {args.lines!r}")
    from ._logs import show_log

    path = state_dir / "logs" / ("devserver.log" if args.devserver else "daemon.log")
    try:
        found = show_log(path, lines=args.lines, follow=args.follow)
    except KeyboardInterrupt:
        return 130
    if not found:
        which = "dev server" if args.devserver else "daemon (only a detached daemon writes one)"
        _say(f"no {which} log at {path}")
        return EXIT_FAILURE
    return EXIT_OK


# --- up ------------------------------------------------------------------------------------------------
def _already_running(state_dir: Path, port: int | None = None, wait: bool = True) -> int | None:
    """Say where the running daemon is; while it is still starting, wait (bounded) until it is ready.
    None: it stopped (or died) before it was ready; the caller starts a daemon of its own."""
    daemon = _record(state_dir, "runtime.json")
    if wait and (daemon is None or not daemon.extra.get("ready")):
        return _wait_for_other_daemon(state_dir, time.monotonic(), port)
    if daemon is None:
        print(f"already running (state dir {state_dir})")
        return EXIT_OK
    address = daemon.extra.get("address")
    print(f"already running: daemon pid {daemon.pid}, address {address}")
    if port is not None and isinstance(address, str) and not address.endswith(f":{port}"):
        _say(
            f"note: the running daemon keeps its own settings (address {address}); `restart` to apply --port"
        )
    return EXIT_OK


def _full_config(
    args: argparse.Namespace, env: Mapping[str, str], file: Mapping[str, Any], state_dir: Path
) -> Any:
    from ._config import resolve
    from ._errors import ConfigError
    from ._statefiles import ensure_state_dir

    flags = {
        "state_dir": str(state_dir),
        "port": args.port,
        "namespaces": args.namespaces,
        "binary": args.binary,
        "start_timeout": args.start_timeout,
        "persist": args.persist,
        "external": args.external,
        "demo_worker": args.demo_worker,
        "http": args.http,
        "http_allow_remote": args.http_allow_remote,
        "log_format": args.log_format,
    }
    names = list(args.workers or ())
    if not names:
        raw = env.get("STIGMER_TRIO_WORKERS") or file.get("workers")
        names = [n.strip() for n in raw.split(",") if n.strip()] if isinstance(raw, str) else list(raw or [])
    flags["workers"] = [spec for name in names for spec in load_worker_specs(name)]
    try:
        config = resolve(flags=flags, env=env, file={k: v for k, v in file.items() if k != "workers"})
        import attrs

        from ._config import HttpConfig

        if args.demo_worker is None and "STIGMER_TRIO_DEMO_WORKER" not in env and "demo_worker" not in file:
            config = attrs.evolve(config, demo_worker=True)  # the daemon runs the demo worker by default
        if args.http is None and "STIGMER_TRIO_HTTP" not in env and "http" not in file:
            # the daemon serves its endpoint by default (loopback, a free port; `status` finds it)
            config = attrs.evolve(config, http=HttpConfig(allow_remote=bool(args.http_allow_remote)))
        ensure_state_dir(config.state_dir)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if config.http is not None and config.http.allow_remote:
        from ._config import is_loopback

        if not is_loopback(config.http.host):
            _say(
                f"warning: the control endpoint will listen on {config.http.host}, beyond this machine; "
                "it has no authentication"
            )
    return config


def _foreground(config: Any) -> NoReturn:
    from ._logs import RotatingLog
    from ._runtime import configure_logging, daemon_main

    log_path = os.environ.pop(LOG_ENV, None)
    log_file = None
    if log_path is not None:
        log_file = RotatingLog(Path(log_path), config.log_max_bytes, config.log_backups)
    configure_logging(log_format=config.log_format, log_file=log_file)
    notify_fd = os.environ.pop(NOTIFY_ENV, None)

    def report(message: dict[str, Any]) -> None:
        if message.get("event") == "already-running":
            _already_running(config.state_dir)

    notify: Callable[[dict[str, Any]], None] = report
    if notify_fd is not None:
        from ._runtime import write_notification

        notify = write_notification(int(notify_fd))
    code = EXIT_FAILURE
    try:
        code = daemon_main(config, notify)
    except BaseException:  # a bug, not a user mistake: show it before leaving with os._exit
        import traceback

        traceback.print_exc()
        notify({"event": "error", "message": "the daemon crashed; see logs/daemon.log"})
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # temporalio can crash the interpreter at exit after a clean shutdown


def _detach(daemon_argv: Sequence[str], state_dir: Path) -> int | None:
    """Start the daemon in a new session; wait for its verdict; print where it runs or why it failed.
    None: it found another daemon starting, which then stopped before it was ready (try again)."""
    import subprocess

    logs = state_dir / "logs"
    logs.mkdir(mode=0o700, parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    began = time.monotonic()
    log_fd = os.open(logs / "daemon.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "stigmer_trio", *daemon_argv],
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            start_new_session=True,
            pass_fds=(write_end,),
            env={**os.environ, NOTIFY_ENV: str(write_end), LOG_ENV: str(logs / "daemon.log")},
        )
    finally:
        os.close(write_end)
        os.close(log_fd)
    with os.fdopen(read_end, "rb") as pipe:
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
        print(
            f"running: dev server {message.get('address')}, daemon pid {message.get('pid')}"
            f"{endpoint}, ready in {elapsed:.2f} s"
        )
        return EXIT_OK
    if event == "already-running":
        daemon.wait()
        return _wait_for_other_daemon(state_dir, began)
    if event == "error":
        _say(f"the daemon failed: {message.get('message')}")
        return EXIT_FAILURE
    with contextlib.suppress(subprocess.TimeoutExpired):  # EOF without a verdict: let it finish exiting
        daemon.wait(timeout=2.0)
    if daemon.returncode is None:
        _say(
            f"the daemon (pid {daemon.pid}) did not report within {DETACH_WAIT:g} s; "
            f"see {logs / 'daemon.log'}"
        )
    else:
        _say(
            f"the daemon exited with code {daemon.returncode} before it was ready; see {logs / 'daemon.log'}"
        )
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


def _wait_for_other_daemon(state_dir: Path, began: float, port: int | None = None) -> int | None:
    """A daemon runs (or won the race) but is not ready yet: wait until it is ready (its exit code) or
    gone (None: it stopped or died, say killed mid-start; the caller may start its own)."""
    while time.monotonic() - began < DETACH_WAIT:
        if not _daemon_running(state_dir):
            return None
        record = _record(state_dir, "runtime.json")
        if record is not None and record.extra.get("ready"):
            return _already_running(state_dir, port, wait=False)
        time.sleep(0.02)
    _say(f"another daemon in {state_dir} is not ready after {DETACH_WAIT:g} s")
    return EXIT_FAILURE


UP_TRIES = 3  # a daemon found starting that then dies is replaced by ours; at most this often


def _up(args: argparse.Namespace, env: Mapping[str, str], file: Mapping[str, Any]) -> int:
    state_dir = _state_dir(args, env, file)
    config = None
    for _ in range(UP_TRIES):
        # A detached daemon skips this check: it must take the lock itself and report to its parent.
        if NOTIFY_ENV not in env and _daemon_running(state_dir):
            code = _already_running(state_dir, args.port)
            if code is not None:
                return code
            continue  # it stopped before it was ready: start ours
        if config is None:
            config = _full_config(args, env, file, state_dir)
        if not args.detach:
            _foreground(config)
        code = _detach(_daemon_argv(args, config.state_dir), config.state_dir)
        if code is not None:
            return code
    _say(f"daemons in {state_dir} keep stopping before they are ready; see `status` and logs/daemon.log")
    return EXIT_FAILURE


def _daemon_argv(args: argparse.Namespace, state_dir: Path) -> list[str]:
    """The foreground `up` command line equivalent to this one, for the detached daemon."""
    argv = ["up", "--state-dir", str(state_dir)]
    if args.config is not None:
        argv += ["--config", str(Path(args.config).absolute())]
    for flag, value in (
        ("--port", args.port),
        ("--binary", args.binary),
        ("--start-timeout", args.start_timeout),
    ):
        if value is not None:
            argv += [flag, str(value)]
    for namespace in args.namespaces or ():
        argv += ["--namespace", namespace]
    if args.persist is False:
        argv.append("--in-memory")
    if args.external is not None:
        argv += ["--external", args.external]
    for worker in args.workers or ():
        argv += ["--worker", worker]
    if args.demo_worker is False:
        argv.append("--no-demo")
    if args.http is not None:
        argv += ["--http", args.http]
    if args.http_allow_remote:
        argv.append("--http-allow-remote")
    if args.log_format is not None:
        argv += ["--log-format", args.log_format]
    return argv


def load_worker_specs(name: str) -> list[Any]:
    """`MODULE:ATTR` -> WorkerSpecs: a WorkerSpec, or a zero-argument callable returning one or a list."""
    import importlib

    from ._config import WorkerSpec

    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise UsageError(f"--worker {name!r}: expected MODULE:ATTR")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise UsageError(
            f"--worker {name!r}: cannot import {module_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    try:
        value = getattr(module, attr)
    except AttributeError:
        raise UsageError(f"--worker {name!r}: module {module_name!r} has no attribute {attr!r}") from None
    if callable(value) and not isinstance(value, WorkerSpec):
        try:
            value = value()
        except Exception as exc:
            raise UsageError(f"--worker {name!r}: calling it raised {type(exc).__name__}: {exc}") from None
    specs = value if isinstance(value, list | tuple) else [value]
    if not specs or not all(isinstance(spec, WorkerSpec) for spec in specs):
        raise UsageError(
            f"--worker {name!r}: expected a WorkerSpec or a zero-argument callable returning one or a "
            f"list of them, got {type(value).__name__}"
        )
    return list(specs)


def _demo(args: argparse.Namespace, state_dir: Path) -> int:
    """Run the demo workflow through the running daemon's demo worker; print result and latency."""
    record = _record(state_dir, "runtime.json") if _daemon_running(state_dir) else None
    if record is None or not record.extra.get("ready"):
        _say(f"no ready daemon in {state_dir}: start one with `{PROG} up --detach` first")
        return EXIT_NOT_RUNNING
    workers = record.extra.get("workers") or []
    from ._demo import DEMO_TASK_QUEUE

    if not any(w.get("task_queue") == DEMO_TASK_QUEUE and w.get("running") for w in workers):
        _say("the running daemon has no demo worker (started with --no-demo)")
        return EXIT_FAILURE
    address = record.extra.get("address")
    namespace = record.extra.get("namespace") or "default"
    code = _run_demo(str(address), namespace, args.name)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run_demo(address: str, namespace: str, name: str) -> int:
    import asyncio
    import uuid

    from temporalio.client import Client

    from ._demo import DEMO_TASK_QUEUE, StigmerDemo

    async def main() -> int:
        client = await asyncio.wait_for(Client.connect(address, namespace=namespace), 10)
        began = time.perf_counter()
        result = await asyncio.wait_for(
            client.execute_workflow(
                StigmerDemo.run, name, id=f"stigmer-demo-{uuid.uuid4()}", task_queue=DEMO_TASK_QUEUE
            ),
            30,
        )
        print(f"{result}  ({(time.perf_counter() - began) * 1000:.1f} ms round trip via {address})")
        return EXIT_OK

    try:
        return asyncio.run(main())
    except Exception as exc:
        _say(f"the demo workflow failed: {type(exc).__name__}: {exc}")
        return EXIT_FAILURE


# --- stop ----------------------------------------------------------------------------------------------
def _stop(args: argparse.Namespace, state_dir: Path, *, keep_server: bool = False) -> int:
    """Stop the daemon (and its dev server, or an orphaned one). `keep_server` (the `restart`
    handover): the daemon leaves a healthy dev server running for the next daemon to adopt."""
    if args.timeout < 0:
        raise UsageError(f"--timeout must be >= 0, got {args.timeout!r}")
    daemon_up = _daemon_running(state_dir)
    server_up = lock_is_held(state_dir / "devserver.lock")
    if not daemon_up and not server_up:
        print("not running")
        return EXIT_OK
    from ._process import Verdict, verify

    began = time.monotonic()
    stopped: list[str] = []
    if daemon_up:
        record = _record(state_dir, "runtime.json")
        give_up = time.monotonic() + ORPHAN_WAIT  # a daemon that just took its lock writes its record next
        while (record is None or verify(record) is not Verdict.SAME) and time.monotonic() < give_up:
            if not _daemon_running(state_dir):
                break
            time.sleep(0.01)
            record = _record(state_dir, "runtime.json")
        if not _daemon_running(state_dir):
            record = None  # it died meanwhile: only its server may be left
        elif record is None or verify(record) is not Verdict.SAME:
            _say(
                f"{state_dir / 'runtime.lock'} is held by a process that cannot be verified as our "
                "daemon; not touching it"
            )
            return EXIT_FAILURE
        if record is not None:
            if not _signal_and_wait(record, args.timeout, HANDOVER_SIGNAL if keep_server else SIGTERM):
                _say(f"the daemon (pid {record.pid}) did not stop within {args.timeout:g} s: killing it")
                _kill_verified(record)
            stopped.append(f"daemon pid {record.pid}")
    if not keep_server:
        code, orphan = _stop_orphan(state_dir, args.timeout)
        if code != EXIT_OK:
            return code
        if orphan is not None:
            stopped.append(orphan)
    if not stopped:
        print("not running")
        return EXIT_OK
    print(f"stopped {', '.join(stopped)} in {time.monotonic() - began:.2f} s")
    return EXIT_OK


ORPHAN_WAIT = 2.0  # seconds a held devserver.lock may take to be provably ours (or to be let go)


def _stop_orphan(state_dir: Path, timeout: float) -> tuple[int, str | None]:
    """Stop a dev server whose daemon is gone, proven ours by devserver.json (or, the instant before it
    execs, by its launcher's command line there). A lock whose holder cannot be proven ours is left
    alone; held without a record is transient (a launcher whose daemon died exits on its own)."""
    from ._errors import IdentityMismatch
    from ._process import Verdict, live_identity, stop_process_group

    lock = state_dir / "devserver.lock"
    give_up = time.monotonic() + ORPHAN_WAIT
    while lock_is_held(lock):
        record = _record(state_dir, "devserver.json")
        if record is not None:
            identity, verdict = live_identity(record)
            if verdict is Verdict.SAME:
                try:
                    stop_process_group(identity, timeout=min(timeout, 10.0) or 0.1)
                except IdentityMismatch as exc:
                    _say(str(exc))
                    return EXIT_FAILURE, None
                remove_pid_file(state_dir / "devserver.json")
                return EXIT_OK, f"dev server pid {record.pid}"
        if time.monotonic() >= give_up:
            why = "devserver.json is missing" if record is None else f"pid {record.pid} is {verdict.value}"
            _say(f"{lock} is held but {why}: cannot verify, not touching it")
            return EXIT_FAILURE, None
        time.sleep(0.01)
    return EXIT_OK, None


SIGTERM = 15
HANDOVER_SIGNAL = 10  # SIGUSR1 (the daemon's HANDOVER_SIGNAL): stop, leaving the dev server running


def _signal_and_wait(record: PidRecord, timeout: float, signum: int = SIGTERM) -> bool:
    """Signal our verified daemon and wait for it to exit (pidfd); True if it did within `timeout`."""
    import select
    import signal

    try:
        pidfd = os.pidfd_open(record.pid)
    except ProcessLookupError:
        return True
    try:
        signal.pidfd_send_signal(pidfd, signum)
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(int(timeout * 1000)))
    except ProcessLookupError:
        return True
    finally:
        os.close(pidfd)


def _kill_verified(record: PidRecord) -> None:
    import signal

    from ._process import Verdict, verify

    try:
        pidfd = os.pidfd_open(record.pid)
    except ProcessLookupError:
        return
    try:
        if verify(record) is Verdict.SAME:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)


# --- entry point ---------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m stigmer_trio`` and the ``stigmer-trio`` script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    env = os.environ
    try:
        file = _load_toml(args.config)
        if args.command == "status":
            return _status(args, _state_dir(args, env, file))
        if args.command == "demo":
            return _demo(args, _state_dir(args, env, file))
        if args.command == "logs":
            return _logs(args, _state_dir(args, env, file))
        if args.command == "stop":
            return _stop(args, _state_dir(args, env, file))
        if args.command == "restart":
            state_dir = _state_dir(args, env, file)
            stop_args = argparse.Namespace(timeout=15.0)
            code = _stop(stop_args, state_dir, keep_server=True)  # the new daemon adopts the server
            if code != EXIT_OK:
                return code
            args.detach = True
            return _up(args, env, file)
        return _up(args, env, file)
    except UsageError as exc:
        _say(f"error: {exc}")
        return EXIT_USAGE
    except BrokenPipeError:  # `status --json | head -c 100`: the reader left; no traceback
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
